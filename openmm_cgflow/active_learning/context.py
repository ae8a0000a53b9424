"""A run's working set (:class:`RunContext`): its settings, system, energy oracle, models, dataset, random
generators and state; built fresh (:func:`start_context`: starting MD, pre-training, the first CG points) or
rebuilt from a checkpoint (:func:`resumed_context`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import MAX_GRID_POINTS, ConfigError
from ..energy import EnergyOracle
from ..flows.training import EnergyTrainer, train_by_example
from ..pmf import PMFEnsemble
from ..pmf.fit_window import FitWindow
from ..storage import CheckpointError
from ..systems import CGSystem
from .dataset import ActiveLearningDataset
from .scoring import MetricGrid, metric_grid
from .settings import FlowSettings, GridDesign, GridThenActiveDesign, IntervalSpreading, RunSettings, default_dtype
from .state import RunState


def build_flow(flow: FlowSettings, cg_system: CGSystem, seed: int, s_mean: float, s_std: float) -> torch.nn.Module:
    """A run's untrained conditional flow for ``cg_system``; ``s_mean`` and ``s_std`` standardise the CG context of
    an affine flow. Initialised from ``seed``, built in float64 (whatever torch's default dtype) and cast to float32
    if ``flow.precision`` says so."""
    torch.manual_seed(seed)  # nn.Linear's default initialisation draws from the global generator
    with default_dtype(torch.float64):
        module = flow.build(cg_system.cg_dim, cg_system.fg_dim, cg_system.flow_circular_indices, s_mean, s_std)
    return module.float() if flow.precision == "float32" else module


def damaged_checkpoint(path: Path, error: BaseException) -> CheckpointError:
    """The one-line error for a checkpoint whose tensors or state do not fit its own config."""
    reason = " ".join(str(error).split())[:200]
    return CheckpointError(f"{path} does not match its own config or is damaged ({type(error).__name__}: {reason})")


def check_dimensions(settings: RunSettings, cg_system: CGSystem) -> None:
    """Settings that must match the system's number of CG coordinates (one-line ConfigError naming the key)."""
    dim, search, design = cg_system.cg_dim, settings.search, settings.dataset.design
    if search.start is not None and len(search.start) != dim:
        raise ConfigError(f"config key 'search.start' has {len(search.start)} entries; {cg_system.name} has {dim} CG coordinate(s) "
                          f"({', '.join(cg_system.cg_definition.names)})")
    if search.bounds is not None and dim != 1:
        raise ConfigError("config key 'search.bounds' applies to one CG coordinate only; use null")
    if design.kind != "active" and not (isinstance(design, GridThenActiveDesign) and not design.uses_grid(dim)) \
            and design.grid_points ** dim > MAX_GRID_POINTS:
        raise ConfigError(f"config key 'dataset.kind' = {design.kind}: {design.grid_points}^{dim} grid points are too many "
                          f"for {dim} CG coordinates (at most {MAX_GRID_POINTS:,}); use dataset.kind=active")
    if isinstance(settings.spreading, IntervalSpreading) and dim != 1:
        raise ConfigError(f"config key 'spreading.kind' = interval needs one CG coordinate; {cg_system.name} has {dim} (use disc)")


@dataclass
class RunContext:
    """Everything a run's stages work on. ``flow_norm``: the (mean, std) of the starting CG points that standardise
    an affine flow's context; ``grid``: the scoring grid (None without a reference)."""

    settings: RunSettings
    cg_system: CGSystem
    oracle: EnergyOracle
    grid: Optional[MetricGrid]
    rng: np.random.Generator
    torch_gen: torch.Generator
    ensemble: PMFEnsemble
    progress: bool = True
    state: RunState = field(default_factory=RunState)
    flow: Optional[torch.nn.Module] = None
    flow_norm: Tuple[float, float] = (0.0, 1.0)
    optimizer: Optional[torch.optim.Optimizer] = None
    trainer: Optional[EnergyTrainer] = None
    dataset: Optional[ActiveLearningDataset] = None
    fits: Optional[FitWindow] = None

    def __post_init__(self):
        if self.fits is None:
            self.fits = self.settings.ensemble.fit_window()

    def pmf_ensemble(self) -> PMFEnsemble:
        """The run's PMF as a model: the stacked ensemble of the fits it averages (``ensemble.average_fraction``),
        the latest fit alone before any."""
        return self.fits.ensemble(self.ensemble)

    @classmethod
    def build(cls, settings: RunSettings, progress: bool = True) -> "RunContext":
        """The system, oracle, scoring grid, generators and untrained ensemble of a run (no flow yet)."""
        torch.set_num_threads(settings.torch_threads)
        torch.set_default_dtype(torch.float64)
        cg_system = settings.create_system()
        check_dimensions(settings, cg_system)
        energy = settings.energy
        oracle = EnergyOracle(cg_system, energy.platform, energy.n_workers, nonfinite="nan",  # flow samples can be anything
                              executor=energy.executor, address=energy.address)
        try:
            grid = metric_grid(settings.metrics, cg_system)
        except BaseException:
            oracle.close()
            raise
        return cls(settings, cg_system, oracle, grid, np.random.default_rng(settings.seed), torch.Generator().manual_seed(settings.seed),
                   settings.ensemble.build(cg_system.cg_dim, cg_system.cg_periodic), progress)

    def build_flow(self, s_mean: float, s_std: float) -> None:
        """The flow, its Adam optimizer and the trainer by energy."""
        settings = self.settings
        self.flow = build_flow(settings.flow, self.cg_system, settings.seed, s_mean, s_std)
        self.flow_norm = (s_mean, s_std)
        self.optimizer = torch.optim.Adam(self.flow.parameters(), lr=settings.pretraining.lr, fused=True)
        try:
            sample_filter = self.cg_system.sample_filter(settings.energy_training.chirality_filter)
        except ValueError as error:
            raise ConfigError(f"config key 'energy_training.chirality_filter': {error}") from None
        self.trainer = EnergyTrainer(self.flow, self.cg_system, self.oracle, self.optimizer, skip_top_k=settings.energy_training.skip_top_k,
                                     sample_filter=sample_filter, compile=settings.flow.compile)

    def start(self) -> None:
        """Starting MD, pre-training by example, and the iteration-0 dataset."""
        settings, sd = self.settings, self.settings.starting_data
        self.state = RunState()
        try:
            frames, self.state.md_steps = self.cg_system.starting_frames(sd.n_frames, sd.save_every, sd.equilibration_steps, sd.timestep_fs,
                                                                         sd.friction_per_ps, settings.seed, settings.energy.platform,
                                                                         progress=self.progress)
        except ValueError as error:
            raise ConfigError(f"config section 'starting_data': {error}") from None
        s0, x0 = self.cg_system.from_cartesian(torch.as_tensor(frames))
        self.build_flow(float(s0.mean()), float(s0.std(unbiased=False)))
        pt = settings.pretraining
        with tqdm(total=pt.epochs, desc="pre-training the flow on the starting frames", unit="epoch", leave=False,
                  disable=not self.progress) as bar:
            train_by_example(self.flow, self.optimizer, s0, x0, pt.epochs, pt.batch_size, self.torch_gen,
                             progress=lambda epoch, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.3f}", refresh=False)))
        for group in self.optimizer.param_groups:
            group["lr"] = settings.energy_training.lr
        self.dataset = ActiveLearningDataset(self.cg_system.cg_dim, top_k=settings.labels.clip_k)
        first = settings.dataset.design.first_points(s0.numpy(), settings.metrics.domain, self.cg_system.cg_dim, settings.seed)
        self.dataset.add_points(first, 0, self.rng, settings.dataset.train_fraction, settings.dataset.start_copies(len(first)))
        start = settings.search.start  # None: the first starting frame's CG point
        self.state.search_start = np.asarray(s0[:1].numpy() if start is None else [start], dtype=np.float64)

    def restore(self, checkpoint: Dict[str, Any], path: Path) -> None:
        """Models, dataset, generators and state from a checkpoint of this run (a damaged one: one line)."""
        try:
            self.state = RunState.from_dict(checkpoint["state"])
            self.build_flow(*checkpoint["flow_norm"])
            self.flow.load_state_dict(checkpoint["flow"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.dataset = ActiveLearningDataset.from_state_dict(checkpoint["dataset"])
            self.ensemble.load_state_dict(checkpoint["ensemble"])
            if "fits" in checkpoint:  # checkpoints written before the PMF averaged fits hold none
                self.fits.load_state_dict(checkpoint["fits"])
            self.torch_gen.set_state(checkpoint["torch_generator"])
            self.rng.bit_generator.state = checkpoint["numpy_generator"]
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
            raise damaged_checkpoint(path, error) from None

    @property
    def searches(self) -> bool:
        """Whether iterations search and spread (every design but the fixed grid)."""
        return not isinstance(self.settings.dataset.design, GridDesign)
