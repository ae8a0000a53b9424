"""Well-tempered metadynamics baseline: the CG-coordinate forces are the CG map, the estimate converges to the
exact Müller-Brown PMF, and an interrupted run resumes to exactly the same curve."""
import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import pytest
import torch

from openmm_cgflow.active_learning.scoring import metric_grid_for_config
from openmm_cgflow.config import load_config
from openmm_cgflow.baselines.metadynamics import MetadynamicsProtocol, run_metadynamics
from openmm_cgflow.storage import CheckpointError
from openmm_cgflow.systems import create_system

MB_PROTOCOL = MetadynamicsProtocol(bias_factor=8.0, height_kT=0.2, width=0.1, deposit_every=200, friction_per_ps=10.0)


@pytest.fixture(scope="module")
def mb_grid():
    return metric_grid_for_config(load_config("muller-brown"))


@pytest.mark.parametrize("name", ["muller-brown", "alanine-dipeptide"])
def test_cg_variable_forces_equal_the_cg_map(name):
    """Each force's energy is the CG coordinate the flow is conditioned on (ALDP: the paper frame, wrapped)."""
    cg_system = create_system(name)
    rng = np.random.default_rng(0)
    if cg_system.n_atoms > 1:  # structures all over the (phi, psi) torus, built from the minimum's other coordinates
        s_true = rng.uniform(-np.pi, np.pi, size=(40, cg_system.cg_dim))
        x_fg = cg_system.from_cartesian(torch.as_tensor(cg_system.positions[None]))[1].repeat(40, 1)
        positions = cg_system.to_cartesian(torch.as_tensor(s_true), x_fg)[0].detach().numpy()
    else:
        positions = cg_system.positions[None] + rng.normal(scale=0.5, size=(20, 1, 3))
        s_true = positions[:, 0, 0:1] - positions[:, 0, 1:2]
    for k, force in enumerate(cg_system.cg_variable_forces()):
        system = openmm.System()
        for _ in range(cg_system.n_atoms):
            system.addParticle(1.0)
        system.addForce(force)
        context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
        for x, s in zip(positions, s_true[:, k]):
            context.setPositions(x)
            value = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            assert value == pytest.approx(s, abs=1e-9) or abs(abs(value - s) - 2 * np.pi) < 1e-9


def test_metadynamics_converges_to_the_exact_muller_brown_pmf(tmp_path, mb_grid):
    summary = run_metadynamics(create_system("muller-brown"), tmp_path, 2_000_000, mb_grid.p_reference, mb_grid.centres, MB_PROTOCOL,
                               seed=1, platform="Reference", progress=False)
    kld = [point["forward_kld"] for point in summary["curve"]]
    assert summary["final_forward_kld"] < 3e-3  # measured 3e-4 (seed 1)
    assert np.mean(kld[-3:]) < 0.2 * np.mean(kld[:3])  # 0.05 at 1e4 steps
    assert (tmp_path / "metad_baseline.json").exists()
    # the stored snapshots rescore to the same curve (what benchmarks/aldp_efficiency.py does with another reference)
    from openmm_cgflow.scoring.kld import forward_kld

    snapshots = np.load(tmp_path / "metad_snapshots.npz")
    assert list(snapshots["steps"]) == [point["md_steps"] for point in summary["curve"]]
    rescored = [forward_kld(mb_grid.p_reference, F.astype(np.float64)) for F in snapshots["free_energy_kT"]]
    np.testing.assert_allclose(rescored, kld, rtol=1e-3)


