"""Which recipe should a user's own molecule get? The molecule defaults (``configs/aldp-vacuum.yaml``) against the same
with ``aldp-fast``'s departures (the recipe that beats MD and metadynamics on ALDP in OBC1), three seeds each, on
alanine dipeptide in vacuum through the generic molecule path (issue 33, item 1).

    python benchmarks/molecule_recipe_ab.py --launch [--runs runs/recipe-ab] [--iterations 8]
    python benchmarks/molecule_recipe_ab.py [--runs runs/recipe-ab]      (table + results/molecule_recipe_ab.json)

``--launch`` runs ``cgflow run aldp-vacuum --seeds 0 1 2 --cpus-per-job 1`` for both variants at once: six jobs, two
at a time, each pinned to a core of its own (``energy.n_workers=1``). Scored against
``results/reference_aldp-vacuum.npz`` (two 1e7-step well-tempered metadynamics runs; good to a few 1e-3, see
``studies/molecules-vacuum-ace-ala2-nme.md``), the same file for both variants.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "benchmarks" / "results" / "reference_aldp-vacuum.npz"
SEEDS = (0, 1, 2)
#: aldp-fast's departures from the molecule defaults that are not about alanine dipeptide itself (its system,
#: search start, reference and D-residue filter stay the molecule's)
FAST = ["flow.hidden=[128]", "flow.context=periodic2", "flow.precision=float32", "flow.compile=true",
        "energy_training.epochs_first_iteration=40", "labels.accumulate_from_epoch=10", "ensemble.precision=float32",
        "ensemble.lbfgs_groups=10"]
VARIANTS = {"molecule-default": [], "aldp-fast-departures": FAST}


def launch(runs: Path, iterations: int) -> None:
    common = ["--set", "energy.n_workers=1", "--set", f"metrics.reference={REFERENCE}", "--set", f"loop.max_iterations={iterations}",
              "--set", "loop.stop_kld=null", "--set", "loop.stable_ratio=null", "--seeds", *map(str, SEEDS), "--cpus-per-job", "1", "--quiet"]
    processes = []
    for name, overrides in VARIANTS.items():
        command = [sys.executable, "-m", "openmm_cgflow.cli", "run", "aldp-vacuum", "--out", str(runs / name), *common]
        command += [arg for o in overrides for arg in ("--set", o)]
        if (runs / name / "seed0").exists():
            command.append("--resume")
        print("running:", " ".join(command[1:]), flush=True)
        processes.append(subprocess.Popen(command))
    failed = [p.args for p in processes if p.wait()]
    if failed:
        raise SystemExit(f"failed: {failed}")


def summarise(runs: Path, out: Path) -> dict:
    result = {"reference": str(REFERENCE.relative_to(ROOT)), "variants": {}}
    for name, overrides in VARIANTS.items():
        seeds = {}
        for seed in SEEDS:
            path = runs / name / f"seed{seed}" / "metrics.json"
            if not path.exists():
                continue
            metrics = json.loads(path.read_text())
            seeds[seed] = [{"iteration": it["iteration"], "energy_evaluations": it["energy_evaluations"], "forward_kld": it["forward_kld"],
                            "wall_s": it["wall_s"]} for it in metrics["iterations"]]
        result["variants"][name] = {"overrides": overrides, "seeds": seeds}
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"forward KLD against {REFERENCE.name} (one core per run)")
    for name, variant in result["variants"].items():
        for seed, rows in variant["seeds"].items():
            print(f"{name:22s} seed {seed}: " + " ".join(f"{r['forward_kld']:.2e}" for r in rows)
                  + f"  ({rows[-1]['energy_evaluations']:,} evaluations, {rows[-1]['wall_s']:.0f} s)")
        finals = [rows[-1]["forward_kld"] for rows in variant["seeds"].values()]
        if finals:
            print(f"{name:22s} mean final KLD {np.mean(finals):.2e}")
    print(f"wrote {out}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "recipe-ab")
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--launch", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "molecule_recipe_ab.json")
    args = parser.parse_args()
    if args.launch:
        launch(args.runs, args.iterations)
    summarise(args.runs, args.out)


if __name__ == "__main__":
    main()
