"""One active-learning iteration as six stages (SPEC §7): train by energy, labels, fit the PMF, score, search, spread.

Every stage has a ``name`` and is called as ``stage(run, work)``: ``run`` is the :class:`RunContext` of the run (its
settings, system, models, dataset, generators and state), ``work`` the :class:`IterationWork` that carries what one
stage hands the next within an iteration. The driver (:class:`~openmm_cgflow.active_learning.loop.ActiveLearningRun`)
calls them in order, times each, and reports the timings to its callbacks (:class:`StageTiming`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from ..sampling import farthest_point_selection, uncertainty_weighted_search
from ..sampling.acquisition import coverage_gaps
from ..sampling.monte_carlo import UncertaintySearchResult
from ..scoring.kld import forward_kld
from .scoring import convergence_signals, score_points
from .settings import UncertaintyWeighted
from .state import IterationRecord

if TYPE_CHECKING:
    from .loop import RunContext


@dataclass
class IterationWork:
    """What the stages of one iteration hand each other: the labelled points' ids and labels (kT), and the
    search's candidate CG points."""

    groups: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    n_fit_rows: int = 0
    candidates: Optional[np.ndarray] = None
    #: ``time.perf_counter()`` when the iteration began (the wall-time limit counts the iteration so far)
    started: float = field(default_factory=time.perf_counter)


@dataclass
class StageTiming:
    """A finished stage: the (1-based) iteration it belongs to, its name and its wall time in seconds."""

    iteration: int
    stage: str
    wall_s: float


class Stage(Protocol):
    """A step of an iteration: ``stage(run, work)`` reads and updates the run and the iteration's work."""

    name: str

    def __call__(self, run: "RunContext", work: IterationWork) -> None:
        ...


class TrainByEnergy:
    """Reverse-KL training of the flow at the dataset's CG points (SPEC §5); records every sample's log weight."""

    name = "train_by_energy"

    def __call__(self, run: "RunContext", work: IterationWork) -> None:
        et, st, loop = run.settings.energy_training, run.state, run.settings.loop
        iteration = st.iteration + 1
        bar = tqdm(range(et.epochs_of(iteration)), desc=f"iteration {iteration}: training by energy", leave=False, disable=not run.progress)
        if run.trainer.compiling:
            bar.set_postfix_str("compiling the flow's training step (once per process, tens of seconds)")
        for epoch in bar:
            lr = et.lr_at(iteration, epoch, st.epochs_done, loop.max_iterations)
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            clip = et.clip_at(epoch, st.epochs_done)
            accumulate = st.epochs_done >= run.settings.labels.accumulate_from_epoch
            st.epochs_done += 1
            for entries in run.dataset.epoch_batches(run.rng, et.batch_size, et.replay_fraction):
                result = run.trainer.step(torch.as_tensor(run.dataset.entry_s(entries)), run.torch_gen, clip)
                run.dataset.record(entries, result.log_w, accumulate)
                st.visited += len(entries)
                st.computed += result.n_computed
                st.skipped_batches += int(result.skipped)
                if not result.skipped:
                    bar.set_postfix(loss=f"{result.loss:.3f}", refresh=False)
        st.iteration = iteration


class Labels:
    """Free-energy labels F(s) (kT) of the training points by importance sampling (``labels`` settings)."""

    name = "labels"

    def __call__(self, run: "RunContext", work: IterationWork) -> None:
        work.groups, work.labels = run.settings.labels.labels(run.dataset)


class FitPMF:
    """The ensemble of MLPs fitted to the labels (from scratch, or warm from the previous fit after the first)."""

    name = "fit_pmf"

    def __call__(self, run: "RunContext", work: IterationWork) -> None:
        ens = run.settings.ensemble
        warm = ens.warm_start and bool(run.state.history)  # the run's first fit starts from scratch
        s, labels, weights = run.settings.labels.fit_rows(run.dataset.point_s[work.groups], work.labels, run.cg_system.cg_periodic)
        work.n_fit_rows = len(labels)
        run.ensemble.fit(s, labels, ens.fit_epochs(warm), ens.batch_size, ens.lr, ens.strategy, ens.init, run.torch_gen, ens.optimizer,
                         ens.precision, ens.lbfgs_groups, warm_start=warm, weights=weights)


