"""The trained model as an all-atom OpenMM force beside the force field: U (Amber ff96 + OBC1, force group 0)
and the model's U_theta = kT [F(s) - ln q(x_fg | s) + ln|det dx/dy|] (force group 1) in one System. For every
configuration (U_theta - U) / kT is its log importance weight under the model: here for structures backmapped by
the flow and for frames of a short all-atom MD run.

    python examples/aldp_flow_force.py [--model alanine-dipeptide | RUN_DIR] [--quick]
"""
import argparse
import os

import numpy as np
import openmm_cgflow as cgflow  # before openmm: openmm-torch's kernels need torch's libraries loaded first
import openmm
import openmm.unit as unit

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="alanine-dipeptide", help="a run's folder, its models/ folder, or a shipped system")
parser.add_argument("--quick", action="store_true")
args = parser.parse_args()
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})            # one-thread CPU platform: pin to one core

model = cgflow.CGFlowModel.load(args.model)
aldp = model.cg_system
system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(aldp.system))
flow_force = model.flow_force(system=system)
flow_force.setForceGroup(1)
system.addForce(flow_force)
integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 1 * unit.femtosecond)
integrator.setIntegrationForceGroups({0})                                   # MD on the force field only; U_theta is observed
context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
kT = aldp.kT                                                                # kJ/mol


def log_weight(positions):
    """(U_theta - U) / kT of one configuration (positions nm): its log importance weight under the model."""
    context.setPositions(positions)
    U = context.getState(getEnergy=True, groups={0}).getPotentialEnergy()._value
    U_theta = context.getState(getEnergy=True, groups={1}).getPotentialEnergy()._value
    return (U_theta - U) / kT


backmapped = model.backmap(np.radians([[-150.0, 155.0], [-70.0, -40.0]]), n_per_frame=2 if args.quick else 10)  # beta, alphaR (IUPAC)
log_w = np.array([log_weight(x) for x in backmapped.trajectory.xyz])
print(f"backmapped structures: ln w spread (std) {log_w.std():.2f} kT")
context.setPositions(aldp.positions)
context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
md = []
for _ in range(5 if args.quick else 50):
    integrator.step(100)
    md.append(context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer))
log_w_md = np.array([log_weight(x) for x in md])
print(f"force-field MD frames: ln w std {log_w_md.std():.2f} kT over {len(md)} frames (a perfect model gives 0)")
