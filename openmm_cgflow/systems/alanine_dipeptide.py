"""Alanine dipeptide (ACE-ALA-NME, 22 atoms) in OBC1 implicit solvent (SPEC §2.2).

Hamiltonian: the Amber ff96 prmtop shipped with openmmtools' AlanineDipeptideImplicit, created with
implicitSolvent=OBC1, nonbondedMethod=NoCutoff, constraints=None (bonds to H are flexible), at 300 K.

CG coordinates are the backbone dihedrals phi = C(4)-N(6)-CA(8)-C(14) and psi = N(6)-CA(8)-C(14)-N(16).
Two frames are offered:
* IUPAC angles (mdtraj's convention), for users: :func:`phi_psi`;
* the paper's frame (SPEC §2.2.1), used by every model and metric: s = wrap(-angle_IUPAC - ref_bg), where
  ref_bg = -angle_IUPAC of our minimised structure. These are entries 17 and 44 of the internal vector.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Tuple

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import torch

from ..coordinates.geometry import frame_dihedrals, periodic_difference, wrap_angle
from ..coordinates.zmatrix import ZMatrixTransform
from ..scoring.grid import grid_centres, load_reference
from .base import CGSystem
from .cg_definition import CGDefinition, DihedralCV, chain_replica
from .description import SystemDescription
from .fine_grained import ZMatrixCG

TEMPERATURE = 300.0  # K
#: The packaged reference PMF (umbrella sampling + mean-force fit), in ``openmm_cgflow/data``.
PACKAGED_REFERENCE = "reference_aldp.npz"
N_ATOMS = 22
#: IUPAC (mdtraj) atom quadruples of the CG dihedrals.
PHI_ATOMS = (4, 6, 8, 14)
PSI_ATOMS = (6, 8, 14, 16)
#: Reference triangle (CA, N, C) and Z-matrix rows (atom, bond, angle, dihedral partner), SPEC §2.2.1.
REFERENCE_ATOMS = (8, 6, 14)
Z_MATRIX = (
    (0, 1, 4, 6), (1, 4, 6, 8), (2, 1, 4, 0), (3, 1, 4, 0), (4, 6, 8, 14), (5, 4, 6, 8), (7, 6, 8, 4),
    (9, 8, 6, 4), (10, 8, 6, 4), (11, 10, 8, 6), (12, 10, 8, 11), (13, 10, 8, 11), (15, 14, 8, 16),
    (16, 14, 8, 6), (17, 16, 14, 15), (18, 16, 14, 8), (19, 18, 16, 14), (20, 18, 16, 19), (21, 18, 16, 19),
)
#: Atoms whose dihedral is circular (periodic, std 1): FAB's list mapped to atoms (SPEC §2.2.1).
CIRCULAR_ATOMS = (0, 1, 4, 5, 7, 9, 10, 11, 16, 17, 18, 19)
#: The circular entries of the 58-dim flow vector (phi and psi, entries 17 and 44 of the 60-dim internal vector, are
#: found from the CG definition: :meth:`~openmm_cgflow.systems.fine_grained.ZMatrixCG.from_definition`).
FLOW_CIRCULAR_INDICES = (5, 8, 19, 22, 25, 28, 31, 45, 48, 51)
#: FAB chirality rule (SPEC §5.3): L if |wrap(y[17] - y[26]) - (-0.043)| < threshold.
FAB_CHIRALITY_OFFSET = -0.043


def amber_files() -> Tuple[str, str]:
    """Paths of the prmtop and inpcrd files shipped with openmmtools (found without importing openmmtools, whose
    import loads pymbar and prints its banners)."""
    import importlib.util

    spec = importlib.util.find_spec("openmmtools")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("openmmtools is not installed: it ships the alanine-dipeptide force-field files (pip install openmmtools)")
    folder = os.path.join(list(spec.submodule_search_locations)[0], "data", "alanine-dipeptide-gbsa")
    prmtop, inpcrd = os.path.join(folder, "alanine-dipeptide.prmtop"), os.path.join(folder, "alanine-dipeptide.crd")
    for path in (prmtop, inpcrd):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"openmmtools' alanine-dipeptide file is missing: {path}")
    return prmtop, inpcrd


def create_openmm_system() -> Tuple[openmm.System, app.Topology, np.ndarray]:
    """(System, Topology, inpcrd positions in nm) of the paper's Hamiltonian."""
    prmtop_path, inpcrd_path = amber_files()
    prmtop = app.AmberPrmtopFile(prmtop_path)
    inpcrd = app.AmberInpcrdFile(inpcrd_path)
    system = prmtop.createSystem(implicitSolvent=app.OBC1, nonbondedMethod=app.NoCutoff, constraints=None)
    return system, prmtop.topology, np.asarray(inpcrd.getPositions(asNumpy=True).value_in_unit(unit.nanometer))


