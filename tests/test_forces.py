"""The learned PMF as an OpenMM force: energy equals the ensemble's prediction, forces equal -grad by finite
differences, both backends agree (also with several replicas in one System), XML serialisation, bad input."""
import math

import numpy as np
import openmm
import pytest
import torch
from conftest import PLATFORM_PROPERTIES

from openmm_cgflow.export import ModelFileError, save_model
from openmm_cgflow.systems.cg_coordinates import DihedralCG
from openmm_cgflow.forces import OPENCL_TORCHFORCE_BROKEN, check_platform_for_system, create_pmf_force, pmf_energy_module, torchforce_from_xml
from openmm_cgflow.pmf import PMFEnsemble
from openmm_cgflow.systems import create_system

# OpenCL and CUDA where this machine has them (OpenCL e.g. from Debian's pocl-opencl-icd on a CPU)
BACKENDS = ["torchforce", "pythonforce"]


def opencl_is_pocl():
    """Whether OpenCL here is pocl (OpenCL on the CPU), which crashes OpenMM on any 1-particle System (seen with a
    plain CustomExternalForce too, so not this package's doing)."""
    system = openmm.System()
    for _ in range(2):
        system.addParticle(1.0)
    platform = openmm.Platform.getPlatformByName("OpenCL")
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), platform)
    return "Portable Computing Language" in platform.getPropertyValue(context, "OpenCLPlatformName")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Random (untrained, but non-trivial) PMF ensembles for both systems, saved as model files."""
    out = tmp_path_factory.mktemp("pmf_models")
    files = {}
    for name, periodic in (("alanine-dipeptide", True), ("muller-brown", False)):
        cg_system = create_system(name)
        ensemble = PMFEnsemble(cg_system.cg_dim, 3, (16, 8), periodic=periodic).double()
        ensemble.reset_parameters("gaussian_uniform", torch.Generator().manual_seed(1))
        files[name] = save_model(ensemble, out / f"{name}.pt", kind="pmf_ensemble", system=name, temperature_K=cg_system.temperature,
                                 cg_dim=cg_system.cg_dim, cg_metadata=cg_system.description.to_dict())
    return files


def bare_system(n_particles):
    system = openmm.System()
    for _ in range(n_particles):
        system.addParticle(12.0)
    return system


def energy_and_forces(force, positions, platform="Reference"):
    system = bare_system(len(positions))
    system.addForce(force)
    properties = PLATFORM_PROPERTIES.get(platform, {})
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform), properties)
    context.setPositions(positions)
    state = context.getState(getEnergy=True, getForces=True)
    return state.getPotentialEnergy()._value, state.getForces(asNumpy=True)._value


def perturbed_positions(name, n_replicas=1, seed=0):
    cg_system = create_system(name)
    rng = np.random.default_rng(seed)
    positions = np.concatenate([cg_system.positions + 0.01 * rng.standard_normal(cg_system.positions.shape) for _ in range(n_replicas)])
    if name == "muller-brown":
        positions[:, :2] += rng.uniform(-0.3, 0.3, size=(n_replicas, 2))
    return positions, cg_system


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["alanine-dipeptide", "muller-brown"])
def test_energy_equals_the_ensemble_prediction(models, name, backend, platform, tolerance):
    if backend == "torchforce" and platform == "OpenCL":
        pytest.skip(OPENCL_TORCHFORCE_BROKEN)
    if name == "muller-brown" and platform == "OpenCL" and opencl_is_pocl():
        pytest.skip("OpenMM's OpenCL platform on pocl crashes on 1-particle Systems (any force)")
    positions, cg_system = perturbed_positions(name)
    scale = 0.7
    energy, _ = energy_and_forces(create_pmf_force(models[name], backend=backend, scale=scale), positions, platform)
    ensemble = torch.jit.load(str(models[name]))
    s, _ = cg_system.from_cartesian(torch.as_tensor(positions)[None])
    F, _ = ensemble.mean_std(s)
    kT = 8.314462618e-3 * cg_system.temperature
    assert energy == pytest.approx(scale * kT * float(F[0]), rel=tolerance)


@pytest.mark.parametrize("backend", BACKENDS)
def test_forces_are_minus_the_gradient_by_finite_differences(models, backend):
    positions, _ = perturbed_positions("alanine-dipeptide")
    force = create_pmf_force(models["alanine-dipeptide"], backend=backend)
    _, forces = energy_and_forces(force, positions)
    module, _ = pmf_energy_module(models["alanine-dipeptide"])
    h = 1e-6
    numeric = np.zeros_like(positions)
    for i in range(positions.shape[0]):
        for k in range(3):
            plus, minus = positions.copy(), positions.copy()
            plus[i, k] += h
            minus[i, k] -= h
            numeric[i, k] = -(float(module(torch.as_tensor(plus))) - float(module(torch.as_tensor(minus)))) / (2 * h)
    assert np.abs(forces).max() > 1.0  # a non-trivial force on the dihedral atoms
    assert np.linalg.norm(forces - numeric) / np.linalg.norm(numeric) < 1e-6
    untouched = [i for i in range(22) if i not in (4, 6, 8, 14, 16)]
    assert np.abs(forces[untouched]).max() == 0.0  # only the phi/psi atoms feel the PMF


def test_backends_agree_with_many_replicas_in_one_system(models):
    positions, _ = perturbed_positions("alanine-dipeptide", n_replicas=4, seed=3)
    results = [energy_and_forces(create_pmf_force(models["alanine-dipeptide"], backend=b, n_replicas=4), positions) for b in BACKENDS]
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-12)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-10, atol=1e-10)
    single = sum(energy_and_forces(create_pmf_force(models["alanine-dipeptide"]), positions[22 * r: 22 * (r + 1)])[0] for r in range(4))
    assert results[0][0] == pytest.approx(single, rel=1e-12)


def test_pythonforce_survives_xml_serialisation(models):
    positions, _ = perturbed_positions("alanine-dipeptide")
    force = create_pmf_force(models["alanine-dipeptide"], backend="pythonforce")
    copy = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(force))
    assert energy_and_forces(copy, positions)[0] == pytest.approx(energy_and_forces(force, positions)[0], rel=1e-12)


def test_torchforce_rebuilt_from_its_xml(models):
    """openmmtorch 1.5's own deserialiser fails on OpenMM 8.6.1 (see forces.pmf_force); the XML still carries
    the model, and torchforce_from_xml rebuilds a working force from it."""
    positions, _ = perturbed_positions("alanine-dipeptide")
    force = create_pmf_force(models["alanine-dipeptide"], backend="torchforce")
    force.setForceGroup(3)
    xml = openmm.XmlSerializer.serialize(force)
    copy = torchforce_from_xml(xml)
    assert copy.getForceGroup() == 3
    assert energy_and_forces(copy, positions)[0] == pytest.approx(energy_and_forces(force, positions)[0], rel=1e-12)
    with pytest.raises(ValueError, match="not a serialised TorchForce"):
        torchforce_from_xml(openmm.XmlSerializer.serialize(openmm.HarmonicBondForce()))


def test_bad_input_gives_one_clear_error(models, tmp_path):
    with pytest.raises(ValueError, match="needs 22 particles"):
        create_pmf_force(models["alanine-dipeptide"], system=bare_system(10))
    with pytest.raises(ValueError, match="backend"):
        create_pmf_force(models["alanine-dipeptide"], backend="opencl")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(models["alanine-dipeptide"].read_bytes()[:2000])
    with pytest.raises(ModelFileError, match="not a readable TorchScript"):
        create_pmf_force(truncated)
    text = tmp_path / "model.pt"
    text.write_text("not a model")
    with pytest.raises(ModelFileError, match="not a readable TorchScript"):
        create_pmf_force(text)
    with pytest.raises(ModelFileError, match="not found"):
        create_pmf_force(tmp_path / "missing.pt")
    flow_file = save_model(torch.nn.Linear(2, 2), tmp_path / "other.pt", kind="conditional_flow", system="alanine-dipeptide", temperature_K=300.0)
    with pytest.raises(ModelFileError, match="'conditional_flow' model, expected 'pmf_ensemble'"):
        create_pmf_force(flow_file)
    ensemble = PMFEnsemble(2, 2, (4,), periodic=True).double()
    no_cg_dim = save_model(ensemble, tmp_path / "no_cg_dim.pt", kind="pmf_ensemble", system="alanine-dipeptide", temperature_K=300.0,
                           cg_metadata=create_system("alanine-dipeptide").description.to_dict())
    with pytest.raises(ModelFileError, match="missing the field 'cg_dim'"):
        create_pmf_force(no_cg_dim)
    with pytest.raises(ValueError, match="out of range"):
        DihedralCG([[4, 6, 8, 40]], atoms_per_replica=22)
    system = bare_system(22)
    system.addForce(create_pmf_force(models["alanine-dipeptide"]))
    with pytest.raises(ValueError, match="OpenCL TorchForce plugin is broken"):
        check_platform_for_system(system, "OpenCL")
    check_platform_for_system(system, "CPU")


def test_dihedral_cg_matches_the_system_frame():
    aldp = create_system("alanine-dipeptide")
    notes = aldp.description.notes
    cg = DihedralCG([[4, 6, 8, 14], [6, 8, 14, 16]], 22, sign=-1.0, offsets=[notes["phi_ref_bg_rad"], notes["psi_ref_bg_rad"]])
    positions, _ = perturbed_positions("alanine-dipeptide", seed=5)
    s_model = cg(torch.as_tensor(positions))
    s_system, _ = aldp.from_cartesian(torch.as_tensor(positions)[None])
    torch.testing.assert_close(s_model, s_system, rtol=0, atol=1e-12)
    assert math.isclose(float(cg(torch.as_tensor(aldp.positions)).abs().max()), 0.0, abs_tol=1e-12)  # the minimum is s = 0


def test_cmap_backend_tabulates_the_pmf(reference_pmf_model):
    """backend='cmap': the ALDP PMF on a periodic CMAP grid equals the model up to the bicubic interpolation
    error, which falls by ~2^4 per halving of the grid spacing; forces agree likewise."""
    from openmm_cgflow.forces import tabulated_pmf_force

    path, _ = reference_pmf_model
    rng = np.random.default_rng(0)
    aldp = create_system("alanine-dipeptide")
    configurations = [aldp.positions + 0.05 * rng.standard_normal(aldp.positions.shape) for _ in range(10)]
    exact = [energy_and_forces(create_pmf_force(path), x) for x in configurations]
    worst = {}
    for grid in (36, 60, 120):
        make = (lambda: create_pmf_force(path, backend="cmap")) if grid == 36 else (lambda: tabulated_pmf_force(path, grid=grid))
        assert isinstance(make(), openmm.CMAPTorsionForce)
        tabulated = [energy_and_forces(make(), x) for x in configurations]  # a Force belongs to one System
        worst[grid] = max(abs(e - e0) for (e, _), (e0, _) in zip(tabulated, exact))
        force_error = max(np.linalg.norm(f - f0) / np.linalg.norm(f0) for (_, f), (_, f0) in zip(tabulated, exact))
        assert force_error < {36: 3e-2, 60: 1e-2, 120: 1e-3}[grid]
    assert worst[36] < 2e-2 and worst[120] < 1e-3 and worst[120] < worst[60] / 8, worst  # kJ/mol
    with pytest.raises(ValueError, match="two dihedral CG coordinates"):
        tabulated_pmf_force(save_model(PMFEnsemble(1, 2, (4,)).double(), path.parent / "mb.pt", kind="pmf_ensemble", system="muller-brown",
                                       temperature_K=1000.0, cg_dim=1, cg_metadata={}))
