"""GFN2-xTB (tblite) as an OpenMM force: energies and forces against tblite called directly and against finite
differences, through XML serialisation and the energy oracle's worker processes; SCF failures become NaN energies
that the oracle and training by energy leave out; a molecule with an xTB Hamiltonian through CGSystem.from_openmm."""
import numpy as np
import openmm
import pytest
import torch

tblite = pytest.importorskip("tblite.interface")

from openmm_cgflow import CGSystem, EnergyOracle  # noqa: E402
from openmm_cgflow.systems.xtb import BOHR_IN_NM, HARTREE_IN_KJ_PER_MOL, XTBEnergy, atomic_numbers, xtb_system  # noqa: E402


@pytest.fixture(scope="module")
def dipeptide():
    from openmmtools import testsystems

    ala = testsystems.AlanineDipeptideVacuum(constraints=None)
    return ala.topology, np.asarray(ala.positions.value_in_unit(openmm.unit.nanometer))


def _context(system):
    return openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))


def _energy_forces(context, x):
    context.setPositions(x)
    state = context.getState(getEnergy=True, getForces=True)
    return state.getPotentialEnergy()._value, state.getForces(asNumpy=True)._value


def test_energy_and_forces_are_tblites_in_openmm_units(dipeptide):
    topology, x = dipeptide
    energy, forces = _energy_forces(_context(xtb_system(topology)), x)
    calculator = tblite.Calculator("GFN2-xTB", atomic_numbers(topology), x / BOHR_IN_NM)
    calculator.set("verbosity", 0)
    result = calculator.singlepoint()
    assert energy == pytest.approx(result.get("energy") * HARTREE_IN_KJ_PER_MOL, rel=1e-12)
    np.testing.assert_allclose(forces, -result.get("gradient") * HARTREE_IN_KJ_PER_MOL / BOHR_IN_NM, rtol=1e-10, atol=1e-8)
    assert energy == pytest.approx(-86556.18, abs=0.1)  # -32.9675 Hartree


def test_forces_are_minus_the_gradient_by_finite_differences(dipeptide):
    topology, x = dipeptide
    context = _context(xtb_system(topology, accuracy=0.01))  # a tight SCF: its noise divided by 2h stays small
    _, forces = _energy_forces(context, x)
    h = 1e-4  # nm
    for atom, axis in [(0, 0), (6, 1), (8, 2), (14, 0), (21, 1)]:
        plus, minus = x.copy(), x.copy()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        derivative = (_energy_forces(context, plus)[0] - _energy_forces(context, minus)[0]) / (2 * h)
        assert -derivative == pytest.approx(forces[atom, axis], rel=1e-4, abs=0.05), (atom, axis)


def test_the_force_pickles_into_the_system_xml_and_runs_in_worker_processes(dipeptide):
    """The oracle's workers rebuild the System from its XML (the xTB callable pickled inside): the same numbers."""
    topology, x = dipeptide
    system = xtb_system(topology)
    rebuilt = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system))
    expected = _energy_forces(_context(system), x)
    assert _energy_forces(_context(rebuilt), x)[0] == expected[0]
    molecule = CGSystem.from_openmm(system, topology, x, 300.0, [[4, 6, 8, 14], [6, 8, 14, 16]], minimize=False)
    batch = np.stack([x, x + 0.001])
    with EnergyOracle(molecule, "CPU", n_workers=1) as oracle:  # one pinned worker process
        assert oracle.worker_pids
        energies, forces = oracle.evaluate_kj(batch)
    # the energy is bitwise the same; tblite's gradient sums in an order that depends on its OpenMP thread count
    # (1 in the pinned worker, the cores of this process here), so forces agree to rounding
    assert energies[0] == expected[0]
    np.testing.assert_allclose(forces[0], expected[1], rtol=1e-10, atol=1e-9)
    assert np.isfinite(energies[1]) and energies[1] != energies[0]