@lru_cache(maxsize=1)
def minimised_structure() -> np.ndarray:
    """Our energy-minimised structure (nm), on the Reference platform from the inpcrd (deterministic)."""
    system, _, positions = create_openmm_system()
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    openmm.LocalEnergyMinimizer.minimize(context, 1e-3, 0)
    return context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)


def phi_psi(positions) -> np.ndarray:
    """IUPAC (mdtraj-convention) phi and psi in radians, (B, 2), from positions (B, 22, 3) nm."""
    return frame_dihedrals(np.asarray(positions, dtype=np.float64).reshape(-1, N_ATOMS, 3), (PHI_ATOMS, PSI_ATOMS))


def is_l_chirality_geometric(positions: torch.Tensor) -> torch.Tensor:
    """SPEC §5.3 "alternative" rule: with vectors from CA, n = (C - N) x (CB - N); L if n . (HA - N) < 0."""
    x = torch.as_tensor(positions)
    ca = x[:, 8]
    n, c, cb, ha = x[:, 6] - ca, x[:, 14] - ca, x[:, 10] - ca, x[:, 9] - ca
    normal = torch.linalg.cross(c - n, cb - n, dim=-1)
    return (normal * (ha - n)).sum(-1) < 0


def fab_chirality_filter(transform: ZMatrixTransform, threshold: float = 1.0):
    """SPEC §5.3 FAB rule on internal coordinates: d = wrap(y[17] - y[26]); L if |d + 0.043| < threshold."""
    def is_l_chirality_fab(positions: torch.Tensor) -> torch.Tensor:
        y, _ = transform(torch.as_tensor(positions, dtype=torch.float64))
        d = wrap_angle(y[:, 17] - y[:, 26])
        return torch.abs(d - FAB_CHIRALITY_OFFSET) < threshold

    return is_l_chirality_fab


@lru_cache(maxsize=1)
def paper_frame_references() -> Tuple[float, float]:
    """(phi_ref_bg, psi_ref_bg) in rad: boltzgen-signed phi/psi of our minimised structure."""
    phi, psi = phi_psi(minimised_structure()[None])[0]
    return -float(phi), -float(psi)


def to_paper_frame(phi_psi_iupac: np.ndarray) -> np.ndarray:
    """IUPAC (phi, psi) rad -> the paper's shifted, sign-flipped CG frame s = wrap(-angle - ref_bg)."""
    ref = np.array(paper_frame_references())
    return periodic_difference(-np.asarray(phi_psi_iupac), ref)


def from_paper_frame(s: np.ndarray) -> np.ndarray:
    """The paper's CG frame -> IUPAC (phi, psi) in rad, wrapped into [-pi, pi)."""
    ref = np.array(paper_frame_references())
    return periodic_difference(-(np.asarray(s) + ref))


def cg_definition(positions: np.ndarray, masses) -> CGDefinition:
    """(phi, psi) in the paper frame, s = wrap(-angle_IUPAC - ref_bg), with the backbone chain C(ACE) - N - CA -
    C - N(NME) of ``positions`` as the CG replica."""
    phi_ref, psi_ref = paper_frame_references()
    coordinates = (DihedralCV("phi", PHI_ATOMS, -1.0, phi_ref), DihedralCV("psi", PSI_ATOMS, -1.0, psi_ref))
    return CGDefinition(coordinates, chain_replica(coordinates, masses, positions), n_atoms=N_ATOMS)


