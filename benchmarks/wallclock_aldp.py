"""Benchmark: wall clock of the aldp-fast recipe to 5e6 energy evaluations, one run at a time on the whole machine.

    python benchmarks/wallclock_aldp.py --launch --seeds 0 1 2 --runs runs/wallclock [--set KEY=VALUE ...]
    python benchmarks/wallclock_aldp.py --seeds 0 1 2 --runs runs/wallclock            (summarise finished runs)

``--launch`` runs ``cgflow run aldp-fast --seed S --set loop.max_iterations=108 --set loop.stop_kld=null --set loop.stable_ratio=null`` for each
seed in turn (108 iterations reach 5,013,200 evaluations), each in its own process that pins itself as a user's run
does (the flow on one core, OpenMM workers and half the ensemble's member groups on the other); a run that is
already there is resumed (``--resume``), one that has reached 5e6 is left alone. Nothing else should run meanwhile.

``--baseline KIND=DIR`` (KIND md, metad or opes; a ``cgflow baseline`` output folder of alanine dipeptide) adds
the wall-clock comparison: the wall seconds after which each AL seed's forward KLD stays at or below 2e-3, 1.5e-3
and 1.2e-3 (every later iteration too: an AL run's KLD goes up and down by tens of %), and each baseline's, its
steps from which its curve (rescored against the packaged reference) stays there, divided by its steps/s on one
core; the speedup is their ratio (a lower bound where the baseline is not there yet). The first crossings are
reported beside them. With ``--probe``, each
baseline kind's steps/s is measured in this same benchmark run (``--probe-steps`` steps of ``cgflow baseline KIND
aldp``, two at a time, one pinned core each), so that the comparison does not mix machines or days; without it,
each baseline run's own recorded steps/s is used.

The summary reads each run's ``metrics.json`` (wall time per iteration includes its checkpoint write) and writes
``benchmarks/results/wallclock_aldp.json``: ``seeds``, ``wall_s_to_5e6`` (per seed, the run's wall time interpolated to
5e6 evaluations), ``kld_at_5e6`` and ``kld_at_1e6`` (per seed, log-log interpolation between iterations, as
``aldp_efficiency.py``), ``iteration_wall_s_at_2k_labels`` and ``iteration_wall_s_at_40k_labels`` (per seed: the wall
time of the iteration that fits 2,000 labels, and of the first to fit >= 40,000), stage means, and the targets of
issue 32. It copies each run's metrics.json to ``benchmarks/results/aldp_runs/<name>-seed<S>/``.

``--average-fraction F`` scores runs recorded without averaging as the same runs with ``ensemble.average_fraction``
= F (exact: averaging changes nothing a run does; :func:`pmf_averaging.averaged_metrics` reads their checkpoints),
and the copied metrics.json is the rescored one (its ``forward_kld_latest_fit`` the recorded KLD).

``--kept`` summarises the runs already kept under ``results/aldp_runs/<name>-seed<S>/`` instead (as they were
kept: recorded or rescored), so that the comparison can be redone, e.g. with a new baseline, after the run
folders and their checkpoints are gone.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from curves import first_reach, kld_at, stays_below
from pmf_averaging import averaged_metrics

ITERATIONS_TO_5E6 = 108
KLD_THRESHOLDS = (2e-3, 1.5e-3, 1.2e-3)
TARGETS = {"wall_s_to_5e6_max": 4500.0, "iteration_ratio_max": 1.5, "kld_at_5e6_mean_max": 1.2e-3, "kld_at_1e6_mean_max": 2.4e-3}


def at_evaluations(rows: List[Dict], x: float, key: str) -> Optional[float]:
    """``key`` at ``x`` energy evaluations: linear interpolation between the iterations around it (None outside)."""
    evaluations = [r["energy_evaluations"] for r in rows]
    return float(np.interp(x, evaluations, [r[key] for r in rows])) if rows and evaluations[0] <= x <= evaluations[-1] else None


def kld_at_evaluations(rows: List[Dict], x: float) -> Optional[float]:
    return kld_at([r["energy_evaluations"] for r in rows], [r["forward_kld"] for r in rows], x)


def iteration_wall(rows: List[Dict], k: int) -> float:
    """Wall seconds of iteration ``rows[k]`` (from the end of the one before; the first from the run's start)."""
    return rows[k]["wall_s"] - (rows[k - 1]["wall_s"] if k else 0.0)


def summarise(metrics: Dict) -> Dict:
    """The benchmark's figures of one run's metrics (a ``metrics.json`` dict)."""
    rows = metrics["iterations"]
    at_2k = next((k for k, r in enumerate(rows) if r["n_labels"] >= 2000), None)
    at_40k = next((k for k, r in enumerate(rows) if r["n_labels"] >= 40_000), None)
    late = [k for k, r in enumerate(rows) if r["n_labels"] >= 40_000]
    stages = {}
    for name, picks in (("at_2k_labels", [at_2k] if at_2k is not None else []), ("at_40k_labels_and_later", late)):
        keys = sorted({key for k in picks for key in rows[k].get("stage_wall_s", {})})
        stages[name] = {key: float(np.mean([rows[k]["stage_wall_s"].get(key, 0.0) for k in picks])) for key in keys} if picks else None
    return {
        "iterations": len(rows), "energy_evaluations": rows[-1]["energy_evaluations"], "n_labels": rows[-1]["n_labels"],
        "n_fit_rows": rows[-1].get("n_fit_rows"), "first_iteration_wall_s": rows[0]["wall_s"],
        "wall_s_to_5e6": at_evaluations(rows, 5e6, "wall_s"), "kld_at_5e6": kld_at_evaluations(rows, 5e6),
        "kld_at_1e6": kld_at_evaluations(rows, 1e6),
        "iteration_wall_s_at_2k_labels": iteration_wall(rows, at_2k) if at_2k is not None else None,
        "iteration_wall_s_at_40k_labels": iteration_wall(rows, at_40k) if at_40k is not None else None,
        "mean_iteration_wall_s_from_40k_labels": float(np.mean([iteration_wall(rows, k) for k in late])) if late else None,
        "stage_wall_s": stages, "cell_width": metrics["config"]["labels"].get("cell_width"),
    }


def launch(seed: int, runs: Path, overrides: List[str]) -> None:
    out = runs / f"seed{seed}"
    if (out / "metrics.json").is_file():
        rows = json.loads((out / "metrics.json").read_text())["iterations"]
        if rows and rows[-1]["energy_evaluations"] >= 5e6:
            print(f"seed {seed}: already at {rows[-1]['energy_evaluations']:,} evaluations", flush=True)
            return
    command = [sys.executable, "-m", "openmm_cgflow.cli", "run", "aldp-fast", "--seed", str(seed), "--out", str(out), "--quiet",
               "--set", f"loop.max_iterations={ITERATIONS_TO_5E6}", "--set", "loop.stop_kld=null", "--set", "loop.stable_ratio=null"]
    for text in overrides:
        command += ["--set", text]
    if (out / "checkpoint.pt").is_file():
        command.append("--resume")
    print("running:", " ".join(command[1:]), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    print(f"seed {seed}: process wall {time.perf_counter() - start:.0f} s", flush=True)


def baseline_curve(kind: str, folder: Path, p_reference: np.ndarray) -> List[Dict[str, float]]:
    """KLD against MD steps of a baseline run, rescored against ``p_reference``."""
    from aldp_efficiency import md_curve, metad_curve

    if kind == "md":
        return md_curve(folder, p_reference)
    if kind == "metad":
        return metad_curve(folder, p_reference)
    from openmm_cgflow.scoring.kld import forward_kld

    with np.load(folder / "opes_snapshots.npz") as data:
        return [{"md_steps": int(s), "forward_kld": forward_kld(p_reference, F.astype(np.float64))} for s, F in zip(data["steps"], data["free_energy_kT"])]


def recorded_steps_per_s(kind: str, folder: Path) -> float:
    name = {"md": "md_baseline.json", "metad": "metad_baseline.json", "opes": "opes_baseline.json"}[kind]
    return float(json.loads((folder / name).read_text())["steps_per_s"])


def protocol_flags(kind: str, folder: Path) -> List[str]:
    """The ``cgflow baseline`` flags that repeat the protocol a baseline run recorded (none for plain MD)."""
    if kind == "md":
        return []
    name = {"metad": "metad_baseline.json", "opes": "opes_baseline.json"}[kind]
    p = json.loads((folder / name).read_text())["protocol"]
    flags = ["--deposit-every", p["deposit_every"], "--friction", p["friction_per_ps"]]
    if kind == "metad":
        return flags + ["--bias-factor", p["bias_factor"], "--height", p["height_kT"], "--width", p["width"]]
    flags += ["--barrier", p["barrier_kT"], "--variance-every", p["variance_every"]]
    flags += ["--bias-factor", p["bias_factor"]] if p["bias_factor"] else []
    flags += [] if p["adaptive_variance"] else ["--fixed-width", "--width", p["width"]]
    return flags + (["--explore"] if p["explore"] else []) + (["--correct-smoothing"] if p["correct_smoothing"] else [])


def probe_steps_per_s(kinds: Dict[str, List[str]], steps: int, work: Path, cores: Sequence[int] = (0, 1)) -> Dict[str, float]:
    """Each baseline kind's MD steps/s on one pinned core, measured now with its flags (``kinds``: kind -> flags):
    ``steps`` steps, one kind per core of ``cores`` at a time."""
    from launching import cgflow, wait

    import tempfile

    work.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="probe-", dir=work))  # a fresh folder: a baseline never overwrites one
    speeds, queue = {}, list(kinds)
    while queue:
        batch = [(kind, folder / kind) for kind in queue[:len(cores)]]
        queue = queue[len(cores):]
        wait(*[cgflow("baseline", kind, "aldp", "--steps", steps, "--seed", 0, "--out", out, "--quiet", *kinds[kind], core=core)
               for core, (kind, out) in zip(cores, batch)])
        for kind, out in batch:
            speeds[kind] = recorded_steps_per_s(kind, out)
    return speeds


