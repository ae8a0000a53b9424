"""Alanine-dipeptide active learning: a tiny smoke run through the whole loop (spline flow, chirality filter,
periodic search, disc spreading, packaged reference), the lr/clip schedules, and the grid baseline's points."""
import json
import math

import numpy as np
import pytest
import torch

from openmm_cgflow.active_learning import ActiveLearningRun
from openmm_cgflow.active_learning.settings import EnergyTrainingSettings, grid_points
from openmm_cgflow.config import ConfigError, load_config
from openmm_cgflow.export import load_model
from openmm_cgflow.storage import load_checkpoint

SMOKE = [
    "starting_data.n_frames=200", "starting_data.save_every=10", "flow.hidden=[16]", "flow.n_layers=2",
    "pretraining.epochs=2", "pretraining.batch_size=64", "energy_training.batch_size=64",
    "energy_training.epochs_first_iteration=1", "energy_training.epochs=1", "dataset.copies=4", "ensemble.epochs=30",
    "spreading.n_points=20", "search.n_new_points=3", "search.n_chains=20", "search.max_steps=3000", "loop.max_iterations=2",
]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("aldp_smoke")
    config = load_config("aldp", SMOKE, seed=0)  # the paper's recipe, scaled down
    return out, ActiveLearningRun(config, out, progress=False).run()


