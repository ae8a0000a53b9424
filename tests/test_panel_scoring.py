"""The scoring of benchmarks/panel.py (KLD at a wall time, the better baseline's ratio and its bound, a pair of
baseline seeds pooled on two cores) on curves and densities whose answers are known in closed form."""
import json
from pathlib import Path

import numpy as np
import pytest



@pytest.fixture(scope="module")
def panel(benchmark_script):
    return benchmark_script("panel")


def power_law(a, b, walls):
    return [[w, a * w ** -b] for w in walls]


def test_value_at_interpolates_log_log_and_says_how_it_read_the_curve(panel):
    curve = power_law(1.0, 1.0, [100.0, 1000.0, 10000.0])
    value, how = panel.value_at(curve, 1800.0)
    assert value == pytest.approx(1 / 1800.0, rel=1e-12) and how == "measured"   # exact on a power law
    assert panel.value_at(curve, 50.0) == (None, "before start")
    assert panel.value_at(curve, 2e4) == (1e-4, "after end")
    assert panel.value_at(curve, 1e4) == (pytest.approx(1e-4), "measured")
    assert panel.value_at([[10.0, None], [100.0, 0.1]], 50.0) == (None, "before start")  # unscored points are skipped


def test_ratio_takes_the_better_baseline_and_marks_an_ended_curve_as_an_upper_bound(panel):
    al = power_law(1.0, 1.0, [100.0, 10000.0])
    metad = power_law(4.0, 1.0, [100.0, 10000.0])        # 4x the AL run's KLD at every time
    opes = power_law(3.0, 1.0, [100.0, 1000.0])          # 3x, but ends at 1,000 s
    at_500 = panel.ratio_at(al, {"metad": metad, "opes": opes}, 500.0)
    assert at_500["ratio"] == pytest.approx(3.0) and at_500["better_baseline"] == "opes" and at_500["bound"] == "measured"
    at_5000 = panel.ratio_at(al, {"metad": metad, "opes": opes}, 5000.0)
    # OPES ended at 3e-3 (its last value), metad is at 4 / 5,000 = 8e-4: metad is the better baseline, measured
    assert at_5000["better_baseline"] == "metad" and at_5000["ratio"] == pytest.approx(4.0) and at_5000["bound"] == "measured"
    short_metad = power_law(4.0, 1.0, [100.0, 1000.0])
    ended = panel.ratio_at(al, {"metad": short_metad}, 5000.0)
    assert ended["bound"] == "upper" and ended["ratio"] == pytest.approx(4e-3 / 2e-4)
    assert panel.ratio_at(power_law(1.0, 1.0, [1000.0]), {"metad": metad}, 500.0)["ratio"] is None   # AL not there yet
    finished = panel.ratio_at(power_law(1.0, 1.0, [100.0, 1000.0]), {"metad": metad}, 5000.0)
    assert finished["ratio"] == pytest.approx((4 / 5000) / 1e-3) and finished["al_read"] == "after end"  # a finished run keeps its PMF


def _baseline_run(folder: Path, steps, free_energies, walls, centres, steps_per_s=None):
    from openmm_cgflow.storage import save_arrays

    folder.mkdir(parents=True)
    curve = [{"md_steps": int(s), "forward_kld": None, **({"wall_s": w} if w is not None else {})} for s, w in zip(steps, walls)]
    (folder / "metad_baseline.json").write_text(json.dumps({"curve": curve, "steps_per_s": steps_per_s, "steps": int(steps[-1])}))
    save_arrays(folder / "metad_snapshots.npz", steps=np.asarray(steps, dtype=np.int64), free_energy_kT=np.asarray(free_energies, dtype=np.float32),
                centres=centres)


def test_a_pair_of_seeds_is_pooled_as_the_mean_of_its_densities_at_the_slower_seeds_wall(panel, tmp_path):
    from openmm_cgflow.scoring import forward_kld

    centres = np.linspace(-3, 3, 4)[:, None]
    p_ref = np.array([0.1, 0.4, 0.4, 0.1])
    # seed a puts too much weight left, seed b right: each alone is off, their mean density is the reference
    pa, pb = np.array([0.15, 0.5, 0.3, 0.05]), np.array([0.05, 0.3, 0.5, 0.15])
    Fa, Fb = -np.log(pa) + 3.0, -np.log(pb) - 1.0           # free energies carry arbitrary offsets
    _baseline_run(tmp_path / "a", [1000, 2000, 3000], [Fa, Fa, Fa], [10.0, 20.0, 30.0], centres)
    _baseline_run(tmp_path / "b", [1000, 3000], [Fb, Fb], [None, None], centres, steps_per_s=50.0)   # an older run: no wall per point
    curve = panel.pooled_curve([tmp_path / "a", tmp_path / "b"], "metad", p_ref, centres)
    assert [w for w, _ in curve] == [20.0, 60.0]             # common steps 1,000 and 3,000; b's wall from its mean speed
    assert curve[0][1] == pytest.approx(0.0, abs=1e-6)       # the pooled density is the reference (float32 snapshots)
    assert forward_kld(p_ref, Fa) > 1e-2 and forward_kld(p_ref, Fb) > 1e-2
    timed = panel.pooled_curve([tmp_path / "a", tmp_path / "b"], "metad", p_ref, centres, steps_per_s=100.0)
    assert [w for w, _ in timed] == [10.0, 30.0] and [k for _, k in timed] == [k for _, k in curve]   # a measured speed replaces the walls
    with pytest.raises(SystemExit, match="grid is not the reference's"):
        panel.pooled_curve([tmp_path / "a", tmp_path / "b"], "metad", p_ref, centres + 0.1)


