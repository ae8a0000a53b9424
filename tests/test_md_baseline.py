"""MD baseline: an interrupted run resumed from its checkpoint equals an uninterrupted one; scoring."""
import json

import numpy as np
import pytest

from openmm_cgflow.baselines import md as md_baseline
from openmm_cgflow.scoring.grid import kld_of_histogram, save_reference
from openmm_cgflow.systems import create_system

ALDP = create_system("alanine-dipeptide")


def test_resume_after_a_crash_matches_uninterrupted(tmp_path, monkeypatch):
    monkeypatch.setattr(md_baseline, "CHUNK_STEPS", 1000)
    monkeypatch.setattr(md_baseline, "snapshot_steps", lambda total: [1000, 2000, 3000])
    full = md_baseline.run_md_baseline(ALDP, tmp_path / "full", 3000, seed=2, platform="Reference", progress=False)

    real_save = md_baseline.save_checkpoint
    calls = {"n": 0}

    def crash_after_two_chunks(path, state):
        real_save(path, state)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(md_baseline, "save_checkpoint", crash_after_two_chunks)
    with pytest.raises(KeyboardInterrupt):
        md_baseline.run_md_baseline(ALDP, tmp_path / "killed", 3000, seed=2, platform="Reference", progress=False)
    monkeypatch.setattr(md_baseline, "save_checkpoint", real_save)
    resumed = md_baseline.run_md_baseline(ALDP, tmp_path / "killed", 3000, seed=2, platform="Reference", resume=True, progress=False)
    assert resumed["steps"] == full["steps"] == 3000
    a = np.load(tmp_path / "full" / "md_histograms.npz")
    b = np.load(tmp_path / "killed" / "md_histograms.npz")
    np.testing.assert_array_equal(a["steps"], [1000, 2000, 3000])
    np.testing.assert_array_equal(a["counts"], b["counts"])
    assert a["counts"][-1].sum() == 300  # one frame every 10 steps

    # scoring against a reference file
    p = (a["counts"][-1] + 1.0) / (a["counts"][-1] + 1.0).sum()
    ref = save_reference(tmp_path / "ref.npz", p, {"method": "test"})
    curve = md_baseline.score_md_baseline(tmp_path / "full", ref)
    assert [c["md_steps"] for c in curve] == [1000, 2000, 3000]
    assert curve[-1]["forward_kld"] == pytest.approx(kld_of_histogram(p, a["counts"][-1]))
    assert json.loads((tmp_path / "full" / "md_baseline_kld.json").read_text())["curve"] == curve


def test_refuses_to_overwrite_or_resume_mismatch_and_extends(tmp_path, monkeypatch):
    monkeypatch.setattr(md_baseline, "snapshot_steps", lambda total: [total])
    md_baseline.run_md_baseline(ALDP, tmp_path / "run", 200, seed=0, platform="Reference", progress=False)
    with pytest.raises(ValueError, match="use resume=True"):
        md_baseline.run_md_baseline(ALDP, tmp_path / "run", 200, seed=0, platform="Reference", progress=False)
    with pytest.raises(ValueError, match="other seed"):
        md_baseline.run_md_baseline(ALDP, tmp_path / "run", 400, seed=1, platform="Reference", resume=True, progress=False)
    extended = md_baseline.run_md_baseline(ALDP, tmp_path / "run", 400, seed=0, platform="Reference", resume=True, progress=False)
    assert extended["steps"] == 400  # a larger --steps extends a finished run
    with pytest.raises(ValueError, match="already holds 400 steps"):
        md_baseline.run_md_baseline(ALDP, tmp_path / "run", 200, seed=0, platform="Reference", resume=True, progress=False)