def costs_klds(curve: List[Dict[str, float]], key: str) -> Tuple[List[float], List[float]]:
    """A curve of ``{key: cost, "forward_kld": kld}`` points as (costs, klds)."""
    return [point[key] for point in curve], [point["forward_kld"] for point in curve]


def al_points(rows: List[Dict]) -> List[Dict[str, float]]:
    return [{"wall_s": r["wall_s"], "forward_kld": r["forward_kld"]} for r in rows if r.get("forward_kld")]


def wall_clock_comparison(per_seed_rows: Dict[int, List[Dict]], baselines: List[Tuple[str, Path]], speeds: Dict[str, float]) -> Dict:
    """Per KLD threshold: each AL seed's wall seconds, each baseline run's (steps / steps/s on one core), speedups."""
    from openmm_cgflow.scoring.grid import load_reference
    from openmm_cgflow.systems.alanine_dipeptide import packaged_reference_path

    p_reference = load_reference(packaged_reference_path()).probabilities.ravel()
    curves = {f"{kind} {folder.name}": (kind, baseline_curve(kind, folder, p_reference), speeds.get(kind) or recorded_steps_per_s(kind, folder))
              for kind, folder in baselines}
    points = {str(seed): al_points(rows) for seed, rows in per_seed_rows.items()}
    table = {}
    for kld in KLD_THRESHOLDS:
        al = {seed: stays_below(*costs_klds(curve, "wall_s"), kld) for seed, curve in points.items()}
        first = {seed: first_reach(*costs_klds(curve, "wall_s"), kld) for seed, curve in points.items()}
        reached = [w for w in al.values() if w is not None]
        al_mean = float(np.mean(reached)) if len(reached) == len(al) and reached else None
        entries = {}
        for name, (kind, curve, speed) in curves.items():
            steps, first_steps = stays_below(*costs_klds(curve, "md_steps"), kld), first_reach(*costs_klds(curve, "md_steps"), kld)
            wall = steps / speed if steps is not None else None
            last = curve[-1]["md_steps"] / speed
            entries[name] = {"steps": steps, "steps_first_crossing": first_steps, "steps_per_s": speed, "wall_s": wall, "wall_s_so_far": last,
                             "speedup": wall / al_mean if wall is not None and al_mean else None,
                             "speedup_lower_bound": last / al_mean if wall is None and al_mean else None}
        table[f"{kld:g}"] = {"al_wall_s": al, "al_wall_s_first_crossing": first, "al_wall_s_mean": al_mean, "baselines": entries}
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", type=Path, default=Path("runs/wallclock"))
    parser.add_argument("--launch", action="store_true")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--name", default="aldp-fast-wallclock", help="result name under benchmarks/results/aldp_runs/")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "wallclock_aldp.json")
    parser.add_argument("--baseline", action="append", default=[], metavar="KIND=DIR", help="md|metad|opes=DIR of an ALDP baseline run")
    parser.add_argument("--probe", action="store_true", help="measure each baseline kind's steps/s now, on this machine")
    parser.add_argument("--probe-steps", type=int, default=200_000)
    parser.add_argument("--average-fraction", type=float, default=None,
                        help="score runs recorded without averaging as if run with ensemble.average_fraction = this (from their checkpoints)")
    parser.add_argument("--kept", action="store_true", help="summarise the runs kept under results/aldp_runs/NAME-seedS (no --runs folders)")
    parser.add_argument("--probe-cores", type=int, nargs="+", default=[0, 1], help="cores the probe runs on, one kind per core at a time")
    args = parser.parse_args()
    if args.kept and (args.launch or args.average_fraction is not None):
        parser.error("--kept reads the runs as they were kept: it takes neither --launch nor --average-fraction")
    if args.launch:
        for seed in args.seeds:
            launch(seed, args.runs, args.overrides)
    per_seed, metrics = {}, {}
    for seed in args.seeds:
        run = args.runs / f"seed{seed}"
        kept = Path(__file__).parent / "results" / "aldp_runs" / f"{args.name}-seed{seed}"
        if args.kept:
            if not (kept / "metrics.json").is_file():
                raise SystemExit(f"--kept: no {kept / 'metrics.json'}")
            metrics[seed] = json.loads((kept / "metrics.json").read_text())
            per_seed[seed] = summarise(metrics[seed])
        elif (run / "metrics.json").is_file():
            metrics[seed] = averaged_metrics(run, args.average_fraction) if args.average_fraction is not None else json.loads((run / "metrics.json").read_text())
            per_seed[seed] = summarise(metrics[seed])
            kept.mkdir(parents=True, exist_ok=True)
            rescored = "rescored" in metrics[seed]
            (kept / "metrics.json").write_text(json.dumps(metrics[seed], indent=1) if rescored else (run / "metrics.json").read_text())

    def column(key):
        return [per_seed[s][key] for s in per_seed]

    def mean(values):
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    two, forty = mean(column("iteration_wall_s_at_2k_labels")), mean(column("iteration_wall_s_at_40k_labels"))
    result = {
        "benchmark": "wallclock_aldp", "config": "aldp-fast", "overrides": args.overrides, "rescored_average_fraction": args.average_fraction,
        "kept_runs": f"results/aldp_runs/{args.name}-seed<S>" if args.kept else None,
        "rescored": {str(s): m["rescored"] for s, m in metrics.items() if "rescored" in m} or None,
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "seeds": list(per_seed), "wall_s_to_5e6": column("wall_s_to_5e6"), "kld_at_5e6": column("kld_at_5e6"),
        "kld_at_1e6": column("kld_at_1e6"), "iteration_wall_s_at_2k_labels": column("iteration_wall_s_at_2k_labels"),
        "iteration_wall_s_at_40k_labels": column("iteration_wall_s_at_40k_labels"),
        "means": {"wall_s_to_5e6": mean(column("wall_s_to_5e6")), "kld_at_5e6": mean(column("kld_at_5e6")),
                  "kld_at_1e6": mean(column("kld_at_1e6")), "iteration_wall_s_at_2k_labels": two, "iteration_wall_s_at_40k_labels": forty,
                  "iteration_ratio_40k_to_2k": forty / two if two and forty else None},
        "targets": TARGETS, "runs": {str(s): v for s, v in per_seed.items()},
    }
    if args.baseline:
        baselines = [(text.split("=", 1)[0], Path(text.split("=", 1)[1])) for text in args.baseline]
        kinds = {kind: protocol_flags(kind, folder) for kind, folder in reversed(baselines)}  # each kind's first run's protocol
        speeds = probe_steps_per_s(dict(sorted(kinds.items())), args.probe_steps, args.runs, args.probe_cores) if args.probe else {}
        rows = {seed: metrics[seed]["iterations"] for seed in per_seed}
        result["baseline_steps_per_s_probe"] = speeds or None
        result["wall_clock"] = wall_clock_comparison(rows, baselines, speeds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{'seed':>5}{'iterations':>11}{'evaluations':>13}{'wall to 5e6':>13}{'KLD 1e6':>10}{'KLD 5e6':>10}{'it@2k s':>9}{'it@40k s':>10}")
    for seed, r in per_seed.items():
        def fmt(v, spec):
            return format(v, spec) if v is not None else "-"
        print(f"{seed:>5}{r['iterations']:>11}{r['energy_evaluations']:>13,}{fmt(r['wall_s_to_5e6'], '>13.0f')}{fmt(r['kld_at_1e6'], '>10.2e')}"
              f"{fmt(r['kld_at_5e6'], '>10.2e')}{fmt(r['iteration_wall_s_at_2k_labels'], '>9.1f')}{fmt(r['iteration_wall_s_at_40k_labels'], '>10.1f')}")
    for kld, entry in result.get("wall_clock", {}).items():
        mean = entry["al_wall_s_mean"]
        print(f"KLD {kld}: AL wall s {', '.join(f'{w:.0f}' if w else '-' for w in entry['al_wall_s'].values())} (mean {mean:.0f})" if mean else
              f"KLD {kld}: AL wall s {entry['al_wall_s']}")
        for name, b in entry["baselines"].items():
            speed = f"{b['speedup']:.1f}x" if b["speedup"] else (f"> {b['speedup_lower_bound']:.1f}x" if b["speedup_lower_bound"] else "-")
            wall = f"{b['wall_s']:.0f}" if b["wall_s"] else f"> {b['wall_s_so_far']:.0f}"
            print(f"    {name:<40} {b['steps_per_s']:>7.0f} steps/s  wall s {wall:>8}  AL speedup {speed}")
    print("means:", {k: (round(v, 6) if isinstance(v, float) else v) for k, v in result["means"].items()})
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
