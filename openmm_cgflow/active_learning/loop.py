"""The active-learning driver (SPEC §7): pre-train, then iterate {train by energy, label, fit the ensemble,
score, search, spread}, checkpointing atomically after every iteration so a killed run resumes exactly.

Evaluation counters (cumulative, starting MD included):
* ``energy_evaluations``: entries visited by training by energy (the paper's primary counter) + MD steps;
* ``energy_evaluations_computed``: energies OpenMM actually computed (non-finite or filtered samples
  excluded) + MD steps.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__
from ..config import MAX_GRID_POINTS, ConfigError, config_differences, validate_config
from ..energy import EnergyOracle
from ..export import cg_system_metadata, save_model
from ..flows import ConditionalAffineFlow, ConditionalSplineFlow
from ..flows.training import EnergyTrainer, train_by_example
from ..pmf import PMFEnsemble
from ..reference.kld import forward_kld
from ..sampling import farthest_point_selection, spread_disc, spread_uniform_interval, uncertainty_search, uncertainty_weighted_search
from ..sampling.cg_dynamics_search import cg_dynamics_search
from ..systems import CGSystem, system_from_config, system_label
from ..storage import CheckpointError, load_checkpoint, save_checkpoint, write_json
from .dataset import ActiveLearningDataset

CHECKPOINT_NAME = "checkpoint.pt"
#: what a checkpoint must hold to be resumed
CHECKPOINT_KEYS = ("config", "state", "flow", "flow_norm", "optimizer", "dataset", "ensemble", "torch_generator", "numpy_generator")
#: files and folders a run writes into its output directory (``overwrite=True`` removes exactly these)
RUN_OUTPUTS = (CHECKPOINT_NAME, "metrics.json", "models", "pmf.png", "pmf_iterations.png", "kld.png")


def read_run_checkpoint(path: Path) -> Dict[str, Any]:
    """A run's checkpoint with its config validated (a damaged or hand-edited config is refused, one line)."""
    checkpoint = load_checkpoint(path, CHECKPOINT_KEYS)
    try:
        checkpoint["config"] = validate_config(checkpoint["config"])
    except ConfigError as error:
        raise CheckpointError(f"{path} holds an invalid config: {error}") from None
    return checkpoint


def build_flow(config: Dict[str, Any], cg_system: CGSystem, s_mean: float, s_std: float) -> torch.nn.Module:
    """A run's untrained conditional flow, as its config ``flow`` section defines it, for ``cg_system``; ``s_mean`` and
    ``s_std`` standardise the CG context of an affine flow. Initialised from the config's seed, built in float64
    (as a run builds it, whatever torch's default dtype) and cast to float32 if ``flow.precision`` says so."""
    fc = config["flow"]
    torch.manual_seed(config["seed"])  # nn.Linear's default initialisation draws from the global generator
    hidden = fc["hidden"] if fc["hidden"] is not None else scaled_flow_hidden(fc["kind"], cg_system.fg_dim)
    with default_dtype(torch.float64):
        if fc["kind"] == "affine":
            return ConditionalAffineFlow(cg_system.cg_dim, cg_system.fg_dim, hidden, s_mean, s_std)
        flow = ConditionalSplineFlow(
            cg_system.fg_dim, list(cg_system.flow_circular_indices), cg_system.cg_dim, fc["n_layers"], fc["n_bins"], hidden[0],
            fc["n_blocks"], context=fc["context"],
        )
    return flow.float() if fc["precision"] == "float32" else flow


def build_ensemble(config: Dict[str, Any], cg_system: CGSystem) -> PMFEnsemble:
    """A run's untrained PMF ensemble (config ``ensemble`` section), in float64 as a run keeps it (its fits compute in
    ``ensemble.precision``)."""
    with default_dtype(torch.float64):
        return PMFEnsemble(cg_system.cg_dim, config["ensemble"]["n_members"], config["ensemble"]["hidden"], periodic=cg_system.cg_periodic)


def damaged_checkpoint(path: Path, error: BaseException) -> CheckpointError:
    """The one-line error for a checkpoint whose tensors or state do not fit its own config."""
    reason = " ".join(str(error).split())[:200]
    return CheckpointError(f"{path} does not match its own config or is damaged ({type(error).__name__}: {reason})")


