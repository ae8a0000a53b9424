"""CG coordinates computed from particle positions inside TorchScript models (so an OpenMM force can apply a
PMF defined on them). Every module maps positions (n_replicas * atoms_per_replica, 3) in nm to s
(n_replicas, cg_dim); several replicas of the molecule in one System are evaluated in one call."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..coordinates.geometry import dihedral_angles, wrap_angle


class DihedralCG(nn.Module):
    """s_k = wrap(sign * dihedral(quadruple_k) - offset_k) (rad), with IUPAC dihedrals (mdtraj convention).

    The paper's alanine-dipeptide frame is sign = -1 and offset = the boltzgen reference angles; IUPAC angles are
    sign = +1, offset = 0.
    """

    def __init__(self, quadruples: Sequence[Sequence[int]], atoms_per_replica: int, n_replicas: int = 1, sign: float = 1.0,
                 offsets: Sequence[float] = ()):
        super().__init__()
        q = torch.tensor([list(map(int, row)) for row in quadruples], dtype=torch.long)
        if q.ndim != 2 or q.shape[1] != 4:
            raise ValueError(f"dihedral CG coordinates need atom quadruples, got {quadruples!r}")
        if int(q.min()) < 0 or int(q.max()) >= atoms_per_replica:
            raise ValueError(f"atom indices {q.tolist()} out of range for a molecule of {atoms_per_replica} atoms")
        shift = torch.arange(n_replicas, dtype=torch.long)[:, None, None] * atoms_per_replica
        self.register_buffer("indices", q[None] + shift)  # (R, n_cg, 4)
        self.register_buffer("offsets", torch.tensor(list(offsets) if len(offsets) else [0.0] * q.shape[0], dtype=torch.float64))
        self.sign = float(sign)
        self.n_particles = atoms_per_replica * n_replicas

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        x = positions.to(torch.float64)
        i = self.indices
        angle = dihedral_angles(x[i[..., 0]], x[i[..., 1]], x[i[..., 2]], x[i[..., 3]])
        return wrap_angle(self.sign * angle - self.offsets)


class DifferenceCG(nn.Module):
    """Müller-Brown: s = x - y of one particle per replica (nm)."""

    def __init__(self, particle: int, atoms_per_replica: int, n_replicas: int = 1):
        super().__init__()
        if not 0 <= particle < atoms_per_replica:
            raise ValueError(f"particle {particle} out of range for {atoms_per_replica} particles per replica")
        self.register_buffer("index", torch.arange(n_replicas, dtype=torch.long) * atoms_per_replica + particle)
        self.n_particles = atoms_per_replica * n_replicas

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        x = positions.to(torch.float64)[self.index]
        return (x[:, 0] - x[:, 1]).unsqueeze(-1)


def cg_module_from_metadata(metadata: dict, n_replicas: int = 1, atoms_per_replica: int = 0,
                            replica_atoms: Optional[Sequence[int]] = None) -> nn.Module:
    """The CG-coordinate module a model's metadata describes (system and CG definition).

    ``replica_atoms``: the atom of the model's molecule that each particle of one replica stands for, when the
    System holds only some of its atoms (e.g. the five backbone atoms of the ALDP CG system); default: every
    atom in the model's order. A CG atom that no particle stands for is an error naming it.
    """
    system = metadata["system"]
    cg = metadata.get("cg_metadata", {})
    if system == "alanine-dipeptide":
        definition = cg.get("cg_definition")
        if not isinstance(definition, dict) or set(definition) != {"phi", "psi"}:
            raise ValueError("alanine-dipeptide model metadata lacks cg_definition {'phi': [4 atoms], 'psi': [4 atoms]}")
        quadruples = [list(definition["phi"]), list(definition["psi"])]
        if replica_atoms is not None:
            replica_atoms = [int(a) for a in replica_atoms]
            missing = sorted({a for q in quadruples for a in q} - set(replica_atoms))
            if missing:
                raise ValueError(f"the CG definition {definition} uses atoms {missing}, which no particle of the replica "
                                 f"(atoms {replica_atoms}) stands for")
            quadruples = [[replica_atoms.index(a) for a in q] for q in quadruples]
            atoms_per_replica = atoms_per_replica or len(replica_atoms)
        offsets = [cg["phi_ref_bg_rad"], cg["psi_ref_bg_rad"]]
        return DihedralCG(quadruples, atoms_per_replica or 22, n_replicas, sign=-1.0, offsets=offsets)
    if system == "muller-brown":
        return DifferenceCG(0, atoms_per_replica or 1, n_replicas)
    raise ValueError(f"no CG definition is known for system '{system}'")


__all__ = ["DihedralCG", "DifferenceCG", "cg_module_from_metadata"]
