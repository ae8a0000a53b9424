"""The contract every CGSystem keeps, checked on every registered system plus one registered here (alanine
dipeptide in vacuum from openmmtools, built only through the generic ``CGSystem.from_openmm`` path, with its CG
dihedrals in the reverse order and named differently): internal-coordinate round trip, log-det against
autograd, oracle against a direct OpenMM evaluation, CG module against mdtraj, PMF force = -grad, CG dynamics
samples exp(-F), and the system rebuilt from its model-file description is the same system."""
import json
import math

import mdtraj
import numpy as np
import openmm
import openmm.unit as unit
import pytest
import torch

from openmm_cgflow.energy import EnergyOracle
from openmm_cgflow.export import ModelMetadata
from openmm_cgflow.forces import create_pmf_force
from openmm_cgflow.forces.cg_dynamics import cg_replica_system, replica_cg, replica_positions, run_langevin_frames
from openmm_cgflow.systems.starting_data import run_langevin
from openmm_cgflow.systems import CGSystem, available_systems, create_system, register_system

TEST_SYSTEM = "test-vacuum-dipeptide"


def vacuum_dipeptide() -> CGSystem:
    from openmm_cgflow.systems.molecule import _openmmtools_system

    system, topology, positions, _ = _openmmtools_system("AlanineDipeptideVacuum")
    return CGSystem.from_openmm(system, topology, positions, 300.0 * unit.kelvin, {"psi": [16, 14, 8, 6], "phi": [4, 6, 8, 14]},
                                name=TEST_SYSTEM)


register_system(TEST_SYSTEM, vacuum_dipeptide)
SYSTEMS = sorted(set(available_systems()) | {TEST_SYSTEM})


@pytest.fixture(scope="module", params=SYSTEMS)
def cg_system(request):
    return create_system(request.param)


@pytest.fixture(scope="module")
def frames(cg_system):
    """Thermal structures: short Langevin MD from the system's reference structure (Reference platform)."""
    md = run_langevin(cg_system, n_steps=400, save_every=50, seed=3, timestep_fs=1.0, friction_per_ps=10.0)
    x = md.frames
    if not hasattr(cg_system.fine_grained, "transform"):
        x = x.copy()
        x[..., 2] = 0.0  # a planar map generates z = 0
    return x


def euler_zyz(angles: torch.Tensor) -> torch.Tensor:
    def rz(a):
        c, s = torch.cos(a), torch.sin(a)
        z, o = torch.zeros_like(a), torch.ones_like(a)
        return torch.stack([torch.stack([c, -s, z]), torch.stack([s, c, z]), torch.stack([z, z, o])])

    def ry(a):
        c, s = torch.cos(a), torch.sin(a)
        z, o = torch.zeros_like(a), torch.ones_like(a)
        return torch.stack([torch.stack([c, z, s]), torch.stack([z, o, z]), torch.stack([-s, z, c])])

    return rz(angles[0]) @ ry(angles[1]) @ rz(angles[2])


def test_round_trip_through_cg_and_fine_grained_coordinates(cg_system, frames):
    x = torch.as_tensor(frames)
    s, x_fg = cg_system.from_cartesian(x)
    assert s.shape == (len(x), cg_system.cg_dim) and x_fg.shape == (len(x), cg_system.fg_dim)
    fine = cg_system.fine_grained
    if hasattr(fine, "transform"):
        back, _ = fine.transform.inverse(fine.join(s, x_fg), *fine.transform.frame(x))
    else:
        back, _ = cg_system.to_cartesian(s, x_fg)
    assert float((back - x).abs().max()) <= 1e-10


def test_log_det_matches_autograd(cg_system, frames):
    fine = cg_system.fine_grained
    x = torch.as_tensor(frames[:2])
    s, x_fg = cg_system.from_cartesian(x)
    for k in range(len(x)):
        if not hasattr(fine, "transform"):
            jacobian = torch.autograd.functional.jacobian(
                lambda v: cg_system.to_cartesian(v[None, :1], v[None, 1:])[0][0, 0, :2], torch.cat([s[k], x_fg[k]]))
            _, ours = cg_system.to_cartesian(s[k : k + 1], x_fg[k : k + 1])
            assert float(ours[0]) == pytest.approx(float(torch.linalg.slogdet(jacobian)[1]), abs=1e-12)
            continue
        n_y = fine.dim
        params = torch.cat([s[k], x_fg[k], torch.tensor([0.1, -0.2, 0.3, 0.4, 1.1, -0.7], dtype=torch.float64)])

        def full_map(p):
            positions, _ = cg_system.to_cartesian(p[None, : cg_system.cg_dim], p[None, cg_system.cg_dim : n_y])
            return (positions[0] @ euler_zyz(p[n_y + 3 :]).T + p[n_y : n_y + 3]).reshape(-1)

        _, expected = torch.linalg.slogdet(torch.autograd.functional.jacobian(full_map, params))
        _, ours = cg_system.to_cartesian(s[k : k + 1], x_fg[k : k + 1])
        ours = ours[0] + torch.log(torch.sin(params[n_y + 4]))  # Haar measure of the ZYZ Euler angles
        assert abs(float((ours - expected) / expected)) <= 1e-6
        # and the forward map's log-det is the inverse's negative
        _, _, forward_log_det = fine.internal(x[k : k + 1])
        assert float(forward_log_det[0]) == pytest.approx(-float(cg_system.to_cartesian(s[k : k + 1], x_fg[k : k + 1])[1][0]), rel=1e-10)


