"""Typed run settings: a validated config (:mod:`openmm_cgflow.config`) built once into frozen dataclasses.

``RunSettings.from_config(cfg)`` is the only place that reads a config dict by its keys; everything downstream reads
attributes. Where a config key chooses a strategy, each choice is its own class with the keys it uses:

* ``flow.kind``: :class:`AffineFlowSettings` | :class:`SplineFlowSettings` (each builds its flow);
* ``energy_training.schedule``: :class:`PerIterationSchedule` | :class:`GlobalCosineSchedule` |
  :class:`PerIterationCosineSchedule` (learning-rate factor and gradient-clip phase of an epoch);
* ``dataset.kind``: :class:`ActiveDesign` | :class:`GridDesign` | :class:`GridThenActiveDesign` (the first CG points,
  and whether the run searches);
* ``labels.samples``: :class:`LatestSampleLabels` | :class:`AccumulatedLabels`;
* ``search.acquisition``: :class:`StopAtUncertainty` | :class:`UncertaintyWeighted`;
* ``search.backend``: :class:`MonteCarloBackend` | :class:`CGDynamicsBackend`;
* ``spreading.kind``: :class:`IntervalSpreading` | :class:`DiscSpreading`.

Keys of a section that its chosen strategy does not use (e.g. ``flow.n_bins`` of an affine flow) are kept, read-only,
in that strategy's ``inactive`` mapping, only so that :meth:`RunSettings.to_config` gives back the config it was
built from (checkpoints store it and a resumed run compares it key by key).

Units follow the config: nm or rad for CG coordinates, kT for free energies, fs and 1/ps for dynamics.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

SystemChoice = Union[str, Mapping[str, Any]]


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


def _tuple(values) -> Optional[Tuple]:
    return None if values is None else tuple(values)


def _list(values) -> Optional[list]:
    return None if values is None else list(values)


# ---------------------------------------------------------------------------------------------------- plain sections
@dataclass(frozen=True)
class EnergySettings:
    """``energy``: the OpenMM platform of the energy oracle, its number of Contexts, and where they run (``executor``
    local or ray; ``address`` of a Ray cluster)."""

    platform: str
    n_workers: int
    executor: str = "local"
    address: Optional[str] = None

    @classmethod
    def from_config(cls, c: Mapping[str, Any]) -> "EnergySettings":
        return cls(c["platform"], c["n_workers"], c["executor"], c["address"])

    def to_config(self) -> Dict[str, Any]:
        return {"platform": self.platform, "n_workers": self.n_workers, "executor": self.executor, "address": self.address}


@dataclass(frozen=True)
class StartingDataSettings:
    """``starting_data``: the starting MD (frames, saved every ``save_every`` steps after ``equilibration_steps``;
    ``timestep_fs`` fs, ``friction_per_ps`` 1/ps)."""

    n_frames: int
    save_every: int
    equilibration_steps: int
    timestep_fs: float
    friction_per_ps: float

    @classmethod
    def from_config(cls, c: Mapping[str, Any]) -> "StartingDataSettings":
        return cls(c["n_frames"], c["save_every"], c["equilibration_steps"], c["timestep_fs"], c["friction_per_ps"])

    def to_config(self) -> Dict[str, Any]:
        return {"n_frames": self.n_frames, "save_every": self.save_every, "equilibration_steps": self.equilibration_steps,
                "timestep_fs": self.timestep_fs, "friction_per_ps": self.friction_per_ps}


@dataclass(frozen=True)
class PretrainingSettings:
    """``pretraining``: training by example on the starting frames."""

    epochs: int
    batch_size: int
    lr: float

    @classmethod
    def from_config(cls, c: Mapping[str, Any]) -> "PretrainingSettings":
        return cls(c["epochs"], c["batch_size"], c["lr"])

    def to_config(self) -> Dict[str, Any]:
        return {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr}


# ---------------------------------------------------------------------------------------------------- flow
_SPLINE_KEYS = ("n_layers", "n_bins", "n_blocks", "context", "precision", "compile")


@dataclass(frozen=True)
class AffineFlowSettings:
    """``flow.kind: affine``: a conditional affine Gaussian, float64 and eager (Müller-Brown). ``hidden``: widths of
    its MLPs (None: scaled to the molecule)."""

    hidden: Optional[Tuple[int, ...]]
    inactive: Mapping[str, Any] = field(default_factory=dict)

    kind = "affine"
    precision = "float64"
    compile = False

    def widths(self, fg_dim: int) -> Tuple[int, ...]:
        """``hidden``, or two layers of 64 per started 64 fine-grained coordinates."""
        return self.hidden if self.hidden is not None else (scaled_width(fg_dim, 64),) * 2

    def build(self, cg_dim: int, fg_dim: int, flow_circular_indices, s_mean: float, s_std: float):
        from ..flows import ConditionalAffineFlow

        return ConditionalAffineFlow(cg_dim, fg_dim, list(self.widths(fg_dim)), s_mean, s_std)

    def to_config(self) -> Dict[str, Any]:
        return {"kind": self.kind, "hidden": _list(self.hidden), **self.inactive}


@dataclass(frozen=True)
class SplineFlowSettings:
    """``flow.kind: spline``: circular rational-quadratic spline couplings (``n_layers`` layers of ``n_bins`` bins, a
    residual conditioner of ``n_blocks`` blocks of width ``hidden[0]``), with the CG context as ``context``
    harmonics, computing in ``precision``, optionally ``compile``-d."""

    hidden: Optional[Tuple[int, ...]]
    n_layers: int
    n_bins: int
    n_blocks: int
    context: str
    precision: str
    compile: bool

    kind = "spline"

    def widths(self, fg_dim: int) -> Tuple[int, ...]:
        """``hidden``, or one residual width of 128 per started 64 fine-grained coordinates."""
        return self.hidden if self.hidden is not None else (scaled_width(fg_dim),)

    def build(self, cg_dim: int, fg_dim: int, flow_circular_indices, s_mean: float, s_std: float):
        from ..flows import ConditionalSplineFlow

        return ConditionalSplineFlow(fg_dim, list(flow_circular_indices), cg_dim, self.n_layers, self.n_bins, self.widths(fg_dim)[0],
                                     self.n_blocks, context=self.context)

    def to_config(self) -> Dict[str, Any]:
        return {"kind": self.kind, "hidden": _list(self.hidden), "n_layers": self.n_layers, "n_bins": self.n_bins,
                "n_blocks": self.n_blocks, "context": self.context, "precision": self.precision, "compile": self.compile}


FlowSettings = Union[AffineFlowSettings, SplineFlowSettings]


def scaled_width(fg_dim: int, per_64: int = 128) -> int:
    """``flow.hidden: null``: ``per_64`` units per started 64 fine-grained coordinates (a spline flow's 128: alanine
    dipeptide, 58: 128, aldp-fast's width; Ace-Ala2-Nme, 86: 256; an affine flow's layers: 64)."""
    return per_64 * max(1, math.ceil(fg_dim / 64))


def flow_settings(c: Mapping[str, Any]) -> FlowSettings:
    hidden = _tuple(c["hidden"])
    if c["kind"] == "affine":
        return AffineFlowSettings(hidden, _frozen({key: c[key] for key in _SPLINE_KEYS}))
    return SplineFlowSettings(hidden, c["n_layers"], c["n_bins"], c["n_blocks"], c["context"], c["precision"], c["compile"])


# ---------------------------------------------------------------------------------------------------- schedules
@dataclass(frozen=True)
class PerIterationSchedule:
    """``schedule: per_iteration``: every iteration warms the lr up linearly, (k + 1) / n in epoch k, over
    ``warmup_epochs_first`` (iteration 1) or ``warmup_epochs`` epochs, then keeps it; the gradient-clip warm-up
    restarts every iteration."""

    warmup_epochs_first: int
    warmup_epochs: int

    name = "per_iteration"

    def lr_factor(self, iteration: int, epoch: int, global_epoch: int, total_epochs: int, epochs: int) -> float:
        warm = self.warmup_epochs_first if iteration == 1 else self.warmup_epochs
        return (epoch + 1) / warm if epoch < warm else self._after_warmup(epoch, warm, epochs)

    def _after_warmup(self, epoch: int, warm: int, epochs: int) -> float:
        return 1.0

    def clip_counter(self, epoch: int, global_epoch: int) -> int:
        """The epoch count the gradient-clip warm-up compares with (this iteration's epochs)."""
        return epoch

    def to_config(self) -> Dict[str, Any]:
        return {"schedule": self.name, "warmup_epochs_first": self.warmup_epochs_first, "warmup_epochs": self.warmup_epochs}


@dataclass(frozen=True)
class PerIterationCosineSchedule(PerIterationSchedule):
    """``schedule: per_iteration_cosine``: as per_iteration, then each iteration decays its lr by a cosine (its last
    epoch runs at 0.5 (1 + cos(pi (E - 1 - w) / (E - w))) of the lr, not at 0)."""

    name = "per_iteration_cosine"

    def _after_warmup(self, epoch: int, warm: int, epochs: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - warm) / max(epochs - warm, 1)))


