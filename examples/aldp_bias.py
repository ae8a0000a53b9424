"""Bias an all-atom alanine-dipeptide simulation with a fraction of the learned PMF and reweight.

The bias -alpha * F(phi, psi) flattens the free-energy surface, so phi crosses between its negative and positive
regions more often; each frame's weight exp(+bias/kT) = exp(-alpha F) recovers unbiased averages.

    python examples/aldp_bias.py [--model alanine-dipeptide | RUN_DIR] [--alpha 0.5] [--steps 200000] [--quick]
"""
import argparse
import os

import numpy as np
import openmm_cgflow as cgflow  # before openmm: openmm-torch's kernels need torch's libraries loaded first
import openmm
import openmm.unit as unit

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="alanine-dipeptide", help="a run's folder, its models/ folder, or a shipped system")
parser.add_argument("--alpha", type=float, default=0.5)
parser.add_argument("--steps", type=int, default=200_000)
parser.add_argument("--quick", action="store_true")
args = parser.parse_args()
steps = 2_000 if args.quick else args.steps
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})            # one-thread CPU platform: pin to one core

model = cgflow.CGFlowModel.load(args.model)
aldp = cgflow.create_system("alanine-dipeptide")
system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(aldp.system))
system.addForce(model.pmf_force(scale=-args.alpha, system=system))    # kJ/mol, computed from phi/psi
integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 1 * unit.femtosecond)
context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
context.setPositions(aldp.positions)
openmm.LocalEnergyMinimizer.minimize(context)
frames = []
for _ in range(steps // 100):
    integrator.step(100)
    frames.append(context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer))
frames = np.asarray(frames)
s = aldp.cg_values(frames)                                              # (phi, psi) in the model's CG frame
phi_iupac = model.cg_definition.to_dihedrals(s)[:, 0]
F, _ = model.free_energy(s, frame="model")                              # kT
weights = np.exp(-args.alpha * (F - F.min()))
weights /= weights.sum()
transitions = int(np.count_nonzero(np.diff(np.sign(phi_iupac)) != 0))
print(f"{steps} steps ({steps / 1e6:.3f} ns): {transitions} phi sign changes; reweighted P(phi > 0) = {weights[phi_iupac > 0].sum():.4f}; "
      f"Kish ESS {1 / (weights**2).sum():.0f} of {len(weights)} frames")
