"""Cartesian <-> normalised internal coordinates (bonds, angles, dihedrals) with log|det J|, TorchScript-able.

Layout of the internal vector (SPEC §2.2.1): [b1, b2, alpha] for the reference triangle (central atom R0,
atoms R1 and R2: b1 = |R1 - R0|, b2 = |R2 - R0|, alpha = angle R1-R0-R2), then one (bond, angle, dihedral)
triple per Z-matrix row, in the order the rows are given. Rows are (atom, bond partner, angle partner,
dihedral partner); atoms are placed in a topological order so every partner exists when it is needed.

Dihedrals use boltzgen's sign (the *negative* of the IUPAC/mdtraj dihedral). Normalisation:
y = (q - mean) / std, with dihedrals wrapped into [-pi, pi) before dividing. The six rigid-body degrees of
freedom are not part of y; :meth:`ZMatrixTransform.frame` extracts them so a round trip can be exact.

Jacobian (x = Cartesian in nm, q = internal): |det dx/dq| = b1^2 b2^2 sin(alpha) prod_rows r^2 sin(theta),
per unit rigid-body measure; log|det dx/dy| adds sum ln std. (boltzgen keeps only ln b2 for the triangle; the
difference is a near-constant because those bonds are stiff, and ours is the exact volume element.)
"""
from __future__ import annotations

from collections import deque
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .geometry import bond_angles, bond_lengths, dihedral_angles, place_atom, wrap_angle

#: Default normalisation widths when the statistics come from one structure (SPEC §2.2.1).
DEFAULT_STD = {"bond": 0.005, "angle": 0.15, "dihedral": 0.2, "circular": 1.0}


def placement_order(rows: Sequence[Sequence[int]], reference_atoms: Sequence[int]) -> List[int]:
    """Indices into ``rows`` in an order where every row's partners are already placed."""
    placed = set(reference_atoms)
    remaining = list(range(len(rows)))
    order: List[int] = []
    while remaining:
        progress = False
        for k in list(remaining):
            atom, *partners = rows[k]
            if all(p in placed for p in partners):
                order.append(k)
                placed.add(atom)
                remaining.remove(k)
                progress = True
        if not progress:
            raise ValueError(f"Z-matrix rows {[rows[k] for k in remaining]} reference atoms that are never placed")
    return order


def zmatrix_from_bonds(n_atoms: int, bonds: Sequence[Tuple[int, int]], heavy: Sequence[bool],
                       torsions: Sequence[Tuple[int, int, int, int]] = ()) -> Tuple[List[int], List[List[int]]]:
    """A Z-matrix for any connected molecule, in which every torsion (i, j, k, l) of ``torsions`` (e.g. the CG
    dihedrals) is a row (l, k, j, i) or (i, j, k, l).

    Reference triangle: (j; i, k) of the first torsion, or without torsions a heavy atom with two heavy
    neighbours. Atoms are then placed breadth-first: an atom's bond partner is its BFS parent, its angle partner
    the parent's parent (or a placed neighbour), and its dihedral partner the fourth atom of a torsion when
    there is one, else a placed neighbour of the angle partner (a proper torsion) or of the bond partner.
    Whether every torsion became a row is for the caller to check."""
    neighbours: Dict[int, List[int]] = {i: [] for i in range(n_atoms)}
    for a, b in bonds:
        neighbours[a].append(b)
        neighbours[b].append(a)
    wanted = {}
    for quad in torsions:
        wanted[tuple(quad[::-1][:3])] = quad[0]  # (l, k, j) -> i
        wanted[tuple(quad[:3])] = quad[3]        # (i, j, k) -> l
    if torsions:
        first, centre, second, _ = torsions[0]
    else:
        centre = next((i for i in range(n_atoms) if heavy[i] and sum(heavy[j] for j in neighbours[i]) >= 2), None)
        if centre is None:
            raise ValueError("no heavy atom with two heavy neighbours: cannot choose a reference triangle")
        first, second = [j for j in neighbours[centre] if heavy[j]][:2]
    reference = [centre, first, second]
    placed = set(reference)
    parent = {first: centre, second: centre}
    rows: List[List[int]] = []
    queue = deque([first, centre, second])
    order = lambda j: (not heavy[j], j)  # noqa: E731  (heavy atoms first, then by index)
    while queue:
        a = queue.popleft()
        for atom in sorted(neighbours[a], key=order):
            if atom in placed:
                continue
            if a in parent:
                angle = parent[a]
            else:  # a is the triangle's centre: prefer an angle partner that completes a torsion
                options = [j for j in sorted(neighbours[a], key=order) if j in placed]
                angle = next((j for j in options if (atom, a, j) in wanted), options[0])
            dihedral = wanted.get((atom, a, angle))
            if dihedral is None or dihedral not in placed:
                candidates = [j for j in sorted(neighbours[angle], key=order) if j in placed and j not in (a, atom)]
                candidates += [j for j in sorted(neighbours[a], key=order) if j in placed and j not in (a, angle, atom)]
                if not candidates:
                    candidates = [j for j in reference if j not in (a, angle)]
                dihedral = candidates[0]
            rows.append([atom, a, angle, dihedral])
            placed.add(atom)
            parent[atom] = a
            queue.append(atom)
    if len(placed) != n_atoms:
        missing = sorted(set(range(n_atoms)) - placed)
        raise ValueError(f"the molecule is not connected: atoms {missing[:8]}{'...' if len(missing) > 8 else ''} have no bonded path "
                         f"to atom {centre} (every atom needs one; one molecule per CG system)")
    return reference, rows


