"""The reference PMF from umbrella samples: a variational free-energy profile (vFEP, maximum likelihood).

Why this estimator: a histogram (or binned WHAM/MBAR) on the 100 x 100 grid needs ~(bins - 1)/(2 KLD) independent
samples per half, ~1e7 for KLD 2e-4, far beyond a 2-core machine. vFEP (Lee et al., JCTC 2013) instead fits a
smooth F(phi, psi) = sum_ij c_ij b_i(phi) b_j(psi) to *all* biased samples at once by maximum likelihood:

    -ln L(c) = sum_samples F(xi) + sum_k N_k ln Z_k(c),    Z_k = integral exp(-F - w_k) dphi dpsi,

where w_k (kT) is window k's restraint and N_k its sample count. -ln L is convex in c (a linear term plus
log-partition functions), so L-BFGS finds the global optimum; its statistical error scales with the number of
basis functions, not bins. The basis (periodic cubic B-splines on an m x m knot grid, or a Fourier series) and its
size are chosen by cross-validation: each independent run (seed) is fitted, and scored by the held-out
likelihood of the other. The sample term needs only the sufficient statistic S = sum_samples b(phi) b(psi)^T, so
fits take seconds however long the runs are.

All angles here are IUPAC radians of the system's 1-3 CG dihedrals (F is a tensor product of periodic bases, so the
same code fits 1-, 2- and 3-D); the reference file is written on the grid of
:mod:`.grid` in the system's own CG frame (s_k = wrap(sign_k theta_k - offset_k); for alanine dipeptide the paper
frame), with bin probabilities integrated over each bin (4 sub-points per dimension).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..coordinates.geometry import periodic_difference
from ..systems.cg_definition import CGDefinition
from .bases import basis, on_tensor_grid, rowwise_outer, tensor_bin_probabilities, tensor_free_energy
from ..scoring.kld import forward_kld

QUADRATURE_POINTS = 180  # per dimension: spacing 2 deg, << restraint width (~9 deg)


def _tensor_product(factors: Sequence[np.ndarray]) -> np.ndarray:
    """sum_n prod_i factors[i][n, a_i] -> (m,) * d for per-dimension basis values (N, m) (2-D: B_1^T B_2, one BLAS
    call; 3-D: the row-wise outer product of the first two, then the same)."""
    if len(factors) == 1:
        return factors[0].sum(axis=0)
    return (rowwise_outer(factors[:-1]).T @ factors[-1]).reshape((factors[0].shape[1],) * len(factors))


def sufficient_statistics(samples: np.ndarray, basis_name: str) -> Tuple[np.ndarray, np.ndarray]:
    """(S, N_k) of umbrella samples (windows, frames, d): S = sum_samples b(theta_1) x ... x b(theta_d) ((m,) * d;
    2-D: sum b(theta_1) b(theta_2)^T); N_k (windows,)."""
    dim = samples.shape[-1]
    flat = samples.reshape(-1, dim)
    S = 0.0
    for chunk in np.array_split(flat, max(1, len(flat) // 200_000)):
        S = S + _tensor_product([basis(basis_name, chunk[:, i]) for i in range(dim)])
    return S, np.full(samples.shape[0], samples.shape[1], dtype=np.float64)


#: quadrature points per dimension of the log-partition integrals (spacing 1, 2 and 6 degrees: well below the
#: restraint widths of 1-, 2- and 3-D window layouts)
QUADRATURE_BY_DIM = {1: 360, 2: QUADRATURE_POINTS, 3: 60}


class VariationalPMF:
    """The vFEP likelihood for one window layout (IUPAC centres (K, d) rad, d = 1-3, restraint constant in
    kT/rad^2) and one basis; :meth:`fit` returns the coefficients (m,) * d of
    F = sum c_{a..} b_a(theta_1) ... b_z(theta_d) in kT (2-D: F = b(theta_1)^T c b(theta_2))."""

    def __init__(self, centres: np.ndarray, force_constant_kT: float, basis_name: str, n_quadrature: Optional[int] = None):
        centres = np.asarray(centres, dtype=np.float64)
        self.dim = centres.shape[1]
        if self.dim not in QUADRATURE_BY_DIM:
            raise ValueError(f"vFEP fits 1-3 CG dihedrals, not {self.dim}")
        n_quadrature = n_quadrature or QUADRATURE_BY_DIM[self.dim]
        self.basis_name = basis_name
        q = -math.pi + (np.arange(n_quadrature) + 0.5) * 2 * math.pi / n_quadrature
        self.G = torch.as_tensor(basis(basis_name, q))  # (Q, m)
        self.log_dA = self.dim * math.log(2 * math.pi / n_quadrature)
        self.biases = [torch.as_tensor(np.exp(-0.5 * force_constant_kT * periodic_difference(q[None, :], centres[:, i : i + 1]) ** 2))
                       for i in range(self.dim)]  # (K, Q) per dimension: the restraint factorises

    def log_partition(self, c: torch.Tensor) -> torch.Tensor:
        """ln Z_k (K,) of every window's biased distribution exp(-F - w_k)."""
        F = on_tensor_grid(c, [self.G] * self.dim)
        shift = F.min().detach()
        Z = torch.einsum("...r,kr->k...", torch.exp(-(F - shift)), self.biases[-1])  # contract one axis at a time:
        for bias in reversed(self.biases[:-1]):  # memory K Q^(d-1), never K Q^d
            Z = torch.einsum("k...q,kq->k...", Z, bias)
        return torch.log(Z) - shift + self.log_dA

    def nll(self, c: torch.Tensor, S: np.ndarray, N: np.ndarray) -> torch.Tensor:
        """-ln L per sample of the samples summarised by (S, N)."""
        N_t = torch.as_tensor(N)
        return ((c * torch.as_tensor(S)).sum() + (N_t * self.log_partition(c)).sum()) / N_t.sum()

    def fit(self, S: np.ndarray, N: np.ndarray, ridge: float = 1e-8, max_iter: int = 3000) -> torch.Tensor:
        """Maximum-likelihood coefficients (m,) * d; single-threaded (small matrices, and it shares the machine
        with simulations: several OpenMP threads on busy cores run ~100x slower)."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._fit(S, N, ridge, max_iter)
        finally:
            torch.set_num_threads(threads)

    def _fit(self, S: np.ndarray, N: np.ndarray, ridge: float, max_iter: int) -> torch.Tensor:
        m = self.G.shape[1]
        c = torch.zeros((m,) * self.dim, dtype=torch.float64, requires_grad=True)
        optimiser = torch.optim.LBFGS(
            [c], lr=1.0, max_iter=max_iter, tolerance_grad=1e-11, tolerance_change=1e-15, history_size=50, line_search_fn="strong_wolfe"
        )

        def closure():
            optimiser.zero_grad()
            loss = self.nll(c, S, N) + ridge * (c**2).sum()
            loss.backward()
            return loss

        optimiser.step(closure)
        return c.detach()

    def free_energy(self, c: torch.Tensor, *axes: np.ndarray) -> np.ndarray:
        """F (kT) on the tensor grid axes[0] x ... x axes[d-1] (IUPAC rad), minimum 0."""
        return tensor_free_energy(c, self.basis_name, *axes)

    def bin_probabilities(self, c: torch.Tensor, definition: CGDefinition, n_bins: Optional[int] = None, sub: int = 4) -> np.ndarray:
        """Probabilities (n_bins,) * d of the bins of ``definition``'s CG frame (F is in IUPAC angles)."""
        return tensor_bin_probabilities(c, self.basis_name, n_bins, sub, definition)


