"""Bias an all-atom alanine-dipeptide simulation with a fraction of the learned PMF and reweight.

The bias -alpha * F(phi, psi) flattens the free-energy surface, so phi crosses between its negative and positive
regions more often; each frame's weight exp(+bias/kT) = exp(-alpha F) recovers unbiased averages.

    python examples/aldp_bias.py [--model torchscript_models/alanine-dipeptide/pmf_ensemble.pt] [--alpha 0.5] [--quick]
"""
import argparse

import torch  # noqa: F401
import numpy as np
import openmm
import openmm.unit as unit

from openmm_cgflow import create_system
from openmm_cgflow.energy import default_properties, pin_to_core
from openmm_cgflow.forces import create_pmf_force, pmf_energy_module
from openmm_cgflow.systems.alanine_dipeptide import phi_psi

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="torchscript_models/alanine-dipeptide/pmf_ensemble.pt")
parser.add_argument("--alpha", type=float, default=0.5)
parser.add_argument("--steps", type=int, default=200_000)
parser.add_argument("--quick", action="store_true")
args = parser.parse_args()
steps = 2_000 if args.quick else args.steps
pin_to_core()

aldp = create_system("alanine-dipeptide")
system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(aldp.system))
system.addForce(create_pmf_force(args.model, scale=-args.alpha, system=system))    # kJ/mol, computed from phi/psi
integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 1 * unit.femtosecond)
context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"), default_properties("CPU"))
context.setPositions(aldp.positions)
openmm.LocalEnergyMinimizer.minimize(context)
frames = []
for _ in range(steps // 100):
    integrator.step(100)
    frames.append(context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer))
frames = np.asarray(frames)
angles = phi_psi(frames)
module, _ = pmf_energy_module(args.model)
F = np.array([float(module.free_energy(torch.as_tensor(x))[1][0]) for x in frames])
weights = np.exp(-args.alpha * (F - F.min()))
weights /= weights.sum()
transitions = int(np.count_nonzero(np.diff(np.sign(angles[:, 0])) != 0))
print(f"{steps} steps ({steps / 1e6:.3f} ns): {transitions} phi sign changes; reweighted P(phi > 0) = {weights[angles[:, 0] > 0].sum():.4f}; "
      f"Kish ESS {1 / (weights**2).sum():.0f} of {len(weights)} frames")
