"""Does a run that stops because its uncertainty search found nothing stop too early? ``search.coverage_check`` on and
off, three seeds each, on a system the recipes were not tuned on, and on the Müller-Brown main job.

    python benchmarks/termination_coverage.py --launch [--runs runs/coverage]   (runs, one after another, then the table)
    python benchmarks/termination_coverage.py [--runs runs/coverage]            (table + results/termination_coverage.json)

Systems: the tilted four-well of ``tests/data/tilted_well.py`` (a double well along the linear CG coordinate s, a
second double well across it, so p(s_perp | s) has two modes; exact PMF in closed form) with the recipe a linear
system of one's own gets (Müller-Brown's, affine flow); and Müller-Brown itself (coverage on; off is the
recorded main job, ``results/muller_brown_al.json``). Per run: iterations, energy evaluations, final forward KLD,
the stop reason.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)
FOUR_WELL = f"""system:
  factory: {ROOT / 'tests' / 'data' / 'tilted_well.py'}:create
  arguments: {{perp_barrier: 10.0}}
loop:
  stop_kld: null
"""


def launch(runs: Path) -> None:
    runs.mkdir(parents=True, exist_ok=True)
    config = runs / "four-well.yaml"
    config.write_text(FOUR_WELL)
    jobs = [(runs / "four-well" / f"{'on' if on else 'off'}-{seed}", str(config), seed, on) for seed in SEEDS for on in (False, True)]
    jobs += [(runs / "muller-brown" / f"on-{seed}", "muller-brown", seed, True) for seed in SEEDS]
    for out, name, seed, on in jobs:
        if (out / "metrics.json").exists():
            continue
        command = [sys.executable, "-m", "openmm_cgflow.cli", "run", name, "--out", str(out), "--quiet", "--seed", str(seed),
                   "--set", f"search.coverage_check={'true' if on else 'false'}"]
        print("running:", " ".join(command[1:]), flush=True)
        subprocess.run(command, check=True)


def summarise(runs: Path, out: Path) -> dict:
    rows = []
    for system in ("four-well", "muller-brown"):
        for path in sorted((runs / system).glob("*-*")):
            metrics = json.loads((path / "metrics.json").read_text())
            last = metrics["iterations"][-1]
            rows.append({"system": system, "coverage_check": path.name.startswith("on"), "seed": int(path.name.split("-")[1]),
                         "iterations": len(metrics["iterations"]), "energy_evaluations": last["energy_evaluations"],
                         "final_forward_kld": last["forward_kld"], "run_wall_s": metrics["totals"].get("wall_s"),
                         "stop_reason": metrics["totals"]["stop_reason"]})
    recorded = json.loads((ROOT / "benchmarks" / "results" / "muller_brown_al.json").read_text())
    for run in recorded["runs"]:
        if run["variant"] == "default" and run["seed"] in SEEDS:
            rows.append({"system": "muller-brown", "coverage_check": False, "seed": run["seed"], "iterations": run["iterations"],
                         "energy_evaluations": run["energy_evaluations"], "final_forward_kld": run["final_forward_kld"],
                         "run_wall_s": run["run_wall_s"], "stop_reason": run["stop_reason"], "source": "results/muller_brown_al.json"})
    rows.sort(key=lambda r: (r["system"], r["coverage_check"], r["seed"]))
    out.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    print(f"{'system':14s} {'coverage':>8s} {'seed':>4s} {'iterations':>10s} {'evaluations':>11s} {'final KLD':>10s}")
    for r in rows:
        print(f"{r['system']:14s} {str(r['coverage_check']):>8s} {r['seed']:4d} {r['iterations']:10d} {r['energy_evaluations']:11,d} "
              f"{r['final_forward_kld']:10.3e}")
    print(f"wrote {out}")
    return {"rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "coverage")
    parser.add_argument("--launch", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "termination_coverage.json")
    args = parser.parse_args()
    if args.launch:
        launch(args.runs)
    summarise(args.runs, args.out)


if __name__ == "__main__":
    main()
