"""Benchmark: what reading an OpenMM State costs per energy evaluation, public API against the oracle's read.

    python benchmarks/oracle_state_read.py [--n 400] [--repeats 3] [--out benchmarks/results]

Per configuration both loops do setPositions + getState(energy, forces) on one Context, then read the energy
(kJ/mol) and forces (kJ/mol/nm): "public" through State.getPotentialEnergy()/getForces(asNumpy=True) (unit
Quantities), "oracle" through the package's evaluator (`openmm_cgflow.energy.context_evaluator.ContextEvaluator`, which
reads below the unit wrappers). Müller-Brown on Reference, alanine dipeptide (OBC1) on CPU with one thread.
Process CPU time, the two loops interleaved, this process pinned to one core. Writes `oracle_state_read.json`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch  # noqa: F401  (before openmm)
import openmm

from openmm_cgflow import create_system
from openmm_cgflow.platforms import default_properties, pin_to_core
from openmm_cgflow.energy.context_evaluator import ContextEvaluator


def public_read(context, positions, n_atoms):
    energies, forces = np.empty(len(positions)), np.zeros((len(positions), n_atoms, 3))
    for i, x in enumerate(positions):
        context.setPositions(x)
        state = context.getState(getEnergy=True, getForces=True)
        energies[i] = state.getPotentialEnergy()._value
        forces[i] = state.getForces(asNumpy=True)._value
    return energies, forces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="configurations per timed loop")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    pin_to_core()
    rows = []
    for name, platform_name in (("muller-brown", "Reference"), ("aldp", "CPU")):
        cg_system = create_system(name)
        properties = default_properties(platform_name)
        system_xml = openmm.XmlSerializer.serialize(cg_system.system)
        evaluator = ContextEvaluator(system_xml, platform_name, properties)
        n_atoms = cg_system.n_atoms
        start = np.asarray(cg_system.positions.value_in_unit(openmm.unit.nanometer)
                           if hasattr(cg_system.positions, "value_in_unit") else cg_system.positions, dtype=np.float64)
        rng = np.random.default_rng(0)
        positions = start[None] + 1e-3 * rng.standard_normal((args.n, n_atoms, 3))
        a, b = public_read(evaluator.context, positions, n_atoms), evaluator.evaluate(positions)
        identical = bool(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]))
        times = {"public": [], "oracle": []}
        for _ in range(args.repeats):
            for label, read in (("public", lambda: public_read(evaluator.context, positions, n_atoms)),
                                ("oracle", lambda: evaluator.evaluate(positions))):
                t0 = time.process_time()
                read()
                times[label].append((time.process_time() - t0) / args.n * 1e6)
        rows.append({"system": name, "platform": platform_name, "identical": identical,
                     "public_us": min(times["public"]), "oracle_us": min(times["oracle"]), "all_us": times})
    record = {"benchmark": "oracle_state_read", "n": args.n, "repeats": args.repeats,
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "openmm": openmm.__version__},
              "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "oracle_state_read.json"
    path.write_text(json.dumps(record, indent=2))
    print(f"{'system':14s} {'platform':9s} {'public us':>10s} {'oracle us':>10s} {'saved':>7s}  identical")
    for r in rows:
        print(f"{r['system']:14s} {r['platform']:9s} {r['public_us']:10.1f} {r['oracle_us']:10.1f} "
              f"{r['public_us'] - r['oracle_us']:7.1f}  {r['identical']}")
    print(f"written to {path}  (CPU time per configuration, best of {args.repeats})")


if __name__ == "__main__":
    main()