def test_marginal_molecules_are_scored_against_md_halves_per_budget(panel, benchmark_script, tmp_path, monkeypatch):
    """A 3-D density known in closed form: MD drawn from it scores the exact marginals near MD's own noise, a run
    whose marginal on one pair is wrong is flagged on that pair; the summary reads each budget's scores in order."""
    marginals_vs_md = benchmark_script("marginals_vs_md")
    rng = np.random.default_rng(0)
    bins, n = 12, 200_000
    centres = -np.pi + (np.arange(bins) + 0.5) * 2 * np.pi / bins
    # independent von Mises-like coordinates: the exact 2-D marginals are outer products of the 1-D ones
    p1 = [np.exp(2.0 * np.cos(centres - mu)) for mu in (-1.0, 0.5, 2.0)]
    p1 = [q / q.sum() for q in p1]
    edges = np.linspace(-np.pi, np.pi, bins + 1)
    md = np.stack([rng.uniform(edges[k], edges[k + 1]) for k in (rng.choice(bins, size=n, p=q) for q in p1)], axis=0).T
    exact = {(a, b): np.outer(p1[a], p1[b]) for a, b in ((0, 1), (0, 2), (1, 2))}
    wrong = dict(exact)
    wrong[(1, 2)] = np.outer(p1[1], np.roll(p1[2], 2))            # the third coordinate's basin shifted by two bins
    for label, model in (("exact", exact), ("wrong", wrong)):
        monkeypatch.setattr(marginals_vs_md, "model_marginals", lambda run, b, model=model: (model, ["a", "b", "c"]))
        rows = marginals_vs_md.compare_marginals(md, tmp_path, bins)
        scores = panel.marginal_scores(rows)
        assert set(scores["pairs"]) == {"a/b", "a/c", "b/c"}
        if label == "exact":
            assert all(v["kld"] < 5 * v["md_halves"] + 1e-3 for v in scores["pairs"].values())
        else:
            assert scores["worst_pair"] == "b/c" and scores["pairs"]["b/c"]["kld"] > 0.3 and not scores["target_met"]
            assert scores["pairs"]["a/b"]["kld"] < 1e-3
    seed0 = tmp_path / "ace-ala2-nme" / "al-seed0"
    seed0.mkdir(parents=True)
    for budget, worst in ((2_000_000, 1.5), (1_000_000, 9.0)):
        rows = [{"pair": "a/b", "kld_md_to_run": 0.01, "kld_md_halves": 0.01}, {"pair": "b/c", "kld_md_to_run": worst * 0.02, "kld_md_halves": 0.02}]
        (seed0 / f"marginals_at_{budget}.json").write_text(json.dumps({"budget": budget, "energy_evaluations": budget + 41_600, "wall_s": budget / 1000,
                                                                         "iterations": 3, "md_steps": 3_000_000, "bins": 24, "pairs": rows}))
    entry = panel.summarise_marginal("ace-ala2-nme", tmp_path / "ace-ala2-nme", [0, 1])
    points = entry["seeds"]["0"]
    assert [p["budget"] for p in points] == [1_000_000, 2_000_000] and "1" not in entry["seeds"]
    assert points[0]["worst_pair"] == "b/c" and points[0]["worst_ratio"] == pytest.approx(9.0) and not points[0]["target_met"]
    assert points[1]["worst_ratio"] == pytest.approx(1.5) and points[1]["target_met"]


