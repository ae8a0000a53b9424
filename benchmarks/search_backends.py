"""Benchmark: the uncertainty search by Metropolis MC vs by OpenMM CG dynamics, on the same trained ensemble.

    python benchmarks/search_backends.py --run runs/aldp-fast [--thresholds 0.2 0.3 0.5] [--repeats 3]
        [--out benchmarks/results/search_backends]

Loads the PMF ensemble of a finished run (its ``checkpoint.pt``), and from the same starting points (random
labelled CG points of the run) runs the paper's search (chains on exp(-F) stop where the ensemble std exceeds
the threshold) with both backends: ``mc`` (200 vectorised Metropolis chains, step 0.1 rad) and ``cg_dynamics``
(200 CG replicas, Langevin in one OpenMM Context on the PMF force; alanine dipeptide: backbone chains, 2 fs).
Reports per backend: steps to the 30th stopped chain, wall time, and where the stopped points lie (their PMF in kT
relative to the minimum, their std, and their distance from the chain's start). Writes JSON, prints a table.
(Müller-Brown's backends are compared on whole AL runs: ``benchmarks/muller_brown_al.py --variants default
cg_dynamics``.)
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from openmm_cgflow.coordinates.geometry import periodic_difference
from openmm_cgflow.pmf import PMFEnsemble
from openmm_cgflow.sampling import uncertainty_search
from openmm_cgflow.sampling.cg_dynamics_search import cg_dynamics_search
from openmm_cgflow.storage import load_checkpoint, write_json
from openmm_cgflow.systems import create_system


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished alanine-dipeptide run directory")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.2, 0.3, 0.5])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/search_backends"))
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    checkpoint = load_checkpoint(args.run / "checkpoint.pt")
    config = checkpoint["config"]
    cg_system = create_system(config["system"])
    if not cg_system.cg_periodic:
        raise SystemExit("search_backends.py compares alanine-dipeptide searches; for Müller-Brown use muller_brown_al.py")
    ensemble = PMFEnsemble(cg_system.cg_dim, config["ensemble"]["n_members"], config["ensemble"]["hidden"], periodic=True)
    ensemble.load_state_dict(checkpoint["ensemble"])
    points = np.asarray(checkpoint["dataset"]["point_s"])
    grid = np.stack(np.meshgrid(*([np.linspace(-np.pi, np.pi, 100, endpoint=False)] * 2), indexing="ij"), -1).reshape(-1, 2)
    F_min = ensemble.predict(grid)[0].min()
    rows = []
    for threshold in args.thresholds:
        for repeat in range(args.repeats):
            rng = np.random.default_rng(repeat)
            start = points[rng.integers(len(points), size=200)]
            for backend in ("mc", "cg_dynamics"):
                t0 = time.perf_counter()
                if backend == "mc":
                    result = uncertainty_search(ensemble, torch.as_tensor(start), 30, 0.1, threshold, 1, 200_000,
                                                torch.Generator().manual_seed(repeat), periodic=True)
                else:
                    result = cg_dynamics_search(ensemble, cg_system, start, 30, threshold, 10, 200_000, seed=repeat,
                                                timestep_fs=2.0, friction_per_ps=10.0, check_every=10)
                wall = time.perf_counter() - t0
                stopped = result.points.numpy()
                mean, std = ensemble.predict(stopped) if len(stopped) else (np.zeros(0), np.zeros(0))
                moved = np.linalg.norm(periodic_difference(stopped, start[result.chains.numpy()]), axis=-1) if len(stopped) else np.zeros(0)
                rows.append({
                    "threshold_kT": threshold, "repeat": repeat, "backend": backend, "success": bool(result.success),
                    "steps": int(result.n_steps), "wall_s": wall, "n_stopped": int(len(stopped)),
                    "median_F_kT": float(np.median(mean - F_min)) if len(stopped) else None,
                    "median_std_kT": float(np.median(std)) if len(stopped) else None,
                    "median_distance_rad": float(np.median(moved)) if len(stopped) else None,
                })
                r = rows[-1]
                print(f"threshold {threshold} repeat {repeat} {backend:12s}: {r['steps']} steps, {wall:.1f} s, F {r['median_F_kT']}, distance {r['median_distance_rad']}", flush=True)
    result = {
        "run": str(args.run), "rows": rows,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": sys.version.split()[0]},
        "command": "python benchmarks/search_backends.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "search_backends.json", result)
    print(f"\n{'threshold':>9} {'backend':>12} {'steps':>8} {'wall s':>7} {'F kT':>6} {'std kT':>7} {'moved rad':>9}  (medians over repeats)")
    for threshold in args.thresholds:
        for backend in ("mc", "cg_dynamics"):
            sel = [r for r in rows if r["threshold_kT"] == threshold and r["backend"] == backend and r["success"]]
            if not sel:
                print(f"{threshold:9.2f} {backend:>12}   no successful search")
                continue
            med = lambda key: float(np.median([r[key] for r in sel]))  # noqa: E731
            print(f"{threshold:9.2f} {backend:>12} {med('steps'):8.0f} {med('wall_s'):7.1f} {med('median_F_kT'):6.2f} "
                  f"{med('median_std_kT'):7.2f} {med('median_distance_rad'):9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
