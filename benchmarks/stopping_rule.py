"""Does a run without a reference know when to stop? The convergence signals every iteration records, against the
true forward KLD, over committed alanine-dipeptide runs (``results/aldp_runs/*/metrics.json``) or any runs'
``metrics.json`` (``--metrics LABEL=PATH``, e.g. the panel's runs of other molecules), and the stopping rule
``loop.stable_ratio`` replayed on them.

    python benchmarks/stopping_rule.py [--runs aldp-fast-periodic2-groups10-seed0 ...] [--out results/stopping_rule.json]
    python benchmarks/stopping_rule.py --runs aldp-fast-averaged-seed0 --metrics vacuum-0=runs/panel/aldp-vacuum/al-seed0/metrics.json

Per run: Spearman's rank correlation of each signal with the KLD over the iterations (how well it ranks them), and
for each (stable_ratio, stable_iterations) where the rule would have stopped the run: the iteration, the energy
evaluations and the KLD there, next to the KLD the same run had at 1e6 evaluations and at its end. Replaying is
exact: the rule only reads recorded signals and ends a run, it changes no iteration before its stop.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parent
RUNS = ["aldp-fast-periodic2-groups10-seed0", "aldp-fast-periodic2-groups10-seed1", "aldp-fast-periodic2-groups10-seed2"]
SIGNALS = ("std_visited_mean", "std_visited_max", "pmf_change_rms", "label_effective_samples_median", "label_ess_fraction_median")
RULES = [(ratio, k) for ratio in (1.0, 0.8, 0.6, 0.5) for k in (2, 3, 5)]


def stop_iteration(iterations: List[Dict], ratio: float, k: int) -> Optional[int]:
    """Index of the iteration after which ``loop.stable_ratio = ratio``, ``loop.stable_iterations = k`` stops the run."""
    from openmm_cgflow.active_learning.settings import LoopSettings
    from openmm_cgflow.active_learning.state import ConvergenceSignals

    loop = LoopSettings(max_iterations=10**9, stop_kld=None, stable_ratio=ratio, stable_iterations=k)

    class Record:  # what the rule reads of an iteration record
        def __init__(self, it):
            self.signals = ConvergenceSignals(std_visited_mean=it["std_visited_mean"], pmf_change_rms=it["pmf_change_rms"])

    history = []
    for n, it in enumerate(iterations):
        history.append(Record(it))
        if loop.limit_reached(it["iteration"], None, history):
            return n
    return None


def analyse(name: str, metrics: Optional[Path] = None) -> Dict:
    """One run: a committed ``results/aldp_runs/NAME`` or, given, the ``metrics.json`` at ``metrics``."""
    metrics = metrics or ROOT / "results" / "aldp_runs" / name / "metrics.json"
    iterations = [it for it in json.loads(metrics.read_text())["iterations"] if it.get("forward_kld") is not None]
    kld = np.array([it["forward_kld"] for it in iterations])
    ranks = {}
    for signal in SIGNALS:
        values = np.array([np.nan if it.get(signal) is None else it[signal] for it in iterations], dtype=float)
        ok = np.isfinite(values)
        ranks[signal] = float(spearmanr(values[ok], kld[ok])[0])
    at_1e6 = min((it for it in iterations if it["energy_evaluations"] >= 1e6), key=lambda it: it["energy_evaluations"], default=None)
    stops = []
    for ratio, k in RULES:
        n = stop_iteration(iterations, ratio, k)
        stops.append({"stable_ratio": ratio, "stable_iterations": k, "iteration": None if n is None else iterations[n]["iteration"],
                      "energy_evaluations": None if n is None else iterations[n]["energy_evaluations"],
                      "forward_kld": None if n is None else iterations[n]["forward_kld"]})
    return {"run": name, "iterations": len(iterations), "spearman_with_kld": ranks, "kld_at_1e6": at_1e6 and at_1e6["forward_kld"],
            "final_evaluations": iterations[-1]["energy_evaluations"], "final_kld": iterations[-1]["forward_kld"],
            "final_wall_s": iterations[-1].get("wall_s"), "stops": stops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=None, help=f"committed runs under results/aldp_runs (default: {' '.join(RUNS)})")
    parser.add_argument("--metrics", nargs="+", default=[], metavar="LABEL=PATH", help="other runs: a label and the run's metrics.json")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "stopping_rule.json")
    args = parser.parse_args()
    others = [item.split("=", 1) for item in args.metrics]
    if any(len(pair) != 2 or not Path(pair[1]).is_file() for pair in others):
        raise SystemExit(f"--metrics takes LABEL=PATH to an existing metrics.json, got: {' '.join(args.metrics)}")
    runs = args.runs if args.runs is not None else ([] if others else RUNS)
    results = [analyse(name) for name in runs] + [analyse(label, Path(path)) for label, path in others]
    args.out.write_text(json.dumps({"runs": results}, indent=1) + "\n")
    print("Spearman rank correlation with the forward KLD over each run's iterations")
    print(f"{'signal':34s}" + "".join(f"{r['run'][-5:]:>9s}" for r in results))
    for signal in SIGNALS:
        print(f"{signal:34s}" + "".join(f"{r['spearman_with_kld'][signal]:+9.2f}" for r in results))
    print("\nwhere loop.stable_ratio / stable_iterations stops each run (iteration, evaluations, KLD)")
    print("  run end / at 1e6: " + "; ".join(f"{r['final_kld']:.2e} @ {r['final_evaluations']:.2e} / "
                                             + ("-" if r["kld_at_1e6"] is None else f"{r['kld_at_1e6']:.2e}") for r in results))
    for j, (ratio, k) in enumerate(RULES):
        cells = []
        for r in results:
            stop = r["stops"][j]
            cells.append("never" if stop["iteration"] is None else f"it {stop['iteration']:3d} {stop['energy_evaluations']:.2e} {stop['forward_kld']:.2e}")
        print(f"  {ratio:4.2f} x {k}: " + " | ".join(cells))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