@dataclass(frozen=True)
class GlobalCosineSchedule:
    """``schedule: global_cosine``: one linear warm-up over the run's first ``warmup_epochs_first`` epochs, then a
    cosine decay to 0 over all the epochs the run plans (the grid baseline); clip phases count over the run."""

    warmup_epochs_first: int
    inactive: Mapping[str, Any] = field(default_factory=dict)

    name = "global_cosine"

    def lr_factor(self, iteration: int, epoch: int, global_epoch: int, total_epochs: int, epochs: int) -> float:
        warm = self.warmup_epochs_first
        if global_epoch < warm:
            return (global_epoch + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * (global_epoch - warm) / max(total_epochs - warm, 1)))

    def clip_counter(self, epoch: int, global_epoch: int) -> int:
        return global_epoch

    def to_config(self) -> Dict[str, Any]:
        return {"schedule": self.name, "warmup_epochs_first": self.warmup_epochs_first, **self.inactive}


Schedule = Union[PerIterationSchedule, PerIterationCosineSchedule, GlobalCosineSchedule]


def schedule_settings(c: Mapping[str, Any]) -> Schedule:
    if c["schedule"] == "global_cosine":
        return GlobalCosineSchedule(c["warmup_epochs_first"], _frozen({"warmup_epochs": c["warmup_epochs"]}))
    kind = PerIterationCosineSchedule if c["schedule"] == "per_iteration_cosine" else PerIterationSchedule
    return kind(c["warmup_epochs_first"], c["warmup_epochs"])


