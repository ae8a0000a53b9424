"""CG coordinates computed from particle positions inside TorchScript models (so an OpenMM force can apply a
PMF defined on them). Every module maps positions (n_replicas * atoms_per_replica, 3) in nm to s
(n_replicas, cg_dim); several replicas of the molecule in one System are evaluated in one call."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence, Union

import torch
from torch import nn

from ..coordinates.geometry import dihedral_angles, wrap_angle

if TYPE_CHECKING:  # for the annotation only: the definition imports this module to compute its values
    from .cg_definition import CGDefinition


class DihedralCG(nn.Module):
    """s_k = wrap(sign_k * dihedral(quadruple_k) - offset_k) (rad), with IUPAC dihedrals (mdtraj convention).

    The paper's alanine-dipeptide frame is sign = -1 and offset = the boltzgen reference angles; IUPAC angles are
    sign = +1, offset = 0. ``sign``: one number for every coordinate, or one per coordinate.
    """

    def __init__(self, quadruples: Sequence[Sequence[int]], atoms_per_replica: int, n_replicas: int = 1,
                 sign: Union[float, Sequence[float]] = 1.0, offsets: Sequence[float] = ()):
        super().__init__()
        q = torch.tensor([list(map(int, row)) for row in quadruples], dtype=torch.long)
        if q.ndim != 2 or q.shape[1] != 4:
            raise ValueError(f"dihedral CG coordinates need atom quadruples, got {quadruples!r}")
        if int(q.min()) < 0 or int(q.max()) >= atoms_per_replica:
            raise ValueError(f"atom indices {q.tolist()} out of range for a molecule of {atoms_per_replica} atoms")
        shift = torch.arange(n_replicas, dtype=torch.long)[:, None, None] * atoms_per_replica
        self.register_buffer("indices", q[None] + shift)  # (R, n_cg, 4)
        self.register_buffer("offsets", torch.tensor(list(offsets) if len(offsets) else [0.0] * q.shape[0], dtype=torch.float64))
        signs = [float(sign)] * q.shape[0] if isinstance(sign, (int, float)) else [float(v) for v in sign]
        self.register_buffer("signs", torch.tensor(signs, dtype=torch.float64))
        self.n_particles = atoms_per_replica * n_replicas

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        x = positions.to(torch.float64)
        i = self.indices
        angle = dihedral_angles(x[i[..., 0]], x[i[..., 1]], x[i[..., 2]], x[i[..., 3]])
        return wrap_angle(self.signs * angle - self.offsets)


class LinearCG(nn.Module):
    """s_k = c_k . r of one particle per replica (nm), e.g. Müller-Brown's s = x - y (c = (1, -1, 0))."""

    def __init__(self, particles: Sequence[int], coefficients: Sequence[Sequence[float]], atoms_per_replica: int, n_replicas: int = 1):
        super().__init__()
        for particle in particles:
            if not 0 <= int(particle) < atoms_per_replica:
                raise ValueError(f"particle {particle} out of range for {atoms_per_replica} particles per replica")
        index = torch.arange(n_replicas, dtype=torch.long)[:, None] * atoms_per_replica + torch.tensor([int(p) for p in particles])[None]
        self.register_buffer("index", index)  # (R, n_cg)
        self.register_buffer("coefficients", torch.tensor([list(map(float, c)) for c in coefficients], dtype=torch.float64))
        self.n_particles = atoms_per_replica * n_replicas

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        x = positions.to(torch.float64)[self.index]  # (R, n_cg, 3)
        return (x * self.coefficients).sum(-1)


class DifferenceCG(LinearCG):
    """Müller-Brown: s = x - y of one particle per replica (nm)."""

    def __init__(self, particle: int, atoms_per_replica: int, n_replicas: int = 1):
        super().__init__([particle], [(1.0, -1.0, 0.0)], atoms_per_replica, n_replicas)


def cg_module_from_definition(definition: "CGDefinition", n_replicas: int = 1, atoms_per_replica: int = 0,
                              replica_atoms: Optional[Sequence[int]] = None) -> nn.Module:
    """The CG-coordinate module of a :class:`~openmm_cgflow.systems.cg_definition.CGDefinition`.

    ``atoms_per_replica``: particles per copy of the molecule (default: just enough for the CG atoms).
    ``replica_atoms``: the atom of the model's molecule that each particle of one replica stands for, when the
    System holds only some of its atoms (e.g. the backbone atoms of a CG replica); default: every atom in the
    model's order. A CG atom that no particle stands for is an error naming it.
    """
    coordinates = definition.coordinates
    atoms_of = [list(cv.atoms) if cv.kind == "dihedral" else [cv.particle] for cv in coordinates]
    if replica_atoms is not None:
        replica_atoms = [int(a) for a in replica_atoms]
        missing = sorted({a for atoms in atoms_of for a in atoms} - set(replica_atoms))
        if missing:
            raise ValueError(f"the CG coordinates {definition.names} use atoms {missing}, which no particle of the replica "
                             f"(atoms {replica_atoms}) stands for")
        atoms_of = [[replica_atoms.index(a) for a in atoms] for atoms in atoms_of]
        atoms_per_replica = atoms_per_replica or len(replica_atoms)
    atoms_per_replica = atoms_per_replica or definition.n_atoms or max(a for atoms in atoms_of for a in atoms) + 1
    if definition.kind == "dihedral":
        return DihedralCG(atoms_of, atoms_per_replica, n_replicas, sign=[cv.sign for cv in coordinates],
                          offsets=[cv.offset for cv in coordinates])
    return LinearCG([a[0] for a in atoms_of], [cv.coefficients for cv in coordinates], atoms_per_replica, n_replicas)


__all__ = ["DihedralCG", "DifferenceCG", "LinearCG", "cg_module_from_definition"]