@contextmanager
def default_dtype(dtype: torch.dtype):
    """torch's default dtype set to ``dtype`` inside the block, restored after it."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def export_models(flow: torch.nn.Module, ensemble: PMFEnsemble, cg_system: CGSystem, models_dir: Path) -> List[Path]:
    """Write a run's models as TorchScript with their metadata (:func:`~openmm_cgflow.export.save_model`):
    ``models_dir/flow.pt`` (the conditional flow, with the system's atoms) and ``models_dir/pmf_ensemble.pt``."""
    models_dir = Path(models_dir)
    return [
        save_model(flow, models_dir / "flow.pt", kind="conditional_flow", **cg_system_metadata(cg_system, include_system=True)),
        save_model(ensemble, models_dir / "pmf_ensemble.pt", kind="pmf_ensemble", **cg_system_metadata(cg_system)),
    ]


def export_checkpoint_models(checkpoint_path: Path, models_dir: Path) -> Dict[str, Any]:
    """Write the models of a run's checkpoint (the state after its latest finished iteration) to ``models_dir``, as
    a finished run writes its own: for a run that was interrupted, or one still running. Needs no OpenMM Context.
    Returns ``{"paths", "iteration", "energy_evaluations", "forward_kld"}`` of that iteration."""
    checkpoint = read_run_checkpoint(Path(checkpoint_path))
    config = checkpoint["config"]
    cg_system = system_from_config(config["system"])
    try:
        flow = build_flow(config, cg_system, *checkpoint["flow_norm"])
        flow.load_state_dict(checkpoint["flow"])
        ensemble = build_ensemble(config, cg_system)
        ensemble.load_state_dict(checkpoint["ensemble"])
        history = checkpoint["state"]["history"]
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise damaged_checkpoint(checkpoint_path, error) from None
    if not history:
        raise CheckpointError(f"{checkpoint_path} holds no finished iteration yet: nothing to export")
    paths = export_models(flow, ensemble, cg_system, models_dir)
    last = history[-1]
    return {"paths": paths, "iteration": last["iteration"], "energy_evaluations": last["energy_evaluations"],
            "forward_kld": last.get("forward_kld")}


@dataclass
class MetricGrid:
    """Where and against what a PMF is scored: bin centres (n_bins, cg_dim) and reference probabilities."""

    centres: np.ndarray
    p_reference: np.ndarray


def metric_grid_for(config: Dict[str, Any], cg_system: Optional[CGSystem] = None) -> Optional[MetricGrid]:
    """The scoring grid and reference distribution ``metrics.reference`` names: ``none`` (no reference: None),
    one of the system's own references (``exact``, ``packaged``, ...), or a reference file on a grid of the
    system's 1-3 CG dihedrals (:func:`~openmm_cgflow.reference.grid.load_reference`)."""
    reference = config["metrics"]["reference"]
    if reference == "none":
        return None
    cg_system = cg_system if cg_system is not None else system_from_config(config["system"])
    n_bins, domain = config["metrics"]["n_bins"], tuple(config["metrics"]["domain"])
    if reference in cg_system.references:
        centres, p = cg_system.references[reference](n_bins, domain)
        return MetricGrid(np.asarray(centres, dtype=np.float64).reshape(len(p), -1), np.asarray(p, dtype=np.float64))
    if reference in ("exact", "packaged"):
        known = ", ".join(sorted(cg_system.references) + ["none", "a reference file"])
        raise ConfigError(f"config key 'metrics.reference': {cg_system.name} has no {reference!r} reference (use {known})")
    if cg_system.cg_definition.kind != "dihedral" or cg_system.cg_dim > 3:
        raise ConfigError(f"config key 'metrics.reference': reference files are grids of 1-3 CG dihedrals; {cg_system.name} has "
                          f"{cg_system.cg_dim} {cg_system.cg_definition.kind} CG coordinate(s)")
    from ..reference.grid import grid_centres, load_reference

    try:  # the file's own bins: metrics.n_bins is the grid of the system's built-in references
        ref = load_reference(Path(reference), None, frame=cg_system.cg_definition.frame, dim=cg_system.cg_dim)
    except ValueError as error:
        raise ConfigError(f"config key 'metrics.reference': {error}") from None
    return MetricGrid(grid_centres(ref.n_bins, cg_system.cg_dim), ref.probabilities.ravel())


def scaled_flow_hidden(kind: str, fg_dim: int) -> List[int]:
    """``flow.hidden: null``: widths scaled to the molecule, 64 per started 64 fine-grained coordinates (alanine
    dipeptide, 58 coordinates: 64, the recorded runs' width; Ace-Ala2-Nme, 86: 128); the affine flow (one particle)
    gets two such layers."""
    width = 64 * max(1, math.ceil(fg_dim / 64))
    return [width, width] if kind == "affine" else [width]


def learning_rate_factor(et: Dict[str, Any], iteration: int, epoch: int, global_epoch: int, total_epochs: int) -> float:
    """The lr multiplier of an epoch (``epoch`` counts within the 1-based ``iteration``, ``global_epoch`` over the
    run): a linear warm-up lr (k + 1) / n, then constant (per_iteration), cosine decay to 0 over the run
    (global_cosine), or cosine decay over each iteration's epochs (per_iteration_cosine: the last epoch of an
    iteration runs at 0.5 (1 + cos(pi (E - 1 - w) / (E - w))) of the lr, not at 0)."""
    if et["schedule"] == "global_cosine":
        warm = et["warmup_epochs_first"]
        if global_epoch < warm:
            return (global_epoch + 1) / warm
        remaining = max(total_epochs - warm, 1)
        return 0.5 * (1.0 + math.cos(math.pi * (global_epoch - warm) / remaining))
    warm = et["warmup_epochs_first"] if iteration == 1 else et["warmup_epochs"]
    if epoch < warm:
        return (epoch + 1) / warm
    if et["schedule"] == "per_iteration_cosine":
        epochs = et["epochs_first_iteration"] if iteration == 1 else et["epochs"]
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - warm) / max(epochs - warm, 1)))
    return 1.0