def test_an_scf_that_does_not_converge_is_a_nan_energy_the_oracle_leaves_out(dipeptide):
    topology, x = dipeptide
    energy = XTBEnergy(atomic_numbers(topology))
    value, forces = energy.energy_and_forces(3.0 * x)  # every bond tripled: tblite's SCF does not converge
    assert np.isnan(value) and not forces.any() and energy.failures == 1
    assert np.isfinite(energy.energy_and_forces(x)[0])  # the next configuration starts from a fresh guess
    molecule = CGSystem.from_openmm(xtb_system(topology), topology, x, 300.0, [[4, 6, 8, 14], [6, 8, 14, 16]], minimize=False)
    with EnergyOracle(molecule, "Reference", nonfinite="nan") as oracle:
        energies, forces = oracle.evaluate_kj(np.stack([x, 3.0 * x]))
        assert np.isfinite(energies[0]) and np.isnan(energies[1]) and not forces[1].any()
        assert oracle.n_evaluations == 2
    with EnergyOracle(molecule, "Reference") as oracle, pytest.raises(ValueError, match="could not compute the energy of configuration 1"):
        oracle.evaluate_kj(np.stack([x, 3.0 * x]))


def test_training_by_energy_leaves_failed_energies_out_of_the_loss_and_the_labels():
    """One sample whose energy is NaN (a failed SCF): the step still updates the flow, on the others."""
    from openmm_cgflow.active_learning.context import build_flow
    from openmm_cgflow.active_learning.settings import RunSettings
    from openmm_cgflow.config import load_config
    from openmm_cgflow.flows.training import EnergyTrainer
    from openmm_cgflow.systems import create_system

    mb = create_system("muller-brown")
    flow = build_flow(RunSettings.from_config(load_config("muller-brown")).flow, mb, 0, 0.0, 1.0)

    class FailingOracle(EnergyOracle):
        def evaluate_kj(self, positions):
            energies, forces = super().evaluate_kj(positions)
            energies[1] = np.nan
            return energies, forces

    with FailingOracle(mb, "Reference", nonfinite="nan") as oracle:
        optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
        trainer = EnergyTrainer(flow, mb, oracle, optimizer)
        before = [p.detach().clone() for p in flow.parameters()]
        step = trainer.step(torch.zeros(8, 1, dtype=torch.float64), torch.Generator().manual_seed(0), None)
    assert not step.skipped and step.n_failed == 1 and np.isfinite(step.loss)
    assert np.isnan(step.log_w[1]) and np.isfinite(np.delete(step.log_w, 1)).all()
    assert any(not torch.equal(a, b) for a, b in zip(before, flow.parameters()))


def test_a_molecule_with_an_xtb_hamiltonian_goes_through_from_openmm(dipeptide):
    """Minimisation of an xTB System: OpenMM's L-BFGS walks into geometries whose SCF fails; the careful descent
    that takes over ends at a finite, lower energy next to the start."""
    topology, x = dipeptide
    system = xtb_system(topology)
    start = _energy_forces(_context(system), x)[0]
    molecule = CGSystem.from_openmm(system, topology, x, 300.0, {"phi": [4, 6, 8, 14], "psi": [6, 8, 14, 16]}, name="ala-xtb")
    minimum = _energy_forces(_context(system), molecule.positions)[0]
    assert np.isfinite(minimum) and minimum < start
    assert np.abs(molecule.positions - x).max() < 0.05


def test_a_yaml_molecule_from_a_pdb_file_gets_the_xtb_hamiltonian(tmp_path):
    """`system: {pdb: ..., hamiltonian: gfn2-xtb}`: the molecule's System is tight binding on the PDB's atoms (the
    energy of xtb_system on the same topology), so every command (run, reference, baselines) takes an xTB molecule."""
    from pathlib import Path

    import openmm.app as app

    from openmm_cgflow.active_learning.settings import RunSettings
    from openmm_cgflow.config import load_config

    inputs = Path(__file__).resolve().parents[1] / "benchmarks" / "inputs"
    config = tmp_path / "butane.yaml"
    config.write_text(f"system:\n  pdb: {inputs / 'butane.pdb'}\n  hamiltonian: gfn2-xtb\n  cg_dihedrals: [[0, 1, 2, 3]]\n"
                      "  name: butane\nmetrics:\n  reference: none\n")
    molecule = RunSettings.from_config(load_config(str(config))).create_system()
    assert molecule.n_atoms == 14 and "GFN2-xTB" in molecule.description.hamiltonian
    pdb = app.PDBFile(str(inputs / "butane.pdb"))
    direct = _energy_forces(_context(xtb_system(pdb.topology)), molecule.positions)
    with EnergyOracle(molecule, "Reference") as oracle:
        energies, forces = oracle.evaluate_kj(molecule.positions[None])
    assert energies[0] == pytest.approx(direct[0], rel=1e-12)
    np.testing.assert_allclose(forces[0], direct[1], rtol=1e-9, atol=1e-8)
    assert abs(float(molecule.cg_values(molecule.positions[None])[0, 0])) > 2.5  # minimised in the trans basin it started in
    # the default recipe's geometric chirality filter has no stereocentre to keep here: no filter, not an error
    assert molecule.chirality_centres == () or not molecule.chirality_centres
    assert molecule.sample_filter("geometric") is None


