"""Benchmark: bias an all-atom alanine-dipeptide simulation with a fraction of the learned PMF and reweight.

    python benchmarks/aldp_bias.py [--model torchscript_models/alanine-dipeptide/pmf_ensemble.pt]
                                   [--alphas 0 0.5 0.8] [--ns 2] [--out benchmarks/results/aldp_bias]

For each alpha: the paper's Hamiltonian (ff96 + OBC1, 300 K) plus the bias V = -alpha kT F(phi, psi) as a CMAP
force (backend='cmap'; alpha = 0 is plain MD), LangevinMiddle 1 fs, friction 1/ps, CPU platform pinned to one
core, phi/psi recorded every 10 steps. Reported per run:

* phi transitions per ns: entries into the other phi state, with the states phi in (-180, -30) deg and
  phi in (30, 130) deg (hysteresis: the gap between them does not count);
* the reweighted PMF: frames weighted by exp(+V/kT) (V read from the bias force group), histogrammed on the 100 x 100 paper-frame
  grid (counts scaled to the Kish effective sample size), forward KLD against the packaged reference with the
  MD baseline's pseudo-count rule; Kish ESS of the weights;
* MD steps per second with the CMAP bias, and (short timing runs) with the TorchForce and PythonForce backends.

Writes ``aldp_bias.json`` and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch  # noqa: F401  (before openmm: openmm-torch needs torch's libraries)
import numpy as np
import openmm
import openmm.unit as unit

from openmm_cgflow import create_system
from openmm_cgflow.platforms import default_properties, pin_to_core
from openmm_cgflow.forces import create_pmf_force
from openmm_cgflow.scoring.grid import histogram_counts, kld_of_histogram, load_reference
from openmm_cgflow.systems.alanine_dipeptide import packaged_reference_path
from openmm_cgflow.storage import write_json
from openmm_cgflow.systems.alanine_dipeptide import phi_psi, to_paper_frame

RECORD_EVERY = 10
BIAS_GROUP = 30


def simulation(aldp, model: str, alpha: float, backend: str, seed: int):
    system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(aldp.system))
    if alpha:
        bias = create_pmf_force(model, backend=backend, scale=-alpha, system=system)
        bias.setForceGroup(BIAS_GROUP)
        system.addForce(bias)
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 1 * unit.femtosecond)
    integrator.setRandomNumberSeed(seed + 1)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"), default_properties("CPU"))
    context.setPositions(aldp.positions)
    openmm.LocalEnergyMinimizer.minimize(context)
    context.setVelocitiesToTemperature(300 * unit.kelvin, seed + 1)
    return context, integrator


def steps_per_second(aldp, model, alpha, backend, n_steps=5000):
    context, integrator = simulation(aldp, model, alpha, backend, seed=0)
    integrator.step(100)
    start = time.perf_counter()
    integrator.step(n_steps)
    return n_steps / (time.perf_counter() - start)


def count_transitions(phi_degrees: np.ndarray) -> int:
    state = np.where(phi_degrees < -30, -1, np.where((phi_degrees > 30) & (phi_degrees < 130), 1, 0))
    visited = state[state != 0]
    return int(np.count_nonzero(np.diff(visited) != 0))


def run(aldp, model: str, alpha: float, n_steps: int, seed: int) -> dict:
    context, integrator = simulation(aldp, model, alpha, "cmap", seed)
    kT = 8.314462618e-3 * 300.0
    angles, bias = [], []
    start = time.perf_counter()
    for _ in range(n_steps // RECORD_EVERY):
        integrator.step(RECORD_EVERY)
        angles.append(phi_psi(context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)[None])[0])
        bias.append(context.getState(getEnergy=True, groups={BIAS_GROUP}).getPotentialEnergy()._value if alpha else 0.0)
    wall = time.perf_counter() - start
    angles = np.asarray(angles)
    s = to_paper_frame(angles)
    log_w = np.asarray(bias) / kT  # unbiased weight exp(+V/kT) of the bias actually applied (V = -alpha kT F)
    w = np.exp(log_w - log_w.max())
    ess = float(w.sum() ** 2 / (w**2).sum())
    reference = load_reference(packaged_reference_path())
    counts = np.zeros((100, 100))
    index = np.clip(np.floor((s + np.pi) / (2 * np.pi) * 100).astype(int), 0, 99)
    np.add.at(counts, (index[:, 0], index[:, 1]), w)
    counts *= ess / counts.sum()
    kld = kld_of_histogram(reference.probabilities, counts)
    raw_kld = kld_of_histogram(reference.probabilities, histogram_counts(s))
    transitions = count_transitions(np.degrees(angles[:, 0]))
    ns = n_steps * 1e-6
    return {
        "alpha": alpha, "md_steps": n_steps, "ns": ns, "wall_s": wall, "steps_per_s": n_steps / wall,
        "phi_transitions": transitions, "phi_transitions_per_ns": transitions / ns,
        "fraction_phi_positive": float(np.mean(angles[:, 0] > 0)),
        "reweighted_fraction_phi_positive": float(w[angles[:, 0] > 0].sum() / w.sum()),
        "kish_ess": ess, "frames": len(w), "forward_kld_reweighted": kld, "forward_kld_unweighted": raw_kld,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="torchscript_models/alanine-dipeptide/pmf_ensemble.pt")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.5, 0.8])
    parser.add_argument("--ns", type=float, default=2.0, help="simulated time per alpha (ns)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/aldp_bias"))
    args = parser.parse_args(argv)
    pin_to_core()
    aldp = create_system("alanine-dipeptide")
    speed = {"unbiased": steps_per_second(aldp, args.model, 0.0, "cmap")}
    for backend in ("cmap", "torchforce", "pythonforce"):
        speed[f"biased_{backend}"] = steps_per_second(aldp, args.model, 0.5, backend, n_steps=5000 if backend == "cmap" else 1000)
    runs = []
    for alpha in args.alphas:
        runs.append(run(aldp, args.model, alpha, int(args.ns * 1e6), args.seed))
        print(f"alpha {alpha}: {runs[-1]['phi_transitions_per_ns']:.1f} phi transitions/ns, KLD {runs[-1]['forward_kld_reweighted']:.3g}", flush=True)
    result = {
        "model": str(args.model), "seed": args.seed, "steps_per_s": speed, "runs": runs,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": sys.version.split()[0]},
        "command": "python benchmarks/aldp_bias.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "aldp_bias.json", result)
    print(f"\nMD steps/s (one pinned core): " + ", ".join(f"{k} {v:.0f}" for k, v in speed.items()))
    print(f"{'alpha':>6} {'ns':>5} {'phi trans/ns':>13} {'P(phi>0) raw':>13} {'reweighted':>11} {'Kish ESS':>9} {'KLD reweighted':>15} {'KLD raw':>9}")
    for r in runs:
        print(f"{r['alpha']:6.2f} {r['ns']:5.2f} {r['phi_transitions_per_ns']:13.1f} {r['fraction_phi_positive']:13.4f} "
              f"{r['reweighted_fraction_phi_positive']:11.4f} {r['kish_ess']:9.0f} {r['forward_kld_reweighted']:15.3g} {r['forward_kld_unweighted']:9.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
