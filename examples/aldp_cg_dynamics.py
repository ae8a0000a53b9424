"""Alanine-dipeptide CG dynamics on the shipped PMF: many five-atom backbone chains (C-N-CA-C-N, bonds and
angles restrained) with the learned PMF as an OpenMM force on (phi, psi), Langevin dynamics in one Context, and
the (phi, psi) histogram compared with exp(-F).

    python examples/aldp_cg_dynamics.py [--model alanine-dipeptide | RUN_DIR] [--quick]
"""
import argparse
import math

import numpy as np

import openmm_cgflow as cgflow

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="alanine-dipeptide", help="a run's folder, its models/ folder, or a shipped system")
parser.add_argument("--replicas", type=int, default=500)
parser.add_argument("--steps", type=int, default=10000)
parser.add_argument("--quick", action="store_true", help="a few hundred steps (for the tests)")
args = parser.parse_args()
steps = 400 if args.quick else args.steps

model = cgflow.CGFlowModel.load(args.model)
n_bins, sub = 20, 5                                            # 20 x 20 bins, exp(-F) integrated on 5 x 5 points each
fine = np.linspace(-math.pi, math.pi, n_bins * sub, endpoint=False) + math.pi / (n_bins * sub)
grid = np.stack(np.meshgrid(fine, fine, indexing="ij"), -1).reshape(-1, 2)   # (phi, psi) in the model's CG frame, rad
F, _ = model.free_energy(grid, frame="model")                  # kT
p_fine = np.exp(-(F - F.min()))
p_fine /= p_fine.sum()
p_model = p_fine.reshape(n_bins, sub, n_bins, sub).sum((1, 3)).ravel()

start = grid[np.random.default_rng(0).choice(len(grid), size=args.replicas, p=p_fine)]          # replicas start from exp(-F)
s = model.cg_dynamics(start, n_steps=steps, record_every=20, timestep_fs=2.0, frame="model")   # (frames, replicas, 2), one batched call per step
s = s[len(s) // 5:].reshape(-1, 2)
edges = np.linspace(-math.pi, math.pi, n_bins + 1)
counts = np.histogram2d(s[:, 0], s[:, 1], bins=[edges, edges])[0].ravel()
kld = cgflow.forward_kld(p_model, -np.log((counts + 0.5) / (counts + 0.5).sum()))
print(f"{args.replicas} backbone replicas x {steps} steps of 2 fs: KLD(exp(-F) || CG histogram) = {kld:.2e}")