@dataclass(frozen=True)
class EnergyTrainingSettings:
    """``energy_training``: reverse-KL training by energy at fixed CG points (SPEC §5); lr per step, gradient-norm
    clips, ``skip_top_k`` largest per-sample losses dropped, ``chirality_filter`` applied before energies."""

    lr: float
    batch_size: int
    epochs_first_iteration: int
    epochs: int
    clip_norm: float
    replay_fraction: float
    skip_top_k: int
    schedule: Schedule
    clip_norm_warmup: float
    clip_warmup_epochs: int
    chirality_filter: str

    def epochs_of(self, iteration: int) -> int:
        """Epochs of training by energy in ``iteration`` (1-based)."""
        return self.epochs_first_iteration if iteration == 1 else self.epochs

    def total_epochs(self, max_iterations: int) -> int:
        return self.epochs_first_iteration + (max_iterations - 1) * self.epochs

    def lr_at(self, iteration: int, epoch: int, global_epoch: int, max_iterations: int) -> float:
        """The learning rate of ``epoch`` (within the 1-based ``iteration``; ``global_epoch`` over the run)."""
        return self.lr * self.schedule.lr_factor(iteration, epoch, global_epoch, self.total_epochs(max_iterations), self.epochs_of(iteration))

    def clip_at(self, epoch: int, global_epoch: int) -> float:
        """Gradient-norm clip of an epoch: ``clip_norm_warmup`` during the first ``clip_warmup_epochs``."""
        return self.clip_norm_warmup if self.schedule.clip_counter(epoch, global_epoch) < self.clip_warmup_epochs else self.clip_norm

    @classmethod
    def from_config(cls, c: Mapping[str, Any]) -> "EnergyTrainingSettings":
        return cls(c["lr"], c["batch_size"], c["epochs_first_iteration"], c["epochs"], c["clip_norm"], c["replay_fraction"], c["skip_top_k"],
                   schedule_settings(c), c["clip_norm_warmup"], c["clip_warmup_epochs"], c["chirality_filter"])

    def to_config(self) -> Dict[str, Any]:
        schedule = self.schedule.to_config()
        return {"lr": self.lr, "batch_size": self.batch_size, "epochs_first_iteration": self.epochs_first_iteration, "epochs": self.epochs,
                "clip_norm": self.clip_norm, "replay_fraction": self.replay_fraction, "skip_top_k": self.skip_top_k,
                "schedule": schedule["schedule"], "warmup_epochs_first": schedule["warmup_epochs_first"], "warmup_epochs": schedule["warmup_epochs"],
                "clip_norm_warmup": self.clip_norm_warmup, "clip_warmup_epochs": self.clip_warmup_epochs, "chirality_filter": self.chirality_filter}


# ---------------------------------------------------------------------------------------------------- dataset
@dataclass(frozen=True)
class ActiveDesign:
    """``dataset.kind: active``: iteration 1 labels the starting MD's CG points; then search + spreading."""

    inactive: Mapping[str, Any] = field(default_factory=dict)

    kind = "active"
    searches = True

    def first_points(self, s_start: np.ndarray, domain: Tuple[float, float], cg_dim: int, seed: int = 0) -> np.ndarray:
        return s_start


@dataclass(frozen=True)
class GridDesign:
    """``dataset.kind: grid`` (SPEC §8): a fixed grid, linspace over the domain with ends, ``grid_points`` per CG
    dimension; no search (every iteration trains on the same grid)."""

    grid_points: int
    inactive: Mapping[str, Any] = field(default_factory=dict)

    kind = "grid"
    searches = False

    def first_points(self, s_start: np.ndarray, domain: Tuple[float, float], cg_dim: int, seed: int = 0) -> np.ndarray:
        return grid_points(domain, self.grid_points, cg_dim)