def test_a_longer_launch_extends_finished_runs_and_baseline_pairs_instead_of_skipping_them(panel, tmp_path, monkeypatch):
    """A panel launched for 30 minutes, then for 2 hours: the finished AL run is resumed with the longer wall limit
    and each baseline seed resumed to the longer length; launched again for 30 minutes, nothing is started."""
    started = []
    monkeypatch.setattr(panel, "cgflow", lambda *args, core=None: started.append([str(a) for a in args]) or len(started))
    monkeypatch.setattr(panel, "wait", lambda *processes: None)
    mol = panel.PANEL["aldp-vacuum"]
    assert mol.baseline_steps(0.5) % 100_000 == 0 and mol.baseline_steps(0.5) >= mol.baseline_steps_per_s * 1800
    out = tmp_path / "aldp-vacuum"
    al = out / "al-seed0"
    al.mkdir(parents=True)
    (al / "checkpoint.pt").write_bytes(b"")
    (al / "metrics.json").write_text(json.dumps({"totals": {"finished": True, "wall_s": 1803.0}}))
    for method in panel.BASELINES:
        for seed in (0, 1):
            run = out / f"{method}-seed{seed}"
            run.mkdir()
            (run / f"{method}_checkpoint.pt").write_bytes(b"")
            (run / panel.BASELINE_FILES[method][0]).write_text(json.dumps({"steps": mol.baseline_steps(0.5)}))

    panel.launch("aldp-vacuum", ["al", *panel.BASELINES], tmp_path, [0], 0.5)
    assert started == []

    panel.launch("aldp-vacuum", ["al", *panel.BASELINES], tmp_path, [0], 2.0)
    run, *baselines = started
    assert run[:2] == ["run", "aldp-vacuum"] and "loop.max_wall_s=7200" in run and run[-1] == "--resume"
    assert len(baselines) == 4 and all(b[-1] == "--resume" and b[b.index("--steps") + 1] == str(mol.baseline_steps(2.0))
                                       for b in baselines)


def test_label_cells_ab_reads_each_run_at_its_wall_points_and_launches_only_the_missing_runs(benchmark_script, tmp_path, monkeypatch):
    """benchmarks/label_cells_ab.py on made-up runs whose KLD falls as 1/wall: the KLD at a wall point is exact, the
    iterations, evaluations and fit share are those of the iterations finished by then, the KLD at an energy budget
    is read the same way, an arm's mean is geometric;
    ``--launch`` runs only what no ``--source`` names, the cells arm with 64 cells per dihedral."""
    ab = benchmark_script("label_cells_ab")

    def run(folder, scale, cell_width):
        iterations = [{"iteration": k + 1, "wall_s": 600.0 * (k + 1), "energy_evaluations": 500_000 * (k + 1), "forward_kld": scale / (600.0 * (k + 1)),
                       "n_fit_rows": 10 * (k + 1), "stage_wall_s": {"fit_pmf": 60.0 * (k + 1)}} for k in range(4)]
        folder.mkdir(parents=True)
        path = folder / "metrics.json"
        path.write_text(json.dumps({"iterations": iterations, "config": {"labels": {"cell_width": cell_width}},
                                    "totals": {"finished": True, "wall_s": 2400.0}}))
        return path

    elsewhere = run(tmp_path / "panel-al", 2.0, 0.0)
    for seed, scale in zip(ab.SEEDS, (1.0, 4.0, 2.0)):
        run(tmp_path / "runs" / f"cells64-seed{seed}", scale, ab.CELL_WIDTH)
    result = ab.summarise(tmp_path / "runs", {("none", 0): elsewhere}, 30.0, tmp_path / "ab.json")
    cells = result["arms"]["cells64"]
    at = cells["seeds"][1]["at"]
    assert at["900"]["forward_kld"] == pytest.approx(4.0 / 900) and at["900"]["iterations"] == 1 and at["900"]["energy_evaluations"] == 500_000
    assert at["1800"]["forward_kld"] == pytest.approx(4.0 / 1800) and at["1800"]["iterations"] == 3 and at["1800"]["fit_rows"] == 30
    assert at["1800"]["fit_share"] == pytest.approx((60 + 120 + 180) / 1800)
    assert cells["geometric_mean_kld"]["1800"] == pytest.approx(2.0 / 1800)   # (1 x 4 x 2)^(1/3) = 2
    assert cells["seeds"][1]["kld_at_evaluations"]["1e+06"] == pytest.approx(4.0 / 1200)   # 1e6 evaluations at 1,200 s
    assert cells["geometric_mean_kld_at_evaluations"]["2e+06"] == pytest.approx(2.0 / 2400)
    assert list(result["arms"]["none"]["seeds"]) == [0] and result["arms"]["none"]["seeds"][0]["source"] == str(elsewhere)
    assert json.loads((tmp_path / "ab.json").read_text())["arms"]["cells64"]["seeds"]["2"]["cell_width"] == ab.CELL_WIDTH

    started = []
    monkeypatch.setattr(ab.panel, "cgflow", lambda *args, core=None: started.append([str(a) for a in args]))
    monkeypatch.setattr(ab.panel, "wait", lambda *processes: None)
    ab.launch(tmp_path / "runs", 30.0, {("none", 0): elsewhere})     # the cells arm ran for 2,400 s >= 30 min
    assert [r[r.index("--out") + 1] for r in started] == [str(tmp_path / "runs" / f"none-seed{s}") for s in (1, 2)]
    assert all("loop.max_wall_s=1800" in r and "--resume" not in r and not any("cell_width" in a for a in r) for r in started)
    started.clear()
    ab.launch(tmp_path / "runs", 60.0, {("none", 0): elsewhere})
    longer = [r for r in started if "cells64" in r[r.index("--out") + 1]]
    assert len(longer) == 3 and all(f"labels.cell_width={ab.CELL_WIDTH!r}" in r for r in longer)
