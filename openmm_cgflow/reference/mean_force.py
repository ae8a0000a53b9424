"""The mean-force estimator of a PMF on 1-3 CG dihedrals: force matching of generalized forces.

Why: a histogram (or the vFEP likelihood) learns F from *where* samples sit, so its noise is set by how often the
CG coordinates decorrelate (about a picosecond for alanine dipeptide's phi/psi, even inside an umbrella window).
The gradient of F is the conditional mean of a force,

    dF/ds_i (s) = E[ d(beta U - ln J)/ds_i | s ],

where (s, x_fg) are the system's internal coordinates (:meth:`CGSystem.to_cartesian`, with ln J its log-Jacobian;
for torsions of a Z-matrix J does not depend on s), and that force decorrelates in tens of femtoseconds. Any
sampling whose bias depends on s only (plain MD, umbrella windows, metadynamics) leaves p(x_fg | s) unbiased, so
its samples estimate the same conditional mean.

Estimator: F(s) = sum c b(s_1) x ... x b(s_d) (the periodic tensor-product bases of :mod:`.vfep`), fitted by
least squares to the sampled generalized forces g_n:

    min_c  sum_n |grad F(s_n) - g_n|^2 + ridge |c|^2,

a linear problem whose sufficient statistics (A^T A, A^T g) have the size of the basis, so runs of any length fit
in seconds. The fit is the projection of dF/ds onto the basis gradients in the sampled density's norm, unbiased
where the basis holds the true F. s and g are in one frame of the angles (rad, kT/rad): :func:`generalized_forces`
returns the system's CG frame, umbrella passes store IUPAC dihedrals (d/d theta = sign d/ds).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

from ..systems.base import CGSystem
from .bases import basis, basis_derivative, rowwise_outer


def _design(s: np.ndarray, basis_name: str) -> np.ndarray:
    """Rows of grad F(s_n) = A_n c: (N, d, m^d), each dimension's derivative times the other dimensions' values."""
    dim = s.shape[1]
    values = [basis(basis_name, s[:, i]) for i in range(dim)]
    slopes = [basis_derivative(basis_name, s[:, i]) for i in range(dim)]
    return np.stack([rowwise_outer([slopes[j] if j == i else values[j] for j in range(dim)]) for i in range(dim)], axis=1)


def force_statistics(s: np.ndarray, g: np.ndarray, basis_name: str, chunk: int = 100_000) -> Tuple[np.ndarray, np.ndarray, int]:
    """Sufficient statistics (A^T A (M, M), A^T g (M,), N) of samples s (N, d) rad and generalized forces g (N, d)
    kT/rad, M = m^d; statistics of separate runs add."""
    s, g = np.asarray(s, dtype=np.float64), np.asarray(g, dtype=np.float64)
    if s.shape != g.shape or s.ndim != 2:
        raise ValueError(f"s and g must both be (N, d); got {s.shape} and {g.shape}")
    AtA, Atg = 0.0, 0.0
    size = basis(basis_name, [0.0]).shape[1] ** s.shape[1]
    chunk = max(100, min(chunk, 4_000_000 // size))  # design blocks of <= ~64 MB
    for start in range(0, len(s), chunk):
        A = _design(s[start : start + chunk], basis_name).reshape(-1, size)
        AtA = AtA + A.T @ A
        Atg = Atg + A.T @ g[start : start + chunk].reshape(-1)
    return AtA, Atg, len(s)


def fit_mean_force(AtA: np.ndarray, Atg: np.ndarray, n: int, dim: int, ridge: float = 1e-6) -> np.ndarray:
    """Coefficients (m,) * d of F from force statistics (ridge relative to the mean diagonal; the constant
    function, which has no gradient, gets 0)."""
    M = AtA.shape[0]
    m = round(M ** (1.0 / dim))
    scale = np.trace(AtA) / M
    c = np.linalg.solve(AtA + ridge * scale * np.eye(M), Atg)
    return c.reshape((m,) * dim)


def generalized_forces(cg_system: CGSystem, positions: np.ndarray, forces: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(s (B, d), g (B, d)) of configurations: the CG coordinates (the system's CG frame) and
    g = d(beta U - ln J)/ds at fixed x_fg, from OpenMM ``positions`` (B, n, 3) nm and ``forces`` (B, n, 3)
    kJ/mol/nm. The internal-coordinate map rebuilds each molecule in its own frame, so the forces are first
    rotated into it (Kabsch)."""
    x = torch.as_tensor(np.asarray(positions, dtype=np.float64))
    f = torch.as_tensor(np.asarray(forces, dtype=np.float64))
    if x.shape != f.shape or x.ndim != 3 or x.shape[1] != cg_system.n_atoms:
        raise ValueError(f"positions and forces must be (B, {cg_system.n_atoms}, 3); got {tuple(x.shape)} and {tuple(f.shape)}")
    s, x_fg = cg_system.from_cartesian(x)[:2]
    s = s.detach().clone().requires_grad_(True)
    rebuilt, log_det = cg_system.to_cartesian(s, x_fg)
    lab = x - x.mean(1, keepdim=True)
    own = rebuilt.detach() - rebuilt.detach().mean(1, keepdim=True)
    u, _, vt = torch.linalg.svd(lab.transpose(1, 2) @ own)
    d = torch.sign(torch.det(vt.transpose(1, 2) @ u.transpose(1, 2)))
    flip = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], dim=-1))
    rotation = vt.transpose(1, 2) @ flip @ u.transpose(1, 2)  # own = lab @ rotation^T
    force_own = f @ rotation.transpose(1, 2)
    g_energy = torch.autograd.grad(rebuilt, s, grad_outputs=-force_own / cg_system.kT, retain_graph=True)[0]
    g_jacobian = torch.autograd.grad(log_det.sum(), s)[0]
    return s.detach().numpy(), (g_energy - g_jacobian).numpy()