def test_interrupted_metadynamics_resumes_exactly(tmp_path, mb_grid, monkeypatch):
    args = (mb_grid.p_reference, mb_grid.centres, MB_PROTOCOL)
    kwargs = dict(seed=2, platform="Reference", progress=False, chunk_steps=20_000)
    whole = run_metadynamics(create_system("muller-brown"), tmp_path / "whole", 100_000, *args, **kwargs)
    original, calls = app.Metadynamics.step, []

    def interrupted(self, simulation, steps):
        calls.append(steps)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return original(self, simulation, steps)

    monkeypatch.setattr(app.Metadynamics, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_metadynamics(create_system("muller-brown"), tmp_path / "split", 100_000, *args, **kwargs)
    monkeypatch.setattr(app.Metadynamics, "step", original)
    with pytest.raises(ValueError, match="exists: use resume=True"):
        run_metadynamics(create_system("muller-brown"), tmp_path / "split", 100_000, *args, **kwargs)
    resumed = run_metadynamics(create_system("muller-brown"), tmp_path / "split", 100_000, *args, resume=True, **kwargs)
    assert [p["md_steps"] for p in resumed["curve"]] == [p["md_steps"] for p in whole["curve"]]
    np.testing.assert_allclose([p["forward_kld"] for p in resumed["curve"]], [p["forward_kld"] for p in whole["curve"]], rtol=1e-12)
    extended = run_metadynamics(create_system("muller-brown"), tmp_path / "whole", 150_000, *args, resume=True, **kwargs)
    assert extended["steps"] == 150_000 and extended["curve"][: len(whole["curve"])] == whole["curve"]
    assert extended["curve"][-1]["md_steps"] == 150_000
    with pytest.raises(ValueError, match="already holds 150000 steps"):
        run_metadynamics(create_system("muller-brown"), tmp_path / "whole", 100_000, *args, resume=True, **kwargs)
    with pytest.raises(ValueError, match="another protocol"):
        run_metadynamics(create_system("muller-brown"), tmp_path / "split", 100_000, mb_grid.p_reference, mb_grid.centres,
                         MetadynamicsProtocol(bias_factor=4.0), resume=True, **kwargs)
    (tmp_path / "split" / "metad_checkpoint.pt").write_bytes(b"broken")
    with pytest.raises(CheckpointError, match="corrupted or not a checkpoint"):
        run_metadynamics(create_system("muller-brown"), tmp_path / "split", 100_000, *args, resume=True, **kwargs)


def test_bad_protocols_are_refused():
    for kwargs, message in [({"bias_factor": 1.0}, "bias factor must be > 1"), ({"width": float("inf")}, "width must be a finite"),
                            ({"deposit_every": 0}, "deposit_every must be >= 1")]:
        with pytest.raises(ValueError, match=message):
            MetadynamicsProtocol(**kwargs)


def test_opes_converges_to_the_exact_muller_brown_pmf_and_resumes(tmp_path, mb_grid, monkeypatch):
    """OPES (openmm-opes) on Muller-Brown's s, scored like metadynamics: its reweighted-density estimate approaches
    the exact PMF (forward KLD 2.4 after 1e4 steps, 4e-3 after 2e6 with fixed 0.05 nm kernels; measured). An
    interrupted run resumes from its checkpoint with the kernel density restored to rounding (the bias it applies is
    the saved one to 1e-9 kJ/mol) and runs to the same snapshot steps. (Unlike metadynamics it does not repeat the
    uninterrupted run bit for bit: openmm-opes rebuilds its grid estimate from the kernels on restore, which rounds
    differently from adding them one by one.)"""
    from openmm_opes.opes import OPES

    from openmm_cgflow.baselines.opes import OPESProtocol, OPESSampler, run_opes
    from openmm_cgflow.storage import load_checkpoint

    protocol = OPESProtocol(barrier_kT=20.0, deposit_every=200, adaptive_variance=False, width=0.05, friction_per_ps=10.0)
    args = (mb_grid.p_reference, mb_grid.centres, protocol)
    summary = run_opes(create_system("muller-brown"), tmp_path / "long", 2_000_000, *args, seed=1, platform="Reference", progress=False)
    kld = [point["forward_kld"] for point in summary["curve"] if point["forward_kld"] is not None]
    assert summary["final_forward_kld"] < 1e-2 and summary["final_forward_kld"] < 0.05 * kld[0]
    assert all(point["wall_s"] > 0 for point in summary["curve"])

    kwargs = dict(seed=2, platform="Reference", progress=False, chunk_steps=20_000)
    whole = run_opes(create_system("muller-brown"), tmp_path / "whole", 100_000, *args, **kwargs)
    original, calls = OPES.step, []

    def interrupted(self, simulation, steps):
        calls.append(steps)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(self, simulation, steps)

    monkeypatch.setattr(OPES, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_opes(create_system("muller-brown"), tmp_path / "split", 100_000, *args, **kwargs)
    monkeypatch.setattr(OPES, "step", original)
    saved = load_checkpoint(tmp_path / "split" / "opes_checkpoint.pt")
    mb = create_system("muller-brown")
    fresh = OPESSampler(protocol)
    fresh.build(openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(mb.system)), mb)
    fresh.opes.setState(saved["opes_state"])
    for key, value in fresh.state().items():  # the kernel density round-trips through the checkpoint
        np.testing.assert_allclose(value, saved["opes_state"][key], rtol=1e-12)
    assert np.isfinite(fresh.opes.getBias().value_in_unit(unit.kilojoule_per_mole)).all()
    done = len(saved["curve"])
    same = [[(p["md_steps"], p["forward_kld"]) for p in curve[:done]] for curve in (saved["curve"], whole["curve"])]
    assert done >= 1 and same[0] == same[1]  # the same trajectory up to the interruption
    resumed = run_opes(create_system("muller-brown"), tmp_path / "split", 100_000, *args, resume=True, **kwargs)
    assert [p["md_steps"] for p in resumed["curve"]] == [p["md_steps"] for p in whole["curve"]]
    assert all(np.isfinite(p["forward_kld"]) for p in resumed["curve"])


@pytest.mark.parametrize("method, flags, expected", [
    ("metad", [], {"bias_factor": 6.0, "width": 0.35}),
    ("metad", ["--bias-factor", "4"], {"bias_factor": 4.0}),
    ("opes", [], {"bias_factor": 0.0, "barrier_kT": 20.0, "adaptive_variance": True, "correct_smoothing": False}),
    ("opes", ["--bias-factor", "5", "--barrier", "12", "--correct-smoothing", "--fixed-width", "--width", "0.05"],
     {"bias_factor": 5.0, "barrier_kT": 12.0, "adaptive_variance": False, "width": 0.05, "correct_smoothing": True}),
])
def test_baseline_command_line_sets_the_protocol(tmp_path, method, flags, expected):
    """`cgflow baseline metad|opes` flags reach the protocol that the run records (`--bias-factor` defaults to 6 for
    metadynamics and to barrier/kT for OPES; `--correct-smoothing` switches OPES's free-energy estimate)."""
    import json

    from openmm_cgflow.cli import main

    out = tmp_path / method
    assert main(["baseline", method, "muller-brown", "--steps", "2000", "--deposit-every", "100", "--platform", "Reference", "--out", str(out),
                 "--quiet", *flags]) == 0
    summary = json.loads((out / f"{'metad' if method == 'metad' else 'opes'}_baseline.json").read_text())
    assert {key: summary["protocol"][key] for key in expected} == expected
    assert summary["steps"] == 2000 and np.isfinite(summary["free_energy_kT"]).all()
