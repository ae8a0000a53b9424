"""A short sweep of a baseline's settings on one system, so that the panel (benchmarks/panel.py) and the wall-clock
comparison (issue 32) run each baseline with its best settings, found as documented here, not as a new user
would guess them.

    python benchmarks/baseline_sweep.py --launch --method opes --system aldp --steps 3000000 \\
        --grid barrier=10,20,40 width=adaptive,0.15,0.3 deposit_every=500 [--runs runs/sweep]
    python benchmarks/baseline_sweep.py --method opes --system aldp --steps 3000000 --grid ...   (summarise)

Every combination of the ``--grid`` values is one ``cgflow baseline METHOD SYSTEM --seed 0 --steps N`` run; runs
go two at a time, one per pinned core, and a run already there is resumed (a longer ``--steps`` extends it).
``width=adaptive`` is OPES's adaptive kernel variance, a number a fixed kernel width (rad or nm; for OPES
``--fixed-width`` with that ``--width``); ``barrier`` (OPES, kT), ``bias_factor``, ``height`` (metad, kT) and
``deposit_every`` (steps) map to the command's flags, ``correct_smoothing=yes`` to OPES's ``--correct-smoothing``.
The summary ranks the combinations by forward KLD at the last step count all reached (log-log interpolated between snapshots) and at a third of it, with each run's steps/s
(every finished run in the folder, earlier grids' included; for OPES also the final KLD with the other free-energy
estimate, the kernel density with or without its smoothing correction), and writes
``benchmarks/results/sweep_<method>_<system>.json``. One seed per combination: a ranking to choose from, not an A/B;
the chosen setting's seeds run in the panel.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from curves import kld_at
from launching import cgflow, wait

ROOT = Path(__file__).resolve().parents[1]
FLAGS = {"barrier": "--barrier", "correct_smoothing": "--correct-smoothing", "bias_factor": "--bias-factor", "height": "--height",
         "deposit_every": "--deposit-every", "width": "--width"}
SUMMARY = {"metad": "metad_baseline.json", "opes": "opes_baseline.json"}


def combinations(grid: List[str]) -> List[Dict[str, str]]:
    """``["barrier=10,20", "width=adaptive,0.3"]`` -> every combination as ``{"barrier": "10", "width": "adaptive"}``."""
    axes = []
    for text in grid:
        key, _, values = text.partition("=")
        if key not in FLAGS or not values:
            raise SystemExit(f"--grid {text!r}: expected KEY=V1,V2,... with KEY one of {', '.join(FLAGS)}")
        axes.append([(key, v) for v in values.split(",")])
    return [dict(combo) for combo in itertools.product(*axes)]


def tag(combo: Dict[str, str]) -> str:
    return "_".join(f"{k}{v}" for k, v in combo.items())


def command_args(method: str, combo: Dict[str, str]) -> List[str]:
    args = []
    for key, value in combo.items():
        if key == "width" and value == "adaptive":
            if method != "opes":
                raise SystemExit("width=adaptive is OPES's adaptive variance")
            continue
        if key == "correct_smoothing":
            args += [FLAGS[key]] if value == "yes" else []
            continue
        args += [FLAGS[key], value]
        if key == "width" and method == "opes":
            args.append("--fixed-width")
    return args


def launch(args, combos: List[Dict[str, str]]) -> None:
    queue = []
    for combo in combos:
        out = args.runs / f"{args.method}_{args.system}" / tag(combo)
        summary = out / SUMMARY[args.method]
        if summary.is_file() and json.loads(summary.read_text())["steps"] >= args.steps:
            continue
        resume = ["--resume"] if (out / f"{args.method}_checkpoint.pt").is_file() else []
        queue.append(("baseline", args.method, args.system, "--seed", "0", "--steps", str(args.steps), "--out", str(out), "--quiet",
                      *(["--reference", str(args.reference)] if args.reference else []), *command_args(args.method, combo), *resume))
    running = {}
    while queue or running:
        for core in (0, 1):
            if core not in running and queue:
                running[core] = cgflow(*queue.pop(0), core=core)
        time.sleep(2)
        for core, process in list(running.items()):
            if process.poll() is not None:
                wait(process)
                del running[core]


def kld_at_steps(curve: List[Dict], steps: float) -> Optional[float]:
    points = [p for p in curve if p.get("forward_kld")]
    return kld_at([p["md_steps"] for p in points], [p["forward_kld"] for p in points], steps)


def opes_rescorer(args):
    """``rescore(out)``: the forward KLD of an OPES run's final state with the other free-energy estimate (the kernel
    density with and without its smoothing correction, ``--correct-smoothing``); the estimate changes only the
    scoring, not the sampling, so one run scores both. The system and its scoring grid are built once for all runs."""
    from openmm_cgflow.active_learning.scoring import metric_grid, score_points
    from openmm_cgflow.active_learning.settings import RunSettings
    from openmm_cgflow.baselines.opes import OPESProtocol, OPESSampler
    from openmm_cgflow.config import load_config
    from openmm_cgflow.scoring import forward_kld
    from openmm_cgflow.storage import load_checkpoint
    from openmm_cgflow.systems.base import kT_in_kJ_per_mol

    settings = RunSettings.from_config(load_config(args.system, [f"metrics.reference={args.reference}"] if args.reference else []))
    cg_system = settings.create_system()
    grid = metric_grid(settings.metrics, cg_system)
    points, kT = score_points(settings.metrics, cg_system.cg_dim, grid), kT_in_kJ_per_mol(cg_system.temperature)

    def rescore(out: Path) -> Dict:
        state = load_checkpoint(out / "opes_checkpoint.pt", ("protocol", "opes_state", "steps_done"))
        protocol = OPESProtocol(**{**state["protocol"], "correct_smoothing": not state["protocol"]["correct_smoothing"]})
        sampler = OPESSampler(protocol)
        sampler.build(cg_system.system, cg_system)
        sampler.opes.setState(state["opes_state"])
        F = sampler.free_energy(points, kT)
        return {"correct_smoothing": protocol.correct_smoothing, "steps": state["steps_done"],
                "forward_kld": forward_kld(grid.p_reference, F) if np.isfinite(F).all() else None}

    return rescore


def summarise(args) -> Dict:
    """Every finished run of the method on the system under ``--runs`` (this grid's and earlier ones'), ranked."""
    rows = []
    rescore = opes_rescorer(args) if args.method == "opes" else None
    for path in sorted((args.runs / f"{args.method}_{args.system}").glob(f"*/{SUMMARY[args.method]}")):
        summary = json.loads(path.read_text())
        rows.append({"settings": path.parent.name, "steps": summary["steps"], "steps_per_s": summary["steps_per_s"], "curve": summary["curve"],
                     "protocol": summary["protocol"]})
        if args.method == "opes":
            rows[-1]["final_kld_other_estimate"] = rescore(path.parent)
    if not rows:
        raise SystemExit("no finished run to summarise")
    common = min(r["steps"] for r in rows)
    for r in rows:
        r["kld_at_common"], r["kld_at_third"] = kld_at_steps(r["curve"], common), kld_at_steps(r["curve"], common / 3)
    rows.sort(key=lambda r: r["kld_at_common"] if r["kld_at_common"] is not None else math.inf)
    return {"benchmark": "baseline_sweep", "method": args.method, "system": args.system, "seed": 0, "common_steps": common, "rows": rows,
            "command": " ".join(sys.argv)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=sorted(SUMMARY), required=True)
    parser.add_argument("--system", required=True, help="a registered system, a built-in config or a YAML config")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--grid", nargs="+", required=True, metavar="KEY=V1,V2")
    parser.add_argument("--reference", type=Path, default=None)
    parser.add_argument("--runs", type=Path, default=Path("runs/sweep"))
    parser.add_argument("--launch", action="store_true")
    args = parser.parse_args()
    combos = combinations(args.grid)
    if args.launch:
        launch(args, combos)
    result = summarise(args)
    out = ROOT / "benchmarks" / "results" / f"sweep_{args.method}_{args.system}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"{'settings':<44}{'steps/s':>9}{'KLD at ' + format(result['common_steps'] / 3, '.2g'):>16}{'KLD at ' + format(result['common_steps'], '.2g'):>16}")
    for r in result["rows"]:
        fmt = (lambda v: f"{v:.2e}" if v is not None else "-")
        other = r.get("final_kld_other_estimate")
        print(f"{r['settings']:<44}{r['steps_per_s']:>9.0f}{fmt(r['kld_at_third']):>16}{fmt(r['kld_at_common']):>16}"
              + (f"   final, {'with' if other['correct_smoothing'] else 'without'} smoothing correction: {fmt(other['forward_kld'])}" if other else ""))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