@dataclass(frozen=True)
class GridThenActiveDesign:
    """``dataset.kind: grid_then_active``: iteration 1 on the centres of ``grid_points`` cells per CG dimension over
    the domain, then search + spreading. ``max_start_points``: where the grid would have more points (3-D and up
    with 40 per dimension), a scrambled Sobol design of that many points (rounded down to a power of two) over the
    domain instead, seeded by the run's seed (None: always the grid)."""

    grid_points: int
    max_start_points: Optional[int] = None

    kind = "grid_then_active"
    searches = True

    def uses_grid(self, cg_dim: int) -> bool:
        return self.max_start_points is None or self.grid_points ** cg_dim <= self.max_start_points

    def first_points(self, s_start: np.ndarray, domain: Tuple[float, float], cg_dim: int, seed: int = 0) -> np.ndarray:
        if self.uses_grid(cg_dim):
            return grid_points(domain, self.grid_points, cg_dim, cell_centres=True)
        from scipy.stats import qmc

        unit = qmc.Sobol(cg_dim, scramble=True, seed=seed).random_base2(int(math.floor(math.log2(self.max_start_points))))
        return domain[0] + (domain[1] - domain[0]) * unit


StartDesign = Union[ActiveDesign, GridDesign, GridThenActiveDesign]


def grid_points(domain: Tuple[float, float], n: int, cg_dim: int, cell_centres: bool = False) -> np.ndarray:
    """A regular grid of CG points: linspace(lower, upper, n) per dimension, ends included (SPEC §8); or, with
    ``cell_centres``, the centres of n equal cells per dimension (no point twice on a periodic domain)."""
    if cell_centres:
        width = (domain[1] - domain[0]) / n
        axis = domain[0] + width * (np.arange(n) + 0.5)
    else:
        axis = np.linspace(domain[0], domain[1], n)
    mesh = np.meshgrid(*([axis] * cg_dim), indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=-1)


@dataclass(frozen=True)
class DatasetSettings:
    """``dataset``: the start design, ``copies`` entries (flow samples) per CG point, ``train_fraction`` of points
    labelled (the rest held out). ``start_entries``: entries of iteration 1 (its epoch's size), spread over the
    starting points, so that iteration 1 trains as long whatever the number of CG coordinates (None: ``copies`` per
    starting point, whose epoch then scales with grid_points^cg_dim)."""

    design: StartDesign
    copies: int
    train_fraction: float
    start_entries: Optional[int] = None

    def start_copies(self, n_points: int) -> int:
        """Entries per starting point: ``copies``, or more where ``start_entries`` asks for a longer first epoch
        (``max(copies, round(start_entries / n_points))``: 8 for 40 x 40 grid points and 12,800 entries, 320 for 40)."""
        if self.start_entries is None or n_points == 0:
            return self.copies
        return max(self.copies, int(round(self.start_entries / n_points)))

    @classmethod
    def from_config(cls, c: Mapping[str, Any]) -> "DatasetSettings":
        inactive = _frozen({"grid_points": c["grid_points"], "max_start_points": c["max_start_points"]})
        design = {"active": lambda: ActiveDesign(inactive), "grid": lambda: GridDesign(c["grid_points"], _frozen({"max_start_points": c["max_start_points"]})),
                  "grid_then_active": lambda: GridThenActiveDesign(c["grid_points"], c["max_start_points"])}[c["kind"]]()
        return cls(design, c["copies"], c["train_fraction"], c["start_entries"])

    def to_config(self) -> Dict[str, Any]:
        design = self.design
        grid = design.inactive["grid_points"] if isinstance(design, ActiveDesign) else design.grid_points
        cap = design.max_start_points if isinstance(design, GridThenActiveDesign) else design.inactive["max_start_points"]
        return {"kind": design.kind, "grid_points": grid, "max_start_points": cap, "copies": self.copies, "start_entries": self.start_entries,
                "train_fraction": self.train_fraction}


# ---------------------------------------------------------------------------------------------------- labels
class _FitRows:
    """What the labels' settings share: how labels become the ensemble's fit rows (``cell_width``)."""

    def fit_rows(self, s: np.ndarray, labels: np.ndarray, periodic: bool) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
        """(positions, labels, weights) the ensemble is fitted to: one row per labelled point (weights None), or with
        ``cell_width`` > 0 the labels of each grid cell merged into one row weighted by its count
        (:func:`~openmm_cgflow.pmf.labels.merge_in_cells`)."""
        if not self.cell_width:
            return s, labels, None
        from ..pmf import merge_in_cells

        return merge_in_cells(s, labels, self.cell_width, periodic)


