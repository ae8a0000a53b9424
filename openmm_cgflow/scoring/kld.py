"""The forward KL divergence of a learned PMF against a reference distribution on a grid of bins (SPEC §9.1)."""
from __future__ import annotations

import numpy as np


def pmf_to_probabilities(free_energy: np.ndarray) -> np.ndarray:
    """Bin probabilities p ∝ exp(-F) from free energies F (kT) evaluated at the bin centres."""
    F = np.asarray(free_energy, dtype=np.float64)
    if not np.isfinite(F).all():
        raise ValueError("free energies must be finite to turn them into probabilities")
    w = np.exp(-(F - F.min()))
    return w / w.sum()


def forward_kld(p_reference: np.ndarray, free_energy: np.ndarray) -> float:
    """KLD(p_ref || p_pred) = sum over bins with p_ref > 0 of p_ref ln(p_ref / p_pred) (nats).

    ``p_reference`` are reference bin probabilities (summing to 1); ``free_energy`` is the learned PMF (kT)
    at the same bin centres (point evaluation, no integration within bins). ln p_pred is computed in log space, so
    a PMF that puts a reference bin far uphill gives a large finite divergence, never inf.
    """
    p_ref = np.asarray(p_reference, dtype=np.float64).ravel()
    F = np.asarray(free_energy, dtype=np.float64).ravel()
    if p_ref.shape != F.shape:
        raise ValueError(f"reference grid has {p_ref.size} bins but the PMF was given on {F.size}")
    if abs(p_ref.sum() - 1.0) > 1e-6:
        raise ValueError(f"reference probabilities must sum to 1, got {p_ref.sum():.6g}")
    if not np.isfinite(F).all():
        raise ValueError("free energies must be finite to score them")
    shifted = -(F - F.min())
    log_p_pred = shifted - np.log(np.exp(shifted).sum())
    mask = p_ref > 0
    return float(np.sum(p_ref[mask] * (np.log(p_ref[mask]) - log_p_pred[mask])))