def test_smoke_run_counts_and_outputs(smoke_run):
    out, metrics = smoke_run
    rows, totals = metrics["iterations"], metrics["totals"]
    assert [r["iteration"] for r in rows] == [1, 2]
    assert totals["starting_md_steps"] == 2000
    # iteration 1 visits the 160 training points x 4 copies in whole batches of 64; the filter only removes
    assert rows[0]["energy_evaluations"] == 2000 + (160 * 4 // 64) * 64
    assert 2000 < rows[0]["energy_evaluations_computed"] <= rows[0]["energy_evaluations"]
    assert rows[1]["n_cg_points"] == 200 + 3 * 20
    assert all(math.isfinite(r["forward_kld"]) and r["forward_kld"] > 0 for r in rows)
    assert json.loads((out / "metrics.json").read_text())["totals"] == totals
    assert (out / "pmf.png").stat().st_size > 10_000
    flow, meta = load_model(out / "models" / "flow.pt", expected_kind="conditional_flow", expected_system="alanine-dipeptide")
    s = torch.zeros(3, 2, dtype=torch.float64)
    z = torch.zeros(3, 58, dtype=torch.float64)
    x, _ = flow(z, s)
    assert x.shape == (3, 58) and torch.isfinite(x).all()


def test_export_from_the_checkpoint_equals_the_run_s_own_models(smoke_run, tmp_path):
    """The spline flow and the ensemble rebuilt from the checkpoint (export_checkpoint_models, what ``cgflow export``
    runs) are bitwise the models the finished run wrote, in the same precision."""
    from openmm_cgflow.active_learning.outputs import export_checkpoint_models

    out, metrics = smoke_run
    info = export_checkpoint_models(out / "checkpoint.pt", tmp_path)
    assert info["iteration"] == 2 and info["forward_kld"] == metrics["totals"]["final_forward_kld"]
    for name in ("flow.pt", "pmf_ensemble.pt"):
        exported, meta = load_model(tmp_path / name)
        written, written_meta = load_model(out / "models" / name)
        assert meta == written_meta
        for (key, a), (_, b) in zip(exported.state_dict().items(), written.state_dict().items()):
            assert a.dtype == b.dtype and torch.equal(a, b), key


def test_smoke_run_grid_then_active_with_accumulated_labels(tmp_path):
    """The other recipe through the whole loop: a coarse periodic grid of cell centres first, labels from every
    accumulated sample after the first epoch, uncertainty-weighted acquisition."""
    config = load_config("aldp-small", SMOKE + [
        "dataset.kind=grid_then_active", "dataset.grid_points=8", "dataset.train_fraction=1.0", "labels.samples=all",
        "labels.accumulate_from_epoch=2", "energy_training.epochs_first_iteration=3", "search.acquisition=uncertainty_weighted",
        "search.weighted_steps=50", "energy_training.chirality_filter=none",
    ], seed=0)
    rows = ActiveLearningRun(config, tmp_path, progress=False).run()["iterations"]
    assert rows[0]["n_cg_points"] == 64 and rows[0]["n_labels"] == 64
    assert rows[1]["n_cg_points"] == 64 + 3 * 20
    assert rows[0]["energy_evaluations"] == 2000 + 3 * (64 * 4 // 64) * 64
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    dataset = checkpoint["dataset"]
    visits = np.bincount(dataset["entry_point"], weights=dataset["entry_visits"])[:64]
    # every visit of epochs 0 and 1 (2 x 4 copies per grid point) is left out of the accumulated samples, every
    # later one (epoch 2, and replay in iteration 2) is in: without the filter every sample is evaluated
    np.testing.assert_array_equal(dataset["point_n_samples"][:64], visits - 8)
    # the effective samples behind a label: Kish's ESS of its accumulated samples, between 1 and their number
    assert all(1.0 <= row["label_effective_samples_median"] <= dataset["point_n_samples"].max() for row in rows)
    assert np.allclose(np.sort(np.unique(dataset["point_s"][:64, 0])), -math.pi + 2 * math.pi * (np.arange(8) + 0.5) / 8)


def learning_rate_factor(section, iteration, epoch, global_epoch, total_epochs):
    """The lr factor of the ``energy_training`` section's schedule at an epoch."""
    et = EnergyTrainingSettings.from_config(section)
    return et.schedule.lr_factor(iteration, epoch, global_epoch, total_epochs, et.epochs_of(iteration))


def clip_norm_for(section, epoch, global_epoch):
    return EnergyTrainingSettings.from_config(section).clip_at(epoch, global_epoch)


def test_learning_rate_and_clip_schedules():
    al = load_config("aldp")["energy_training"]
    assert learning_rate_factor(al, 1, 0, 0, 1000) == pytest.approx(1 / 15)
    assert learning_rate_factor(al, 1, 14, 14, 1000) == 1.0
    assert learning_rate_factor(al, 2, 0, 50, 1000) == pytest.approx(1 / 11)
    assert learning_rate_factor(al, 2, 20, 70, 1000) == 1.0
    assert clip_norm_for(al, 10, 60) == 100.0 and clip_norm_for(al, 11, 61) == 1000.0
    grid = load_config("aldp-grid")["energy_training"]
    assert learning_rate_factor(grid, 1, 0, 0, 100) == pytest.approx(1 / 30)
    assert learning_rate_factor(grid, 4, 0, 30, 100) == 1.0
    assert learning_rate_factor(grid, 7, 5, 65, 100) == pytest.approx(0.5)
    assert learning_rate_factor(grid, 10, 9, 99, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi * 69 / 70)))
    assert clip_norm_for(grid, 9, 29) == 100.0 and clip_norm_for(grid, 0, 30) == 1000.0
    cosine = dict(al, schedule="per_iteration_cosine", epochs_first_iteration=40, warmup_epochs_first=2, epochs=10, warmup_epochs=1)
    assert learning_rate_factor(cosine, 1, 0, 0, 0) == pytest.approx(0.5)
    assert learning_rate_factor(cosine, 1, 2, 2, 0) == 1.0
    assert learning_rate_factor(cosine, 1, 21, 21, 0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 19 / 38)))
    assert learning_rate_factor(cosine, 3, 0, 60, 0) == 1.0 and learning_rate_factor(cosine, 3, 9, 69, 0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 8 / 9)))