class ZMatrixTransform(nn.Module):
    """Cartesian (B, n_atoms, 3) nm <-> normalised internal coordinates (B, 3 + 3 * n_rows).

    ``forward(x) -> (y, ln|det dy/dx|)`` (the negative of the inverse's log-det, rigid-body measure excluded);
    ``inverse(y, origin, rotation) -> (x, ln|det dx/dy|)``; :meth:`frame` gives (origin, rotation) of x.
    Build it with :meth:`build`.
    """

    def __init__(
        self,
        n_atoms: int,
        reference_atoms: Sequence[int],
        rows: Sequence[Sequence[int]],
        circular: Sequence[bool],
        mean: torch.Tensor,
        std: torch.Tensor,
    ):
        super().__init__()
        rows = [list(map(int, r)) for r in rows]
        if len(rows) + 3 != n_atoms or sorted([r[0] for r in rows] + list(reference_atoms)) != list(range(n_atoms)):
            raise ValueError(f"the Z-matrix must place every one of the {n_atoms} atoms exactly once")
        self.n_atoms = n_atoms
        self.dim = 3 + 3 * len(rows)
        self.register_buffer("reference", torch.tensor(list(reference_atoms), dtype=torch.long))
        self.register_buffer("rows", torch.tensor(rows, dtype=torch.long).reshape(-1, 4))
        order = placement_order(rows, reference_atoms)
        # Python lists for the sequential placement loop (TorchScript keeps them as module constants).
        self.placement: List[List[int]] = [[k] + rows[k] for k in order]
        self.reference_list: List[int] = [int(a) for a in reference_atoms]
        self.register_buffer("circular", torch.tensor(list(circular), dtype=torch.bool))
        self.register_buffer("mean", mean.to(torch.float64).clone())
        self.register_buffer("std", std.to(torch.float64).clone())
        n = len(rows)
        self.register_buffer("bond_index", torch.tensor([3 + 3 * k for k in range(n)], dtype=torch.long))
        self.register_buffer("angle_index", torch.tensor([4 + 3 * k for k in range(n)], dtype=torch.long))
        self.register_buffer("dihedral_index", torch.tensor([5 + 3 * k for k in range(n)], dtype=torch.long))

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        n_atoms: int,
        reference_atoms: Sequence[int],
        rows: Sequence[Sequence[int]],
        circular_atoms: Sequence[int],
        reference_positions: np.ndarray,
        bonds: Optional[Sequence[Tuple[int, int]]] = None,
        std: Dict[str, float] = DEFAULT_STD,
    ) -> "ZMatrixTransform":
        """Build a transform normalised on one structure (``reference_positions``, (n_atoms, 3) nm).

        ``circular_atoms``: atoms whose dihedral is periodic (std 1, uniform base in the flow).
        ``bonds``: if given (e.g. from an OpenMM Topology), every row's atom must be bonded to its bond partner
        and the reference atoms R1, R2 to R0.
        """
        if bonds is not None:
            bonded = {frozenset(b) for b in bonds}
            r0, r1, r2 = reference_atoms
            for a, b in ((r0, r1), (r0, r2)):
                if frozenset((a, b)) not in bonded:
                    raise ValueError(f"reference atoms {a} and {b} are not bonded in the topology")
            for row in rows:
                if frozenset(row[:2]) not in bonded:
                    raise ValueError(f"Z-matrix row {list(row)}: atom {row[0]} is not bonded to {row[1]} in the topology")
        circular = [row[0] in set(circular_atoms) for row in rows]
        n = len(rows)
        unit = cls(n_atoms, reference_atoms, rows, circular, torch.zeros(3 + 3 * n), torch.ones(3 + 3 * n))
        q = unit._internal(torch.as_tensor(np.asarray(reference_positions), dtype=torch.float64)[None])[0]
        widths = torch.empty(3 + 3 * n, dtype=torch.float64)
        widths[0:2] = std["bond"]
        widths[2] = std["angle"]
        widths[unit.bond_index] = std["bond"]
        widths[unit.angle_index] = std["angle"]
        widths[unit.dihedral_index] = torch.where(unit.circular, torch.tensor(std["circular"], dtype=torch.float64), torch.tensor(std["dihedral"], dtype=torch.float64))
        return cls(n_atoms, reference_atoms, rows, circular, q, widths)

    # ------------------------------------------------------------------ Cartesian -> internal
    def _internal(self, x: torch.Tensor) -> torch.Tensor:
        """Raw internal coordinates q (B, dim): bonds nm, angles rad, dihedrals rad in boltzgen sign."""
        r0 = x[:, self.reference[0]]
        r1 = x[:, self.reference[1]]
        r2 = x[:, self.reference[2]]
        atom = x[:, self.rows[:, 0]]
        a = x[:, self.rows[:, 1]]
        b = x[:, self.rows[:, 2]]
        c = x[:, self.rows[:, 3]]
        head = torch.stack([bond_lengths(r0, r1), bond_lengths(r0, r2), bond_angles(r1, r0, r2)], dim=-1)
        triples = torch.stack([bond_lengths(atom, a), bond_angles(atom, a, b), -dihedral_angles(atom, a, b, c)], dim=-1)
        return torch.cat([head, triples.reshape(x.shape[0], -1)], dim=-1)

    def _log_volume(self, q: torch.Tensor) -> torch.Tensor:
        """ln|det dx/dq| (rigid-body measure excluded), (B,)."""
        r = q[:, self.bond_index]
        theta = q[:, self.angle_index]
        head = 2 * torch.log(q[:, 0]) + 2 * torch.log(q[:, 1]) + torch.log(torch.sin(q[:, 2]))
        return head + (2 * torch.log(r) + torch.log(torch.sin(theta))).sum(-1)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Cartesian (B, n_atoms, 3) nm -> (y (B, dim), ln|det dy/dx| (B,))."""
        q = self._internal(x)
        delta = q - self.mean
        delta[:, self.dihedral_index] = wrap_angle(delta[:, self.dihedral_index])
        y = delta / self.std
        return y, -(self._log_volume(q) + torch.log(self.std).sum())

    # ------------------------------------------------------------------ internal -> Cartesian
    @torch.jit.export
    def frame(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Rigid-body frame of x: origin = R0 (B, 3) and rotation (B, 3, 3) whose columns are e1 along R1 - R0,
        e2 in the R0-R1-R2 plane towards R2, e3 = e1 x e2."""
        r0 = x[:, self.reference[0]]
        e1 = x[:, self.reference[1]] - r0
        e1 = e1 / torch.linalg.norm(e1, dim=-1, keepdim=True)
        e3 = torch.linalg.cross(e1, x[:, self.reference[2]] - r0, dim=-1)
        e3 = e3 / torch.linalg.norm(e3, dim=-1, keepdim=True)
        e2 = torch.linalg.cross(e3, e1, dim=-1)
        return r0, torch.stack([e1, e2, e3], dim=-1)

    @torch.jit.export
    def inverse(
        self, y: torch.Tensor, origin: Optional[torch.Tensor] = None, rotation: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(y (B, dim), optional frame) -> (Cartesian (B, n_atoms, 3) nm, ln|det dx/dy| (B,)).

        Without a frame the molecule is placed canonically: R0 at the origin, R1 on +x, R2 in the xy-plane.
        """
        q = y * self.std + self.mean
        batch = y.shape[0]
        zero = torch.zeros(batch, dtype=y.dtype, device=y.device)
        positions: List[torch.Tensor] = [torch.zeros(batch, 3, dtype=y.dtype, device=y.device) for _ in range(self.n_atoms)]
        b1, b2, alpha = q[:, 0], q[:, 1], q[:, 2]
        positions[self.reference_list[1]] = torch.stack([b1, zero, zero], dim=-1)
        positions[self.reference_list[2]] = torch.stack([b2 * torch.cos(alpha), b2 * torch.sin(alpha), zero], dim=-1)
        for entry in self.placement:
            k, atom, a, b, c = entry[0], entry[1], entry[2], entry[3], entry[4]
            positions[atom] = place_atom(
                positions[a], positions[b], positions[c], q[:, 3 + 3 * k], q[:, 4 + 3 * k], -q[:, 5 + 3 * k]
            )
        x = torch.stack(positions, dim=1)
        if origin is not None and rotation is not None:
            x = torch.einsum("bij,bnj->bni", rotation, x) + origin[:, None, :]
        return x, self._log_volume(q) + torch.log(self.std).sum()
