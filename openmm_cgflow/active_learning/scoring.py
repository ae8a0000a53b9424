"""How a run scores its PMF: the grid and reference distribution of ``metrics`` (:func:`metric_grid`), where the PMF
is stored every iteration (:func:`score_points`), and the convergence signals a run without a reference can trust
(:func:`convergence_signals`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from ..config import ConfigError
from ..scoring.grid import load_reference
from ..systems import CGSystem
from .settings import LabelSettings, MetricsSettings, RunSettings, grid_points
from .state import ConvergenceSignals, IterationRecord


@dataclass
class MetricGrid:
    """Where and against what a PMF is scored: bin centres (n_bins, cg_dim) and reference probabilities (n_bins,)."""

    centres: np.ndarray
    p_reference: np.ndarray


def metric_grid(metrics: MetricsSettings, cg_system: CGSystem) -> Optional[MetricGrid]:
    """The scoring grid and reference distribution ``metrics.reference`` names: ``none`` (no reference: None),
    one of the system's own references (``exact``, ``packaged``, ...), or a reference file on a grid of the
    system's 1-3 CG dihedrals or linear CG coordinates (:func:`~openmm_cgflow.scoring.grid.load_reference`)."""
    reference = metrics.reference
    if reference == "none":
        return None
    if reference in cg_system.references:
        centres, p = cg_system.references[reference](metrics.n_bins, metrics.domain)
        return MetricGrid(np.asarray(centres, dtype=np.float64).reshape(len(p), -1), np.asarray(p, dtype=np.float64))
    if reference in ("exact", "packaged"):
        known = ", ".join(sorted(cg_system.references) + ["none", "a reference file"])
        raise ConfigError(f"config key 'metrics.reference': {cg_system.name} has no {reference!r} reference (use {known})")
    if cg_system.cg_definition.kind not in ("dihedral", "linear") or cg_system.cg_dim > 3:
        raise ConfigError(f"config key 'metrics.reference': reference files are grids of 1-3 dihedral or linear CG coordinates; "
                          f"{cg_system.name} has {cg_system.cg_dim} {cg_system.cg_definition.kind} CG coordinate(s)")
    try:  # the file's own bins (and, for linear coordinates, its own domain): metrics.n_bins is the built-in references' grid
        ref = load_reference(Path(reference), None, frame=cg_system.cg_definition.frame, dim=cg_system.cg_dim)
    except ValueError as error:
        raise ConfigError(f"config key 'metrics.reference': {error}") from None
    return MetricGrid(ref.centres(), ref.probabilities.ravel())


def metric_grid_for_config(config: Mapping[str, Any], cg_system: Optional[CGSystem] = None) -> Optional[MetricGrid]:
    """:func:`metric_grid` of a validated config (its system built unless ``cg_system`` is given)."""
    settings = RunSettings.from_config(config)
    return metric_grid(settings.metrics, cg_system if cg_system is not None else settings.create_system())


def score_points(metrics: MetricsSettings, cg_dim: int, grid: Optional[MetricGrid]) -> Optional[np.ndarray]:
    """Where the PMF is stored each iteration: the reference's bins, or without a reference a regular grid of
    ``metrics.n_bins`` cell centres per coordinate over ``metrics.domain`` for 1-2 CG coordinates (none for more)."""
    if grid is not None:
        return grid.centres
    if cg_dim > 2:
        return None
    return grid_points(metrics.domain, metrics.n_bins, cg_dim, cell_centres=True)


def convergence_signals(dataset, labels: LabelSettings, label_points: np.ndarray, label_mean: np.ndarray, std: np.ndarray,
                        previous: Optional[IterationRecord]) -> ConvergenceSignals:
    """From the ensemble's ``label_mean`` and ``std`` (kT) at the labelled CG points: the ensemble std over the
    labelled (visited) CG points, the effective sample size of each CG point's latest
    entry samples (as a fraction of its entries), the effective number of samples behind each label (Kish's ESS of
    every sample the label uses: ``labels.samples`` all, or the latest ones; with ~2 % ESS per sample a label of 200
    samples is worth ~4), and the RMS change of the PMF since ``previous`` at the CG points both iterations labelled
    (offset removed: a PMF is defined up to a constant)."""
    entries = dataset.labelled_train_entries()
    entry_point = dataset.entry_point[entries]
    order = np.argsort(entry_point, kind="stable")
    points, starts = np.unique(entry_point[order], return_index=True)
    ess, ess_count = [], []
    for chunk in np.split(dataset.entry_log_w[entries[order]], starts[1:]) if len(points) else []:
        w = np.exp(chunk - chunk.max())
        ess_count.append(w.sum() ** 2 / (w**2).sum())
        ess.append(ess_count[-1] / len(w))
    ess_count = labels.effective_samples(dataset, np.asarray(ess_count))
    change_rms = None
    if previous is not None:
        before = {tuple(p): m for p, m in zip(previous.label_points.tolist(), previous.label_mean.tolist())}
        common = [(k, before[tuple(p)]) for k, p in enumerate(label_points.tolist()) if tuple(p) in before]
        if common:
            change = label_mean[[k for k, _ in common]] - np.array([m for _, m in common])
            change_rms = float(np.sqrt(np.mean((change - change.mean()) ** 2)))
    return ConvergenceSignals(
        std_visited_mean=float(std.mean()) if len(std) else None,
        std_visited_max=float(std.max()) if len(std) else None,
        label_ess_fraction_median=float(np.median(ess)) if ess else None,
        label_effective_samples_median=float(np.median(ess_count)) if len(ess_count) else None,
        pmf_change_rms=change_rms,
    )
