"""What a run remembers: its counters and history (:class:`RunState`, checkpointed after every iteration) and one
typed record per finished iteration (:class:`IterationRecord`).

Evaluation counters (cumulative, starting MD included):

* ``energy_evaluations``: entries visited by training by energy (the paper's primary counter) + MD steps;
* ``energy_evaluations_computed``: energies OpenMM actually computed (non-finite or filtered samples excluded) + MD
  steps.

In a checkpoint a record is a plain dict of lists and numbers (:meth:`IterationRecord.to_dict`, the same keys as
the history dicts of earlier versions, so their checkpoints resume).
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


_ARRAYS = ("mean", "std", "label_points", "label_iteration", "labels", "label_mean")


@dataclass
class IterationRecord:
    """One finished iteration. Arrays: the PMF ``mean`` and ``std`` (kT) on the scoring grid; the labelled CG points
    (``label_points``, (n, cg_dim)), the iteration that added each, their ``labels`` and the fitted ``label_mean``
    (kT). ``mc_steps`` and ``new_centres`` are set by the search and spreading (None where the iteration ended the
    run); ``wall_s`` is the run's wall time up to the end of this iteration, ``stage_wall_s`` the seconds of each
    stage of it (and of writing its checkpoint)."""

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
    label_points: np.ndarray
    label_iteration: np.ndarray
    labels: np.ndarray
    label_mean: np.ndarray
    mc_steps: Optional[int] = None
    new_centres: Optional[np.ndarray] = None
    wall_s: float = 0.0
    stage_wall_s: Dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        """The checkpoint's (and earlier versions') history entry: lists and numbers, signals inline."""
        record: Dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "signals":
                record.update(asdict(value))
            elif f.name in _ARRAYS or f.name == "new_centres":
                if value is not None:
                    record[f.name] = np.asarray(value).tolist()
            elif f.name == "mc_steps":
                if value is not None:
                    record[f.name] = value
            else:
                record[f.name] = value
        return record

    @classmethod
    def from_dict(cls, record: Dict[str, Any]) -> "IterationRecord":
        signals = ConvergenceSignals(**{f.name: record.get(f.name) for f in fields(ConvergenceSignals)})
        arrays = {name: np.asarray(record[name], dtype=np.int64 if name == "label_iteration" else np.float64) for name in _ARRAYS}
        arrays["label_points"] = arrays["label_points"].reshape(len(arrays["labels"]), -1)
        centres = record.get("new_centres")
        return cls(
            iteration=record["iteration"], energy_evaluations=record["energy_evaluations"],
            energy_evaluations_computed=record["energy_evaluations_computed"], forward_kld=record["forward_kld"], signals=signals,
            n_cg_points=record["n_cg_points"], n_labels=record["n_labels"], skipped_batches=record["skipped_batches"], **arrays,
            mc_steps=record.get("mc_steps"), new_centres=None if centres is None else np.asarray(centres, dtype=np.float64),
            wall_s=record.get("wall_s", 0.0), stage_wall_s=dict(record.get("stage_wall_s", {})),
        )

    #: per-iteration fields of ``metrics.json``
    METRICS = ("iteration", "energy_evaluations", "energy_evaluations_computed", "forward_kld", "std_visited_mean", "std_visited_max",
               "label_ess_fraction_median", "label_effective_samples_median", "pmf_change_rms", "wall_s", "n_cg_points", "n_labels",
               "skipped_batches", "mc_steps", "stage_wall_s")

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

    def to_dict(self) -> Dict[str, Any]:
        state = {f.name: getattr(self, f.name) for f in fields(self)}
        state["history"] = [record.to_dict() for record in self.history]
        return state

    @classmethod
    def from_dict(cls, state: Dict[str, Any]) -> "RunState":
        state = dict(state)
        state["history"] = [IterationRecord.from_dict(record) for record in state.get("history", [])]
        return cls(**state)
