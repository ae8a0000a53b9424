"""Benchmark: CPU time of one training-by-energy step of a system's spline flow, per precision and compile setting.

    python benchmarks/flow_step.py [--system alanine-dipeptide] [--hidden 128] [--layers 8] [--batch 64] [--steps 60] \\
        [--device cpu] [--out benchmarks/results/flow_step.json]
    python benchmarks/flow_step.py --scaling [--batches 64 256] [--threads 1 2]

Times what ``EnergyTrainer.step`` does besides the OpenMM call (sampling, the flow's sampling direction, the Z-matrix
map to Cartesians, the loss, backward, gradient clipping, Adam) for flow.precision float64/float32 x flow.compile
false/true, in this process pinned to one core with one torch thread. The energy is a stand-in (a harmonic term on
the positions, so the backward pass reaches the positions as the OpenMM forces do); the oracle's time is measured
by benchmarks/oracle.py. On the CPU: CPU time (``time.process_time``), so another busy process on the machine
matters less; on a GPU (``--device cuda``): wall time with the device synchronised. Compile time is reported
separately. Writes JSON and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from openmm_cgflow.flows import ConditionalSplineFlow
from openmm_cgflow.systems import create_system


def time_steps(cg_system, precision: str, compile: bool, hidden: int, layers: int, batch: int, steps: int,
               device: str = "cpu", wall: bool = False) -> dict:
    """One configuration: the training step's time per step and per sample (the flow on ``device``; the Z-matrix map
    on the CPU, as :class:`~openmm_cgflow.flows.training.EnergyTrainer` runs it). ``wall``: wall time on the CPU too
    (for more than one torch thread, where CPU time adds the threads up)."""
    torch.manual_seed(0)
    flow = ConditionalSplineFlow(cg_system.fg_dim, list(cg_system.flow_circular_indices), cg_system.cg_dim, layers, 8, hidden, 1)
    if precision == "float32":
        flow.float()
    flow.to(device)
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-4, fused=True)
    sample = torch.compile(flow) if compile else flow
    to_cartesian = torch.compile(cg_system.to_cartesian) if compile else cg_system.to_cartesian
    generator = torch.Generator().manual_seed(0)
    s = torch.rand(batch, cg_system.cg_dim, generator=generator, dtype=torch.float64) * 6.2 - 3.1
    s_device = s.to(device)
    on_cpu = torch.device(device).type == "cpu"

    def clock() -> float:
        if on_cpu:
            return time.perf_counter() if wall else time.process_time()
        torch.cuda.synchronize()
        return time.perf_counter()

    def step():
        z = flow.sample_base(batch, generator).to(device)
        x, logdet = sample(z, s_device)
        positions, log_jacobian = to_cartesian(s, x.cpu())
        loss = (0.5 * (positions * positions.detach()).sum((1, 2)) - log_jacobian - logdet.cpu()).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 1000.0)
        optimizer.step()

    start = clock()
    for _ in range(3):
        step()
    warmup = clock() - start
    start = clock()
    for _ in range(steps):
        step()
    per_step = (clock() - start) / steps
    return {"device": device, "precision": precision, "compile": compile, "batch": batch, "ms_per_step": round(1e3 * per_step, 2),
            "us_per_sample": round(1e6 * per_step / batch, 1), "samples_per_s": round(batch / per_step), "warmup_s": round(warmup, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", default="alanine-dipeptide")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--device", default="cpu", help="where the flow runs: cpu, cuda (the Z-matrix map stays on the CPU)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "flow_step.json")
    parser.add_argument("--scaling", action="store_true",
                        help="float32 compiled only, for every --batches x --threads, wall time (writes flow_step_scaling.json)")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    if args.scaling:
        scaling(args)
        return
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    torch.set_num_threads(1)
    cg_system = create_system(args.system)
    rows = [time_steps(cg_system, precision, compile, args.hidden, args.layers, args.batch, args.steps, args.device)
            for precision in ("float64", "float32") for compile in (False, True)]
    result = {"system": args.system, "device": args.device, "flow": f"{args.layers} x {args.hidden}", "batch": args.batch, "steps": args.steps,
              "torch": torch.__version__, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    clock = "CPU time (one core)" if args.device == "cpu" else f"wall time, flow on {args.device}"
    print(f"{args.system}, flow {args.layers} x {args.hidden}, batch {args.batch}: {clock} per training step")
    print(f"{'precision':<10}{'compile':>9}{'ms/step':>10}{'us/sample':>11}{'warm-up s':>11}")
    for r in rows:
        print(f"{r['precision']:<10}{str(r['compile']):>9}{r['ms_per_step']:>10.1f}{r['us_per_sample']:>11.0f}{r['warmup_s']:>11.1f}")
    print(f"written to {args.out}")


def scaling(args) -> None:
    """Samples per second of the float32 compiled step against batch size and torch threads (wall time; one
    thread: pinned to one core). Whether larger batches or a second core make the flow's step cheaper per sample."""
    cg_system = create_system(args.system)
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    rows = []
    for threads in args.threads:
        if allowed:
            os.sched_setaffinity(0, set(allowed[-threads:]))
        torch.set_num_threads(threads)
        for batch in args.batches:
            row = time_steps(cg_system, "float32", True, args.hidden, args.layers, batch, args.steps, args.device, wall=True)
            rows.append({"threads": threads, **row})
    out = args.out.with_name("flow_step_scaling.json") if args.out.name == "flow_step.json" else args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"system": args.system, "flow": f"{args.layers} x {args.hidden}", "steps": args.steps,
                               "torch": torch.__version__, "clock": "wall", "rows": rows}, indent=2))
    print(f"{args.system}, flow {args.layers} x {args.hidden}, float32 compiled: wall time per training step")
    print(f"{'threads':>8}{'batch':>7}{'ms/step':>10}{'us/sample':>11}{'samples/s':>11}")
    for r in rows:
        print(f"{r['threads']:>8}{r['batch']:>7}{r['ms_per_step']:>10.1f}{r['us_per_sample']:>11.0f}{r['samples_per_s']:>11}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
