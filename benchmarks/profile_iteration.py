"""Benchmark: where the wall time of an active-learning iteration goes, stage by stage, from the loop's own timings.

    python benchmarks/profile_iteration.py [--config muller-brown] [--set KEY=VALUE ...]          a whole run from scratch
    python benchmarks/profile_iteration.py --continue RUN_DIR [--iterations 2] [--set KEY=VALUE ...]
                                                   late iterations: a copy of RUN_DIR's checkpoint, continued

The run reports every stage to a callback (``ActiveLearningRun(callbacks=...)``, :class:`StageTiming`): train_by_energy
(split here into the OpenMM oracle's share, ``EnergyOracle.evaluation_s``, and the rest: sampling, Z-matrix, loss,
backward, optimiser), labels, fit_pmf, score, search, spread, checkpoint. Nothing in the package is patched. With
``--continue`` the copied checkpoint is resumed with ``loop.max_iterations`` raised by ``--iterations`` (and
``loop.stop_kld`` off), so the profiled iterations are those of a run with that many labels; ``--set`` overrides are
written into the copy's stored config as well, so the same state can be profiled under other settings (e.g.
``labels.cell_width``); the run directory itself is never touched.

Writes ``profile_<name>.json`` (per iteration: labels, CG points, entries, seconds by stage) and prints a table.
The process pins itself as ``cgflow run`` does (this process on one core, OpenMM workers on the others).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch  # noqa: F401  (before openmm, as everywhere in this package)

from openmm_cgflow import __version__
from openmm_cgflow.active_learning import ActiveLearningRun, StageTiming
from openmm_cgflow.active_learning.checkpoint import CHECKPOINT_NAME, read_run_checkpoint
from openmm_cgflow.config import load_config, parse_override, validate_config
from openmm_cgflow.platforms import pin_driver
from openmm_cgflow.storage import save_checkpoint

STAGES = ("oracle", "flow", "labels", "fit_pmf", "score", "search", "spread", "checkpoint")


def continued_config(run_dir: Path, iterations: int, overrides, copy_to: Path):
    """The stored config of ``run_dir``'s checkpoint, extended by ``iterations`` (stop_kld off), with overrides; the
    checkpoint is copied to ``copy_to`` with the overrides in its stored config."""
    checkpoint = read_run_checkpoint(run_dir / CHECKPOINT_NAME)
    config = copy.deepcopy(checkpoint["config"])  # the copy's stored config keeps its own loop limits: extending them reopens it
    config["loop"]["max_iterations"] = checkpoint["state"]["iteration"] + iterations
    config["loop"]["stop_kld"] = None
    for text in overrides:
        key, value = parse_override(text)
        section, leaf = key.split(".", 1)
        config[section][leaf] = value
        checkpoint["config"][section][leaf] = value
    if overrides:
        save_checkpoint(copy_to, checkpoint)
    else:
        shutil.copy(run_dir / CHECKPOINT_NAME, copy_to)
    return validate_config(config), checkpoint["state"]["iteration"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="muller-brown")
    parser.add_argument("--continue", dest="run_dir", type=Path, default=None, help="profile iterations continued from this run's checkpoint")
    parser.add_argument("--iterations", type=int, default=2, help="with --continue: iterations to profile")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default=None, help="result name (default: the config, or the run directory's name)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    pin_driver()  # as `cgflow run` does: this process on one core, OpenMM workers on the others

    rows, current = [], {}

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch) / "run"
        if args.run_dir is not None:
            work.mkdir()
            config, first = continued_config(args.run_dir, args.iterations, args.overrides, work / CHECKPOINT_NAME)
            name = args.name or args.run_dir.name
        else:
            config, first, name = load_config(args.config, args.overrides, args.seed), 0, args.name or args.config
        runner = ActiveLearningRun(config, work, progress=False)
        oracle_before = [0.0]

        def on_stage(event: StageTiming) -> None:
            if event.stage == "train_by_energy":
                oracle = runner.context.oracle.evaluation_s
                current["oracle"] = oracle - oracle_before[0]
                current["flow"] = event.wall_s - current["oracle"]
                oracle_before[0] = oracle
            elif event.stage == "checkpoint":
                if current:
                    run = runner.context
                    last = run.state.history[-1]
                    rows.append({"iteration": event.iteration, "n_labels": last.n_labels, "n_cg_points": last.n_cg_points,
                                 "n_entries": int(run.dataset.n_entries), "energy_evaluations": last.energy_evaluations,
                                 "forward_kld": last.forward_kld, "checkpoint_mb": round((work / CHECKPOINT_NAME).stat().st_size / 1e6, 2),
                                 "stages_s": {stage: round(current.get(stage, 0.0) + (event.wall_s if stage == "checkpoint" else 0.0), 3)
                                              for stage in STAGES}})
                    rows[-1]["wall_s"] = round(sum(rows[-1]["stages_s"].values()), 3)
                    current.clear()
            else:
                current[event.stage] = event.wall_s

        runner.callbacks.append(on_stage)
        start = time.perf_counter()
        metrics = runner.run(resume=args.run_dir is not None)
        total = time.perf_counter() - start

    result = {
        "benchmark": "profile_iteration", "name": name, "continued_from": str(args.run_dir) if args.run_dir else None,
        "first_iteration": first + 1, "overrides": args.overrides, "package_version": __version__,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores_available": os.cpu_count()},
        "wall_s": round(total, 3), "iterations": rows, "final_forward_kld": metrics["totals"]["final_forward_kld"],
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"profile_{name}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"{name}: {len(rows)} iterations profiled, {total:.1f} s in all (set-up, export and figures included)")
    print(f"{'it':>4}{'labels':>8}{'entries':>9}" + "".join(f"{s:>12}" for s in STAGES) + f"{'total':>9}")
    for row in rows:
        print(f"{row['iteration']:>4}{row['n_labels']:>8}{row['n_entries']:>9}" + "".join(f"{row['stages_s'][s]:>12.2f}" for s in STAGES)
              + f"{row['wall_s']:>9.1f}")
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
