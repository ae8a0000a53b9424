"""Müller-Brown CG dynamics on the shipped PMF: CG particles with the learned PMF as an OpenMM force, Langevin
dynamics in one Context, and the histogram of s = x1 - x2 compared with exp(-F).

    python examples/mb_cg_dynamics.py [--model muller-brown | RUN_DIR] [--quick]
"""
import argparse

import numpy as np

import openmm_cgflow as cgflow

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="muller-brown", help="a run's folder, its models/ folder, or a shipped system")
parser.add_argument("--replicas", type=int, default=200)
parser.add_argument("--steps", type=int, default=20000)
parser.add_argument("--quick", action="store_true", help="a few hundred steps (for the tests)")
args = parser.parse_args()
steps = 400 if args.quick else args.steps

model = cgflow.CGFlowModel.load(args.model)
edges = np.linspace(-2.5, 1.1, 61)                                       # nm
centres = 0.5 * (edges[1:] + edges[:-1])
F, _ = model.free_energy(centres[:, None])                               # kT
p_model = np.exp(-(F - F.min()))
p_model /= p_model.sum()
start = np.random.default_rng(0).choice(centres, size=args.replicas, p=p_model)
s = model.cg_dynamics(start[:, None], n_steps=steps, record_every=20, timestep_fs=5.0)   # (frames, replicas, 1), nm
counts = np.histogram(s[len(s) // 5:].ravel(), bins=edges)[0]
kld = cgflow.forward_kld(p_model, -np.log((counts + 0.5) / (counts + 0.5).sum()))
print(f"{args.replicas} replicas x {steps} steps: KLD(exp(-F) || CG histogram) = {kld:.2e}")
