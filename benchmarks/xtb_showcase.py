"""Showcase: an expensive Hamiltonian. n-Butane in vacuum with GFN2-xTB, one CG dihedral (C1-C2-C3-C4), where every
evaluation costs milliseconds: active learning against plain MD and well-tempered metadynamics on the same
Hamiltonian, each on one core, scored against an umbrella-sampling reference made here.

    python benchmarks/xtb_showcase.py --launch [--runs runs/xtb] [--al-iterations 12] [--md-steps 300000]
    python benchmarks/xtb_showcase.py [--runs runs/xtb]          (summarise: table + benchmarks/results/xtb_showcase.json)

``--launch`` runs, one process per core of the machine's two (each pinned to its own core):
1. the reference: ``cgflow reference benchmarks/inputs/butane-xtb.yaml --seeds 1 2 --executor local`` (36 windows,
   ``--passes`` passes of ``--steps-per-pass`` steps; the two seeds are the halves of its own error);
2. on core 0 the active-learning run (``cgflow run benchmarks/inputs/butane-xtb.yaml``, the default molecule recipe
   on one core: ``energy.n_workers=1``), scored against the reference, ``--al-iterations`` iterations; meanwhile on
   core 1 plain MD and then well-tempered metadynamics (``cgflow baseline md|metad``, seed 0, ``--md-steps`` each).
Steps already done are resumed (``--resume``); a finished phase is left alone.

The summary measures the cost of one xTB evaluation (a pinned loop over a Context, energy and forces), and reports
per method: evaluations and wall seconds to forward KLD 2e-2 and 1e-2 (and the final KLD), the share of the
method's wall time that is not spent in energies (the *overhead fraction*: AL's flow training, fits and search; a
baseline's integrator and bias), and for AL the projected wall time with N Ray energy workers,
t(N) = overhead + evaluations x cost / N (the energies spread over N actors, the rest on the driver).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from launching import cgflow, wait

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "benchmarks" / "inputs" / "butane-xtb.yaml"
THRESHOLDS = (2e-2, 1e-2)  # the reference's own halves differ by ~1e-2 (one pass of 2,000 steps per window)
WORKERS = (1, 4, 16, 64)


def launch(args) -> None:
    runs = args.runs
    reference = runs / "reference" / "reference_butane-xtb.npz"
    if not reference.is_file():
        resume = ["--resume"] if (runs / "reference" / "seed1" / "state.npz").exists() else []
        wait(cgflow("reference", str(CONFIG), "--out", str(runs / "reference"), "--seeds", "1", "2", "--executor", "local",
                    "--passes", str(args.passes), "--steps-per-pass", str(args.steps_per_pass), "--quiet", *resume))
    # then one method per core: AL on core 0 meanwhile MD and metadynamics, one after the other, on core 1
    al = runs / "al"
    queue = {0: [], 1: []}
    if not (al / "metrics.json").exists() or len(json.loads((al / "metrics.json").read_text())["iterations"]) < args.al_iterations:
        resume = ["--resume"] if (al / "checkpoint.pt").exists() else []
        queue[0].append(("run", str(CONFIG), "--out", str(al), "--quiet", "--set", "energy.n_workers=1", "--set", f"metrics.reference={reference}",
                         "--set", f"loop.max_iterations={args.al_iterations}", "--set", "loop.stop_kld=null",
                         "--set", "loop.stable_ratio=null", *resume))
    for method in ("md", "metad"):
        out = runs / method
        if _baseline_steps(out, method) >= args.md_steps:
            continue
        checkpoint = out / f"{method}_checkpoint.pt"
        queue[1].append(("baseline", method, str(CONFIG), "--steps", str(args.md_steps), "--out", str(out), "--reference", str(reference),
                         "--quiet", *(["--resume"] if checkpoint.exists() else [])))
    running = {core: cgflow(*queue[core].pop(0), core=core) for core in queue if queue[core]}
    while running:
        time.sleep(2)
        for core, process in list(running.items()):
            if process.poll() is not None:
                wait(process)
                if queue[core]:
                    running[core] = cgflow(*queue[core].pop(0), core=core)
                else:
                    del running[core]


def _baseline_steps(out: Path, method: str) -> int:
    path = out / f"{method}_baseline.json"
    return int(json.loads(path.read_text()).get("steps", 0)) if path.exists() else 0


def evaluation_cost(repeats: int = 200) -> float:
    """Seconds per xTB energy + forces of butane on one pinned core (a bare loop over one Context)."""
    import torch  # noqa: F401  (before openmm)
    import openmm

    from openmm_cgflow.active_learning.settings import RunSettings
    from openmm_cgflow.config import load_config

    os.sched_setaffinity(0, {0})
    cg_system = RunSettings.from_config(load_config(str(CONFIG))).create_system()
    context = openmm.Context(cg_system.system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("CPU"))
    rng = np.random.default_rng(0)
    x = np.asarray(cg_system.positions)
    context.setPositions(x)
    context.getState(getEnergy=True, getForces=True)
    start = time.perf_counter()
    for _ in range(repeats):
        context.setPositions(x + 0.002 * rng.standard_normal(x.shape))
        context.getState(getEnergy=True, getForces=True)
    return (time.perf_counter() - start) / repeats


def crossing(xs: List[float], klds: List[float], threshold: float) -> Optional[float]:
    """The first x at which the KLD curve falls to ``threshold`` (log-log interpolation between points)."""
    for (x0, k0), (x1, k1) in zip(zip(xs, klds), zip(xs[1:], klds[1:])):
        if k0 is None or k1 is None:
            continue
        if k1 <= threshold < k0:
            t = (math.log(threshold) - math.log(k0)) / (math.log(k1) - math.log(k0))
            return math.exp(math.log(x0) + t * (math.log(x1) - math.log(x0)))
    if klds and klds[0] is not None and klds[0] <= threshold:
        return xs[0]
    return None


def curves(runs: Path) -> Dict[str, Dict[str, list]]:
    out = {}
    metrics = json.loads((runs / "al" / "metrics.json").read_text())
    rows = metrics["iterations"]
    out["active learning"] = {"evaluations": [r["energy_evaluations"] for r in rows], "wall_s": [r["wall_s"] for r in rows],
                              "kld": [r["forward_kld"] for r in rows]}
    metad = json.loads((runs / "metad" / "metad_baseline.json").read_text())
    points = [p for p in metad["curve"] if p["forward_kld"] is not None]
    out["well-tempered metadynamics"] = {"evaluations": [p["md_steps"] for p in points], "wall_s": [p["wall_s"] for p in points],
                                         "kld": [p["forward_kld"] for p in points]}
    from openmm_cgflow.baselines.md import score_md_baseline

    md = json.loads((runs / "md" / "md_baseline.json").read_text())
    scored = score_md_baseline(runs / "md", runs / "reference" / "reference_butane-xtb.npz", frame="iupac")
    rate = md["steps"] / md["wall_s"]
    out["plain MD"] = {"evaluations": [p["md_steps"] for p in scored], "wall_s": [p["md_steps"] / rate for p in scored],
                       "kld": [p["forward_kld"] for p in scored]}
    return out


def summarise(args) -> Dict:
    cost = evaluation_cost()
    reference = json.loads((args.runs / "reference" / "umbrella.json").read_text())
    rows = []
    for method, c in curves(args.runs).items():
        row = {"method": method, "final_evaluations": c["evaluations"][-1], "final_wall_s": c["wall_s"][-1], "final_kld": c["kld"][-1]}
        energy_s = c["evaluations"][-1] * cost
        row["overhead_fraction"] = max(0.0, 1.0 - energy_s / c["wall_s"][-1])
        for threshold in THRESHOLDS:
            row[f"evaluations_to_{threshold:.0e}"] = crossing(c["evaluations"], c["kld"], threshold)
            row[f"wall_s_to_{threshold:.0e}"] = crossing(c["wall_s"], c["kld"], threshold)
        if method == "active learning":
            overhead = c["wall_s"][-1] - energy_s
            row["projected_wall_s_with_n_ray_workers"] = {str(n): overhead + energy_s / n for n in WORKERS}
        rows.append(row)
    result = {"molecule": "n-butane, vacuum, GFN2-xTB (tblite), CG: C1-C2-C3-C4 dihedral", "cores_per_method": 1,
              "seconds_per_evaluation": cost, "reference": {"runs": reference["runs"], "protocol": reference["protocol"]}, "rows": rows}
    from openmm_cgflow.scoring.grid import load_reference

    ref = load_reference(args.runs / "reference" / "reference_butane-xtb.npz", frame="iupac", dim=1)
    result["reference"]["kld_between_halves"] = ref.provenance.get("kld_between_halves")
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"xTB butane: {1e3 * cost:.1f} ms per evaluation (energy + forces, one core); reference halves agree to "
          f"{result['reference']['kld_between_halves']}")
    head = f"{'method':28s} {'evals to 2e-2':>13s} {'s to 2e-2':>9s} {'evals to 1e-2':>13s} {'s to 1e-2':>9s} {'final KLD':>9s} {'evals':>9s} {'wall s':>7s} {'overhead':>8s}"
    print(head)
    fmt = lambda v, f: (f.format(v) if v is not None else "-")  # noqa: E731
    for r in rows:
        print(f"{r['method']:28s} {fmt(r['evaluations_to_2e-02'], '{:13,.0f}'):>13s} {fmt(r['wall_s_to_2e-02'], '{:9.0f}'):>9s} "
              f"{fmt(r['evaluations_to_1e-02'], '{:13,.0f}'):>13s} {fmt(r['wall_s_to_1e-02'], '{:9.0f}'):>9s} {r['final_kld']:9.2e} "
              f"{r['final_evaluations']:9,d} {r['final_wall_s']:7.0f} {r['overhead_fraction']:8.0%}")
    al = next(r for r in rows if r["method"] == "active learning")
    print("AL projected wall s with N Ray energy workers: " + ", ".join(f"N={n}: {t:.0f}" for n, t in al["projected_wall_s_with_n_ray_workers"].items()))
    print(f"written {args.out}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "xtb")
    parser.add_argument("--launch", action="store_true")
    parser.add_argument("--passes", type=int, default=1)
    parser.add_argument("--steps-per-pass", type=int, default=4000)
    parser.add_argument("--md-steps", type=int, default=300_000)
    parser.add_argument("--al-iterations", type=int, default=12)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "xtb_showcase.json")
    args = parser.parse_args()
    if args.launch:
        launch(args)
    summarise(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
