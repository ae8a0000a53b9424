"""The active-learning driver (SPEC §7): pre-train, then iterate the stages of :mod:`.stages` {train by energy,
labels, fit the PMF, score, search, spread}, checkpointing atomically after every iteration so a killed run resumes
exactly. Counters and records: :mod:`.state`; settings: :mod:`.settings`; outputs: :mod:`.outputs`."""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Union

from tqdm.auto import tqdm

from ..errors import InterfaceError
from . import outputs
from .checkpoint import CHECKPOINT_NAME, changed_keys, read_run_checkpoint, write_run_checkpoint
from .context import RunContext
from .settings import RunSettings
from .stages import SEARCH_STAGES, STAGES, IterationWork, Stage, StageTiming

_LOG = logging.getLogger("openmm_cgflow")

#: files and folders a run writes into its output directory (``overwrite=True`` removes exactly these)
RUN_OUTPUTS = (CHECKPOINT_NAME,) + outputs.OUTPUT_FILES


class ActiveLearningRun:
    """One active-learning run writing into ``out_dir``.

    ``settings``: :class:`~openmm_cgflow.active_learning.settings.RunSettings`, or a config validated by
    :func:`openmm_cgflow.config.load_config`. ``run()`` starts from scratch (refusing a non-empty ``out_dir``) or,
    with ``resume=True``, continues from ``out_dir/checkpoint.pt``; settings that differ only in the stopping limits
    (``loop.max_iterations``, ``loop.stop_kld``) extend the run. ``callbacks`` are called with a
    :class:`~openmm_cgflow.active_learning.stages.StageTiming` after every stage and every checkpoint write.
    """

    def __init__(self, settings: Union[RunSettings, Mapping[str, Any]], out_dir: Path, progress: bool = True,
                 callbacks: Sequence[Callable[[StageTiming], None]] = (), stages: Sequence[Stage] = STAGES):
        self.settings = settings if isinstance(settings, RunSettings) else RunSettings.from_config(settings)
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.callbacks = list(callbacks)
        self.stages = list(stages)
        self.checkpoint_path = self.out_dir / CHECKPOINT_NAME
        self.context: Optional[RunContext] = None
        self._bar = None  # the iteration progress bar while run() goes on (it names the stage under way)

    @property
    def config(self) -> Dict[str, Any]:
        """The run's config as a dict (what its checkpoint and metrics store)."""
        return self.settings.to_config()

    # ------------------------------------------------------------------ driver
    def run(self, resume: bool = False, overwrite: bool = False) -> Dict[str, Any]:
        """Run (or resume) to the end; returns the metrics dict also written to ``metrics.json``."""
        self.check_output_dir(resume, overwrite)
        if resume and not self.checkpoint_path.is_file():
            raise FileNotFoundError(f"no checkpoint to resume from: {self.checkpoint_path}")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._resume() if resume else self._start()
            run = self.context
            bar = tqdm(total=self.settings.loop.max_iterations, initial=run.state.iteration, desc="active learning", disable=not self.progress)
            self._bar = bar
            while not run.state.finished:
                self.iterate()
                self._save()
                outputs.write_metrics(self.out_dir, self.settings, run.state)
                last = run.state.history[-1]
                bar.update(1)
                if last.forward_kld is not None:
                    bar.set_postfix(kld=f"{last.forward_kld:.2e}", evals=last.energy_evaluations)
                else:
                    bar.set_postfix(std=f"{last.signals.std_visited_max:.2f}", evals=last.energy_evaluations)
            bar.close()
            outputs.write_metrics(self.out_dir, self.settings, run.state)
            outputs.export_models(run.flow, run.pmf_ensemble(), run.cg_system, self.out_dir / "models")
            outputs.plot_run(self.out_dir, self.settings, run.cg_system, run.grid, run.state.history)
            return outputs.metrics(self.settings, run.state)
        finally:
            if self.context is not None:
                self.context.oracle.close()

    def iterate(self) -> None:
        """One iteration: every stage in turn (search and spread only while the run goes on and its design
        searches), each timed."""
        run, t0 = self.context, time.perf_counter()
        work, timings = IterationWork(), {}
        for stage in self.stages:
            if stage.name in SEARCH_STAGES and (run.state.finished or not run.searches):
                continue
            if self._bar is not None:
                self._bar.set_description(f"active learning ({stage.name.replace('_', ' ')})")
            start = time.perf_counter()
            stage(run, work)
            timings[stage.name] = time.perf_counter() - start
            self._report(run.state.iteration, stage.name, timings[stage.name])
        run.state.wall_s += time.perf_counter() - t0
        record = run.state.history[-1]
        record.wall_s, record.stage_wall_s = run.state.wall_s, timings

    def _report(self, iteration: int, stage: str, seconds: float) -> None:
        for callback in self.callbacks:
            callback(StageTiming(iteration, stage, seconds))

    def _start(self) -> None:
        t0 = time.perf_counter()
        self.context = RunContext.build(self.settings, self.progress)
        self.context.start()
        self.context.state.wall_s = time.perf_counter() - t0
        self._save()

    def _resume(self) -> None:
        checkpoint = read_run_checkpoint(self.checkpoint_path)
        differences = changed_keys(self.checkpoint_path, checkpoint["config"], self.settings)
        if differences:
            stored, now = RunSettings.from_config(checkpoint["config"]), self.settings
            changes = [f"{key} {_setting(stored, key)} -> {_setting(now, key)}" for key in differences]
            _LOG.warning(f"note: resuming {self.checkpoint_path} with {', '.join(changes)}")
        self.context = RunContext.build(self.settings, self.progress)
        self.context.restore(checkpoint, self.checkpoint_path)
        if any(key.startswith("loop.") for key in differences):
            self._reopen_if_extended()

    def _reopen_if_extended(self) -> None:
        """Continue a run that stopped at its old loop limits when the resumed settings moved them: the search that
        the stop skipped runs now, from the same generator states, so the extended run continues exactly as a
        run planned with the new limits from the start would have."""
        run, st = self.context, self.context.state
        if (not st.finished or st.stop_reason == self.settings.search.failure_reason()
                or self.settings.loop.limit_reached(st.iteration, st.history[-1].forward_kld, st.history, wall_s=st.wall_s,
                                                    evaluations=st.energy_evaluations)):
            return
        st.finished, st.stop_reason = False, ""
        if run.searches:
            work = IterationWork()
            for stage in self.stages:
                if stage.name in SEARCH_STAGES and not st.finished:
                    stage(run, work)

    def _save(self) -> None:
        """Write the checkpoint; its time counts in the run's wall time (from the next checkpoint on: a file cannot
        hold the time it takes to write itself) and in the iteration's ``stage_wall_s``."""
        start = time.perf_counter()
        write_run_checkpoint(self.checkpoint_path, self.context)
        seconds = time.perf_counter() - start
        state = self.context.state
        state.wall_s += seconds
        if state.history:
            state.history[-1].stage_wall_s["checkpoint"] = seconds
            state.history[-1].wall_s = state.wall_s
        self._report(state.iteration, "checkpoint", seconds)

    # ------------------------------------------------------------------ output directory
    def check_output_dir(self, resume: bool = False, overwrite: bool = False) -> None:
        """Refuse to start a new run in a non-empty ``out_dir`` (nothing there is changed) unless ``overwrite``,
        which removes this package's run outputs (:data:`RUN_OUTPUTS`) and nothing else."""
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise InterfaceError(f"{{out}} {self.out_dir} is a file, not a directory")
        if resume:
            if overwrite:
                raise InterfaceError("{resume} and {overwrite} exclude each other")
            return
        present = sorted(p.name for p in self.out_dir.iterdir()) if self.out_dir.is_dir() else []
        if not present:
            return
        if not overwrite:
            shown = ", ".join(present[:4]) + (", ..." if len(present) > 4 else "")
            raise InterfaceError(
                f"{{out}} {self.out_dir} is not empty ({shown}): use {{resume}} to continue the run there, {{overwrite}} to replace it, "
                "or another {out}"
            )
        for name in RUN_OUTPUTS:
            target = self.out_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()

    def metrics(self) -> Dict[str, Any]:
        """The run's metrics so far (as ``metrics.json``)."""
        return outputs.metrics(self.settings, self.context.state)


def _setting(settings: RunSettings, key: str):
    """The value of a ``section.key`` config key in typed settings (the keys a resume may change)."""
    section, name = key.split(".")
    return getattr(getattr(settings, section), name)
