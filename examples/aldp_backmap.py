"""Backmap alanine-dipeptide CG frames (phi, psi) to all-atom structures with the shipped flow, refine them by
restrained minimisation, and write a PDB with the importance weights.

    python examples/aldp_backmap.py [--model alanine-dipeptide | RUN_DIR] [--out backmapped.pdb] [--quick]
"""
import argparse

import numpy as np

import openmm_cgflow as cgflow

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="alanine-dipeptide", help="a run's folder, its models/ folder, or a shipped system")
parser.add_argument("--out", default="backmapped.pdb")
parser.add_argument("--quick", action="store_true")
args = parser.parse_args()

model = cgflow.CGFlowModel.load(args.model)
iupac_degrees = np.array([[-150.0, 155.0], [-70.0, 140.0], [-70.0, -40.0], [60.0, 45.0]])   # beta, PII, alphaR, alphaL
result = model.backmap(np.radians(iupac_degrees), n_per_frame=2 if args.quick else 20, refine="minimize")  # frame="iupac"
result.trajectory.save(args.out)
for (phi, psi), ess in zip(iupac_degrees, result.ess):
    print(f"phi {phi:7.1f}  psi {psi:7.1f}: ESS {ess:.2f}")
print(f"{result.trajectory.n_frames} structures in {args.out}")