def test_oracle_matches_a_direct_openmm_evaluation(cg_system, frames):
    with EnergyOracle(cg_system, "Reference") as oracle:
        u, _ = oracle.evaluate(frames)
        energies_kj, forces_kj = oracle.evaluate_kj(frames)
    context = openmm.Context(cg_system.system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    for k, x in enumerate(frames):
        context.setPositions(x)
        state = context.getState(getEnergy=True, getForces=True)
        energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
        assert u[k] == pytest.approx(energy / cg_system.kT, rel=1e-9, abs=1e-9)
        # the oracle reads the State below its unit wrappers: the same numbers, bitwise, in OpenMM's atom order
        assert energies_kj[k] == energy
        np.testing.assert_array_equal(forces_kj[k], forces)


def test_cg_coordinates_equal_mdtraj_dihedrals(cg_system, frames):
    values = cg_system.cg_values(frames)
    s, _ = cg_system.from_cartesian(torch.as_tensor(frames))
    np.testing.assert_allclose(values, s.numpy(), atol=1e-10)  # the CG module is the fine-grained map's split
    definition = cg_system.cg_definition
    if definition.kind == "dihedral":
        trajectory = mdtraj.Trajectory(frames, mdtraj.Topology.from_openmm(cg_system.topology))
        angles = mdtraj.compute_dihedrals(trajectory, [cv.atoms for cv in definition.coordinates]).astype(np.float64)
        signs = np.array([cv.sign for cv in definition.coordinates])
        offsets = np.array([cv.offset for cv in definition.coordinates])
        expected = np.remainder(signs * angles - offsets + math.pi, 2 * math.pi) - math.pi
        difference = np.remainder(values - expected + math.pi, 2 * math.pi) - math.pi
        assert np.abs(difference).max() < 1e-5  # mdtraj computes in float32
    else:
        cv = definition.coordinates[0]
        np.testing.assert_allclose(values[:, 0], frames[:, cv.particle] @ np.asarray(cv.coefficients), atol=1e-12)


class AnalyticPMF(torch.nn.Module):
    """F(s) = sum_k a_k cos(s_k - b_k) (angles) or a (s - c)^2 (linear), kT; std 0 (a stand-in ensemble)."""

    def __init__(self, periodic: bool, dim: int):
        super().__init__()
        self.periodic = periodic
        self.register_buffer("a", torch.tensor([1.2, 0.7, 0.9, 0.5][:dim], dtype=torch.float64))
        self.register_buffer("b", torch.tensor([0.4, -1.0, 2.0, -2.5][:dim], dtype=torch.float64))

    def mean_std(self, s: torch.Tensor):
        s = s.to(torch.float64)
        if self.periodic:
            f = (self.a * torch.cos(s - self.b)).sum(-1)
        else:
            f = (self.a * (s + 0.7) ** 2).sum(-1)
        return f, torch.zeros_like(f)

    def forward(self, s: torch.Tensor):
        return self.mean_std(s)[0]


def test_pmf_force_is_minus_the_gradient(cg_system, frames):
    pmf = AnalyticPMF(cg_system.cg_periodic, cg_system.cg_dim)
    metadata = ModelMetadata.for_system(cg_system, "pmf_ensemble")
    system = openmm.System()
    for i in range(cg_system.n_atoms):
        system.addParticle(cg_system.system.getParticleMass(i))
    system.addForce(create_pmf_force(pmf, metadata, backend="torchforce", system=system))
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))

    def energy(x):
        context.setPositions(x)
        return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)

    x = frames[1].copy()
    context.setPositions(x)
    forces = context.getState(getForces=True).getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    s = torch.as_tensor(cg_system.cg_values(x))
    assert energy(x) == pytest.approx(cg_system.kT * float(pmf(s)[0]), rel=1e-10)
    h = 1e-6
    for atom in sorted(set(cg_system.cg_definition.atoms)):
        for axis in range(3):
            plus, minus = x.copy(), x.copy()
            plus[atom, axis] += h
            minus[atom, axis] -= h
            gradient = (energy(plus) - energy(minus)) / (2 * h)
            assert forces[atom, axis] == pytest.approx(-gradient, abs=1e-4 * max(1.0, abs(gradient)))


