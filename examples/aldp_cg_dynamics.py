"""Alanine-dipeptide CG dynamics on the shipped PMF: many five-atom backbone chains (C-N-CA-C-N, bonds and
angles restrained) with the learned PMF as an OpenMM force on (phi, psi), Langevin dynamics in one Context, and
the (phi, psi) histogram compared with exp(-F).

    python examples/aldp_cg_dynamics.py [--model torchscript_models/alanine-dipeptide/pmf_ensemble.pt] [--quick]
"""
import argparse
import math

import torch  # noqa: F401  (import torch before openmm: openmm-torch needs its libraries)
import numpy as np

from openmm_cgflow.forces import pmf_energy_module
from openmm_cgflow.forces.cg_dynamics import cg_dynamics_system, run_cg_langevin
from openmm_cgflow.reference.kld import forward_kld
from openmm_cgflow.systems import create_system

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="torchscript_models/alanine-dipeptide/pmf_ensemble.pt")
parser.add_argument("--replicas", type=int, default=500)
parser.add_argument("--steps", type=int, default=10000)
parser.add_argument("--quick", action="store_true", help="a few hundred steps (for the tests)")
args = parser.parse_args()
steps = 400 if args.quick else args.steps

n_bins, sub = 20, 5                                            # 20 x 20 bins, exp(-F) integrated on 5 x 5 points each
fine = np.linspace(-math.pi, math.pi, n_bins * sub, endpoint=False) + math.pi / (n_bins * sub)
grid = np.stack(np.meshgrid(fine, fine, indexing="ij"), -1).reshape(-1, 2)   # paper-frame (phi, psi), rad
module, _ = pmf_energy_module(args.model)
with torch.no_grad():
    F = module.pmf.mean_std(torch.as_tensor(grid))[0].numpy()  # kT
p_fine = np.exp(-(F - F.min()))
p_fine /= p_fine.sum()
p_model = p_fine.reshape(n_bins, sub, n_bins, sub).sum((1, 3)).ravel()

start = grid[np.random.default_rng(0).choice(len(grid), size=args.replicas, p=p_fine)]          # replicas start from exp(-F)
aldp = create_system("alanine-dipeptide")
system = cg_dynamics_system(aldp, args.model, args.replicas)   # restraints + PMF force (TorchForce), one batched call per step
s = run_cg_langevin(aldp, system, start, steps, 20, timestep_fs=2.0)   # (frames, replicas, 2), paper-frame (phi, psi)
s = s[len(s) // 5:].reshape(-1, 2)
edges = np.linspace(-math.pi, math.pi, n_bins + 1)
counts = np.histogram2d(s[:, 0], s[:, 1], bins=[edges, edges])[0].ravel()
kld = forward_kld(p_model, -np.log((counts + 0.5) / (counts + 0.5).sum()))
print(f"{args.replicas} backbone replicas x {steps} steps of 2 fs: KLD(exp(-F) || CG histogram) = {kld:.2e}")
