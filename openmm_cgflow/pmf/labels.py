"""Free-energy labels from flow samples by importance sampling (SPEC §6.1, with the log-mean-exp of §15).

For samples x_j ~ q(. | s) with log weights v_j = ln p~(x_j) - ln q(x_j | s),
exp(-F(s)) = E_q[exp(v)] up to a constant, so F(s) = -ln mean_j exp(v_j) (in kT).
A mean, not the code's sum, so groups that lost samples are not biased by ln(n_max / n).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np


def free_energy_labels(log_w: np.ndarray, group: np.ndarray, clip_k: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Per-group free energies F = -log-mean-exp(log_w) (kT).

    Parameters
    ----------
    log_w:
        Log importance weights (n,); NaN entries are ignored.
    group:
        Group id (e.g. CG point index) of every entry (n,).
    clip_k:
        If > 1, inside each group the ``clip_k`` largest weights are all set to the ``clip_k``-th
        largest (weight clipping against heavy tails); groups with fewer samples are left as they are.

    Returns
    -------
    groups, F: the ids of the groups with at least one finite weight, and their labels.
    """
    log_w = np.asarray(log_w, dtype=np.float64)
    group = np.asarray(group)
    if log_w.shape != group.shape:
        raise ValueError(f"log_w and group must have the same shape, got {log_w.shape} and {group.shape}")
    finite = np.isfinite(log_w)
    log_w, group = log_w[finite], group[finite]
    if len(log_w) == 0:
        return np.zeros(0, dtype=group.dtype), np.zeros(0)
    order = np.lexsort((-log_w, group))  # by group, then descending weight
    log_w, group = log_w[order], group[order]
    groups, start, counts = np.unique(group, return_index=True, return_counts=True)
    rank = np.arange(len(log_w)) - np.repeat(start, counts)
    if clip_k > 1:
        kth = np.repeat(np.where(counts >= clip_k, log_w[np.minimum(start + clip_k - 1, len(log_w) - 1)], np.inf), counts)
        log_w = np.where(rank < clip_k, np.minimum(log_w, kth), log_w)
    group_max = np.repeat(log_w[start], counts)  # first entry is the group's largest (after clipping too)
    sums = np.add.reduceat(np.exp(log_w - group_max), start)
    labels = -(log_w[start] + np.log(sums / counts))
    return groups, labels