class Score:
    """The PMF on the scoring grid (the mean of the fits the run averages, ``ensemble.average_fraction``), its forward
    KLD against the reference, the convergence signals (those of the latest fit, which the search uses): the
    iteration's record; then the loop's limits may end the run."""

    name = "score"

    def __call__(self, run: "RunContext", work: IterationWork) -> None:
        st, metrics = run.state, run.settings.metrics
        at = score_points(metrics, run.cg_system.cg_dim, run.grid)
        mean, std = run.ensemble.predict(at) if at is not None else (np.zeros(0), np.zeros(0))
        run.fits.add(st.energy_evaluations, run.ensemble, mean, std)
        mean, std = run.fits.grid_mean_std()  # the run's PMF: the fits of the last average_fraction of its evaluations
        kld = forward_kld(run.grid.p_reference, mean) if run.grid is not None else None
        points = run.dataset.point_s[work.groups]
        label_mean, label_std = run.ensemble.predict(points)
        previous = st.history[-1] if st.history else None
        signals = convergence_signals(run.dataset, run.settings.labels, points, label_mean, label_std, previous)
        st.append(IterationRecord(
            iteration=st.iteration, energy_evaluations=st.energy_evaluations, energy_evaluations_computed=st.energy_evaluations_computed,
            forward_kld=kld, signals=signals, n_cg_points=int(len(run.dataset.point_s)), n_labels=int(len(work.labels)),
            n_fit_rows=work.n_fit_rows,
            skipped_batches=st.skipped_batches, mean=np.asarray(mean), std=np.asarray(std), label_points=points,
            label_iteration=run.dataset.point_iteration[work.groups], labels=np.asarray(work.labels), label_mean=np.asarray(label_mean),
        ))
        limit = run.settings.loop.limit_reached(st.iteration, kld, st.history, wall_s=st.wall_s + time.perf_counter() - work.started,
                                               evaluations=st.energy_evaluations)
        if limit:
            st.finished, st.stop_reason = True, limit


class Search:
    """New candidate CG points where the ensemble is uncertain (``search`` settings): chains stopped at the
    uncertainty threshold, or the final states of uncertainty-weighted chains; a failed search ends the run."""

    name = "search"

    def __call__(self, run: "RunContext", work: IterationWork) -> None:
        sc = run.settings.search
        labelled = run.state.history[-1].label_points
        if isinstance(sc.acquisition, UncertaintyWeighted):
            start = labelled[run.rng.integers(len(labelled), size=sc.n_chains)]
            result = uncertainty_weighted_search(run.ensemble, torch.as_tensor(start), sc.acquisition.weighted_steps, sc.step_size, run.torch_gen,
                                                 run.cg_system.cg_periodic, bounds=sc.bounds, precision=run.settings.ensemble.precision)
        else:
            result = self.stop_at_uncertainty(run, run.state.search_start)
        steps = result.n_steps
        if not result.success and sc.restart_from_data:
            result = self.stop_at_uncertainty(run, labelled[run.rng.integers(len(labelled), size=sc.n_chains)])
            steps += result.n_steps
        run.state.history[-1].mc_steps = steps
        if result.success:
            work.candidates = result.points.numpy()
            return
        gaps = self.coverage_gaps(run, labelled) if sc.coverage_check else np.zeros((0, run.cg_system.cg_dim))
        if len(gaps):
            work.candidates = gaps
        else:
            run.state.finished, run.state.stop_reason = True, sc.failure_reason()

    @staticmethod
    def coverage_gaps(run: "RunContext", labelled: np.ndarray) -> np.ndarray:
        """Up to ``n_candidates`` probable points of the scoring grid that no label within the spreading width supports
        (none for more than two CG coordinates without a reference grid)."""
        at = score_points(run.settings.metrics, run.cg_system.cg_dim, run.grid)
        if at is None:
            return np.zeros((0, run.cg_system.cg_dim))
        mean = run.state.history[-1].mean if len(run.state.history[-1].mean) == len(at) else run.ensemble.predict(at)[0]
        gaps = coverage_gaps(at, mean, labelled, run.settings.spreading.width, periodic=run.cg_system.cg_periodic)
        return np.asarray(at)[gaps[: run.settings.search.n_candidates]]

    @staticmethod
    def stop_at_uncertainty(run: "RunContext", seeds: np.ndarray) -> UncertaintySearchResult:
        """Chains from ``seeds`` (cycled to ``n_chains``) on the ensemble mean until enough stop where std > threshold."""
        sc = run.settings.search
        start = seeds[np.arange(sc.n_chains) % len(seeds)]
        return sc.backend.search(run.ensemble, run.cg_system, start, sc.n_candidates, sc.std_threshold, sc.min_steps, sc.max_steps, run.rng,
                                 run.torch_gen, sc.bounds, run.settings.ensemble.precision, run.settings.energy.platform)


class Spread:
    """The ``n_new_points`` most diverse candidates become centres; ``spreading`` puts new CG points about each,
    added to the dataset; the next search starts at the centres (the paper)."""

    name = "spread"

    def __call__(self, run: "RunContext", work: IterationWork) -> None:
        sc, ds = run.settings.search, run.settings.dataset
        periodic = run.cg_system.cg_periodic
        found = work.candidates
        centres = found[farthest_point_selection(found, sc.n_new_points, run.rng, periodic=periodic)]
        points = run.settings.spreading.spread(centres, run.rng, periodic)
        run.dataset.add_points(points, run.state.iteration, run.rng, ds.train_fraction, ds.copies)
        run.state.search_start = centres
        run.state.history[-1].new_centres = centres


#: an iteration's stages, in order; search and spread run only while the run goes on and its design searches
STAGES = (TrainByEnergy(), Labels(), FitPMF(), Score(), Search(), Spread())
SEARCH_STAGES = ("search", "spread")
