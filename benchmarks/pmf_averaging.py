"""Would averaging the PMFs of a run's latest fits lower its KLD? (issue 32: the 1.2e-3 target at 5e6)

    python benchmarks/pmf_averaging.py runs/wallclock/seed0/checkpoint.pt [...] [--fractions 0.05 0.1 0.2 0.3]
        [--at 1e6 5e6] [--out benchmarks/results/pmf_averaging.json]

A late alanine-dipeptide run's KLD scatters from one iteration to the next (the label-cells runs: 1.12-1.39e-3 over
their last 20 iterations), and part of that is the refit's noise, which an average over fits cancels while the
labels' bias stays. ``ensemble.average_fraction`` f makes a run's PMF the stacked ensemble of every fit made in the
last fraction f of its energy evaluations (:mod:`openmm_cgflow.pmf.fit_window`). The averaging changes nothing the
run does (labels, search, evaluations: ``tests/test_fit_window.py``), so one run recorded without it answers the
question for every f, exactly: its checkpoint keeps every iteration's PMF on the scoring grid (its history), and the
stacked ensemble's mean is the mean of the fits' means. For each iteration k and fraction f: the forward KLD of that
mean over the fits :func:`~openmm_cgflow.pmf.fit_window.in_window` picks among iterations 1..k, against the run's
reference. Reported per checkpoint and f: the KLD at the iterations nearest ``--at`` energy evaluations, and the
mean KLD over the iterations within +-20 % of each (the scatter makes one iteration a noisy estimate); f = 0 is the
run as recorded. Refused: checkpoints of runs that already averaged (their history holds averaged PMFs).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parent


def averaged_klds(history: List[Dict], p_reference: np.ndarray, fraction: float) -> List[float]:
    """Forward KLD, after each iteration, of the mean PMF over the fits in its window (``fraction`` of the evaluations)."""
    from openmm_cgflow.pmf.fit_window import in_window
    from openmm_cgflow.scoring import forward_kld

    means = np.array([np.asarray(h["mean"], dtype=np.float64) for h in history])
    evaluations = [h["energy_evaluations"] for h in history]
    return [forward_kld(p_reference, means[: k + 1][in_window(evaluations[: k + 1], fraction)].mean(0)) for k in range(len(means))]


def averaged_metrics(run: Path, fraction: float) -> Dict:
    """A run's ``metrics.json`` as the run would have written it with ``ensemble.average_fraction`` = ``fraction``:
    each iteration's ``forward_kld`` that of the averaged PMF (the recorded one kept as ``forward_kld_latest_fit``),
    from the run's checkpoint; a run recorded with averaging already is returned as recorded."""
    from openmm_cgflow.active_learning.checkpoint import read_run_checkpoint
    from openmm_cgflow.active_learning.scoring import metric_grid_for_config

    metrics = json.loads((run / "metrics.json").read_text())
    if metrics["config"]["ensemble"].get("average_fraction", 0.0) or fraction == 0:
        return metrics
    checkpoint = read_run_checkpoint(run / "checkpoint.pt")
    history = checkpoint["state"]["history"]
    if [h["energy_evaluations"] for h in history] != [r["energy_evaluations"] for r in metrics["iterations"]]:
        raise SystemExit(f"{run}: its checkpoint and metrics.json hold different iterations")
    klds = averaged_klds(history, metric_grid_for_config(checkpoint["config"]).p_reference, fraction)
    for row, kld in zip(metrics["iterations"], klds):
        row["forward_kld_latest_fit"], row["forward_kld"] = row["forward_kld"], kld
    metrics["config"]["ensemble"]["average_fraction"] = fraction
    metrics["rescored"] = f"forward_kld of the PMF averaged over the last {fraction:g} of the evaluations (benchmarks/pmf_averaging.py)"
    return metrics


def summarise(path: Path, fractions: List[float], at: List[float]) -> Dict:
    from openmm_cgflow.active_learning.checkpoint import read_run_checkpoint
    from openmm_cgflow.active_learning.scoring import metric_grid_for_config

    checkpoint = read_run_checkpoint(path)
    recorded = checkpoint["config"]["ensemble"]["average_fraction"]
    if recorded:
        raise SystemExit(f"{path}: the run averaged its fits already (ensemble.average_fraction = {recorded}); score a run recorded with 0")
    grid = metric_grid_for_config(checkpoint["config"])
    if grid is None:
        raise SystemExit(f"{path}: the run has no reference to score against")
    history = checkpoint["state"]["history"]
    evaluations = np.array([h["energy_evaluations"] for h in history], dtype=float)
    picks = {f"{x:g}": int(np.argmin(np.abs(evaluations - x))) for x in at}
    result = {"checkpoint": str(path), "seed": checkpoint["config"]["seed"], "iterations": len(history), "per_fraction": {}}
    for f in fractions:
        klds = np.array(averaged_klds(history, grid.p_reference, f))
        result["per_fraction"][f"{f:g}"] = {
            "at": {x: {"iteration": k + 1, "energy_evaluations": evaluations[k], "forward_kld": float(klds[k]),
                       "mean_kld_within_20pct": float(klds[np.abs(evaluations / float(x) - 1) <= 0.2].mean())} for x, k in picks.items()},
            "klds": klds.tolist(),
        }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3])
    parser.add_argument("--at", type=float, nargs="+", default=[1e6, 5e6])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "pmf_averaging.json")
    args = parser.parse_args()
    if not all(0 <= f < 1 for f in args.fractions):
        raise SystemExit("--fractions must lie in [0, 1)")
    fractions = sorted(set([0.0] + args.fractions))
    results = [summarise(path, fractions, args.at) for path in args.checkpoints]
    means = {f"{f:g}": {x: {key: float(np.mean([r["per_fraction"][f"{f:g}"]["at"][x][key] for r in results]))
                            for key in ("forward_kld", "mean_kld_within_20pct")} for x in results[0]["per_fraction"]["0"]["at"]}
             for f in fractions}
    args.out.write_text(json.dumps({"benchmark": "pmf_averaging", "command": " ".join(sys.argv), "seeds": [r["seed"] for r in results],
                                    "mean_over_runs": means, "runs": results}, indent=1))
    columns = list(results[0]["per_fraction"]["0"]["at"])
    head = f"{'run':>6}{'fraction':>9}" + "".join(f"{'KLD at ' + x:>13}{'+-20% mean':>12}" for x in columns)
    print(head)
    for r in results + [{"seed": "mean", "per_fraction": {f: {"at": v} for f, v in means.items()}}]:
        for f, row in r["per_fraction"].items():
            print(f"{r['seed']:>6}{f:>9}" + "".join(f"{row['at'][x]['forward_kld']:>13.3e}{row['at'][x]['mean_kld_within_20pct']:>12.3e}" for x in columns))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
