"""What a run remembers: its counters and history (:class:`RunState`, checkpointed after every iteration) and one
typed record per finished iteration (:class:`IterationRecord`).

Evaluation counters (cumulative, starting MD included):

* ``energy_evaluations``: entries visited by training by energy (the paper's primary counter) + MD steps;
* ``energy_evaluations_computed``: energies OpenMM actually computed (non-finite or filtered samples excluded) + MD
  steps.

In a checkpoint a record is a plain dict of arrays and numbers (:meth:`IterationRecord.to_dict`, the same keys as
the history dicts of earlier versions, whose lists load too, so their checkpoints resume). Only the latest record
keeps its label arrays (one entry per labelled CG point: what the next iteration compares its PMF with, and what a
resumed search starts from); earlier records keep the PMF on the scoring grid, whose size does not grow, so writing
the history costs the same at 40,000 labels as at 2,000.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional

import numpy as np


@dataclass
class ConvergenceSignals:
    """What a run without a reference can trust, after each fit: the ensemble std (kT) over the labelled CG points
    (mean, max), the median effective-sample fraction of the points' latest samples, the median effective number
    of samples behind a label, and the RMS change (kT, offset removed) of the PMF since the previous iteration at
    the CG points both labelled (None in the first iteration)."""

    std_visited_mean: Optional[float] = None
    std_visited_max: Optional[float] = None
    label_ess_fraction_median: Optional[float] = None
    label_effective_samples_median: Optional[float] = None
    pmf_change_rms: Optional[float] = None


_GRID_ARRAYS = ("mean", "std")
_LABEL_ARRAYS = ("label_points", "label_iteration", "labels", "label_mean")
_ARRAYS = _GRID_ARRAYS + _LABEL_ARRAYS


@dataclass
class IterationRecord:
    """One finished iteration. Arrays: the PMF ``mean`` and ``std`` (kT) on the scoring grid; the labelled CG points
    (``label_points``, (n, cg_dim)), the iteration that added each, their ``labels`` and the fitted ``label_mean``
    (kT); once a later iteration exists they are dropped (None: :meth:`forget_labels`). ``mc_steps`` and
    ``new_centres`` are set by the search and spreading (None where the iteration ended the run); ``wall_s`` is the
    run's wall time up to the end of this iteration (its checkpoint written), ``stage_wall_s`` the seconds of each
    stage of it and of writing its checkpoint."""

    iteration: int
    energy_evaluations: int
    energy_evaluations_computed: int
    forward_kld: Optional[float]
    signals: ConvergenceSignals
    n_cg_points: int
    n_labels: int
    skipped_batches: int
    mean: np.ndarray
    std: np.ndarray
    label_points: Optional[np.ndarray]
    label_iteration: Optional[np.ndarray]
    labels: Optional[np.ndarray]
    label_mean: Optional[np.ndarray]
    n_fit_rows: Optional[int] = None
    mc_steps: Optional[int] = None
    new_centres: Optional[np.ndarray] = None
    wall_s: float = 0.0
    stage_wall_s: Dict[str, float] = field(default_factory=dict)

    def forget_labels(self) -> None:
        """Drop the per-label arrays (a later iteration has its own)."""
        self.label_points = self.label_iteration = self.labels = self.label_mean = None

    def to_dict(self) -> Dict[str, Any]:
        """The checkpoint's history entry: arrays (numpy) and numbers, signals inline; arrays that were dropped are
        left out."""
        record: Dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "signals":
                record.update(asdict(value))
            elif f.name in _ARRAYS or f.name in ("new_centres", "mc_steps", "n_fit_rows"):
                if value is not None:
                    record[f.name] = np.asarray(value) if f.name in _ARRAYS or f.name == "new_centres" else value
            else:
                record[f.name] = value
        return record

    @classmethod
    def from_dict(cls, record: Dict[str, Any]) -> "IterationRecord":
        signals = ConvergenceSignals(**{f.name: record.get(f.name) for f in fields(ConvergenceSignals)})
        arrays = {name: np.asarray(record[name], dtype=np.int64 if name == "label_iteration" else np.float64) if name in record else None
                  for name in _ARRAYS}
        if arrays["label_points"] is not None:
            arrays["label_points"] = arrays["label_points"].reshape(len(arrays["labels"]), -1)
        centres = record.get("new_centres")
        return cls(
            iteration=record["iteration"], energy_evaluations=record["energy_evaluations"],
            energy_evaluations_computed=record["energy_evaluations_computed"], forward_kld=record["forward_kld"], signals=signals,
            n_cg_points=record["n_cg_points"], n_labels=record["n_labels"], skipped_batches=record["skipped_batches"], **arrays,
            n_fit_rows=record.get("n_fit_rows"), mc_steps=record.get("mc_steps"), new_centres=None if centres is None else np.asarray(centres, dtype=np.float64),
            wall_s=record.get("wall_s", 0.0), stage_wall_s=dict(record.get("stage_wall_s", {})),
        )

    #: per-iteration fields of ``metrics.json``
    METRICS = ("iteration", "energy_evaluations", "energy_evaluations_computed", "forward_kld", "std_visited_mean", "std_visited_max",
               "label_ess_fraction_median", "label_effective_samples_median", "pmf_change_rms", "wall_s", "n_cg_points", "n_labels",
               "n_fit_rows", "skipped_batches", "mc_steps", "stage_wall_s")

    def metrics_row(self) -> Dict[str, Any]:
        record = self.to_dict()
        return {key: record[key] for key in self.METRICS if key in record}


@dataclass
class RunState:
    """Everything that changes during a run (saved in the checkpoint): the iteration, the counters (entries visited,
    energies computed, starting MD steps, batches skipped, epochs done), the run's wall time (s), why it stopped,
    where the next search starts, and the history."""

    iteration: int = 0
    visited: int = 0
    computed: int = 0
    md_steps: int = 0
    wall_s: float = 0.0
    skipped_batches: int = 0
    epochs_done: int = 0
    finished: bool = False
    stop_reason: str = ""
    search_start: Optional[np.ndarray] = None
    history: List[IterationRecord] = field(default_factory=list)

    @property
    def energy_evaluations(self) -> int:
        return self.visited + self.md_steps

    @property
    def energy_evaluations_computed(self) -> int:
        return self.computed + self.md_steps

    def append(self, record: IterationRecord) -> None:
        """Add the latest iteration's record; the one before it drops its label arrays."""
        if self.history:
            self.history[-1].forget_labels()
        self.history.append(record)

    def to_dict(self) -> Dict[str, Any]:
        state = {f.name: getattr(self, f.name) for f in fields(self)}
        state["history"] = [record.to_dict() for record in self.history]
        return state

    @classmethod
    def from_dict(cls, state: Dict[str, Any]) -> "RunState":
        state = dict(state)
        history = [IterationRecord.from_dict(record) for record in state.get("history", [])]
        for record in history[:-1]:  # checkpoints of earlier versions kept every iteration's labels
            record.forget_labels()
        state["history"] = history
        return cls(**state)
