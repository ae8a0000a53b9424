"""The exact Müller-Brown PMF in s = x1 - x2 by numerical quadrature (SPEC §2.1)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import integrate

from ..systems.muller_brown import MB_BETA, MB_CG_DOMAIN, muller_brown_energy

#: Integration range of y = x2 at fixed s (SPEC §2.1).
Y_RANGE = (-1.0, 3.0)


def exact_pmf(s: np.ndarray, beta: float = MB_BETA) -> np.ndarray:
    """F(s) = -ln ∫ exp(-beta U(s + y, y)) dy in kT, up to an additive constant, at the points ``s`` (nm).

    The constant is fixed so that min F = 0. Integrated with scipy.integrate.quad (relative tolerance 1e-11).
    """
    s = np.atleast_1d(np.asarray(s, dtype=np.float64))
    values = np.empty(len(s))
    for i, si in enumerate(s):
        integral, _ = integrate.quad(
            lambda y: np.exp(-beta * muller_brown_energy(si + y, y)), *Y_RANGE, epsabs=0.0, epsrel=1e-11, limit=200
        )
        values[i] = -np.log(integral)
    return values - values.min()


def bin_centres(n_bins: int = 100, domain=MB_CG_DOMAIN) -> np.ndarray:
    """Centres of ``n_bins`` equal bins over ``domain`` (nm)."""
    edges = np.linspace(domain[0], domain[1], n_bins + 1)
    return 0.5 * (edges[1:] + edges[:-1])


@lru_cache(maxsize=4)
def _reference(n_bins: int, domain: tuple) -> np.ndarray:
    return exact_pmf(bin_centres(n_bins, domain))


def reference_probabilities(n_bins: int = 100, domain=MB_CG_DOMAIN) -> np.ndarray:
    """Exact bin probabilities ∝ exp(-F(bin centre)), normalised over the bins."""
    F = _reference(n_bins, tuple(domain))
    w = np.exp(-F)
    return w / w.sum()
