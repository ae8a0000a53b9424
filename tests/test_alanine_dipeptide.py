"""Alanine dipeptide: system, internal coordinates (round trip, Jacobian, phi/psi), chirality, energy oracle."""

import warnings
import mdtraj
import numpy as np
import openmm
import openmm.unit as unit
import pytest
import torch

from openmm_cgflow import EnergyOracle, create_system
from openmm_cgflow.coordinates import ZMatrixTransform, zmatrix_from_bonds
from openmm_cgflow.systems.starting_data import run_langevin
from openmm_cgflow.systems.alanine_dipeptide import (
    PHI_ATOMS,
    PSI_ATOMS,
    from_paper_frame,
    is_l_chirality_geometric,
    phi_psi,
    to_paper_frame,
)


@pytest.fixture(scope="module")
def aldp():
    return create_system("alanine-dipeptide")


@pytest.fixture(scope="module")
def md_frames(aldp):
    """40 frames of 300 K Langevin MD (1 fs), 50 fs apart, on the Reference platform."""
    return run_langevin(aldp, n_steps=2000, save_every=50, seed=11, platform="Reference").frames


def test_system_is_the_papers_hamiltonian(aldp):
    assert aldp.n_atoms == 22 and aldp.temperature == 300.0
    assert aldp.system.getNumConstraints() == 0
    names = {f.__class__.__name__ for f in aldp.system.getForces()}
    assert {"HarmonicBondForce", "HarmonicAngleForce", "PeriodicTorsionForce", "NonbondedForce", "CustomGBForce"} <= names
    nonbonded = next(f for f in aldp.system.getForces() if isinstance(f, openmm.NonbondedForce))
    assert nonbonded.getNonbondedMethod() == openmm.NonbondedForce.NoCutoff
    assert aldp.cg_dim == 2 and aldp.fg_dim == 58


def test_internal_round_trip_on_md_frames(aldp, md_frames):
    transform = aldp.fine_grained.transform
    x = torch.as_tensor(md_frames)
    y, logdet = transform(x)
    x_back, logdet_back = transform.inverse(y, *transform.frame(x))
    assert (x_back - x).abs().max().item() <= 1e-10
    torch.testing.assert_close(logdet, -logdet_back, rtol=0, atol=1e-10)
    # and internal -> Cartesian -> internal in the canonical frame
    y_back, _ = transform(transform.inverse(y)[0])
    assert (y_back - y).abs().max().item() <= 1e-9


def euler_zyz(angles):
    a, b, c = angles

    def rz(t):
        return torch.stack([torch.stack([torch.cos(t), -torch.sin(t), t * 0]), torch.stack([torch.sin(t), torch.cos(t), t * 0]), torch.stack([t * 0, t * 0, t * 0 + 1])])

    def ry(t):
        return torch.stack([torch.stack([torch.cos(t), t * 0, torch.sin(t)]), torch.stack([t * 0, t * 0 + 1, t * 0]), torch.stack([-torch.sin(t), t * 0, torch.cos(t)])])

    return rz(a) @ ry(b) @ rz(c)


def test_log_det_matches_autograd_jacobian(aldp, md_frames):
    """Full map (y, translation, ZYZ Euler angles) -> 66 Cartesian coordinates; the Haar measure of the
    Euler parametrisation is sin(beta), so ln|det| = ours + ln sin(beta)."""
    transform = aldp.fine_grained.transform
    for frame in md_frames[:3]:
        y0, _ = transform(torch.as_tensor(frame)[None])
        params = torch.cat([y0[0], torch.tensor([0.1, -0.2, 0.3, 0.4, 1.1, -0.7], dtype=torch.float64)])

        def full_map(p):
            x, _ = transform.inverse(p[None, :60])
            rotation = euler_zyz(p[63:66])
            return (x[0] @ rotation.T + p[60:63]).reshape(-1)

        jacobian = torch.autograd.functional.jacobian(full_map, params)
        _, expected = torch.linalg.slogdet(jacobian)
        _, ours = transform.inverse(params[None, :60])
        ours = ours[0] + torch.log(torch.sin(params[64]))
        assert abs((ours - expected) / expected).item() <= 1e-6


def test_phi_psi_match_mdtraj_and_paper_frame(aldp, md_frames):
    traj = mdtraj.Trajectory(md_frames, mdtraj.Topology.from_openmm(aldp.topology))
    reference = mdtraj.compute_dihedrals(traj, [PHI_ATOMS, PSI_ATOMS])
    ours = phi_psi(md_frames)
    np.testing.assert_allclose(np.remainder(ours - reference + np.pi, 2 * np.pi) - np.pi, 0.0, atol=2e-6)  # mdtraj: float32
    # mdtraj's own phi/psi atom choice agrees with ours
    _, phi = mdtraj.compute_phi(traj)
    np.testing.assert_allclose(np.remainder(phi[:, 0] - reference[:, 0] + np.pi, 2 * np.pi) - np.pi, 0, atol=1e-6)
    # the paper frame is the internal vector's entries 17 and 44, and inverts
    s, x_fg = aldp.from_cartesian(torch.as_tensor(md_frames))
    np.testing.assert_allclose(s.numpy(), to_paper_frame(ours), atol=1e-10)
    np.testing.assert_allclose(np.remainder(from_paper_frame(s.numpy()) - ours + np.pi, 2 * np.pi) - np.pi, 0, atol=1e-10)
    assert x_fg.shape == (len(md_frames), 58)