def cached_starting_data(n_frames: int, save_every: int, equilibration_steps: int, timestep_fs: float, friction_per_ps: float,
                         seed: int, platform: str, progress: bool = False):
    """SPEC §2.2 starting data from the cache (:func:`~openmm_cgflow.systems.starting_data.aldp_starting_data`):
    1 fs MD at friction 1/ps, saved every multiple of 10 steps."""
    from .starting_data import SAVE_EVERY, aldp_starting_data

    if save_every % SAVE_EVERY or timestep_fs != 1.0 or friction_per_ps != 1.0:
        raise ValueError(f"alanine-dipeptide starting data is 1 fs MD at friction 1/ps saved every multiple of {SAVE_EVERY} steps")
    n_steps = equilibration_steps + n_frames * save_every
    from . import create_system

    data = aldp_starting_data(create_system("alanine-dipeptide"), seed, platform if platform in ("CPU", "Reference") else "CPU", n_steps=n_steps,
                              progress=progress)
    return data["frames"][save_every // SAVE_EVERY - 1 :: save_every // SAVE_EVERY][-n_frames:], data["md_steps"]


def packaged_reference_path() -> Path:
    """The alanine-dipeptide reference shipped in the package (``openmm_cgflow/data/reference_aldp.npz``, paper frame)."""
    return Path(__file__).resolve().parent.parent / "data" / PACKAGED_REFERENCE


def packaged_reference(n_bins: int, domain):
    """Bin centres (n_bins^2, 2) and probabilities of the packaged umbrella-sampling reference (paper frame)."""
    ref = load_reference(packaged_reference_path(), n_bins)
    return grid_centres(n_bins), ref.probabilities.ravel()


#: Literature positions (IUPAC phi, psi in degrees) of the alanine-dipeptide basins (Amber force fields, vacuum or
#: implicit solvent); the umbrella reference reports the nearest minimum of its PMF to each.
LITERATURE_BASINS_DEG = {"C5/beta": [-155.0, 160.0], "C7eq": [-83.0, 73.0], "alphaR": [-70.0, -40.0], "C7ax": [72.0, -60.0], "alphaL": [60.0, 40.0]}


def create_alanine_dipeptide_system() -> CGSystem:
    """The ALDP CGSystem: OpenMM System (ff96 + OBC1, NoCutoff, no constraints), 300 K, CG = (phi, psi) in the
    paper frame, FAB's Z-matrix (SPEC §2.2.1)."""
    from .molecule import find_chirality_centres

    system, topology, _ = create_openmm_system()
    minimum = minimised_structure()
    bonds = [(b[0].index, b[1].index) for b in topology.bonds()]
    transform = ZMatrixTransform.build(N_ATOMS, REFERENCE_ATOMS, Z_MATRIX, CIRCULAR_ATOMS, minimum, bonds=bonds)
    masses = [system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(N_ATOMS)]
    phi_ref, psi_ref = paper_frame_references()
    definition = cg_definition(minimum, masses)
    return CGSystem(
        name="alanine-dipeptide",
        system=system,
        topology=topology,
        positions=minimum,
        temperature=TEMPERATURE,
        cg_definition=definition,
        fine_grained=ZMatrixCG.from_definition(transform, definition),
        flow_circular_indices=FLOW_CIRCULAR_INDICES,
        chirality_centres=find_chirality_centres(topology),
        description=SystemDescription(
            hamiltonian="amber ff96 (openmmtools prmtop), OBC1, NoCutoff, no constraints",
            angle_convention="paper frame: s = wrap(-angle_IUPAC - ref_bg), ref_bg = -angle_IUPAC(minimum)",
            literature_basins_deg={name: tuple(value) for name, value in LITERATURE_BASINS_DEG.items()},
            notes={"phi_ref_bg_rad": phi_ref, "psi_ref_bg_rad": psi_ref},
        ),
        sample_filters={"fab": fab_chirality_filter(transform)},
        references={"packaged": packaged_reference},
        starting_data=cached_starting_data,
    )
