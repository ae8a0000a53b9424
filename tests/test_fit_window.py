"""ensemble.average_fraction: the run's PMF is the stacked ensemble of its latest fits.

Contract: stacking folds each ensemble's standardisation and offset into its members exactly (member predictions
unchanged, TorchScript-able); the window's closed-form grid mean/std is what the stacked model predicts; the window
keeps the fits of the last fraction of the evaluations; and in a run, averaging changes what is reported and
exported, never what the run does (same labels, search and evaluations), and resumes exactly."""
import json

import numpy as np
import pytest
import torch

from openmm_cgflow.active_learning import ActiveLearningRun
from openmm_cgflow.config import ConfigError, load_config
from openmm_cgflow.export import load_model
from openmm_cgflow.pmf import PMFEnsemble
from openmm_cgflow.pmf.fit_window import FitWindow
from openmm_cgflow.scoring import forward_kld
from openmm_cgflow.storage import load_checkpoint


def _fitted(periodic: bool, seed: int, shift: float) -> PMFEnsemble:
    """A small ensemble fitted to a smooth function on data whose standardisation and median depend on ``shift``."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    ens = PMFEnsemble(2, n_members=4, hidden=(8, 8), periodic=periodic).double()
    s = np.random.default_rng(seed).uniform(-2.0 + shift, 2.0 + 2 * shift, size=(60, 2))
    F = np.cos(s[:, 0]) + 0.5 * np.sin(2 * s[:, 1]) + 3 * shift
    ens.fit(s, F, 20, 8, 1.0, "fraction", "xavier", gen, optimizer="lbfgs", lbfgs_groups=1)
    return ens


@pytest.mark.parametrize("periodic", [False, True])
def test_stacking_keeps_every_members_prediction(periodic):
    parts = [_fitted(periodic, 0, 0.0), _fitted(periodic, 1, 1.5), _fitted(periodic, 2, -0.7)]
    assert not torch.equal(parts[0].output_offset, parts[1].output_offset)
    if not periodic:
        assert not torch.allclose(parts[0].input_mean, parts[1].input_mean)
    stacked = PMFEnsemble.stack(parts)
    s = torch.as_tensor(np.random.default_rng(5).uniform(-3, 3, size=(50, 2)))
    with torch.no_grad():
        expected = torch.cat([p(s) for p in parts])
        assert stacked.n_members == 12
        torch.testing.assert_close(stacked(s), expected, rtol=1e-12, atol=1e-10)
        scripted = torch.jit.script(stacked)
        mean, std = scripted.mean_std(s)
        torch.testing.assert_close(mean, expected.mean(0), rtol=1e-12, atol=1e-10)
        torch.testing.assert_close(std, expected.std(0), rtol=1e-10, atol=1e-10)


def test_stacking_refuses_different_architectures():
    with pytest.raises(ValueError, match="same CG dimension"):
        PMFEnsemble.stack([PMFEnsemble(2, 3, (8,)), PMFEnsemble(2, 3, (16,))])


def test_window_keeps_the_last_fraction_and_pools_like_the_stacked_ensemble():
    parts = [_fitted(False, k, 0.3 * k) for k in range(4)]
    points = np.random.default_rng(1).uniform(-2, 2, size=(30, 2))
    window = FitWindow(0.5)
    for evaluations, part in zip([100, 150, 200, 260], parts):
        window.add(evaluations, part, *part.predict(points))
    assert [fit.energy_evaluations for fit in window.fits] == [150, 200, 260]  # >= 0.5 x 260
    mean, std = window.grid_mean_std()
    stacked_mean, stacked_std = PMFEnsemble.stack(parts[1:]).predict(points)
    np.testing.assert_allclose(mean, stacked_mean, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(std, stacked_std, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(window.ensemble(PMFEnsemble(2, 4, (8, 8)).double()).predict(points)[0], mean, atol=1e-10)

    restored = FitWindow(0.5)
    restored.load_state_dict(window.state_dict())
    np.testing.assert_array_equal(restored.grid_mean_std()[0], mean)
    latest_only = FitWindow(0.0)
    for evaluations, part in zip([100, 150], parts):
        latest_only.add(evaluations, part, *part.predict(points))
    assert [fit.energy_evaluations for fit in latest_only.fits] == [150]
    np.testing.assert_array_equal(latest_only.grid_mean_std()[0], parts[1].predict(points)[0])
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        FitWindow(1.0)


def test_config_refuses_a_fraction_of_one_or_more():
    with pytest.raises(ConfigError, match="average_fraction"):
        load_config("muller-brown", ["ensemble.average_fraction=1.0"])


SMALL = ["pretraining.epochs=30", "energy_training.epochs_first_iteration=3", "energy_training.epochs=2", "ensemble.epochs=300",
         "search.max_steps=5000", "loop.max_iterations=4"]
#: what the averaging must not change: everything a run does, only the PMF it reports
SAME = ("energy_evaluations", "energy_evaluations_computed", "n_labels", "n_cg_points", "std_visited_mean", "std_visited_max",
        "label_ess_fraction_median", "pmf_change_rms", "mc_steps")


def _rows(metrics):
    return [{k: v for k, v in row.items() if k not in ("wall_s", "stage_wall_s")} for row in metrics["iterations"]]


def test_a_run_reports_and_exports_the_average_of_its_latest_fits_and_resumes_exactly(tmp_path, benchmark_script):
    plain = ActiveLearningRun(load_config("muller-brown", SMALL, seed=1), tmp_path / "plain", progress=False).run()
    averaged_config = load_config("muller-brown", SMALL + ["ensemble.average_fraction=0.5"], seed=1)
    averaged = ActiveLearningRun(averaged_config, tmp_path / "averaged", progress=False).run()
    assert len(plain["iterations"]) == len(averaged["iterations"]) == 4
    for a, b in zip(plain["iterations"], averaged["iterations"]):
        assert {k: a.get(k) for k in SAME} == {k: b.get(k) for k in SAME}

    # the reported PMF is the mean of the plain run's per-fit PMFs over the fits at >= half the evaluations
    history = load_checkpoint(tmp_path / "plain" / "checkpoint.pt")["state"]["history"]
    evaluations = np.array([h["energy_evaluations"] for h in history])
    means = np.array([h["mean"] for h in history])
    checkpoint = load_checkpoint(tmp_path / "averaged" / "checkpoint.pt")
    from openmm_cgflow.active_learning.scoring import metric_grid_for_config
    grid = metric_grid_for_config(checkpoint["config"])
    for k, row in enumerate(averaged["iterations"]):
        window = (evaluations >= 0.5 * evaluations[k]) & (np.arange(len(evaluations)) <= k)
        assert row["forward_kld"] == pytest.approx(forward_kld(grid.p_reference, means[window].mean(0)), rel=1e-9)
    assert window.sum() >= 2 and averaged["iterations"][-1]["forward_kld"] != plain["iterations"][-1]["forward_kld"]
    # benchmarks/pmf_averaging.py rescoring the plain run from its checkpoint gives what the averaged run recorded
    rescored = benchmark_script("pmf_averaging").averaged_metrics(tmp_path / "plain", 0.5)
    assert [r["forward_kld"] for r in rescored["iterations"]] == pytest.approx([r["forward_kld"] for r in averaged["iterations"]], rel=1e-9)
    assert [r["forward_kld_latest_fit"] for r in rescored["iterations"]] == [r["forward_kld"] for r in plain["iterations"]]

    # the exported model is that averaged PMF (up to the constant the export removes), with every fit's members
    model, _ = load_model(tmp_path / "averaged" / "models" / "pmf_ensemble.pt", expected_kind="pmf_ensemble")
    at = torch.as_tensor(grid.centres)
    with torch.no_grad():
        exported = model.mean_std(at)[0].numpy()
    difference = exported - checkpoint["state"]["history"][-1]["mean"]
    assert model.n_members == window.sum() * averaged_config["ensemble"]["n_members"] and np.ptp(difference) < 1e-8

    # killed after 2 iterations (as a finished 2-iteration run) and resumed to 4: the same run
    short = load_config("muller-brown", SMALL[:-1] + ["loop.max_iterations=2", "ensemble.average_fraction=0.5"], seed=1)
    ActiveLearningRun(short, tmp_path / "resumed", progress=False).run()
    resumed = ActiveLearningRun(averaged_config, tmp_path / "resumed", progress=False).run(resume=True)
    assert _rows(resumed) == _rows(averaged)
    assert json.loads((tmp_path / "resumed" / "metrics.json").read_text())["config"]["ensemble"]["average_fraction"] == 0.5


def test_a_resumed_run_may_change_how_many_fits_it_averages(tmp_path):
    """average_fraction changes what a run reports, never what it does: a run recorded with 0 resumes with 0.5 (a
    note, not a refusal) and continues exactly as it would have."""
    short = load_config("muller-brown", SMALL[:-1] + ["loop.max_iterations=2"], seed=2)
    ActiveLearningRun(short, tmp_path / "run", progress=False).run()
    longer = load_config("muller-brown", SMALL + ["ensemble.average_fraction=0.5"], seed=2)
    resumed = ActiveLearningRun(longer, tmp_path / "run", progress=False).run(resume=True)
    planned = ActiveLearningRun(load_config("muller-brown", SMALL, seed=2), tmp_path / "planned", progress=False).run()
    for a, b in zip(planned["iterations"], resumed["iterations"]):
        assert {k: a.get(k) for k in SAME} == {k: b.get(k) for k in SAME}
    assert resumed["config"]["ensemble"]["average_fraction"] == 0.5 and len(resumed["iterations"]) == 4