def clip_norm_for(et: Dict[str, Any], epoch: int, global_epoch: int) -> float:
    """Gradient-norm clip of an epoch: ``clip_norm_warmup`` during the first ``clip_warmup_epochs`` (of every
    iteration, or of the run with the global_cosine schedule), ``clip_norm`` afterwards."""
    counter = global_epoch if et["schedule"] == "global_cosine" else epoch
    return et["clip_norm_warmup"] if counter < et["clip_warmup_epochs"] else et["clip_norm"]


def grid_points(domain: Tuple[float, float], n: int, cg_dim: int, cell_centres: bool = False) -> np.ndarray:
    """The grid baseline's CG points: linspace(lower, upper, n) per dimension, ends included (SPEC §8); or, with
    ``cell_centres``, the centres of n equal cells per dimension (no point twice on a periodic domain)."""
    if cell_centres:
        width = (domain[1] - domain[0]) / n
        axis = domain[0] + width * (np.arange(n) + 0.5)
    else:
        axis = np.linspace(domain[0], domain[1], n)
    mesh = np.meshgrid(*([axis] * cg_dim), indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=-1)


@dataclass
class RunState:
    """Everything that changes during a run (saved in the checkpoint)."""

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
    history: List[Dict[str, Any]] = field(default_factory=list)


def search_failed_reason(config: Dict[str, Any]) -> str:
    """The stop reason of a run whose uncertainty search found nothing."""
    search = config["search"]
    return f"the uncertainty search ({search['backend']}) found no uncertain point within {search['max_steps']} steps"


#: config keys a resumed run may change: its stopping limits (a finished run is then extended)
EXTENDABLE_KEYS = ("loop.max_iterations", "loop.stop_kld")