@dataclass(frozen=True)
class LatestSampleLabels(_FitRows):
    """``labels.samples: last``: each training entry's latest sample (the paper), the ``clip_k`` largest weights of a
    point clipped. The dataset still accumulates samples from epoch ``accumulate_from_epoch`` on (for no label).
    ``cell_width``: see :meth:`fit_rows`."""

    clip_k: int
    accumulate_from_epoch: int
    cell_width: float = 0.0

    samples = "last"

    def labels(self, dataset) -> Tuple[np.ndarray, np.ndarray]:
        """(point ids, free-energy labels in kT)."""
        return dataset.labels("last", self.clip_k)

    def effective_samples(self, dataset, entry_ess_count):
        """Kish's ESS behind each label (the latest samples: those of the entries)."""
        return entry_ess_count

    def to_config(self) -> Dict[str, Any]:
        return {"clip_k": self.clip_k, "samples": self.samples, "accumulate_from_epoch": self.accumulate_from_epoch,
                "cell_width": self.cell_width}


@dataclass(frozen=True)
class AccumulatedLabels(_FitRows):
    """``labels.samples: all``: every sample a CG point ever received, accumulated from epoch
    ``accumulate_from_epoch`` of training by energy on (counted over the run), ``clip_k`` largest clipped.
    ``cell_width``: see :meth:`fit_rows`."""

    clip_k: int
    accumulate_from_epoch: int
    cell_width: float = 0.0

    samples = "all"

    def labels(self, dataset) -> Tuple[np.ndarray, np.ndarray]:
        return dataset.labels("all", self.clip_k)

    def effective_samples(self, dataset, entry_ess_count):
        ess = dataset.accumulated_effective_samples(self.clip_k)[1]
        return ess[np.isfinite(ess)]  # NaN: points accumulated by an older version

    def to_config(self) -> Dict[str, Any]:
        return {"clip_k": self.clip_k, "samples": self.samples, "accumulate_from_epoch": self.accumulate_from_epoch,
                "cell_width": self.cell_width}


LabelSettings = Union[LatestSampleLabels, AccumulatedLabels]


def label_settings(c: Mapping[str, Any]) -> LabelSettings:
    return (AccumulatedLabels if c["samples"] == "all" else LatestSampleLabels)(c["clip_k"], c["accumulate_from_epoch"], c["cell_width"])


# ---------------------------------------------------------------------------------------------------- ensemble
@dataclass(frozen=True)
class EnsembleSettings:
    """``ensemble``: ``n_members`` MLPs of ``hidden`` widths fitted to the labels (SPEC §6.2). ``optimizer`` lbfgs
    (``epochs`` full-batch iterations, ``lr`` the first step, ``lbfgs_groups`` independent groups of members) or adam
    (mini-batches of ``batch_size``); ``strategy`` bagging | fraction; ``init`` gaussian_uniform | xavier; fits compute in
    ``precision``; ``warm_start`` continues from the previous fit for ``epochs_warm`` (None: ``epochs``). The run's
    PMF averages the fits made in the last ``average_fraction`` of its energy evaluations
    (:class:`~openmm_cgflow.pmf.fit_window.FitWindow`; 0: the latest fit alone)."""

    n_members: int
    hidden: Tuple[int, ...]
    optimizer: str
    lr: float
    batch_size: int
    epochs: int
    strategy: str
    init: str
    precision: str
    lbfgs_groups: int
    warm_start: bool
    epochs_warm: Optional[int]
    average_fraction: float = 0.0

    def build(self, cg_dim: int, periodic: bool):
        """An untrained ensemble in float64 (as a run keeps it; fits compute in ``precision``)."""
        import torch

        from ..pmf import PMFEnsemble

        with default_dtype(torch.float64):
            return PMFEnsemble(cg_dim, self.n_members, list(self.hidden), periodic=periodic)

    def fit_window(self):
        """The (empty) window of fits the run's PMF averages."""
        from ..pmf.fit_window import FitWindow

        return FitWindow(self.average_fraction)

    def fit_epochs(self, warm: bool) -> int:
        return self.epochs_warm if warm and self.epochs_warm is not None else self.epochs

    @classmethod
    def from_config(cls, c: Mapping[str, Any]) -> "EnsembleSettings":
        return cls(c["n_members"], tuple(c["hidden"]), c["optimizer"], c["lr"], c["batch_size"], c["epochs"], c["strategy"], c["init"],
                   c["precision"], c["lbfgs_groups"], c["warm_start"], c["epochs_warm"], c["average_fraction"])

    def to_config(self) -> Dict[str, Any]:
        return {"n_members": self.n_members, "hidden": list(self.hidden), "optimizer": self.optimizer, "lr": self.lr, "batch_size": self.batch_size,
                "epochs": self.epochs, "strategy": self.strategy, "init": self.init, "precision": self.precision, "lbfgs_groups": self.lbfgs_groups,
                "warm_start": self.warm_start, "epochs_warm": self.epochs_warm, "average_fraction": self.average_fraction}


