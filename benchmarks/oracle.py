"""Benchmark: EnergyOracle throughput on alanine dipeptide against the physical limit of this machine.

    python benchmarks/oracle.py [--platform CPU] [--batch 512] [--repeats 5] [--out benchmarks/results]

The limit is a bare loop of setPositions/getState(energy, forces) on one Context in one process pinned to one
core; with W workers on W cores the ideal is W times that. Reports evaluations per second and the ratio to
the ideal. Writes `oracle_<platform>.json` and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform as host
import time
from pathlib import Path

import torch  # noqa: F401  (before openmm)
import openmm

from openmm_cgflow import EnergyOracle, create_system
from openmm_cgflow.platforms import default_properties, pin_to_core
from openmm_cgflow.systems.starting_data import run_langevin


def bare_rate(system, positions, platform_name, properties, repeats):
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform_name), properties)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for x in positions:
            context.setPositions(x)
            context.getState(getEnergy=True, getForces=True)
        best = max(best, len(positions) / (time.perf_counter() - start))
    return best


def oracle_rate(cg_system, positions, platform_name, n_workers, repeats, in_process=None):
    with EnergyOracle(cg_system, platform_name, n_workers=n_workers, in_process=in_process) as oracle:
        oracle.evaluate(positions[:8])  # warm up
        best = 0.0
        for _ in range(repeats):
            start = time.perf_counter()
            oracle.evaluate(positions)
            best = max(best, len(positions) / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--platform", default="CPU", choices=["Reference", "CPU", "OpenCL", "CUDA"])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    aldp = create_system("alanine-dipeptide")
    frames = run_langevin(aldp, n_steps=args.batch * 10, save_every=10, seed=0, platform="Reference").frames
    pin_to_core(cores[0])  # the bare loop: one pinned process
    limit = bare_rate(aldp.system, frames, args.platform, default_properties(args.platform), args.repeats)
    os.sched_setaffinity(0, set(cores))
    rows = [{"what": "bare Context loop, 1 pinned process", "workers": 1, "evaluations_per_s": limit, "ideal": limit, "ratio": 1.0}]
    rate = oracle_rate(aldp, frames, args.platform, 1, args.repeats, in_process=True)
    rows.append({"what": "EnergyOracle, in-process (unpinned)", "workers": 1, "evaluations_per_s": rate, "ideal": limit, "ratio": rate / limit})
    for workers in args.workers:
        rate = oracle_rate(aldp, frames, args.platform, workers, args.repeats)
        ideal = limit * min(workers, len(cores))
        rows.append({"what": f"EnergyOracle, {workers} worker(s)", "workers": workers, "evaluations_per_s": rate, "ideal": ideal, "ratio": rate / ideal})
    record = {
        "benchmark": "oracle",
        "system": "alanine-dipeptide (ff96 + OBC1, 22 atoms)",
        "platform": args.platform,
        "batch": args.batch,
        "cores": len(cores),
        "machine": host.platform(),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"oracle_{args.platform}.json"
    path.write_text(json.dumps(record, indent=2))
    print(f"{'what':40s} {'eval/s':>10s} {'ideal':>10s} {'ratio':>6s}")
    for r in rows:
        print(f"{r['what']:40s} {r['evaluations_per_s']:10.0f} {r['ideal']:10.0f} {r['ratio']:6.2f}")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