def test_paper_frame_matches_spec_definition(aldp):
    # SPEC §2.2.1: (phi, psi) = (-150°, 155°) IUPAC starts the MC; in the paper's frame it lies near (0.1, 0.06)
    # for the paper's reference structure; ours is minimised independently, so allow for the small shift
    s = to_paper_frame(np.radians([[-150.0, 155.0]]))[0]
    assert abs(s[0] - 0.098) < 0.05 and abs(s[1] - 0.061) < 0.15


def test_to_cartesian_gives_requested_cg_values(aldp, md_frames):
    s, x_fg = aldp.from_cartesian(torch.as_tensor(md_frames[:5]))
    s_new = torch.tensor([[1.0, -2.0]] * 5, dtype=torch.float64)
    positions, _ = aldp.to_cartesian(s_new, x_fg)
    np.testing.assert_allclose(to_paper_frame(phi_psi(positions.numpy())), s_new.numpy(), atol=1e-10)


def test_chirality_rules_on_l_structures_and_mirror_images(aldp, md_frames):
    x = torch.as_tensor(md_frames)
    mirror = x * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    fab, geometric = aldp.sample_filter("fab"), aldp.sample_filter("geometric")
    assert is_l_chirality_geometric(x).all() and not is_l_chirality_geometric(mirror).any()
    assert fab(x).all() and not fab(mirror).any()
    assert geometric(x).all() and not geometric(mirror).any()
    assert aldp.chirality_centres == ((8, 6, 9, 10, 14),)  # CA, found from the topology


def test_generic_chirality_filter_equals_the_alanine_rule_on_distorted_structures(aldp, md_frames):
    """The topology-derived stereocentre test (signed volume of CA's neighbours, the minimum's handedness) is the
    alanine-specific geometric rule, also on structures far from equilibrium where about half are D."""
    generator = torch.Generator().manual_seed(3)
    x = torch.as_tensor(md_frames).repeat(25, 1, 1)
    x = x + 0.08 * torch.randn(x.shape, generator=generator, dtype=torch.float64)
    generic = aldp.sample_filter("geometric")(x)
    assert 0.05 < generic.double().mean() < 0.95
    assert torch.equal(generic, is_l_chirality_geometric(x))


def test_generic_zmatrix_builder_handles_the_molecule(aldp, md_frames):
    bonds = [(b[0].index, b[1].index) for b in aldp.topology.bonds()]
    heavy = [a.element.symbol != "H" for a in aldp.topology.atoms()]
    reference, rows = zmatrix_from_bonds(aldp.n_atoms, bonds, heavy)
    transform = ZMatrixTransform.build(aldp.n_atoms, reference, rows, [], aldp.positions, bonds=bonds)
    x = torch.as_tensor(md_frames[:5])
    y, _ = transform(x)
    assert (transform.inverse(y, *transform.frame(x))[0] - x).abs().max().item() <= 1e-10


def test_zmatrix_rejects_rows_that_do_not_match_the_topology(aldp):
    bonds = [(b[0].index, b[1].index) for b in aldp.topology.bonds()]
    from openmm_cgflow.systems.alanine_dipeptide import Z_MATRIX, REFERENCE_ATOMS

    rows = [list(r) for r in Z_MATRIX]
    rows[0] = [0, 4, 6, 8]  # H1 of ACE is not bonded to C
    with pytest.raises(ValueError, match="atom 0 is not bonded to 4"):
        ZMatrixTransform.build(22, REFERENCE_ATOMS, rows, [], aldp.positions, bonds=bonds)


