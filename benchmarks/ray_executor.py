"""Benchmark: the Ray energy executor against the local worker pool, for Amber ALDP (OBC1) and GFN2-xTB ALDP.

    python benchmarks/ray_executor.py [--workers 2] [--repeats 5] [--out benchmarks/results/ray_executor.json]

For each Hamiltonian and each executor (``local``: the package's pinned worker processes; ``ray``: one Ray actor
per Context on a local Ray with as many CPUs as workers), the wall time of ``EnergyOracle.evaluate_kj`` on batches
of several sizes (best of ``--repeats``). The **evaluations/s** are the slope of a straight line through the batch
times; the **per-batch overhead** is the wall time of a batch of one configuration per worker less the time one
evaluation takes at that rate (what a batch costs beyond its energies). Both executors give bitwise the same
energies (checked here on every batch). Amber evaluations cost ~0.3 ms, so the overhead shows; an xTB evaluation costs
~17 ms, so it disappears. Writes JSON and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform as host
import time
from pathlib import Path

import numpy as np
import torch  # noqa: F401  (before openmm)
import openmm

from openmm_cgflow import CGSystem, EnergyOracle, create_system

BATCHES = {"amber": (2, 64, 512, 2048), "xtb": (2, 8, 32)}  # the first: one configuration per worker (--workers 2)


def hamiltonians():
    """(name, CGSystem) for ALDP with Amber ff96 + OBC1 and for ALDP in vacuum with GFN2-xTB."""
    from openmmtools import testsystems

    from openmm_cgflow.systems.xtb import xtb_system

    yield "amber", create_system("alanine-dipeptide")
    ala = testsystems.AlanineDipeptideVacuum(constraints=None)
    x = np.asarray(ala.positions.value_in_unit(openmm.unit.nanometer))
    yield "xtb", CGSystem.from_openmm(xtb_system(ala.topology), ala.topology, x, 300.0, [[4, 6, 8, 14], [6, 8, 14, 16]], minimize=False)


def batch(cg_system: CGSystem, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.asarray(cg_system.positions)[None] + 0.003 * rng.standard_normal((n, cg_system.n_atoms, 3))


def timed(oracle: EnergyOracle, x: np.ndarray, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = oracle.evaluate_kj(x)
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "ray_executor.json")
    args = parser.parse_args()
    import ray

    ray.init(address="local", num_cpus=args.workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    rows = []
    for name, cg_system in hamiltonians():
        energies = {}
        for executor in ("local", "ray"):
            with EnergyOracle(cg_system, "CPU", n_workers=args.workers, executor=executor) as oracle:
                oracle.evaluate_kj(batch(cg_system, 2 * args.workers))  # warm: Contexts built, first calls done
                sizes, times = [], []
                for n in BATCHES[name]:
                    t, (u, _) = timed(oracle, batch(cg_system, n), args.repeats)
                    sizes.append(n)
                    times.append(t)
                    energies.setdefault(n, []).append(u)
            slope, _ = np.polyfit(sizes, times, 1)
            rows.append({"hamiltonian": name, "executor": executor, "workers": args.workers, "batch_sizes": sizes, "batch_wall_s": times,
                         "overhead_s_per_batch": float(times[0] - slope * sizes[0] / args.workers), "evaluations_per_s": float(1.0 / slope),
                         "evaluations_per_s_at_largest_batch": sizes[-1] / times[-1]})
        rows[-1]["bitwise_equal_to_local"] = all(np.array_equal(a, b, equal_nan=True) for a, b in energies.values())
    ray.shutdown()
    result = {"host": host.node(), "cores": len(os.sched_getaffinity(0)), "openmm": openmm.__version__, "ray": ray.__version__, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'hamiltonian':12s} {'executor':8s} {'evals/s':>9s} {'at B=max':>9s} {'overhead ms/batch':>17s}  batch wall s")
    for r in rows:
        print(f"{r['hamiltonian']:12s} {r['executor']:8s} {r['evaluations_per_s']:9.0f} {r['evaluations_per_s_at_largest_batch']:9.0f} "
              f"{1e3 * r['overhead_s_per_batch']:17.1f}  " + " ".join(f"{n}:{t:.3f}" for n, t in zip(r["batch_sizes"], r["batch_wall_s"])))
    print("ray == local, bitwise: " + ", ".join(f"{r['hamiltonian']} {r['bitwise_equal_to_local']}" for r in rows if "bitwise_equal_to_local" in r))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
