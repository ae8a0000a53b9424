"""Müller-Brown CG dynamics on the shipped PMF: add the learned PMF as an OpenMM force to a System of CG
particles, run Langevin dynamics, and compare the histogram of s = x1 - x2 with exp(-F).

    python examples/mb_cg_dynamics.py [--model torchscript_models/muller-brown/pmf_ensemble.pt] [--quick]
"""
import argparse

import torch  # noqa: F401  (import torch before openmm: openmm-torch needs its libraries)
import numpy as np

from openmm_cgflow.forces import pmf_energy_module
from openmm_cgflow.forces.cg_dynamics import cg_dynamics_system, run_cg_langevin
from openmm_cgflow.reference.kld import forward_kld
from openmm_cgflow.systems import create_system

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="torchscript_models/muller-brown/pmf_ensemble.pt")
parser.add_argument("--replicas", type=int, default=200)
parser.add_argument("--steps", type=int, default=20000)
parser.add_argument("--quick", action="store_true", help="a few hundred steps (for the tests)")
args = parser.parse_args()
steps = 400 if args.quick else args.steps

mb = create_system("muller-brown")
system = cg_dynamics_system(mb, args.model, args.replicas)           # PMF force (TorchForce) + CG restraints and walls
edges = np.linspace(-2.5, 1.1, 61)
centres = 0.5 * (edges[1:] + edges[:-1])
module, _ = pmf_energy_module(args.model)
with torch.no_grad():
    F = module.pmf.mean_std(torch.as_tensor(centres[:, None]))[0].numpy()   # kT
p_model = np.exp(-(F - F.min()))
p_model /= p_model.sum()
start = np.random.default_rng(0).choice(centres, size=args.replicas, p=p_model)
s = run_cg_langevin(mb, system, start[:, None], n_steps=steps, record_every=20, timestep_fs=5.0)   # (frames, replicas, 1)
counts = np.histogram(s[len(s) // 5:].ravel(), bins=edges)[0]
kld = forward_kld(p_model, -np.log((counts + 0.5) / (counts + 0.5).sum()))
print(f"{args.replicas} replicas x {steps} steps: KLD(exp(-F) || CG histogram) = {kld:.2e}")
