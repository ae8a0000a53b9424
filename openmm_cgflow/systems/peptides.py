"""Capped alanine peptides Ace-(Ala)n-Nme built here, with no downloads: heavy atoms from ideal internal
coordinates (trans peptide bonds, L-alanine), hydrogens by ``Modeller.addHydrogens``, Amber ff14SB
(``amber14-all.xml``) with an implicit solvent of OpenMM's (OBC1 by default, ``implicit/obc1.xml``; GBn2 for the
dipeptide of the molecule panel), no cutoff, no constraints, 300 K.

CG coordinates: every backbone (phi_i, psi_i) as IUPAC dihedrals in rad, through the generic
:func:`~openmm_cgflow.systems.molecule.molecule_system` path (``CGSystem.from_openmm``).
"""
from __future__ import annotations

import io
import math
from typing import Dict, List, Tuple

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import torch

from ..coordinates.geometry import place_atom
from .base import CGSystem
from .description import SystemDescription

TEMPERATURE = 300.0  # K
FORCE_FIELD = ("amber14-all.xml", "implicit/obc1.xml")
#: implicit solvent models of OpenMM's ``implicit/`` force-field files (name -> file)
IMPLICIT_SOLVENTS = {"OBC1": "implicit/obc1.xml", "OBC2": "implicit/obc2.xml", "GBn": "implicit/gbn.xml", "GBn2": "implicit/gbn2.xml", "HCT": "implicit/hct.xml"}
# Ideal geometry (nm, degrees): Engh & Huber backbone values.
BOND = {"N-CA": 0.1458, "CA-C": 0.1525, "C-N": 0.1329, "C-O": 0.1231, "CA-CB": 0.1530, "CH3-C": 0.1520, "N-CH3": 0.1458}
ANGLE = {"C-N-CA": 121.7, "N-CA-C": 111.2, "CA-C-N": 116.2, "CA-C-O": 120.1, "C-CA-CB": 110.1, "O-C-N": 122.7}
#: Dihedral N-C-CA-CB of an L residue (IUPAC, degrees): CB's place among the CA substituents.
L_CB_DIHEDRAL = 122.7


def _place(a, b, c, r: float, theta_deg: float, phi_deg: float) -> torch.Tensor:
    one = torch.ones(1, dtype=torch.float64)
    return place_atom(a[None], b[None], c[None], r * one, math.radians(theta_deg) * one, math.radians(phi_deg) * one)[0]


def capped_alanine_heavy_atoms(n_alanines: int, phi_deg: float = -75.0, psi_deg: float = 145.0) -> List[Tuple[str, str, int, torch.Tensor]]:
    """(residue name, atom name, residue number, position nm) of the heavy atoms of Ace-(Ala)n-Nme with every
    backbone (phi, psi) set to the given angles and trans (180 degree) peptide bonds."""
    ch3 = torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64)
    c = torch.tensor([BOND["CH3-C"], 0.0, 0.0], dtype=torch.float64)
    theta = math.radians(180.0 - ANGLE["CA-C-N"])
    n = c + BOND["C-N"] * torch.tensor([math.cos(theta), math.sin(theta), 0.0], dtype=torch.float64)
    atoms = [("ACE", "CH3", 1, ch3), ("ACE", "C", 1, c)]
    prev_ca, prev_c = ch3, c
    ace_o_pending = True
    for k in range(n_alanines):
        residue = k + 2
        ca = _place(n, prev_c, prev_ca, BOND["N-CA"], ANGLE["C-N-CA"], 180.0)          # omega (CA-C-N-CA) = 180
        if ace_o_pending:
            atoms.append(("ACE", "O", 1, _place(prev_c, n, ca, BOND["C-O"], ANGLE["O-C-N"], 0.0)))
            ace_o_pending = False
        cc = _place(ca, n, prev_c, BOND["CA-C"], ANGLE["N-CA-C"], phi_deg)              # phi (C-N-CA-C)
        cb = _place(ca, cc, n, BOND["CA-CB"], ANGLE["C-CA-CB"], L_CB_DIHEDRAL)          # N-C-CA-CB: L
        next_n = _place(cc, ca, n, BOND["C-N"], ANGLE["CA-C-N"], psi_deg)               # psi (N-CA-C-N)
        o = _place(cc, ca, n, BOND["C-O"], ANGLE["CA-C-O"], psi_deg + 180.0)
        atoms += [("ALA", "N", residue, n), ("ALA", "CA", residue, ca), ("ALA", "C", residue, cc), ("ALA", "O", residue, o),
                  ("ALA", "CB", residue, cb)]
        prev_ca, prev_c, n = ca, cc, next_n
    methyl = _place(n, prev_c, prev_ca, BOND["N-CH3"], ANGLE["C-N-CA"], 180.0)
    atoms += [("NME", "N", n_alanines + 2, n), ("NME", "C", n_alanines + 2, methyl)]
    return atoms


