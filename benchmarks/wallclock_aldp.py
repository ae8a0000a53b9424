"""Benchmark: wall clock of the aldp-fast recipe to 5e6 energy evaluations, one run at a time on the whole machine.

    python benchmarks/wallclock_aldp.py --launch --seeds 0 1 2 --runs runs/wallclock [--set KEY=VALUE ...]
    python benchmarks/wallclock_aldp.py --seeds 0 1 2 --runs runs/wallclock            (summarise finished runs)

``--launch`` runs ``cgflow run aldp-fast --seed S --set loop.max_iterations=108 --set loop.stop_kld=null`` for each
seed in turn (108 iterations reach 5,013,200 evaluations), each in its own process that pins itself as a user's run
does (the flow on one core, OpenMM workers and half the ensemble's member groups on the other); a run that is
already there is resumed (``--resume``), one that has reached 5e6 is left alone. Nothing else should run meanwhile.

The summary reads each run's ``metrics.json`` (wall time per iteration includes its checkpoint write) and writes
``benchmarks/results/wallclock_aldp.json``: ``seeds``, ``wall_s_to_5e6`` (per seed, the run's wall time interpolated to
5e6 evaluations), ``kld_at_5e6`` and ``kld_at_1e6`` (per seed, log-log interpolation between iterations, as
``aldp_efficiency.py``), ``iteration_wall_s_at_2k_labels`` and ``iteration_wall_s_at_40k_labels`` (per seed: the wall
time of the iteration that fits 2,000 labels, and of the first to fit >= 40,000), stage means, and the targets of
issue 32. It copies each run's metrics.json to ``benchmarks/results/aldp_runs/<name>-seed<S>/``.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

ITERATIONS_TO_5E6 = 108
TARGETS = {"wall_s_to_5e6_max": 4500.0, "iteration_ratio_max": 1.5, "kld_at_5e6_mean_max": 1.2e-3, "kld_at_1e6_mean_max": 2.4e-3}


def interpolate(rows: List[Dict], x: float, key: str, log: bool) -> Optional[float]:
    """``key`` at ``x`` energy evaluations: linear (or log-log) interpolation between the iterations around it."""
    for a, b in zip(rows, rows[1:]):
        if a["energy_evaluations"] <= x <= b["energy_evaluations"]:
            if log:
                t = (math.log(x) - math.log(a["energy_evaluations"])) / (math.log(b["energy_evaluations"]) - math.log(a["energy_evaluations"]))
                return math.exp(math.log(a[key]) + t * (math.log(b[key]) - math.log(a[key])))
            t = (x - a["energy_evaluations"]) / (b["energy_evaluations"] - a["energy_evaluations"])
            return a[key] + t * (b[key] - a[key])
    return None


def iteration_wall(rows: List[Dict], k: int) -> float:
    """Wall seconds of iteration ``rows[k]`` (from the end of the one before; the first from the run's start)."""
    return rows[k]["wall_s"] - (rows[k - 1]["wall_s"] if k else 0.0)


def summarise(run: Path) -> Dict:
    metrics = json.loads((run / "metrics.json").read_text())
    rows = metrics["iterations"]
    at_2k = next((k for k, r in enumerate(rows) if r["n_labels"] >= 2000), None)
    at_40k = next((k for k, r in enumerate(rows) if r["n_labels"] >= 40_000), None)
    late = [k for k, r in enumerate(rows) if r["n_labels"] >= 40_000]
    stages = {}
    for name, picks in (("at_2k_labels", [at_2k] if at_2k is not None else []), ("at_40k_labels_and_later", late)):
        keys = sorted({key for k in picks for key in rows[k].get("stage_wall_s", {})})
        stages[name] = {key: float(np.mean([rows[k]["stage_wall_s"].get(key, 0.0) for k in picks])) for key in keys} if picks else None
    return {
        "iterations": len(rows), "energy_evaluations": rows[-1]["energy_evaluations"], "n_labels": rows[-1]["n_labels"],
        "n_fit_rows": rows[-1].get("n_fit_rows"), "first_iteration_wall_s": rows[0]["wall_s"],
        "wall_s_to_5e6": interpolate(rows, 5e6, "wall_s", log=False), "kld_at_5e6": interpolate(rows, 5e6, "forward_kld", log=True),
        "kld_at_1e6": interpolate(rows, 1e6, "forward_kld", log=True),
        "iteration_wall_s_at_2k_labels": iteration_wall(rows, at_2k) if at_2k is not None else None,
        "iteration_wall_s_at_40k_labels": iteration_wall(rows, at_40k) if at_40k is not None else None,
        "mean_iteration_wall_s_from_40k_labels": float(np.mean([iteration_wall(rows, k) for k in late])) if late else None,
        "stage_wall_s": stages, "cell_width": metrics["config"]["labels"].get("cell_width"),
    }


def launch(seed: int, runs: Path, overrides: List[str]) -> None:
    out = runs / f"seed{seed}"
    if (out / "metrics.json").is_file():
        rows = json.loads((out / "metrics.json").read_text())["iterations"]
        if rows and rows[-1]["energy_evaluations"] >= 5e6:
            print(f"seed {seed}: already at {rows[-1]['energy_evaluations']:,} evaluations", flush=True)
            return
    command = [sys.executable, "-m", "openmm_cgflow.cli", "run", "aldp-fast", "--seed", str(seed), "--out", str(out), "--quiet",
               "--set", f"loop.max_iterations={ITERATIONS_TO_5E6}", "--set", "loop.stop_kld=null"]
    for text in overrides:
        command += ["--set", text]
    if (out / "checkpoint.pt").is_file():
        command.append("--resume")
    print("running:", " ".join(command[1:]), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    print(f"seed {seed}: process wall {time.perf_counter() - start:.0f} s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", type=Path, default=Path("runs/wallclock"))
    parser.add_argument("--launch", action="store_true")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--name", default="aldp-fast-wallclock", help="result name under benchmarks/results/aldp_runs/")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "wallclock_aldp.json")
    args = parser.parse_args()
    if args.launch:
        for seed in args.seeds:
            launch(seed, args.runs, args.overrides)
    per_seed = {}
    for seed in args.seeds:
        run = args.runs / f"seed{seed}"
        if (run / "metrics.json").is_file():
            per_seed[seed] = summarise(run)
            keep = Path(__file__).parent / "results" / "aldp_runs" / f"{args.name}-seed{seed}"
            keep.mkdir(parents=True, exist_ok=True)
            (keep / "metrics.json").write_text((run / "metrics.json").read_text())

    def column(key):
        return [per_seed[s][key] for s in per_seed]

    def mean(values):
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    two, forty = mean(column("iteration_wall_s_at_2k_labels")), mean(column("iteration_wall_s_at_40k_labels"))
    result = {
        "benchmark": "wallclock_aldp", "config": "aldp-fast", "overrides": args.overrides,
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "seeds": list(per_seed), "wall_s_to_5e6": column("wall_s_to_5e6"), "kld_at_5e6": column("kld_at_5e6"),
        "kld_at_1e6": column("kld_at_1e6"), "iteration_wall_s_at_2k_labels": column("iteration_wall_s_at_2k_labels"),
        "iteration_wall_s_at_40k_labels": column("iteration_wall_s_at_40k_labels"),
        "means": {"wall_s_to_5e6": mean(column("wall_s_to_5e6")), "kld_at_5e6": mean(column("kld_at_5e6")),
                  "kld_at_1e6": mean(column("kld_at_1e6")), "iteration_wall_s_at_2k_labels": two, "iteration_wall_s_at_40k_labels": forty,
                  "iteration_ratio_40k_to_2k": forty / two if two and forty else None},
        "targets": TARGETS, "runs": {str(s): v for s, v in per_seed.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{'seed':>5}{'iterations':>11}{'evaluations':>13}{'wall to 5e6':>13}{'KLD 1e6':>10}{'KLD 5e6':>10}{'it@2k s':>9}{'it@40k s':>10}")
    for seed, r in per_seed.items():
        def fmt(v, spec):
            return format(v, spec) if v is not None else "-"
        print(f"{seed:>5}{r['iterations']:>11}{r['energy_evaluations']:>13,}{fmt(r['wall_s_to_5e6'], '>13.0f')}{fmt(r['kld_at_1e6'], '>10.2e')}"
              f"{fmt(r['kld_at_5e6'], '>10.2e')}{fmt(r['iteration_wall_s_at_2k_labels'], '>9.1f')}{fmt(r['iteration_wall_s_at_40k_labels'], '>10.1f')}")
    print("means:", {k: (round(v, 6) if isinstance(v, float) else v) for k, v in result["means"].items()})
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