# ---------------------------------------------------------------------------------------------------- search
@dataclass(frozen=True)
class StopAtUncertainty:
    """``search.acquisition: stop_at_uncertainty`` (the paper): chains on exp(-F) stop where the ensemble std exceeds
    the threshold; the stopped points are the candidates."""

    inactive: Mapping[str, Any] = field(default_factory=dict)

    name = "stop_at_uncertainty"

    def to_config(self) -> Dict[str, Any]:
        return {"acquisition": self.name, **self.inactive}


@dataclass(frozen=True)
class UncertaintyWeighted:
    """``search.acquisition: uncertainty_weighted``: chains on exp(-F) std^2 from random labelled points run
    ``weighted_steps`` MC steps; their final states are the candidates."""

    weighted_steps: int

    name = "uncertainty_weighted"

    def to_config(self) -> Dict[str, Any]:
        return {"acquisition": self.name, "weighted_steps": self.weighted_steps}


Acquisition = Union[StopAtUncertainty, UncertaintyWeighted]

_MD_KEYS = ("md_timestep_fs", "md_friction_per_ps", "md_check_every")


@dataclass(frozen=True)
class MonteCarloBackend:
    """``search.backend: mc``: vectorised Metropolis chains on the ensemble mean (steps of ``step_size``, CG units).

    Every backend's :meth:`search` runs chains from ``start`` (n_chains, cg_dim) on exp(-F) until ``n_wanted`` of
    them have passed ``min_steps`` and stand where the ensemble std exceeds ``std_threshold`` (kT), or ``max_steps``
    run out; it returns an :class:`~openmm_cgflow.sampling.monte_carlo.UncertaintySearchResult`."""

    step_size: float
    inactive: Mapping[str, Any] = field(default_factory=dict)

    name = "mc"

    def search(self, ensemble, cg_system, start: np.ndarray, n_wanted: int, std_threshold: float, min_steps: int, max_steps: int,
               rng: np.random.Generator, torch_gen, bounds: Optional[Tuple[float, float]], precision: str, platform: str):
        import torch

        from ..sampling import uncertainty_search

        return uncertainty_search(ensemble, torch.as_tensor(start), n_wanted, self.step_size, std_threshold, min_steps, max_steps, torch_gen,
                                  cg_system.cg_periodic, bounds=bounds, precision=precision)

    def to_config(self) -> Dict[str, Any]:
        return {"backend": self.name, **self.inactive}


@dataclass(frozen=True)
class CGDynamicsBackend:
    """``search.backend: cg_dynamics``: Langevin dynamics of CG replicas on the PMF force in one OpenMM Context
    (``timestep_fs`` fs, ``friction_per_ps`` 1/ps, the std checked every ``check_every`` steps)."""

    timestep_fs: float
    friction_per_ps: float
    check_every: int

    name = "cg_dynamics"

    def search(self, ensemble, cg_system, start: np.ndarray, n_wanted: int, std_threshold: float, min_steps: int, max_steps: int,
               rng: np.random.Generator, torch_gen, bounds: Optional[Tuple[float, float]], precision: str, platform: str):
        from ..sampling.cg_dynamics_search import cg_dynamics_search

        return cg_dynamics_search(ensemble, cg_system, start, n_wanted, std_threshold, min_steps, max_steps, int(rng.integers(2**31 - 1)),
                                  self.timestep_fs, self.friction_per_ps, self.check_every, bounds, platform=platform)

    def to_config(self) -> Dict[str, Any]:
        return {"backend": self.name, "md_timestep_fs": self.timestep_fs, "md_friction_per_ps": self.friction_per_ps,
                "md_check_every": self.check_every}


SearchBackend = Union[MonteCarloBackend, CGDynamicsBackend]


