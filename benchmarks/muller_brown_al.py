"""Benchmark: full Müller-Brown active-learning runs (forward KLD, energy evaluations, wall time).

    python benchmarks/muller_brown_al.py [--seeds 0 1 2] [--variants default paper] [--out benchmarks/results]

Each run is a `cgflow run muller-brown` in a fresh process, unpinned as a new user runs the README command (the
program pins itself and uses a spare core for the PMF ensemble's second member group); ``--core N`` pins the
whole run to one core instead. Runs go one after another, so timings are not disturbed by each other. Writes `muller_brown_al.json` and prints a table.
Variants:
  default  the shipped config (L-BFGS ensemble fit, search bounded to the scored range, restart from data)
  paper    the paper's recipe (Adam ensemble fit, batch 5 x 1000 epochs; unbounded search; stop on a failed search)
  cg_dynamics  the default config with the uncertainty search run as OpenMM Langevin CG dynamics on the PMF
           force (search.backend=cg_dynamics) instead of Metropolis MC
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from openmm_cgflow._version import __version__ as cgflow_version

VARIANTS = {
    "default": [],
    "paper": [
        "ensemble.optimizer=adam", "ensemble.lr=1.0e-3", "ensemble.batch_size=5", "ensemble.epochs=1000",
        "search.bounds=null", "search.restart_from_data=false",
    ],
    "cg_dynamics": ["search.backend=cg_dynamics"],
}


def run_one(variant: str, seed: int, workdir: Path, core: Optional[int], extra: Sequence[str] = ()) -> dict:
    out = workdir / f"{variant}-seed{seed}"
    command = [sys.executable, "-m", "openmm_cgflow.cli", "run", "muller-brown", "--out", str(out), "--quiet", "--seed", str(seed)]
    for item in [*VARIANTS[variant], *extra]:
        command += ["--set", item]
    start = time.perf_counter()
    pin = None if core is None else (lambda: os.sched_setaffinity(0, {core}))
    subprocess.run(command, check=True, preexec_fn=pin)
    process_wall = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "variant": variant,
        "overrides": list(extra),
        "seed": seed,
        "process_wall_s": process_wall,
        "run_wall_s": metrics["totals"]["wall_s"],
        "final_forward_kld": metrics["totals"]["final_forward_kld"],
        "energy_evaluations": metrics["totals"]["energy_evaluations"],
        "iterations": metrics["totals"]["iterations"],
        "stop_reason": metrics["totals"]["stop_reason"],
        "per_iteration": [
            {k: row[k] for k in ("iteration", "energy_evaluations", "forward_kld", "wall_s")} for row in metrics["iterations"]
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--variants", nargs="+", default=["default"], choices=sorted(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--core", type=int, default=None, help="pin each run to this CPU core (default: unpinned, as a user runs it)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override added to every variant's runs (repeatable), as `cgflow run --set`")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            for seed in args.seeds:
                results.append(run_one(variant, seed, Path(tmp), args.core, args.overrides))
                r = results[-1]
                print(f"{variant:8s} seed {seed}: KLD {r['final_forward_kld']:.2e}  evals {r['energy_evaluations']}  "
                      f"{r['process_wall_s']:.1f} s ({r['iterations']} iterations; {r['stop_reason']})", flush=True)
    record = {
        "benchmark": "muller_brown_al",
        "package_version": cgflow_version,
        "machine": {"cpu_count": os.cpu_count(), "cores_available": len(os.sched_getaffinity(0)), "platform": platform.platform(), "python": platform.python_version()},
        "pinned_core": args.core,
        "runs": results,
    }
    path = args.out / "muller_brown_al.json"
    path.write_text(json.dumps(record, indent=2))
    print(f"\n{'variant':8s} {'seed':>4s} {'iters':>5s} {'final KLD':>10s} {'evaluations':>11s} {'wall s':>7s}  KLD <= 1e-3")
    for r in results:
        print(f"{r['variant']:8s} {r['seed']:4d} {r['iterations']:5d} {r['final_forward_kld']:10.2e} {r['energy_evaluations']:11d} "
              f"{r['process_wall_s']:7.1f}  {'yes' if r['final_forward_kld'] <= 1e-3 else 'NO'}")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
