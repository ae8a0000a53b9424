"""Smooth periodic free-energy surfaces for the reference estimators (:mod:`.vfep`, :mod:`.mean_force`).

F(theta_1, ..., theta_d) = sum c_{a..z} b_a(theta_1) ... b_z(theta_d) (kT) over the system's 1-3 CG dihedrals
(IUPAC rad), a tensor product of one periodic 1-D basis per dimension: ``bspline<m>`` (periodic cubic B-splines on
m knots) or ``fourier<L>`` (2L + 1 functions). Here: the bases and their derivatives, F on tensor grids, bin
probabilities in a CG frame, and the candidate bases cross-validation chooses from.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from ..systems.cg_definition import CGDefinition
from ..scoring.grid import default_bins, grid_edges


def bspline_basis(x: np.ndarray, m: int) -> np.ndarray:
    """Periodic cubic B-splines (N, m) on m knots at -pi + 2 pi j / m; rows sum to 1."""
    u = (np.asarray(x, dtype=np.float64).ravel() + math.pi) * m / (2 * math.pi)
    t = np.abs(np.mod(u[:, None] - np.arange(m)[None, :] + m / 2, m) - m / 2)
    return np.where(t < 1, 2 / 3 - t**2 + t**3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))


def fourier_basis(x: np.ndarray, order: int) -> np.ndarray:
    """[1, cos x, sin x, ..., cos(Lx), sin(Lx)] (N, 2L + 1)."""
    x = np.asarray(x, dtype=np.float64).ravel()[:, None]
    n = np.arange(1, order + 1)[None, :]
    return np.concatenate([np.ones_like(x), np.cos(n * x), np.sin(n * x)], axis=1)


def basis(name: str, x) -> np.ndarray:
    """A basis by name: ``bspline<m>`` or ``fourier<L>``, evaluated at angles x (rad)."""
    if name.startswith("bspline"):
        return bspline_basis(x, int(name[7:]))
    if name.startswith("fourier"):
        return fourier_basis(x, int(name[7:]))
    raise ValueError(f"unknown basis '{name}' (use bspline<m> or fourier<L>)")


def rowwise_outer(factors: Sequence[np.ndarray]) -> np.ndarray:
    """Per-row Kronecker products of per-dimension basis values (N, m) -> (N, m^d) (row n: b(x_n1) x ... x b(x_nd))."""
    out = factors[0]
    for f in factors[1:]:
        out = (out[:, :, None] * f[:, None, :]).reshape(len(f), -1)
    return out


def basis_derivative(name: str, x) -> np.ndarray:
    """d/dx of :func:`basis` at angles x (rad), (N, m), analytic."""
    x = np.asarray(x, dtype=np.float64).ravel()
    if name.startswith("fourier"):
        n = np.arange(1, int(name[7:]) + 1)[None, :]
        return np.concatenate([np.zeros((len(x), 1)), -n * np.sin(n * x[:, None]), n * np.cos(n * x[:, None])], axis=1)
    if name.startswith("bspline"):
        m = int(name[7:])
        u = (x + math.pi) * m / (2 * math.pi)
        signed = np.mod(u[:, None] - np.arange(m)[None, :] + m / 2, m) - m / 2  # periodic offset from knot j
        t = np.abs(signed)
        dB_dt = np.where(t < 1, -2 * t + 1.5 * t**2, np.where(t < 2, -0.5 * (2 - t) ** 2, 0.0))
        return dB_dt * np.sign(signed) * m / (2 * math.pi)
    raise ValueError(f"unknown basis '{name}' (use bspline<m> or fourier<L>)")


def on_tensor_grid(c: torch.Tensor, grids: Sequence[torch.Tensor]) -> torch.Tensor:
    """F = sum c b(x_1) x ... x b(x_d) on the tensor grid of per-dimension basis values grids[i] (n_i, m)."""
    F = c
    for g in grids:  # one axis at a time (2-D: G c G^T): contract the leading basis axis, append the grid axis
        F = torch.tensordot(F, g, dims=([0], [1]))
    return F


def tensor_free_energy(c, basis_name: str, *axes: np.ndarray) -> np.ndarray:
    """F (kT) of coefficients ``c`` (m,) * d in ``basis_name`` on the tensor grid axes[0] x ... x axes[d-1] (rad),
    minimum 0."""
    F = on_tensor_grid(torch.as_tensor(c), [torch.as_tensor(basis(basis_name, a)) for a in axes])
    return (F - F.min()).numpy()


def tensor_bin_probabilities(c, basis_name: str, n_bins: Optional[int] = None, sub: int = 4,
                             definition: Optional[CGDefinition] = None) -> np.ndarray:
    """Probabilities (n_bins,) * d of the bins over [-pi, pi)^d of a CG frame (default bins:
    :func:`~openmm_cgflow.scoring.grid.default_bins`), each the integral of exp(-F) over its bin on sub^d points.
    ``definition``: F's angles are IUPAC and the bins are in its CG frame (s -> theta = to_dihedrals(s)); None: F
    is already a function of the CG frame's s."""
    dim = np.asarray(c).ndim
    n_bins = default_bins(dim) if n_bins is None else n_bins
    edges = grid_edges(n_bins)
    width = edges[1] - edges[0]
    s = (edges[:-1, None] + (np.arange(sub)[None, :] + 0.5) * width / sub).ravel()  # CG-frame sub-points
    points = np.stack([s] * dim, axis=-1)
    if definition is not None:
        points = definition.to_dihedrals(points)
    F = tensor_free_energy(c, basis_name, *(points[:, i] for i in range(dim)))
    p = np.exp(-F).reshape((n_bins, sub) * dim).sum(axis=tuple(range(1, 2 * dim, 2)))
    return p / p.sum()


#: vFEP's candidates for 1 and 2 CG dihedrals
CANDIDATE_BASES = ("bspline18", "bspline24", "bspline30", "bspline36", "bspline45", "fourier8", "fourier12")
#: 3-D: m^3 coefficients, so fewer functions per dimension (fourier6: 2,197; bspline12: 1,728)
CANDIDATE_BASES_3D = ("bspline8", "bspline12", "fourier4", "fourier6")


#: the mean-force fit's normal equations are dense in m^d unknowns: bases up to 625 functions in 2-D
CANDIDATE_BASES_MEAN_FORCE = ("bspline18", "bspline24", "fourier6", "fourier8", "fourier10", "fourier12")


def candidate_bases(dim: int, estimator: str = "vfep") -> Tuple[str, ...]:
    """The bases cross-validation chooses from for ``dim`` CG dihedrals and an estimator ("vfep" or "mean-force")."""
    if dim == 3:
        return CANDIDATE_BASES_3D
    return CANDIDATE_BASES_MEAN_FORCE if estimator == "mean-force" else CANDIDATE_BASES
