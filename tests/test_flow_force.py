"""The flow as an all-atom OpenMM force: U_theta = kT [F(s) - ln q(x_fg | s) + ln|det dx/dy|].

On flow samples it equals the value from the sampling pass; its forces are -grad U_theta; beside the force field,
(U_theta - U) / kT is the log importance weight the training uses; the mean force along s under q(x_fg | s) is
dF/ds (the identity that makes the (phi, psi) marginal exp(-F)); Langevin dynamics on it keeps the flow's
fine-grained distribution (and run hotter does not)."""
import math

import numpy as np
import openmm
import pytest
import torch
from conftest import PLATFORM_PROPERTIES

from openmm_cgflow.export import ModelFileError, save_model
from openmm_cgflow.flows import ConditionalSplineFlow
from openmm_cgflow.forces import OPENCL_TORCHFORCE_BROKEN, create_flow_force, flow_energy_module
from openmm_cgflow.forces.cg_dynamics import run_langevin_frames
from openmm_cgflow.systems import create_system


@pytest.fixture(scope="module")
def aldp():
    return create_system("alanine-dipeptide")


@pytest.fixture(scope="module")
def flow_model(aldp, tmp_path_factory):
    """A small spline flow moved away from the identity (so q depends on s), saved as a model file."""
    torch.manual_seed(0)
    flow = ConditionalSplineFlow(aldp.fg_dim, list(aldp.flow_circular_indices), 2, 2, 4, 16, 1)
    with torch.no_grad():
        for layer in flow.layers:
            layer.conditioner.final.weight.normal_(0.0, 0.05)
    meta = dict(system=aldp.name, temperature_K=aldp.temperature, cg_metadata=aldp.description.to_dict(), cg_dim=2)
    path = save_model(flow, tmp_path_factory.mktemp("flow") / "flow.pt", kind="conditional_flow", fg_dim=aldp.fg_dim, **meta)
    return path, flow


def flow_samples(aldp, flow, s, seed=1):
    """(positions (B, 22, 3) nm, U_theta / kT from the sampling pass) at CG points s."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z = flow.sample_base(len(s), generator)
        x, logdet = flow(z, s)
        positions, log_jacobian = aldp.to_cartesian(s, x)
    return positions, z, logdet, log_jacobian


def random_rigid_motion(positions, seed):
    rng = np.random.default_rng(seed)
    out = []
    for x in positions:
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        out.append(x @ q.T * np.sign(np.linalg.det(q)) + rng.uniform(-2, 2, size=3))
    return np.stack(out)


def kT(aldp):
    return 8.314462618e-3 * aldp.temperature


def bare_system(aldp, n_replicas):
    system = openmm.System()
    for _ in range(n_replicas):
        for atom in range(aldp.n_atoms):
            system.addParticle(aldp.system.getParticleMass(atom))
    return system


@pytest.mark.parametrize("backend", ["torchforce", "pythonforce"])
def test_energy_equals_the_model_on_flow_samples(aldp, flow_model, reference_pmf_model, backend, platform, tolerance):
    if backend == "torchforce" and platform == "OpenCL":
        pytest.skip(OPENCL_TORCHFORCE_BROKEN)
    flow_path, flow = flow_model
    pmf_path, ensemble = reference_pmf_model
    s = torch.tensor([[0.0, 0.0], [1.2, -2.0], [-2.5, 2.9]], dtype=torch.float64)
    positions, z, logdet, log_jacobian = flow_samples(aldp, flow, s)
    F, _ = ensemble.mean_std(s)
    expected = (F - (flow.base_log_prob(z) - logdet) + log_jacobian).detach()  # U_theta / kT per replica
    moved = random_rigid_motion(positions.numpy(), seed=2)  # U_theta is invariant under rigid motions
    module, _ = flow_energy_module(flow_path, pmf_path, n_replicas=3)
    u, s_model, _ = module.reduced_energy(torch.as_tensor(moved.reshape(-1, 3)))
    torch.testing.assert_close(u, expected, rtol=1e-9, atol=1e-8)
    torch.testing.assert_close(s_model, s, rtol=0, atol=1e-10)
    system = bare_system(aldp, 3)
    system.addForce(create_flow_force(flow_path, pmf_path, backend=backend, n_replicas=3, system=system))
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform), PLATFORM_PROPERTIES.get(platform, {}))
    context.setPositions(moved.reshape(-1, 3))
    energy = context.getState(getEnergy=True).getPotentialEnergy()._value
    assert energy == pytest.approx(kT(aldp) * float(expected.sum()), rel=tolerance)


def test_forces_are_minus_the_gradient_by_finite_differences(aldp, flow_model, reference_pmf_model):
    flow_path, flow = flow_model
    pmf_path, _ = reference_pmf_model
    positions, *_ = flow_samples(aldp, flow, torch.tensor([[0.4, -0.3]], dtype=torch.float64))
    x = positions.numpy().reshape(-1, 3)
    system = bare_system(aldp, 1)
    system.addForce(create_flow_force(flow_path, pmf_path, system=system))
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(x)
    forces = context.getState(getForces=True).getForces(asNumpy=True)._value
    module, _ = flow_energy_module(flow_path, pmf_path)
    h = 1e-6
    steps = np.eye(x.size).reshape(x.size, *x.shape) * h  # every one of the 22 x 3 = 66 Cartesian coordinates
    with torch.no_grad():
        gradient = np.array([(float(module(torch.as_tensor(x + d))) - float(module(torch.as_tensor(x - d)))) / (2 * h) for d in steps])
    assert forces.shape == (22, 3)
    np.testing.assert_allclose(forces, -gradient.reshape(x.shape), rtol=1e-6, atol=1e-4)


def test_difference_to_the_force_field_is_the_log_importance_weight(aldp, flow_model, reference_pmf_model):
    """With U in force group 0 and U_theta in group 1 of one Context: (U_theta - U) / kT = ln p~(x) - ln q(x|s)
    + F(s), the training's log weight (ln p~ = -u + ln|det dx/dy|) shifted by the PMF."""
    flow_path, flow = flow_model
    pmf_path, ensemble = reference_pmf_model
    s = torch.tensor([[0.1, 0.2]], dtype=torch.float64)
    positions, z, logdet, log_jacobian = flow_samples(aldp, flow, s, seed=3)
    system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(aldp.system))
    force = create_flow_force(flow_path, pmf_path, system=system)
    force.setForceGroup(1)
    system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions[0].numpy())
    U = context.getState(getEnergy=True, groups={0}).getPotentialEnergy()._value
    U_theta = context.getState(getEnergy=True, groups={1}).getPotentialEnergy()._value
    F, _ = ensemble.mean_std(s)
    log_w = -U / kT(aldp) + log_jacobian - (flow.base_log_prob(z) - logdet)
    assert (U_theta - U) / kT(aldp) == pytest.approx(float(log_w + F.detach()), rel=1e-9)