def kld_between(p: np.ndarray, q: np.ndarray) -> float:
    """Forward KLD(p || q) of two bin-probability grids."""
    return forward_kld(p.ravel(), -np.log(q.ravel()))


# -- basin check ------------------------------------------------------------------------------------------------


def local_minima(F: np.ndarray, angles: np.ndarray, max_F: float = 15.0) -> List[Dict[str, float]]:
    """Periodic 8-neighbour local minima of F (n, n) on ``angles`` (n,) IUPAC rad, below ``max_F`` kT."""
    neighbours = [np.roll(np.roll(F, i, 0), j, 1) for i in (-1, 0, 1) for j in (-1, 0, 1) if (i, j) != (0, 0)]
    is_min = np.all([F < n for n in neighbours], axis=0) & (F < max_F)
    found = [{"phi_deg": float(np.degrees(angles[i])), "psi_deg": float(np.degrees(angles[j])), "F_kT": float(F[i, j])} for i, j in zip(*np.nonzero(is_min))]
    return sorted(found, key=lambda m: m["F_kT"])


def basin_check(F: np.ndarray, angles: np.ndarray, basins: Dict[str, Sequence[float]], tolerance_deg: float = 30.0) -> Dict[str, Dict[str, object]]:
    """For each named basin (IUPAC degrees of the two CG dihedrals, e.g. a system's ``literature_basins_deg``
    metadata), the nearest local minimum of F and whether it lies within ``tolerance_deg``."""
    minima = local_minima(F, angles)
    result = {}
    for name, (phi, psi) in basins.items():
        target = np.radians([phi, psi])
        dist = [float(np.degrees(np.hypot(*periodic_difference(np.radians([m["phi_deg"], m["psi_deg"]]), target)))) for m in minima]
        best = int(np.argmin(dist)) if dist else None
        result[name] = {
            "literature_deg": [phi, psi],
            "nearest_minimum": minima[best] if best is not None else None,
            "distance_deg": dist[best] if best is not None else None,
            "found": bool(best is not None and dist[best] <= tolerance_deg),
        }
    return result