class ActiveLearningRun:
    """One active-learning run writing into ``out_dir``.

    ``run()`` starts from scratch (refusing to overwrite an existing checkpoint) or, with
    ``resume=True``, continues from ``out_dir/checkpoint.pt`` with the config stored there; a config that
    differs only in ``EXTENDABLE_KEYS`` extends the run (e.g. ``loop.max_iterations`` 8 -> 16).
    """

    def __init__(self, config: Dict[str, Any], out_dir: Path, progress: bool = True):
        self.config = config
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.checkpoint_path = self.out_dir / CHECKPOINT_NAME

    # ------------------------------------------------------------------ setup
    def _build(self) -> None:
        cfg = self.config
        torch.set_num_threads(cfg["torch_threads"])
        torch.set_default_dtype(torch.float64)
        self.cg_system: CGSystem = system_from_config(cfg["system"])
        self._check_dimensions()
        self.oracle = EnergyOracle(self.cg_system, cfg["energy"]["platform"], cfg["energy"]["n_workers"])
        self.grid = metric_grid_for(cfg, self.cg_system)
        self.torch_gen = torch.Generator().manual_seed(cfg["seed"])
        self.rng = np.random.default_rng(cfg["seed"])
        self.ensemble = build_ensemble(cfg, self.cg_system)

    def _check_dimensions(self) -> None:
        """Config entries that must match the system's number of CG coordinates."""
        cfg, dim = self.config, self.cg_system.cg_dim
        start = cfg["search"]["start"]
        if start is not None and len(start) != dim:
            raise ConfigError(f"config key 'search.start' has {len(start)} entries; {self.cg_system.name} has {dim} CG coordinate(s) "
                              f"({', '.join(self.cg_system.cg_definition.names)})")
        if cfg["search"]["bounds"] is not None and dim != 1:
            raise ConfigError("config key 'search.bounds' applies to one CG coordinate only; use null")
        if cfg["dataset"]["kind"] != "active" and cfg["dataset"]["grid_points"] ** dim > MAX_GRID_POINTS:
            raise ConfigError(f"config key 'dataset.kind' = {cfg['dataset']['kind']}: {cfg['dataset']['grid_points']}^{dim} grid points are too many "
                              f"for {dim} CG coordinates (at most {MAX_GRID_POINTS:,}); use dataset.kind=active")
        if cfg["spreading"]["kind"] == "interval" and dim != 1:
            raise ConfigError(f"config key 'spreading.kind' = interval needs one CG coordinate; {self.cg_system.name} has {dim} (use disc)")

    def _build_flow(self, s_mean: float, s_std: float) -> None:
        cfg = self.config
        self.flow = build_flow(cfg, self.cg_system, s_mean, s_std)
        self.flow_norm = (s_mean, s_std)
        self.optimizer = torch.optim.Adam(self.flow.parameters(), lr=cfg["pretraining"]["lr"], fused=True)
        self.trainer = EnergyTrainer(
            self.flow, self.cg_system, self.oracle, self.optimizer, skip_top_k=cfg["energy_training"]["skip_top_k"],
            sample_filter=self._chirality_filter(cfg["energy_training"]["chirality_filter"]),
            compile=cfg["flow"]["compile"],  # the config allows it for spline flows only
        )

    def _chirality_filter(self, kind: str):
        try:
            return self.cg_system.sample_filter(kind)
        except ValueError as error:
            raise ConfigError(f"config key 'energy_training.chirality_filter': {error}") from None

    def _starting_frames(self) -> Tuple[np.ndarray, int]:
        """Starting MD frames (n_frames, atoms, 3) nm and the MD steps they cost."""
        cfg, sd = self.config, self.config["starting_data"]
        try:
            return self.cg_system.starting_frames(sd["n_frames"], sd["save_every"], sd["equilibration_steps"], sd["timestep_fs"],
                                                  sd["friction_per_ps"], cfg["seed"], cfg["energy"]["platform"])
        except ValueError as error:
            raise ConfigError(f"config section 'starting_data': {error}") from None

    def _start(self) -> None:
        """Starting MD, pre-training by example, and the iteration-0 dataset."""
        cfg = self.config
        self.state = RunState()
        frames, self.state.md_steps = self._starting_frames()
        s0, x0 = self.cg_system.from_cartesian(torch.as_tensor(frames))
        self._build_flow(float(s0.mean()), float(s0.std(unbiased=False)))
        pt = cfg["pretraining"]
        train_by_example(self.flow, self.optimizer, s0, x0, pt["epochs"], pt["batch_size"], self.torch_gen)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg["energy_training"]["lr"]
        self.dataset = ActiveLearningDataset(self.cg_system.cg_dim, top_k=cfg["labels"]["clip_k"])
        ds = cfg["dataset"]
        if ds["kind"] == "active":
            first = s0.numpy()
        else:  # grid (SPEC §8), or grid_then_active: a coarse grid of cell centres first, then active learning
            first = grid_points(tuple(cfg["metrics"]["domain"]), ds["grid_points"], self.cg_system.cg_dim, cell_centres=ds["kind"] != "grid")
        self.dataset.add_points(first, 0, self.rng, ds["train_fraction"], ds["copies"])
        start = cfg["search"]["start"]  # null: the first starting frame's CG point
        self.state.search_start = np.asarray(s0[:1].numpy() if start is None else [start], dtype=np.float64)

    # ------------------------------------------------------------------ checkpoints
    def _save(self) -> None:
        save_checkpoint(
            self.checkpoint_path,
            {
                "package_version": __version__,
                "config": self.config,
                "state": self.state.__dict__,
                "flow": self.flow.state_dict(),
                "flow_norm": self.flow_norm,
                "optimizer": self.optimizer.state_dict(),
                "dataset": self.dataset.state_dict(),
                "ensemble": self.ensemble.state_dict(),
                "torch_generator": self.torch_gen.get_state(),
                "numpy_generator": self.rng.bit_generator.state,
            },
        )

    def _load(self) -> None:
        checkpoint = read_run_checkpoint(self.checkpoint_path)
        differences = config_differences(checkpoint["config"], self.config)
        extendable = set(EXTENDABLE_KEYS)
        if self.config["energy_training"]["schedule"] == "global_cosine":
            extendable.discard("loop.max_iterations")  # its cosine spans the run's planned epochs
        fixed = [key for key in differences if key not in extendable]
        if fixed:
            raise ConfigError(
                f"{self.checkpoint_path} was written with a different config (keys: {', '.join(fixed)}); "
                "resume with the same config (only " + ", ".join(sorted(extendable)) + " may change) or start a new --out directory"
            )
        self._build()
        try:
            self.state = RunState(**checkpoint["state"])
            self._build_flow(*checkpoint["flow_norm"])
            self.flow.load_state_dict(checkpoint["flow"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.dataset = ActiveLearningDataset.from_state_dict(checkpoint["dataset"])
            self.ensemble.load_state_dict(checkpoint["ensemble"])
            self.torch_gen.set_state(checkpoint["torch_generator"])
            self.rng.bit_generator.state = checkpoint["numpy_generator"]
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
            raise damaged_checkpoint(self.checkpoint_path, error) from None
        if differences:
            self._reopen_if_extended()

    def _reopen_if_extended(self) -> None:
        """Continue a run that stopped at its old loop limits when the resumed config moved them: the search that
        the stop skipped runs now, from the same generator states, so the extended run continues exactly as a
        run planned with the new limits from the start would have."""
        cfg, st = self.config, self.state
        if not st.finished or st.stop_reason == search_failed_reason(cfg) or self._loop_limit_reached(st.history[-1]["forward_kld"]):
            return
        st.finished, st.stop_reason = False, ""
        if cfg["dataset"]["kind"] != "grid" and not self._search_and_spread(np.asarray(st.history[-1]["label_points"])):
            st.finished, st.stop_reason = True, search_failed_reason(cfg)

    # ------------------------------------------------------------------ one iteration
    def _train_by_energy(self, epochs: int) -> None:
        et, st = self.config["energy_training"], self.state
        total_epochs = et["epochs_first_iteration"] + (self.config["loop"]["max_iterations"] - 1) * et["epochs"]
        bar = tqdm(range(epochs), desc=f"iteration {st.iteration + 1}: training by energy", leave=False, disable=not self.progress)
        for epoch in bar:
            lr = et["lr"] * learning_rate_factor(et, st.iteration + 1, epoch, st.epochs_done, total_epochs)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            clip = clip_norm_for(et, epoch, st.epochs_done)
            accumulate = st.epochs_done >= self.config["labels"]["accumulate_from_epoch"]
            st.epochs_done += 1
            for entries in self.dataset.epoch_batches(self.rng, et["batch_size"], et["replay_fraction"]):
                s = torch.as_tensor(self.dataset.entry_s(entries))
                result = self.trainer.step(s, self.torch_gen, clip)
                self.dataset.record(entries, result.log_w, accumulate)
                self.state.visited += len(entries)
                self.state.computed += result.n_computed
                self.state.skipped_batches += int(result.skipped)
                if not result.skipped:
                    bar.set_postfix(loss=f"{result.loss:.3f}", refresh=False)

    def _fit_pmf(self):
        lc = self.config["labels"]
        groups, labels = self.dataset.labels(lc["samples"], lc["clip_k"])
        ens = self.config["ensemble"]
        s = self.dataset.point_s[groups]
        warm = bool(ens["warm_start"]) and bool(self.state.history)  # the run's first fit starts from scratch
        epochs = ens["epochs_warm"] if warm and ens["epochs_warm"] is not None else ens["epochs"]
        self.ensemble.fit(
            s, labels, epochs, ens["batch_size"], ens["lr"], ens["strategy"], ens["init"], self.torch_gen, ens["optimizer"],
            ens["precision"], ens["lbfgs_groups"], warm_start=warm,
        )
        return groups, labels

    def _search(self, seeds: np.ndarray, n_found: int):
        sc = self.config["search"]
        start = seeds[np.arange(sc["n_chains"]) % len(seeds)]
        bounds = None if sc["bounds"] is None else tuple(sc["bounds"])
        if sc["backend"] == "cg_dynamics":
            return cg_dynamics_search(
                self.ensemble, self._model_metadata(), start, n_found, sc["std_threshold"], sc["min_steps"], sc["max_steps"],
                int(self.rng.integers(2**31 - 1)), sc["md_timestep_fs"], sc["md_friction_per_ps"], sc["md_check_every"], bounds,
                platform=self.config["energy"]["platform"],
            )
        return uncertainty_search(
            self.ensemble, torch.as_tensor(start), n_found, sc["step_size"], sc["std_threshold"], sc["min_steps"], sc["max_steps"],
            self.torch_gen, self.cg_system.cg_periodic, bounds=bounds, precision=self.config["ensemble"]["precision"],
        )

    def _model_metadata(self) -> Dict[str, Any]:
        """The export metadata of this run's models (system, temperature, CG definition)."""
        return cg_system_metadata(self.cg_system)

    def _search_and_spread(self, labelled_points: np.ndarray) -> bool:
        """MC search for uncertain points, diversity selection, spreading; False if the search failed.

        Chains start at the previous iteration's new centres (the paper). With ``search.restart_from_data``
        a failed search is repeated once from labelled CG points drawn at random, so an uncertain region
        behind a high barrier of the PMF is still found when it borders the data.
        """
        sc, sp, ds = self.config["search"], self.config["spreading"], self.config["dataset"]
        periodic = self.cg_system.cg_periodic
        n_found = sc["n_new_points"] * sc["diversity_multiplier"]
        if sc["acquisition"] == "uncertainty_weighted":
            start = labelled_points[self.rng.integers(len(labelled_points), size=sc["n_chains"])]
            result = uncertainty_weighted_search(
                self.ensemble, torch.as_tensor(start), sc["weighted_steps"], sc["step_size"], self.torch_gen, periodic,
                bounds=None if sc["bounds"] is None else tuple(sc["bounds"]), precision=self.config["ensemble"]["precision"],
            )
        else:
            result = self._search(self.state.search_start, n_found)
        steps = result.n_steps
        if not result.success and sc["restart_from_data"]:
            result = self._search(labelled_points[self.rng.integers(len(labelled_points), size=sc["n_chains"])], n_found)
            steps += result.n_steps
        self.state.history[-1]["mc_steps"] = steps
        if not result.success:
            return False
        found = result.points.numpy()
        centres = found[farthest_point_selection(found, sc["n_new_points"], self.rng, periodic=periodic)]
        if sp["kind"] == "interval":
            points = spread_uniform_interval(centres, sp["width"], sp["n_points"], self.rng)
        else:
            points = spread_disc(centres, sp["width"], sp["n_points"], self.rng, periodic=periodic)
        self.dataset.add_points(points, self.state.iteration, self.rng, ds["train_fraction"], ds["copies"])
        self.state.search_start = centres
        self.state.history[-1]["new_centres"] = centres.tolist()
        return True

    def _loop_limit_reached(self, kld: Optional[float]) -> Optional[str]:
        """The stop reason if the loop's limits (loop.stop_kld, loop.max_iterations) end the run after an
        iteration that scored ``kld``; None otherwise."""
        loop = self.config["loop"]
        if loop["stop_kld"] is not None and kld is not None and kld < loop["stop_kld"]:
            return f"forward KLD {kld:.3g} < {loop['stop_kld']}"
        if self.state.iteration >= loop["max_iterations"]:
            return f"reached loop.max_iterations = {loop['max_iterations']}"
        return None

    def _convergence_signals(self, groups: np.ndarray, label_mean: np.ndarray, previous: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        """What a run without a reference can trust: the ensemble std over the labelled (visited) CG points, the
        effective sample size of each CG point's latest entry samples (as a fraction of its entries), the effective
        number of samples behind each label (Kish's ESS of every sample the label uses: ``labels.samples`` all, or
        the latest ones; with ~2 % ESS per sample a label of 200 samples is worth ~4), and the RMS change of the PMF
        since the previous iteration at the CG points both iterations labelled (offset removed: a PMF is defined
        up to a constant)."""
        points = self.dataset.point_s[groups]
        _, std = self.ensemble.predict(points)
        entries = self.dataset.labelled_train_entries()
        entry_point = self.dataset.entry_point[entries]
        ess, ess_count = [], []
        for point in np.unique(entry_point):
            log_w = self.dataset.entry_log_w[entries[entry_point == point]]
            w = np.exp(log_w - log_w.max())
            ess_count.append(w.sum() ** 2 / (w**2).sum())
            ess.append(ess_count[-1] / len(w))
        lc = self.config["labels"]
        if lc["samples"] == "all":
            ess_count = self.dataset.accumulated_effective_samples(lc["clip_k"])[1]
            ess_count = ess_count[np.isfinite(ess_count)]  # NaN: points accumulated by an older version
        change_rms = None
        if previous is not None and previous.get("label_mean") is not None:
            before = {tuple(p): m for p, m in zip(previous["label_points"], previous["label_mean"])}
            common = [(k, before[tuple(p)]) for k, p in enumerate(points.tolist()) if tuple(p) in before]
            if common:
                change = label_mean[[k for k, _ in common]] - np.array([m for _, m in common])
                change_rms = float(np.sqrt(np.mean((change - change.mean()) ** 2)))
        return {
            "std_visited_mean": float(std.mean()) if len(std) else None,
            "std_visited_max": float(std.max()) if len(std) else None,
            "label_ess_fraction_median": float(np.median(ess)) if ess else None,
            "label_effective_samples_median": float(np.median(ess_count)) if len(ess_count) else None,
            "pmf_change_rms": change_rms,
        }

    def _score_grid(self) -> Optional[np.ndarray]:
        """Where the PMF is stored each iteration: the reference's bins, or without a reference a regular grid of
        ``metrics.n_bins`` per coordinate over ``metrics.domain`` for 1-2 CG coordinates (none for more)."""
        if self.grid is not None:
            return self.grid.centres
        if self.cg_system.cg_dim > 2:
            return None
        lo, hi = self.config["metrics"]["domain"]
        return grid_points((lo, hi), self.config["metrics"]["n_bins"], self.cg_system.cg_dim, cell_centres=True)

    def _iterate(self) -> None:
        cfg, st = self.config, self.state
        t0 = time.perf_counter()
        et = cfg["energy_training"]
        self._train_by_energy(et["epochs_first_iteration"] if st.iteration == 0 else et["epochs"])
        st.iteration += 1
        previous = st.history[-1] if st.history else None
        groups, labels = self._fit_pmf()
        score_at = self._score_grid()
        mean, std = self.ensemble.predict(score_at) if score_at is not None else (np.zeros(0), np.zeros(0))
        kld = forward_kld(self.grid.p_reference, mean) if self.grid is not None else None
        label_mean, _ = self.ensemble.predict(self.dataset.point_s[groups])
        signals = self._convergence_signals(groups, label_mean, previous)
        st.history.append(
            {
                "iteration": st.iteration,
                "energy_evaluations": st.visited + st.md_steps,
                "energy_evaluations_computed": st.computed + st.md_steps,
                "forward_kld": kld,
                **signals,
                "n_cg_points": int(len(self.dataset.point_s)),
                "n_labels": int(len(labels)),
                "skipped_batches": st.skipped_batches,
                "mean": mean.tolist(),
                "std": std.tolist(),
                "label_points": self.dataset.point_s[groups].tolist(),
                "label_iteration": self.dataset.point_iteration[groups].tolist(),
                "labels": labels.tolist(),
                "label_mean": label_mean.tolist(),
            }
        )
        limit = self._loop_limit_reached(kld)
        if limit:
            st.finished, st.stop_reason = True, limit
        elif cfg["dataset"]["kind"] == "grid":
            pass  # the grid baseline has no search: the next iteration continues training on the same grid
        elif not self._search_and_spread(self.dataset.point_s[groups]):
            st.finished, st.stop_reason = True, search_failed_reason(cfg)
        st.wall_s += time.perf_counter() - t0
        st.history[-1]["wall_s"] = st.wall_s

    # ------------------------------------------------------------------ driver
    def check_output_dir(self, resume: bool = False, overwrite: bool = False) -> None:
        """Refuse to start a new run in a non-empty ``out_dir`` (nothing there is changed) unless ``overwrite``,
        which removes this package's run outputs (RUN_OUTPUTS) and nothing else."""
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise ConfigError(f"--out {self.out_dir} is a file, not a directory")
        if resume:
            if overwrite:
                raise ConfigError("--resume and --overwrite exclude each other")
            return
        present = sorted(p.name for p in self.out_dir.iterdir()) if self.out_dir.is_dir() else []
        if not present:
            return
        if not overwrite:
            shown = ", ".join(present[:4]) + (", ..." if len(present) > 4 else "")
            raise ConfigError(
                f"--out {self.out_dir} is not empty ({shown}): use --resume to continue the run there, --overwrite to replace it, "
                "or another --out"
            )
        import shutil

        for name in RUN_OUTPUTS:
            target = self.out_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()

    def run(self, resume: bool = False, overwrite: bool = False) -> Dict[str, Any]:
        """Run (or resume) to the end; returns the metrics dict also written to ``metrics.json``.

        A new run refuses a non-empty ``out_dir`` unless ``overwrite`` (see :meth:`check_output_dir`)."""
        self.check_output_dir(resume, overwrite)
        if resume and not self.checkpoint_path.is_file():
            raise FileNotFoundError(f"no checkpoint to resume from: {self.checkpoint_path}")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            if resume:
                self._load()
            else:
                t0 = time.perf_counter()
                self._build()
                self._start()
                self.state.wall_s = time.perf_counter() - t0
                self._save()
            bar = tqdm(total=self.config["loop"]["max_iterations"], initial=self.state.iteration, desc="active learning", disable=not self.progress)
            while not self.state.finished:
                self._iterate()
                self._save()
                self._write_metrics()
                last = self.state.history[-1]
                bar.update(1)
                if last["forward_kld"] is not None:
                    bar.set_postfix(kld=f"{last['forward_kld']:.2e}", evals=last["energy_evaluations"])
                else:
                    bar.set_postfix(std=f"{last['std_visited_max']:.2f}", evals=last["energy_evaluations"])
            bar.close()
            self._write_metrics()
            self._export_models()
            self._plot()
            return self.metrics()
        finally:
            if hasattr(self, "oracle"):
                self.oracle.close()

    # ------------------------------------------------------------------ outputs
    _PER_ITERATION = ("iteration", "energy_evaluations", "energy_evaluations_computed", "forward_kld", "std_visited_mean", "std_visited_max",
                      "label_ess_fraction_median", "label_effective_samples_median", "pmf_change_rms", "wall_s", "n_cg_points", "n_labels", "skipped_batches", "mc_steps")

    def metrics(self) -> Dict[str, Any]:
        st = self.state
        rows = [{k: h[k] for k in self._PER_ITERATION if k in h} for h in st.history]
        last = st.history[-1] if st.history else {}
        return {
            "system": system_label(self.config["system"]),
            "package_version": __version__,
            "iterations": rows,
            "totals": {
                "iterations": st.iteration,
                "energy_evaluations": st.visited + st.md_steps,
                "energy_evaluations_computed": st.computed + st.md_steps,
                "starting_md_steps": st.md_steps,
                "final_forward_kld": last.get("forward_kld"),
                "wall_s": st.wall_s,
                "skipped_batches": st.skipped_batches,
                "finished": st.finished,
                "stop_reason": st.stop_reason,
            },
            "config": self.config,
        }

    def _write_metrics(self) -> None:
        write_json(self.out_dir / "metrics.json", self.metrics())

    def _export_models(self) -> None:
        export_models(self.flow, self.ensemble, self.cg_system, self.out_dir / "models")

    def _plot(self) -> None:
        from ..plotting import plot_kld, plot_pmf_1d, plot_pmf_iterations

        history = self.state.history
        if not history:
            return
        last = history[-1]
        names = [f"{cv.name} ({cv.unit})" for cv in self.cg_system.cg_definition.coordinates]
        score = f"forward KLD {last['forward_kld']:.2e}" if last["forward_kld"] is not None else f"max std on visited points {last['std_visited_max']:.2f} kT"
        title = f"{self.cg_system.name}: iteration {last['iteration']}, {score}"
        if self.grid is not None:
            plot_kld(self.out_dir / "kld.png", [h["energy_evaluations"] for h in history], [h["forward_kld"] for h in history], target=1e-3)
        reference = -np.log(self.grid.p_reference) if self.grid is not None else None
        if self.cg_system.cg_dim == 2 and len(last["mean"]):
            from ..plotting import plot_pmf_2d

            n = self.config["metrics"]["n_bins"]
            domain = self.config["metrics"]["domain"]
            plot_pmf_2d(
                self.out_dir / "pmf.png", np.linspace(domain[0], domain[1], n + 1), None if reference is None else reference.reshape(n, n),
                np.asarray(last["mean"]).reshape(n, n), np.asarray(last["std"]).reshape(n, n), np.asarray(last["label_points"]),
                title=title, labels=names,
            )
            return
        if self.cg_system.cg_dim != 1:
            return
        centres = self._score_grid()[:, 0]
        points = np.asarray(last["label_points"])[:, 0]
        tags = np.asarray(last["label_iteration"])
        values = np.asarray(last["labels"])
        per_iteration = [(points[tags == i], values[tags == i]) for i in range(int(tags.max()) + 1)]
        plot_pmf_1d(
            self.out_dir / "pmf.png", centres, reference, np.asarray(last["mean"]), np.asarray(last["std"]),
            [p for p, _ in per_iteration], [v for _, v in per_iteration], title=title, xlabel=names[0],
        )
        plot_pmf_iterations(self.out_dir / "pmf_iterations.png", centres, reference, history)
