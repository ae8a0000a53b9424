"""Would averaging the PMFs of a run's last iterations lower its KLD? (issue 32: the 1.2e-3 target at 5e6)

    python benchmarks/pmf_averaging.py runs/wallclock/seed0/checkpoint.pt [...] [--windows 1 2 3 5 8] [--at 1e6 5e6]
        [--out benchmarks/results/pmf_averaging.json]

A late alanine-dipeptide run's KLD scatters from one iteration to the next (the label-cells runs: 1.12-1.39e-3 over
their last 20 iterations), and part of that is the refit's noise, which an average over iterations would cancel
while the labels' bias stays. A checkpoint keeps every iteration's ensemble-mean PMF on the scoring grid (its
history), so one run answers the question for every window without rerunning: for each iteration k and window m,
the forward KLD of the mean of F over iterations k-m+1..k (in kT, as stacking those iterations' members into one
ensemble would give) against the run's reference. Reported: per checkpoint, the KLD at the iterations nearest
``--at`` energy evaluations and the mean over the last 20 iterations, per window; m = 1 is the run as recorded.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parent


def averaged_klds(history: List[Dict], p_reference: np.ndarray, window: int) -> List[float]:
    """Forward KLD of the mean PMF over each iteration's last ``window`` iterations (fewer at the start)."""
    from openmm_cgflow.scoring import forward_kld

    means = np.array([np.asarray(h["mean"], dtype=np.float64) for h in history])
    return [forward_kld(p_reference, means[max(0, k - window + 1): k + 1].mean(0)) for k in range(len(means))]


def summarise(path: Path, windows: List[int], at: List[float]) -> Dict:
    from openmm_cgflow.active_learning.checkpoint import read_run_checkpoint
    from openmm_cgflow.active_learning.scoring import metric_grid_for_config

    checkpoint = read_run_checkpoint(path)
    grid = metric_grid_for_config(checkpoint["config"])
    if grid is None:
        raise SystemExit(f"{path}: the run has no reference to score against")
    history = checkpoint["state"]["history"]
    evaluations = np.array([h["energy_evaluations"] for h in history], dtype=float)
    picks = {f"{x:g}": int(np.argmin(np.abs(evaluations - x))) for x in at}
    result = {"checkpoint": str(path), "iterations": len(history), "per_window": {}}
    for m in windows:
        klds = averaged_klds(history, grid.p_reference, m)
        result["per_window"][str(m)] = {
            "at": {x: {"iteration": k + 1, "energy_evaluations": evaluations[k], "forward_kld": klds[k]} for x, k in picks.items()},
            "mean_last_20": float(np.mean(klds[-20:])), "klds": klds,
        }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--windows", type=int, nargs="+", default=[1, 2, 3, 5, 8])
    parser.add_argument("--at", type=float, nargs="+", default=[1e6, 5e6])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "pmf_averaging.json")
    args = parser.parse_args()
    if min(args.windows) < 1:
        raise SystemExit("--windows must be >= 1")
    results = [summarise(path, args.windows, args.at) for path in args.checkpoints]
    args.out.write_text(json.dumps({"benchmark": "pmf_averaging", "command": " ".join(sys.argv), "runs": results}, indent=1))
    head = f"{'window':>7}" + "".join(f"{'KLD at ' + x:>14}" for x in results[0]["per_window"]["1"]["at"]) + f"{'last 20 mean':>14}"
    for r in results:
        print(r["checkpoint"])
        print(head)
        for m, row in r["per_window"].items():
            print(f"{m:>7}" + "".join(f"{v['forward_kld']:>14.3e}" for v in row["at"].values()) + f"{row['mean_last_20']:>14.3e}")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