@pytest.mark.parametrize("system, message", [
    ("pdb: {pdb}", "'system.pdb' carries no force field: give 'system.hamiltonian'"),
    ("pdb: {pdb}\n  hamiltonian: dftb", "'system.hamiltonian' must be one of force-field, gfn2-xtb, gfn1-xtb"),
    ("openmmtools: AlanineDipeptideImplicit\n  hamiltonian: gfn2-xtb\n  implicit_solvent: OBC1", "is in vacuum"),
    ("openmmtools: AlanineDipeptideVacuum\n  charge: 1", "'system.charge' applies to an xTB"),
    ("pdb: {pdb}\n  hamiltonian: gfn2-xtb\n  charge: 0.5", "'system.charge' must be an integer"),
])
def test_bad_hamiltonian_keys_are_one_line(tmp_path, capsys, system, message):
    from pathlib import Path

    from openmm_cgflow.cli import main

    pdb = Path(__file__).resolve().parents[1] / "benchmarks" / "inputs" / "butane.pdb"
    config = tmp_path / "bad.yaml"
    config.write_text("system:\n  " + system.format(pdb=pdb) + "\n  cg_dihedrals: [[0, 1, 2, 3]]\nmetrics:\n  reference: none\n")
    assert main(["show-config", str(config)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_minimisation_that_breaks_the_structure_is_undone():
    """OpenMM's minimiser on tight binding under a window restraint could end where the SCF fails (energy NaN),
    and dynamics from there never recovered (~1 s per step of failing SCFs): LangevinDynamics.start keeps the
    given positions instead, and the restrained dynamics runs with finite energies."""
    from pathlib import Path

    from openmm_cgflow.active_learning.settings import RunSettings
    from openmm_cgflow.config import load_config
    from openmm_cgflow.reference.umbrella import UmbrellaProtocol, UmbrellaRun

    config = Path(__file__).resolve().parents[1] / "benchmarks" / "inputs" / "butane-xtb.yaml"
    butane = RunSettings.from_config(load_config(str(config))).create_system()
    protocol = UmbrellaProtocol(windows_per_dim=36, equilibration_steps=10, steps_per_pass=10)
    run = UmbrellaRun(Path("unused"), 1, protocol, butane)
    run._set_window(protocol.centres(1)[0])
    run.dynamics.start(butane.positions, velocity_seed=2, minimize=True)
    run.dynamics.step(20)
    energy = run.dynamics.context.getState(getEnergy=True).getPotentialEnergy()._value
    assert np.isfinite(energy)


def test_a_process_pinned_after_loading_runs_xtb_on_as_many_openmp_threads_as_cores(dipeptide):
    """tblite runs on torch's OpenMP runtime, sized when torch loaded; after this process is pinned to one core
    (as the command line pins itself), an evaluation sets the runtime to one thread instead of spinning several."""
    import ctypes
    import os

    from openmm_cgflow.systems import xtb

    gomp = ctypes.CDLL("libgomp.so.1")
    topology, x = dipeptide
    energy = XTBEnergy(atomic_numbers(topology))
    before, cores = gomp.omp_get_max_threads(), os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(cores)})
        assert np.isfinite(energy.energy_and_forces(x)[0])
        assert gomp.omp_get_max_threads() == 1
    finally:  # the rest of the session runs as before
        os.sched_setaffinity(0, cores)
        gomp.omp_set_num_threads(before)
        xtb._OPENMP_THREADS["n"] = None
