"""The fine-grained coordinates of a CG system: how (s, x_fg) map to Cartesian positions and back.

Two maps, each a TorchScript-able module with a JSON description (:meth:`spec`) that model files carry:

* :class:`ZMatrixCG` for molecules: normalised internal coordinates y of a Z-matrix
  (:class:`~openmm_cgflow.coordinates.zmatrix.ZMatrixTransform`) split into the CG dihedrals s (rows of the
  Z-matrix) and the rest x_fg. The Z-matrix stores dihedrals with boltzgen's sign (-IUPAC); a CG coordinate
  ``s = wrap(sign * IUPAC - offset)`` is ``s = wrap(-sign * y_cg)`` when the row's mean is ``-sign * offset``
  and its std 1, a measure-preserving map (ln|det| = 0).
* :class:`PlanarParticleCG` for one particle in the z = 0 plane with s = a . (x, y), s_perp = b . (x, y)
  (Müller-Brown: a = (1, -1), b = (1, 1)); constant ln|det| = -ln|det [a; b]|.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Dict, List, Sequence, Tuple

import torch
from torch import nn

from ..coordinates.geometry import wrap_angle
from ..coordinates.zmatrix import ZMatrixTransform

if TYPE_CHECKING:
    from .cg_definition import CGDefinition


class ZMatrixCG(nn.Module):
    """(s, x_fg) <-> Cartesian positions through a Z-matrix whose rows ``cg_entries`` hold the CG dihedrals."""

    def __init__(self, transform: ZMatrixTransform, cg_entries: Sequence[int], cg_signs: Sequence[float]):
        super().__init__()
        self.transform = transform
        cg_entries = [int(e) for e in cg_entries]
        dihedral_entries = set(transform.dihedral_index.tolist())
        for e in cg_entries:
            if e not in dihedral_entries:
                raise ValueError(f"internal coordinate {e} is not a Z-matrix dihedral, so it cannot be a CG dihedral")
        keep = [i for i in range(transform.dim) if i not in cg_entries]
        self.register_buffer("cg_index", torch.tensor(cg_entries, dtype=torch.long))
        self.register_buffer("fg_index", torch.tensor(keep, dtype=torch.long))
        self.register_buffer("cg_sign", torch.tensor([float(v) for v in cg_signs], dtype=torch.float64))
        self.cg_dim = len(cg_entries)
        self.fg_dim = len(keep)
        self.dim = int(transform.dim)

    @classmethod
    def from_definition(cls, transform: ZMatrixTransform, definition: "CGDefinition") -> "ZMatrixCG":
        """The map whose CG coordinates are ``definition``'s dihedrals: each is the torsion row of the Z-matrix with
        the same four atoms (in either order), with the definition's sign. The CG map is described once, in the
        definition; a row whose normalisation does not make s = wrap(sign * IUPAC - offset) (mean -sign * offset,
        std 1) is a ValueError naming the coordinate."""
        rows = [tuple(row) for row in transform.rows.tolist()]
        entries, signs = [], []
        for cv in definition.coordinates:
            if cv.kind != "dihedral":
                raise ValueError(f"CG coordinate '{cv.name}' is {cv.kind}: a Z-matrix map takes CG dihedrals")
            k = next((n for n, row in enumerate(rows) if row in (cv.atoms, cv.atoms[::-1])), None)
            if k is None:
                raise ValueError(f"CG dihedral '{cv.name}' {list(cv.atoms)} is not a torsion row of the Z-matrix")
            entry = int(transform.dihedral_index[k])
            mean, std = float(transform.mean[entry]), float(transform.std[entry])
            if std != 1.0 or abs(math.remainder(mean + cv.sign * cv.offset, 2 * math.pi)) > 1e-9:
                raise ValueError(f"CG dihedral '{cv.name}': its Z-matrix row is normalised with mean {mean:.6g}, std {std:.6g}; "
                                 f"the definition needs mean {-cv.sign * cv.offset:.6g} and std 1")
            entries.append(entry)
            signs.append(cv.sign)
        return cls(transform, entries, signs)

    def split(self, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return wrap_angle(-self.cg_sign * y[:, self.cg_index]), y[:, self.fg_index]

    def join(self, s: torch.Tensor, x_fg: torch.Tensor) -> torch.Tensor:
        y = torch.empty(s.shape[0], self.dim, dtype=x_fg.dtype, device=x_fg.device)
        y = y.index_copy(1, self.cg_index, -self.cg_sign.to(x_fg.dtype) * s.to(x_fg.dtype))
        return y.index_copy(1, self.fg_index, x_fg)

    @torch.jit.export
    def to_cartesian(self, s: torch.Tensor, x_fg: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(s (B, cg_dim) rad, x_fg (B, fg_dim)) -> (positions (B, n_atoms, 3) nm, ln|det dx/dy| (B,))."""
        return self.transform.inverse(self.join(s, x_fg))

    @torch.jit.export
    def internal(self, positions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """positions (B, n_atoms, 3) nm -> (s, x_fg, ln|det dy/dx|)."""
        y, log_det = self.transform(positions.to(torch.float64))
        s, x_fg = self.split(y)
        return s, x_fg, log_det

    def from_cartesian(self, positions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """positions (B, n_atoms, 3) nm -> (s (B, cg_dim), x_fg (B, fg_dim))."""
        s, x_fg, _ = self.internal(torch.as_tensor(positions, dtype=torch.float64))
        return s, x_fg

    def forward(self, positions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.from_cartesian(positions)

    def spec(self) -> Dict[str, Any]:
        t = self.transform
        return {
            "kind": "zmatrix",
            "n_atoms": int(t.n_atoms),
            "reference_atoms": [int(a) for a in t.reference_list],
            "rows": t.rows.tolist(),
            "circular": t.circular.tolist(),
            "mean": t.mean.tolist(),
            "std": t.std.tolist(),
            "cg_entries": self.cg_index.tolist(),
            "cg_signs": self.cg_sign.tolist(),
        }


class PlanarParticleCG(nn.Module):
    """One particle in the z = 0 plane: s = a . (x, y), s_perp = b . (x, y) (nm)."""

    def __init__(self, cg_row: Sequence[float] = (1.0, -1.0), fg_row: Sequence[float] = (1.0, 1.0)):
        super().__init__()
        a, b = [float(v) for v in cg_row], [float(v) for v in fg_row]
        det = a[0] * b[1] - a[1] * b[0]
        if det == 0:
            raise ValueError(f"the rows {a} and {b} of a planar CG map must be independent")
        self.cg_row: List[float] = a
        self.fg_row: List[float] = b
        # inverse of [[a0, a1], [b0, b1]]
        self.inverse_rows: List[List[float]] = [[b[1] / det, -a[1] / det], [-b[0] / det, a[0] / det]]
        self.log_jacobian = -math.log(abs(det))
        self.cg_dim = 1
        self.fg_dim = 1

    @torch.jit.export
    def to_cartesian(self, s: torch.Tensor, x_fg: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(s, s_perp) of shape (B, 1) each -> (positions (B, 1, 3) nm with z = 0, ln|det J| (B,))."""
        m = self.inverse_rows
        x1 = m[0][0] * s[:, 0] + m[0][1] * x_fg[:, 0]
        x2 = m[1][0] * s[:, 0] + m[1][1] * x_fg[:, 0]
        positions = torch.stack([x1, x2, torch.zeros_like(x1)], dim=-1)[:, None, :]
        return positions, torch.full_like(x1, self.log_jacobian)

    def from_cartesian(self, positions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """positions (B, 1, 3) nm -> (s (B, 1), s_perp (B, 1))."""
        x1, x2 = positions[:, 0, 0], positions[:, 0, 1]
        a, b = self.cg_row, self.fg_row
        return (a[0] * x1 + a[1] * x2)[:, None], (b[0] * x1 + b[1] * x2)[:, None]

    def forward(self, positions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.from_cartesian(positions)

    def spec(self) -> Dict[str, Any]:
        return {"kind": "planar_particle", "cg_row": list(self.cg_row), "fg_row": list(self.fg_row)}


def fine_grained_from_spec(spec: Dict[str, Any]) -> nn.Module:
    """Rebuild a :class:`ZMatrixCG` or :class:`PlanarParticleCG` from its :meth:`spec`."""
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind == "zmatrix":
        transform = ZMatrixTransform(
            spec["n_atoms"], spec["reference_atoms"], spec["rows"], spec["circular"],
            torch.tensor(spec["mean"], dtype=torch.float64), torch.tensor(spec["std"], dtype=torch.float64),
        )
        return ZMatrixCG(transform, spec["cg_entries"], spec["cg_signs"])
    if kind == "planar_particle":
        return PlanarParticleCG(spec["cg_row"], spec["fg_row"])
    raise ValueError(f"unknown fine-grained map {kind!r} (known: zmatrix, planar_particle)")
