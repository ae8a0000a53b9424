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


def merge_in_cells(s: np.ndarray, labels: np.ndarray, width: float, periodic: bool) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The labels of CG points that share a cell of a regular grid merged into one fit row each.

    ``s`` (n, d) CG points (rad on [-pi, pi) where ``periodic``, else any units), ``labels`` (n,) kT, ``width`` the
    cell width in the same units (periodic: the circle is cut into round(2 pi / width) equal cells, so cells never
    straddle the boundary). A row is at the mean position of its points with their mean label, and its weight is
    their number: a weighted least-squares fit to the rows equals one to the points up to the variation of F
    across a cell (second order in ``width`` at the mean position), while its cost is bounded by the number of
    cells instead of growing with every label. Rows come in the order of their cells.

    Returns (row positions (m, d), row labels (m,), row weights (m,)).
    """
    s = np.asarray(s, dtype=np.float64).reshape(len(labels), -1)
    labels = np.asarray(labels, dtype=np.float64)
    if not width > 0:
        raise ValueError(f"cell width must be > 0, got {width}")
    if periodic:
        n_cells = max(1, int(round(2 * np.pi / width)))
        cell = np.clip(np.floor((s + np.pi) / (2 * np.pi) * n_cells).astype(np.int64), 0, n_cells - 1)
    else:
        cell = np.floor(s / width).astype(np.int64)
    _, row, counts = np.unique(cell, axis=0, return_inverse=True, return_counts=True)
    row = row.reshape(-1)
    positions = np.zeros((len(counts), s.shape[1]))
    np.add.at(positions, row, s)
    merged = np.bincount(row, weights=labels, minlength=len(counts))
    return positions / counts[:, None], merged / counts, counts.astype(np.float64)