def test_mean_force_along_s_under_the_flow_is_dF_ds(aldp, flow_model, reference_pmf_model):
    """E_q(x_fg|s)[d(U_theta/kT)/ds at fixed x_fg] = dF/ds, because E_q[d ln q / ds] = 0 and the Jacobian does not
    depend on dihedrals: the identity behind the (phi, psi) marginal exp(-F) of the model's distribution."""
    flow_path, flow = flow_model
    pmf_path, ensemble = reference_pmf_model
    module, _ = flow_energy_module(flow_path, pmf_path, n_replicas=4000)
    s0 = torch.tensor([[0.8, -1.1]], dtype=torch.float64)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        x_fg, _ = flow(flow.sample_base(4000, generator), s0.expand(4000, 2))
    s = s0.expand(4000, 2).clone().requires_grad_(True)
    positions, _ = aldp.to_cartesian(s, x_fg)
    u, _, _ = module.reduced_energy(positions.reshape(-1, 3))
    (grad,) = torch.autograd.grad(u.sum(), s)
    s_leaf = s0.clone().requires_grad_(True)
    (dF,) = torch.autograd.grad(ensemble.mean_std(s_leaf)[0].sum(), s_leaf)
    error = grad.std(0) / math.sqrt(len(grad))
    assert (torch.abs(grad.mean(0) - dF[0]) < 4 * error + 1e-6).all(), (grad.mean(0), dF[0], error)
    assert (grad.std(0) > 0.1).all()  # the per-sample force does fluctuate: the identity is not trivial


@pytest.mark.parametrize("temperature, hot", [(300.0, False), (450.0, True)])
def test_langevin_on_the_flow_force_keeps_the_flow_distribution(aldp, flow_model, reference_pmf_model, temperature, hot):
    """Replicas started from the model's joint distribution (s ~ exp(-F), x_fg ~ q(.|s)) and run by Langevin
    dynamics on U_theta alone keep the flow's conditional spread of every non-circular fine coordinate (std
    ratio to fresh flow samples at the trajectory's s within 5 %); at 1.5 x the temperature the ratio is
    sqrt(1.5)."""
    flow_path, flow = flow_model
    pmf_path, ensemble = reference_pmf_model
    n = 48
    fine = np.linspace(-math.pi, math.pi, 40, endpoint=False) + math.pi / 40
    grid = np.stack(np.meshgrid(fine, fine, indexing="ij"), -1).reshape(-1, 2)
    F, _ = ensemble.predict(grid)
    p = np.exp(-(F - F.min()))
    rng = np.random.default_rng(0)
    s = torch.as_tensor(grid[rng.choice(len(grid), size=n, p=p / p.sum())])
    positions, *_ = flow_samples(aldp, flow, s, seed=5)
    positions = positions.numpy() + np.arange(n)[:, None, None] * np.array([2.0, 0.0, 0.0])
    system = bare_system(aldp, n)
    system.addForce(create_flow_force(flow_path, pmf_path, n_replicas=n, system=system))
    frames = run_langevin_frames(system, positions.reshape(-1, 3), 600, 10, temperature, timestep_fs=1.0, friction_per_ps=10.0)
    s_md, x_md = aldp.from_cartesian(torch.as_tensor(frames[10:].reshape(-1, aldp.n_atoms, 3)))
    with torch.no_grad():
        x_flow, _ = flow(flow.sample_base(len(s_md), torch.Generator().manual_seed(6)), s_md)
    linear = [i for i in range(aldp.fg_dim) if i not in list(aldp.flow_circular_indices)]
    ratio = float((x_md[:, linear].std(0) / x_flow[:, linear].std(0)).median())
    if hot:
        assert ratio > 1.15, ratio
    else:
        assert abs(ratio - 1.0) < 0.05, ratio


def test_flow_and_pmf_of_different_systems_are_refused(aldp, flow_model, tmp_path):
    flow_path, _ = flow_model
    from openmm_cgflow.pmf import PMFEnsemble

    mb = create_system("muller-brown")
    other = save_model(PMFEnsemble(1, 2, (4,)).double(), tmp_path / "mb.pt", kind="pmf_ensemble", system="muller-brown",
                       temperature_K=mb.temperature, cg_dim=1, cg_metadata=mb.description.to_dict())
    with pytest.raises(ModelFileError, match="disagree on 'system'"):
        flow_energy_module(flow_path, other)
    with pytest.raises(ModelFileError, match="holds a 'conditional_flow' model, expected 'pmf_ensemble'"):
        flow_energy_module(flow_path, flow_path)
