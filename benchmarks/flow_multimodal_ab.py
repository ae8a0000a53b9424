"""Can the default flow of a linear system represent a two-mode conditional p(s_perp | s)? (issue 33, item 4)

    python benchmarks/flow_multimodal_ab.py --launch [--runs runs/multimodal] [--seeds 0 1 2]   (runs, then the table)
    python benchmarks/flow_multimodal_ab.py [--runs runs/multimodal]                            (table + JSON)

System: the coupled four-well of ``tests/data/tilted_well.py`` (``perp_barrier: 10``, ``coupling: 3``): a double
well along the linear CG coordinate s and one across it, whose two modes' weights change with s (about 3:1 at
s = +-1, equal at s = 0). A flow that covers one mode per s puts labels up to ln 2 kT too high, most at the barrier;
the PMF is exact by quadrature. Arms, each run through ``system: {factory: ...}`` with the recipe a linear system of
one's own gets (Müller-Brown's): ``affine`` (its conditional affine Gaussian flow) and ``spline`` (``flow.kind:
spline``, ``flow.context: raw``, ``flow.hidden: [64]``). Runs go one after another (each pins itself to the
machine's cores). Per run: iterations, energy evaluations, wall seconds, final forward KLD, and the largest error of
the final PMF (offset removed, probability-weighted) over the bins with F < 4 kT, and at the barrier s = 0.
Writes ``benchmarks/results/flow_multimodal_ab.json``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = f"""system:
  factory: {ROOT / 'tests' / 'data' / 'tilted_well.py'}:create
  arguments: {{perp_barrier: 10.0, coupling: 3.0}}
loop:
  stop_kld: null
"""
ARMS = {"affine": [], "spline": ["flow.kind=spline", "flow.context=raw", "flow.hidden=[64]"]}


def launch(runs: Path, seeds: List[int]) -> None:
    runs.mkdir(parents=True, exist_ok=True)
    config = runs / "coupled-four-well.yaml"
    config.write_text(CONFIG)
    for seed in seeds:
        for arm, overrides in ARMS.items():
            out = runs / f"{arm}-{seed}"
            if (out / "metrics.json").exists() and json.loads((out / "metrics.json").read_text())["totals"].get("stop_reason"):
                continue
            command = [sys.executable, "-m", "openmm_cgflow.cli", "run", str(config), "--out", str(out), "--quiet", "--seed", str(seed),
                       *(["--resume"] if (out / "checkpoint.pt").exists() else [])]
            for text in overrides:
                command += ["--set", text]
            print("running:", " ".join(command[1:]), flush=True)
            subprocess.run(command, check=True)


def pmf_errors(run: Path) -> Dict[str, float]:
    """The final PMF against the exact one on the scoring grid: the largest error over bins with F < 4 kT and the
    error at the bin nearest s = 0 (kT, after removing the probability-weighted mean offset)."""
    from openmm_cgflow.active_learning.checkpoint import read_run_checkpoint
    from openmm_cgflow.active_learning.scoring import metric_grid_for_config

    checkpoint = read_run_checkpoint(run / "checkpoint.pt")
    grid = metric_grid_for_config(checkpoint["config"])
    F_ref = -np.log(grid.p_reference)
    F_ref -= F_ref.min()
    error = np.asarray(checkpoint["state"]["history"][-1]["mean"], dtype=np.float64) - F_ref
    error -= np.sum(grid.p_reference * error)
    probable = F_ref < 4.0
    return {"max_abs_error_below_4kT": float(np.abs(error[probable]).max()),
            "error_at_barrier": float(error[np.argmin(np.abs(grid.centres[:, 0]))])}


def summarise(runs: Path, out: Path) -> Dict:
    rows = []
    for path in sorted(runs.glob("*-*")):
        if not (path / "metrics.json").is_file() or path.suffix:
            continue
        metrics = json.loads((path / "metrics.json").read_text())
        last = metrics["iterations"][-1]
        arm, seed = path.name.rsplit("-", 1)
        rows.append({"arm": arm, "seed": int(seed), "iterations": len(metrics["iterations"]), "energy_evaluations": last["energy_evaluations"],
                     "run_wall_s": metrics["totals"].get("wall_s"), "final_forward_kld": last["forward_kld"],
                     "std_visited_mean": last.get("std_visited_mean"), "stop_reason": metrics["totals"].get("stop_reason"), **pmf_errors(path)})
    rows.sort(key=lambda r: (r["arm"], r["seed"]))
    result = {"benchmark": "flow_multimodal_ab", "system": CONFIG, "arms": ARMS, "rows": rows, "command": " ".join(sys.argv)}
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'arm':8s} {'seed':>4s} {'it':>3s} {'evaluations':>11s} {'wall s':>7s} {'final KLD':>10s} {'max err <4kT':>12s} {'err s=0':>8s} {'std':>6s}")
    for r in rows:
        print(f"{r['arm']:8s} {r['seed']:4d} {r['iterations']:3d} {r['energy_evaluations']:11,d} {r['run_wall_s']:7.0f} {r['final_forward_kld']:10.3e} "
              f"{r['max_abs_error_below_4kT']:12.3f} {r['error_at_barrier']:8.3f} {r['std_visited_mean']:6.3f}")
    print(f"wrote {out}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "multimodal")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--launch", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "flow_multimodal_ab.json")
    args = parser.parse_args()
    if args.launch:
        launch(args.runs, args.seeds)
    summarise(args.runs, args.out)


if __name__ == "__main__":
    main()
