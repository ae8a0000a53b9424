"""Benchmark: where the wall time of an active-learning run goes, phase by phase.

    python benchmarks/profile_iteration.py [--config muller-brown] [--set KEY=VALUE ...] [--out benchmarks/results] [--keep DIR]

Runs ``cgflow run CONFIG`` in this process (pinned to one core as the CLI pins itself; OpenMM workers on the others) with timers
wrapped around the loop's phases from the outside, so the package runs unchanged:

  starting_md      starting data (MD, or the cached ALDP frames)
  pretraining      training by example
  flow             training by energy without the oracle: sampling, Z-matrix, loss, backward, optimiser step
  oracle           OpenMM energies and forces (EnergyOracle.evaluate_kj, incl. the pool round trip)
  labels           free-energy labels from the stored samples
  ensemble_fit     PMF ensemble training
  scoring          ensemble prediction on the metric grid + forward KLD
  search           uncertainty search, diversity selection, spreading
  checkpoint       checkpoint + metrics.json writes
  export_plots     TorchScript export and figures at the end
  other            everything else (imports excluded; setup, bookkeeping)

Writes ``profile_<config>.json`` (per phase: seconds, share, calls; per iteration: seconds by phase) and prints a
table. Numbers are for one process on one core; the run's own metrics are unchanged by the timers.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch  # noqa: F401  (before openmm, as everywhere in this package)

from openmm_cgflow import __version__
from openmm_cgflow.active_learning import ActiveLearningRun
from openmm_cgflow.active_learning import loop as loop_module
from openmm_cgflow.config import load_config
from openmm_cgflow.energy import EnergyOracle
from openmm_cgflow.energy.oracle import pin_driver
from openmm_cgflow.pmf import PMFEnsemble

PHASES = ("starting_md", "pretraining", "flow", "oracle", "labels", "ensemble_fit", "scoring", "search", "checkpoint", "export_plots")


class PhaseTimer:
    """Exclusive wall time per phase: a phase entered inside another is subtracted from the outer one."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)
        self.iteration_seconds = []
        self._stack = []

    def wrap(self, owner, name: str, phase: str):
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            self._stack.append(0.0)
            try:
                return original(*args, **kwargs)
            finally:
                inner = self._stack.pop()
                elapsed = time.perf_counter() - start
                self.seconds[phase] += elapsed - inner
                self.calls[phase] += 1
                if self._stack:
                    self._stack[-1] += elapsed

        setattr(owner, name, timed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="muller-brown")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run in this directory (checkpoint, metrics; for rescoring) "
                        "instead of a temporary one")
    args = parser.parse_args()
    pin_driver()  # as `cgflow run` does: this process on one core, OpenMM workers on the others
    config = load_config(args.config, args.overrides, args.seed)

    timer = PhaseTimer()
    run_cls = ActiveLearningRun
    timer.wrap(run_cls, "_starting_frames", "starting_md")
    timer.wrap(loop_module, "train_by_example", "pretraining")
    timer.wrap(run_cls, "_train_by_energy", "flow")
    timer.wrap(EnergyOracle, "evaluate_kj", "oracle")
    timer.wrap(loop_module.ActiveLearningDataset, "labels", "labels")
    timer.wrap(PMFEnsemble, "fit", "ensemble_fit")
    timer.wrap(PMFEnsemble, "predict", "scoring")
    timer.wrap(run_cls, "_search_and_spread", "search")
    timer.wrap(run_cls, "_save", "checkpoint")
    timer.wrap(run_cls, "_write_metrics", "checkpoint")
    timer.wrap(run_cls, "_export_models", "export_plots")
    timer.wrap(run_cls, "_plot", "export_plots")

    previous = {}
    original_iterate = run_cls._iterate

    def iterate(self):
        original_iterate(self)
        now = dict(timer.seconds)
        timer.iteration_seconds.append({k: round(now.get(k, 0.0) - previous.get(k, 0.0), 3) for k in PHASES})
        previous.update(now)

    run_cls._iterate = iterate

    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        metrics = ActiveLearningRun(config, args.keep or Path(workdir) / "run", progress=False).run()
        total = time.perf_counter() - start
    measured = sum(timer.seconds[p] for p in PHASES)
    phases = {p: {"seconds": round(timer.seconds[p], 3), "share": round(timer.seconds[p] / total, 4), "calls": timer.calls[p]} for p in PHASES}
    phases["other"] = {"seconds": round(total - measured, 3), "share": round((total - measured) / total, 4), "calls": 0}
    totals = metrics["totals"]
    result = {
        "config": args.config, "overrides": args.overrides, "seed": args.seed, "package_version": __version__,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores_available": os.cpu_count(), "pinned_cores": 1},
        "wall_s": round(total, 3), "iterations": totals["iterations"], "energy_evaluations": totals["energy_evaluations"],
        "energy_evaluations_computed": totals["energy_evaluations_computed"], "final_forward_kld": totals["final_forward_kld"],
        "evaluations_per_s": round(totals["energy_evaluations"] / total, 1), "phases": phases, "per_iteration": timer.iteration_seconds,
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"profile_{args.config}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"{args.config}: {totals['iterations']} iterations, {totals['energy_evaluations']:,} evaluations, "
          f"forward KLD {totals['final_forward_kld']:.3e}, {total:.1f} s ({result['evaluations_per_s']:,.0f} evaluations/s)")
    print(f"{'phase':<14}{'seconds':>10}{'share':>9}{'calls':>9}")
    for name, row in sorted(phases.items(), key=lambda item: -item[1]["seconds"]):
        print(f"{name:<14}{row['seconds']:>10.2f}{100 * row['share']:>8.1f}%{row['calls']:>9d}")
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