def _marginal(pmf: "AnalyticPMF", periodic: bool, k: int, values: np.ndarray) -> np.ndarray:
    """The analytic F_k (kT) of coordinate k at ``values``."""
    if periodic:
        return pmf.a[k].item() * np.cos(values - pmf.b[k].item())
    return pmf.a[k].item() * (values + 0.7) ** 2


@pytest.mark.parametrize("heat", [1.0, 2.0])
def test_cg_dynamics_samples_exp_minus_f(cg_system, heat):
    """Replicas of the CG definition on an analytic separable F, started from exact samples of exp(-F), still
    sample it after many relaxation times: every CG coordinate's histogram matches the marginal exp(-F_k)
    (forward KLD on 24 bins < 0.01 with ~3.6e4 correlated samples). A wrong force (sign, scale or units) drifts
    away from exp(-F) within a few ps; the run is 6 ps (dihedral replicas) or 15 ps (particles). The check can
    fail: with the thermostat at twice the system's temperature (heat 2) the replicas sample exp(-F/2) and the
    coordinate with the deepest F (1.2 kT) is far from exp(-F) (KLD > 0.02).

    This is the package's one check that CG dynamics on a PMF force samples exp(-F)."""
    definition = cg_system.cg_definition
    pmf = AnalyticPMF(cg_system.cg_periodic, cg_system.cg_dim)
    metadata = ModelMetadata.for_system(cg_system, "pmf_ensemble")
    n = 256
    rng = np.random.default_rng(0)
    start = np.zeros((n, cg_system.cg_dim))
    for k, (lo, hi) in enumerate(definition.domain):  # inverse-CDF samples of each marginal on a fine grid
        cells = lo + (hi - lo) * (np.arange(4000) + 0.5) / 4000
        p = np.exp(-_marginal(pmf, cg_system.cg_periodic, k, cells))
        start[:, k] = cells[rng.choice(len(cells), size=n, p=p / p.sum())] + (rng.random(n) - 0.5) * (hi - lo) / 4000
    system = cg_replica_system(definition, pmf, n, cg_system.temperature, metadata)
    positions = replica_positions(definition, start)
    np.testing.assert_allclose(replica_cg(definition, positions), start, atol=1e-10)
    timestep = 5.0 if definition.replica.kind == "particle" else 2.0
    x = run_langevin_frames(system, positions, 3000, 20, heat * cg_system.temperature, seed=2, timestep_fs=timestep, friction_per_ps=10.0,
                            platform="CPU")
    s = replica_cg(definition, x[10:]).reshape(-1, cg_system.cg_dim)
    kld = []
    for k, (lo, hi) in enumerate(definition.domain):  # linear coordinates: walls at the domain
        edges = np.linspace(lo, hi, 25)
        centres = 0.5 * (edges[1:] + edges[:-1])
        f = _marginal(pmf, cg_system.cg_periodic, k, centres)
        p = np.exp(-(f - f.min()))
        p /= p.sum()
        counts, _ = np.histogram(s[:, k], bins=edges)
        q = (counts + 0.5) / (counts.sum() + 0.5 * len(counts))
        kld.append(float(np.sum(p * np.log(p / q))))
    if heat == 1.0:
        assert max(kld) < 0.01, f"{cg_system.name}: KLD to exp(-F) per coordinate {definition.names}: {kld}"
    else:
        assert kld[0] > 0.02, f"{cg_system.name}: a thermostat at {heat} T still looks like exp(-F) (KLD {kld[0]:.3g})"


def test_model_file_description_rebuilds_the_same_system(cg_system, frames):
    spec = json.loads(json.dumps(cg_system.to_spec()))
    rebuilt = CGSystem.from_spec(spec)
    assert rebuilt.cg_definition == cg_system.cg_definition and rebuilt.fg_dim == cg_system.fg_dim
    assert rebuilt.flow_circular_indices == tuple(cg_system.flow_circular_indices)
    x = torch.as_tensor(frames)
    for a, b in zip(rebuilt.from_cartesian(x), cg_system.from_cartesian(x)):
        assert torch.equal(a, b)
    with EnergyOracle(rebuilt, "Reference") as one, EnergyOracle(cg_system, "Reference") as two:
        np.testing.assert_array_equal(one.evaluate(frames)[0], two.evaluate(frames)[0])