@dataclass(frozen=True)
class SearchSettings:
    """``search``: where new CG points come from (SPEC §7). ``n_new_points`` centres per iteration chosen by
    diversity among ``n_new_points x diversity_multiplier`` candidates of ``n_chains`` chains; ``std_threshold`` kT;
    ``min_steps``/``max_steps`` per search; ``start`` (None: the first starting frame's CG point) and ``bounds``
    ([lower, upper] of one linear coordinate, or None) in CG units; ``restart_from_data`` retries a failed search
    once from labelled points; ``coverage_check``: before a failed search ends the run, probable CG points of the
    scoring grid farther than the spreading width from every label become the new centres instead."""

    acquisition: Acquisition
    backend: SearchBackend
    n_chains: int
    n_new_points: int
    diversity_multiplier: int
    step_size: float
    std_threshold: float
    min_steps: int
    max_steps: int
    start: Optional[Tuple[float, ...]]
    bounds: Optional[Tuple[float, float]]
    restart_from_data: bool
    coverage_check: bool = False

    @property
    def n_candidates(self) -> int:
        return self.n_new_points * self.diversity_multiplier

    def failure_reason(self) -> str:
        """The stop reason of a run whose uncertainty search found nothing."""
        return f"the uncertainty search ({self.backend.name}) found no uncertain point within {self.max_steps} steps"

    @classmethod
    def from_config(cls, c: Mapping[str, Any]) -> "SearchSettings":
        acquisition = (UncertaintyWeighted(c["weighted_steps"]) if c["acquisition"] == "uncertainty_weighted"
                       else StopAtUncertainty(_frozen({"weighted_steps": c["weighted_steps"]})))
        backend = (CGDynamicsBackend(c["md_timestep_fs"], c["md_friction_per_ps"], c["md_check_every"]) if c["backend"] == "cg_dynamics"
                   else MonteCarloBackend(c["step_size"], _frozen({key: c[key] for key in _MD_KEYS})))
        return cls(acquisition, backend, c["n_chains"], c["n_new_points"], c["diversity_multiplier"], c["step_size"], c["std_threshold"],
                   c["min_steps"], c["max_steps"], _tuple(c["start"]), _tuple(c["bounds"]), c["restart_from_data"], c["coverage_check"])

    def to_config(self) -> Dict[str, Any]:
        acquisition, backend = self.acquisition.to_config(), self.backend.to_config()
        return {"acquisition": acquisition["acquisition"], "weighted_steps": acquisition["weighted_steps"], "backend": backend["backend"],
                **{key: backend[key] for key in _MD_KEYS}, "n_chains": self.n_chains, "n_new_points": self.n_new_points,
                "diversity_multiplier": self.diversity_multiplier, "step_size": self.step_size, "std_threshold": self.std_threshold,
                "min_steps": self.min_steps, "max_steps": self.max_steps, "start": _list(self.start), "bounds": _list(self.bounds),
                "restart_from_data": self.restart_from_data, "coverage_check": self.coverage_check}


# ---------------------------------------------------------------------------------------------------- spreading
@dataclass(frozen=True)
class IntervalSpreading:
    """``spreading.kind: interval`` (one CG coordinate): ``n_points`` uniform on [c - width, c + width] (nm)."""

    width: float
    n_points: int

    kind = "interval"

    def spread(self, centres: np.ndarray, rng: np.random.Generator, periodic: bool) -> np.ndarray:
        from ..sampling import spread_uniform_interval

        return spread_uniform_interval(centres, self.width, self.n_points, rng)


@dataclass(frozen=True)
class DiscSpreading:
    """``spreading.kind: disc``: ``n_points`` uniform in a disc of radius ``width`` (rad) about each centre."""

    width: float
    n_points: int

    kind = "disc"

    def spread(self, centres: np.ndarray, rng: np.random.Generator, periodic: bool) -> np.ndarray:
        from ..sampling import spread_disc

        return spread_disc(centres, self.width, self.n_points, rng, periodic=periodic)


Spreading = Union[IntervalSpreading, DiscSpreading]


def spreading_settings(c: Mapping[str, Any]) -> Spreading:
    return (IntervalSpreading if c["kind"] == "interval" else DiscSpreading)(c["width"], c["n_points"])


def _spreading_config(s: Spreading) -> Dict[str, Any]:
    return {"kind": s.kind, "width": s.width, "n_points": s.n_points}


# ---------------------------------------------------------------------------------------------------- loop, metrics
@dataclass(frozen=True)
class LoopSettings:
    """``loop``: stop after ``max_iterations``, once the forward KLD falls below ``stop_kld`` (None: never), with
    no reference needed once the PMF has stopped changing within its uncertainty (``stable_iterations``
    consecutive iterations whose RMS change of the PMF at the labelled points is below ``stable_ratio`` x the
    ensemble's mean std there; None: never), or after the iteration during which the run's wall time (seconds,
    resumed sessions added up) passed ``max_wall_s`` (None: never), or after the iteration during which its
    all-atom energy evaluations passed ``max_evaluations`` (None: never)."""

    max_iterations: int
    stop_kld: Optional[float]
    stable_ratio: Optional[float] = None
    stable_iterations: int = 3
    max_wall_s: Optional[float] = None
    max_evaluations: Optional[int] = None

    def limit_reached(self, iteration: int, kld: Optional[float], history: Sequence[Any] = (), wall_s: Optional[float] = None,
                      evaluations: Optional[int] = None) -> Optional[str]:
        """The stop reason if these limits end the run after ``iteration`` scored ``kld`` (``history``: the run's
        iteration records so far, the last one this iteration's; ``wall_s``: the run's wall seconds so far;
        ``evaluations``: its energy evaluations so far); None otherwise."""
        if self.stop_kld is not None and kld is not None and kld < self.stop_kld:
            return f"forward KLD {kld:.3g} < {self.stop_kld}"
        if self.stable_ratio is not None and self.stable_for(history) >= self.stable_iterations:
            return (f"the PMF changed by less than {self.stable_ratio:g} x its ensemble std for {self.stable_iterations} iterations "
                    "(loop.stable_ratio)")
        if iteration >= self.max_iterations:
            return f"reached loop.max_iterations = {self.max_iterations}"
        if self.max_wall_s is not None and wall_s is not None and wall_s >= self.max_wall_s:
            return f"the run's wall time {wall_s:.0f} s passed loop.max_wall_s = {self.max_wall_s:g}"
        if self.max_evaluations is not None and evaluations is not None and evaluations >= self.max_evaluations:
            return f"the run's {evaluations:,} energy evaluations passed loop.max_evaluations = {self.max_evaluations:,}"
        return None

    def stable_for(self, history: Sequence[Any]) -> int:
        """How many of the last iterations in a row changed the PMF by less than ``stable_ratio`` x its std."""
        count = 0
        for record in reversed(list(history)):
            change, std = record.signals.pmf_change_rms, record.signals.std_visited_mean
            if change is None or std is None or not change < self.stable_ratio * std:
                break
            count += 1
        return count