def capped_alanine_openmm(n_alanines: int, implicit_solvent: str = "OBC1") -> Tuple[openmm.System, app.Topology, np.ndarray]:
    """(System, Topology, positions nm) of Ace-(Ala)n-Nme with hydrogens, ff14SB + ``implicit_solvent`` (a key of
    :data:`IMPLICIT_SOLVENTS`), no cutoff, no constraints."""
    if n_alanines < 1:
        raise ValueError(f"a capped peptide needs at least one alanine, got {n_alanines}")
    if implicit_solvent not in IMPLICIT_SOLVENTS:
        raise ValueError(f"implicit_solvent must be one of {', '.join(IMPLICIT_SOLVENTS)}, got {implicit_solvent!r}")
    lines = []
    for serial, (residue, name, number, x) in enumerate(capped_alanine_heavy_atoms(n_alanines), start=1):
        x = 10.0 * x.numpy()  # Angstrom
        element = name[0]
        lines.append(f"HETATM{serial:5d} {name:<4s} {residue:>3s} A{number:4d}    {x[0]:8.3f}{x[1]:8.3f}{x[2]:8.3f}  1.00  0.00          {element:>2s}")
    pdb = app.PDBFile(io.StringIO("\n".join(lines + ["END"]) + "\n"))
    forcefield = app.ForceField(FORCE_FIELD[0], IMPLICIT_SOLVENTS[implicit_solvent])
    modeller = app.Modeller(pdb.topology, pdb.positions)
    modeller.addHydrogens(forcefield)
    system = forcefield.createSystem(modeller.topology, nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False)
    return system, modeller.topology, np.asarray(modeller.positions.value_in_unit(unit.nanometer))


def backbone_dihedrals(topology: app.Topology) -> Dict[str, List[int]]:
    """phi_k = C(k-1)-N(k)-CA(k)-C(k) and psi_k = N(k)-CA(k)-C(k)-N(k+1) for every residue k with a CA, by atom name."""
    residues = list(topology.residues())
    index = [{atom.name: atom.index for atom in residue.atoms()} for residue in residues]
    dihedrals: Dict[str, List[int]] = {}
    for k, residue in enumerate(residues):
        if "CA" not in index[k] or k == 0 or k == len(residues) - 1:
            continue
        number = sum(1 for r in residues[:k] if "CA" in {a.name for a in r.atoms()}) + 1
        dihedrals[f"phi{number}"] = [index[k - 1]["C"], index[k]["N"], index[k]["CA"], index[k]["C"]]
        dihedrals[f"psi{number}"] = [index[k]["N"], index[k]["CA"], index[k]["C"], index[k + 1]["N"]]
    return dihedrals


def create_capped_alanine_system(n_alanines: int = 2, implicit_solvent: str = "OBC1", name: str = "") -> CGSystem:
    """Ace-(Ala)n-Nme as a CGSystem with CG = all backbone (phi, psi): 2n IUPAC dihedrals (rad)."""
    system, topology, positions = capped_alanine_openmm(n_alanines, implicit_solvent)
    dihedrals = backbone_dihedrals(topology)
    order = [f"{kind}{k}" for k in range(1, n_alanines + 1) for kind in ("phi", "psi")]
    return CGSystem.from_openmm(system, topology, positions, TEMPERATURE, {name: dihedrals[name] for name in order},
                                name=name or f"ace-ala{n_alanines}-nme",
                                description=SystemDescription(
                                    hamiltonian=f"amber ff14SB + {implicit_solvent} (OpenMM amber14-all.xml, {IMPLICIT_SOLVENTS[implicit_solvent]}), "
                                                "NoCutoff, no constraints",
                                    notes={"built": "ideal internal coordinates + Modeller.addHydrogens"}))


def create_ace_ala2_nme_system() -> CGSystem:
    """Ace-Ala-Ala-Nme: four CG dihedrals (phi1, psi1, phi2, psi2)."""
    return create_capped_alanine_system(2)


def create_aldp_gbn2_system() -> CGSystem:
    """Alanine dipeptide (Ace-Ala-Nme) with another force field and solvent model than the paper's: amber ff14SB +
    GBn2 (the paper: ff96 + OBC1); CG = IUPAC (phi1, psi1) in rad. A molecule of the panel benchmark."""
    return create_capped_alanine_system(1, "GBn2", name="aldp-gbn2")
