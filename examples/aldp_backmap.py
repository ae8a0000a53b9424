"""Backmap alanine-dipeptide CG frames (phi, psi) to all-atom structures with the shipped flow, refine them by
restrained minimisation, and write a PDB with the importance weights.

    python examples/aldp_backmap.py [--model torchscript_models/alanine-dipeptide/flow.pt] [--out backmapped.pdb] [--quick]
"""
import argparse

import torch  # noqa: F401
import numpy as np

from openmm_cgflow.backmapping import Backmapper
from openmm_cgflow.systems.alanine_dipeptide import to_paper_frame

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="torchscript_models/alanine-dipeptide/flow.pt")
parser.add_argument("--out", default="backmapped.pdb")
parser.add_argument("--quick", action="store_true")
args = parser.parse_args()

iupac_degrees = np.array([[-150.0, 155.0], [-70.0, 140.0], [-70.0, -40.0], [60.0, 45.0]])   # beta, PII, alphaR, alphaL
cg = to_paper_frame(np.radians(iupac_degrees))                                             # the model's CG frame
result = Backmapper(args.model).backmap(cg, n_per_frame=2 if args.quick else 20, refine="minimize")
result.trajectory.save(args.out)
for (phi, psi), ess in zip(iupac_degrees, result.ess):
    print(f"phi {phi:7.1f}  psi {psi:7.1f}: ESS {ess:.2f}")
print(f"{result.trajectory.n_frames} structures in {args.out}")