def test_grid_baseline_config_and_points():
    config = load_config("aldp-grid")
    assert config["dataset"]["kind"] == "grid" and config["flow"]["context"] == "raw"
    assert config["energy_training"]["chirality_filter"] == "geometric"
    points = grid_points(tuple(config["metrics"]["domain"]), 100, 2)
    assert points.shape == (10_000, 2)
    assert np.isclose(points.min(), -math.pi) and np.isclose(points.max(), math.pi)
    budget = 0.8 * 10_000 * config["dataset"]["copies"] * (config["energy_training"]["epochs_first_iteration"] + 9 * config["energy_training"]["epochs"])
    assert budget == pytest.approx(2.4e7)


def test_aldp_config_errors_are_clear():
    with pytest.raises(ConfigError, match="flow.kind"):
        load_config("aldp", ["flow.kind=realnvp"])
    with pytest.raises(ConfigError, match="chirality_filter"):
        load_config("aldp", ["energy_training.chirality_filter=maybe"])


def test_sigkill_then_resume_matches_the_uninterrupted_run_on_the_fast_path(tmp_path):
    """aldp-fast's path (spline flow in float32, torch.compile, per-member L-BFGS groups, uncertainty-weighted search,
    accumulated labels), scaled down: a CLI run SIGKILLed after its first iteration and resumed with a plain
    --resume gives the uninterrupted run's metrics, bit for bit (wall times aside)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    overrides = SMOKE + ["loop.max_iterations=3", "loop.stop_kld=null", "ensemble.epochs=20", "search.weighted_steps=50", "dataset.grid_points=8",
                         "labels.accumulate_from_epoch=0", "pretraining.epochs=10", "energy_training.epochs_first_iteration=4",
                         "energy_training.epochs=2"]
    assert load_config("aldp-fast", overrides)["flow"]["compile"] and load_config("aldp-fast")["flow"]["precision"] == "float32"
    planned = ActiveLearningRun(load_config("aldp-fast", overrides), tmp_path / "planned", progress=False).run()
    command = [sys.executable, "-m", "openmm_cgflow.cli", "run", "aldp-fast", "--out", str(tmp_path / "killed"), "--quiet"]
    for text in overrides:
        command += ["--set", text]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics_file = tmp_path / "killed" / "metrics.json"
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and process.poll() is None:
        if metrics_file.exists() and len(json.loads(metrics_file.read_text())["iterations"]) >= 1:
            break
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert len(json.loads(metrics_file.read_text())["iterations"]) < 3, "the run finished before it could be killed"
    resume = [sys.executable, "-m", "openmm_cgflow.cli", "run", "aldp-fast", "--out", str(tmp_path / "killed"), "--quiet", "--resume"]
    subprocess.run(resume, check=True, timeout=900, capture_output=True)
    resumed = json.loads(metrics_file.read_text())

    def comparable(metrics):
        return [{k: v for k, v in row.items() if k not in ("wall_s", "stage_wall_s")} for row in metrics["iterations"]]

    assert len(resumed["iterations"]) == 3 and comparable(resumed) == comparable(planned)


def test_a_reference_file_on_its_own_grid_scores_and_plots_the_run(tmp_path):
    """metrics.reference on a 50 x 50 grid (the packaged reference summed over 2 x 2 bins): the run scores on the
    file's grid and finishes with its figures (a fixed 100 x 100 grid once made it fail at the end)."""
    from openmm_cgflow.scoring.grid import load_reference, save_reference
    from openmm_cgflow.systems.alanine_dipeptide import packaged_reference_path

    coarse = load_reference(packaged_reference_path()).probabilities.reshape(50, 2, 50, 2).sum((1, 3))
    save_reference(tmp_path / "coarse.npz", coarse, {"method": "the packaged reference on 2 x 2 bins"})
    metrics = ActiveLearningRun(load_config("aldp", SMOKE + ["loop.max_iterations=1", f"metrics.reference={tmp_path / 'coarse.npz'}"]),
                                tmp_path / "run", progress=False).run()
    assert math.isfinite(metrics["totals"]["final_forward_kld"]) and (tmp_path / "run" / "pmf.png").stat().st_size > 10_000