def direct_reference(system, positions):
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    energies, forces = [], []
    for x in positions:
        context.setPositions(x)
        state = context.getState(getEnergy=True, getForces=True)
        energies.append(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        forces.append(state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
    return np.array(energies), np.array(forces)


@pytest.mark.parametrize("platform,n_workers,rtol,force_atol", [("Reference", 1, 1e-8, 1e-8), ("Reference", 2, 1e-8, 1e-8), ("CPU", 2, 1e-5, 0.05)])
def test_oracle_matches_direct_openmm(aldp, md_frames, platform, n_workers, rtol, force_atol):
    energies, forces = direct_reference(aldp.system, md_frames[:10])
    with EnergyOracle(aldp, platform, n_workers=n_workers) as oracle:
        e, f = oracle.evaluate_kj(md_frames[:10])
        assert oracle.n_evaluations == 10
    np.testing.assert_allclose(e, energies, rtol=rtol, atol=rtol * 10)
    np.testing.assert_allclose(f, forces, rtol=rtol * 100, atol=force_atol)


def test_bad_structures_give_clear_errors(aldp):
    with EnergyOracle(aldp, "Reference") as oracle:
        with pytest.raises(ValueError, match="wrong atom count: the system has 22 particles, the positions have 21"):
            oracle.evaluate(np.zeros((1, 21, 3)))
        x = np.array(aldp.positions)[None].repeat(2, 0)
        x[1, 3, 0] = np.nan
        with pytest.raises(ValueError, match=r"positions contain NaN or inf \(configuration 1 of 2\)"):
            oracle.evaluate(x)
    with EnergyOracle(aldp, "Reference", nonfinite="nan") as oracle:
        u, f = oracle.evaluate(x)
        assert np.isfinite(u[0]) and np.isnan(u[1]) and not f[1].any()


def test_starting_data_is_made_cached_and_counted(tmp_path):
    from openmm_cgflow.systems.starting_data import aldp_starting_data

    path = tmp_path / "start.npz"
    made = aldp_starting_data(create_system("alanine-dipeptide"), seed=1, platform="Reference", path=path, n_steps=300)
    assert made["frames"].shape == (30, 22, 3) and made["md_steps"] == 300
    loaded = aldp_starting_data(create_system("alanine-dipeptide"), seed=1, platform="Reference", path=path, n_steps=300)
    # stored as float32, and the run that made the cache gets the same (rounded) frames as every later one
    np.testing.assert_array_equal(loaded["frames"], made["frames"])
    assert made["frames"].dtype == loaded["frames"].dtype == np.float64
    assert loaded["provenance"]["seed"] == 1 and "50,000" not in loaded["provenance"]["protocol"]
    # all frames are L-alanine in the starting (beta / C7eq) region: phi < 0
    assert (phi_psi(loaded["frames"])[:, 0] < 0).all()


def _energy_trainers(aldp, oracle, compile):
    """Two trainers whose float32 flows start from the same weights: an eager one and one with ``compile``."""
    from openmm_cgflow.flows import ConditionalSplineFlow
    from openmm_cgflow.flows.training import EnergyTrainer

    trainers = []
    for compiled in (False, compile):
        torch.manual_seed(0)
        flow = ConditionalSplineFlow(aldp.fg_dim, list(aldp.flow_circular_indices), 2, n_layers=2, n_bins=4, hidden=16).float()
        optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
        trainers.append(EnergyTrainer(flow, aldp, oracle, optimizer, skip_top_k=1, compile=compiled))
    return trainers


def test_compiled_energy_training_step_equals_the_eager_one(aldp):
    """flow.compile=true: one reverse-KL step through torch.compile gives the eager step's importance weights, loss
    and updated float32 weights, with the real OpenMM energies."""
    s = torch.tensor([[0.1, 0.2], [-1.0, 2.5], [2.0, -0.5], [0.7, 0.7]], dtype=torch.float64)
    with EnergyOracle(aldp, "Reference") as oracle:
        eager, compiled = _energy_trainers(aldp, oracle, True)
        assert compiled.compiling and not eager.compiling  # the first compiled step compiles (the run says so)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # no fallback to eager
            results = [t.step(s, torch.Generator().manual_seed(5), 100.0) for t in (eager, compiled)]
    assert not compiled.compiling
    assert not results[0].skipped
    np.testing.assert_allclose(results[1].log_w, results[0].log_w, rtol=1e-5, atol=1e-4)
    assert abs(results[1].loss - results[0].loss) < 1e-4 * abs(results[0].loss)
    for a, b in zip(eager.flow.parameters(), compiled.flow.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_a_failing_compiled_step_is_redone_eagerly_with_a_warning(aldp, monkeypatch):
    """Where torch.compile cannot run (no C++ compiler, a compiler bug), the step warns once and is redone eagerly:
    the same samples and update as an eager trainer, and later steps stay eager."""
    from openmm_cgflow.flows import training

    def no_compiler(function):
        def fail(*args):
            raise RuntimeError("no C++ compiler found")
        return fail

    monkeypatch.setattr(training.torch, "compile", no_compiler)
    s = torch.tensor([[0.1, 0.2], [-1.0, 2.5], [2.0, -0.5]], dtype=torch.float64)
    with EnergyOracle(aldp, "Reference") as oracle:
        eager, fallback = _energy_trainers(aldp, oracle, True)
        expected = eager.step(s, torch.Generator().manual_seed(5), 100.0)
        with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler found"):
            result = fallback.step(s, torch.Generator().manual_seed(5), 100.0)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            fallback.step(s, torch.Generator().manual_seed(6), 100.0)
    np.testing.assert_array_equal(result.log_w, expected.log_w)
    assert result.loss == expected.loss