@dataclass(frozen=True)
class MetricsSettings:
    """``metrics``: the reference the PMF is scored against (``none``, a reference of the system's own such as
    ``exact`` or ``packaged``, or a reference file), on ``n_bins`` per coordinate over ``domain`` (CG units)."""

    reference: str
    n_bins: int
    domain: Tuple[float, float]


# ---------------------------------------------------------------------------------------------------- the run
@dataclass(frozen=True)
class RunSettings:
    """Every setting of an active-learning run, typed (see the module docstring)."""

    system: SystemChoice
    seed: int
    torch_threads: int
    energy: EnergySettings
    starting_data: StartingDataSettings
    flow: FlowSettings
    pretraining: PretrainingSettings
    energy_training: EnergyTrainingSettings
    dataset: DatasetSettings
    labels: LabelSettings
    ensemble: EnsembleSettings
    search: SearchSettings
    spreading: Spreading
    loop: LoopSettings
    metrics: MetricsSettings

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "RunSettings":
        """Settings of a config validated by :func:`openmm_cgflow.config.load_config` or ``validate_config``."""
        system = cfg["system"]
        return cls(
            system=system if isinstance(system, str) else _frozen(system), seed=cfg["seed"], torch_threads=cfg["torch_threads"],
            energy=EnergySettings.from_config(cfg["energy"]), starting_data=StartingDataSettings.from_config(cfg["starting_data"]),
            flow=flow_settings(cfg["flow"]), pretraining=PretrainingSettings.from_config(cfg["pretraining"]),
            energy_training=EnergyTrainingSettings.from_config(cfg["energy_training"]), dataset=DatasetSettings.from_config(cfg["dataset"]),
            labels=label_settings(cfg["labels"]), ensemble=EnsembleSettings.from_config(cfg["ensemble"]),
            search=SearchSettings.from_config(cfg["search"]), spreading=spreading_settings(cfg["spreading"]),
            loop=LoopSettings(cfg["loop"]["max_iterations"], cfg["loop"]["stop_kld"], cfg["loop"]["stable_ratio"], cfg["loop"]["stable_iterations"],
                              cfg["loop"]["max_wall_s"], cfg["loop"]["max_evaluations"]),
            metrics=MetricsSettings(cfg["metrics"]["reference"], cfg["metrics"]["n_bins"], tuple(cfg["metrics"]["domain"])),
        )

    def create_system(self):
        """The run's CGSystem (a registered name, or a molecule described in the config)."""
        from ..systems import system_from_config

        return system_from_config(self.system if isinstance(self.system, str) else dict(self.system))

    def to_config(self) -> Dict[str, Any]:
        """The config dict these settings were built from (keys in the built-in configs' order)."""
        return {
            "system": self.system if isinstance(self.system, str) else dict(self.system), "seed": self.seed, "torch_threads": self.torch_threads,
            "energy": self.energy.to_config(), "starting_data": self.starting_data.to_config(), "flow": self.flow.to_config(),
            "pretraining": self.pretraining.to_config(), "energy_training": self.energy_training.to_config(), "dataset": self.dataset.to_config(),
            "labels": self.labels.to_config(), "ensemble": self.ensemble.to_config(), "search": self.search.to_config(),
            "spreading": _spreading_config(self.spreading), "loop": {"max_iterations": self.loop.max_iterations, "stop_kld": self.loop.stop_kld,
                                                                   "stable_ratio": self.loop.stable_ratio, "stable_iterations": self.loop.stable_iterations,
                                                                   "max_wall_s": self.loop.max_wall_s, "max_evaluations": self.loop.max_evaluations},
            "metrics": {"reference": self.metrics.reference, "n_bins": self.metrics.n_bins, "domain": list(self.metrics.domain)},
        }


class default_dtype:
    """torch's default dtype set to ``dtype`` inside a ``with`` block, restored after it."""

    def __init__(self, dtype):
        self.dtype = dtype

    def __enter__(self):
        import torch

        self.previous = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc):
        import torch

        torch.set_default_dtype(self.previous)
