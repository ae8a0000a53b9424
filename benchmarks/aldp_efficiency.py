"""Benchmark: forward KLD vs all-atom energy evaluations for alanine dipeptide, for active-learning and grid
runs against the MD baseline, all scored on the same reference (SPEC §9).

    python benchmarks/aldp_efficiency.py --run AL=runs/aldp [--run grid=runs/aldp-grid ...] \\
        [--md benchmarks/results/md_baseline_aldp_seed0 --md ...] [--metad benchmarks/results/metad_aldp_seed0 ...] \\
        [--reference openmm_cgflow/data/reference_aldp.npz] [--budget 1e6 --budget 5e6] [--target 1e-3] [--out benchmarks/results/aldp_efficiency]

A run directory is what `cgflow run aldp|aldp-fast|aldp-grid|aldp-small --out DIR` writes (metrics.json, and
the checkpoint whose per-iteration PMFs are rescored; a directory with metrics.json alone, as kept under
benchmarks/results/aldp_runs/, uses the run's own scores against the packaged reference); the MD baseline
is `cgflow md-baseline aldp --out DIR`. Every method's KLD is recomputed here against ``--reference`` (the runs'
own scores used the reference they ran with). Speedup = (MD steps the baseline needs to reach the method's KLD,
interpolated log-log between snapshots) / (the method's evaluations, starting MD included); "> max" when the
MD baseline has not reached that KLD yet (the speedup is then a lower bound); with several ``--md`` runs, against
each, the first being the headline. ``--budget N``: each run's KLD after N evaluations (log-log interpolation
between iterations; None past its last one) and, over the runs given (seeds of one recipe), their mean and
spread. ``--target KLD``: the evaluations each run needs to first reach that KLD and the speedups against every
baseline there; where a baseline has not reached it, also the speedup by that baseline's own convergence law
(KLD = a * steps^-b, least squares in log-log over its snapshots from ``--law-from`` steps on, default 5e6, if they
span at least a decade): an extrapolation, reported next to the measured lower bound, never instead of it.
Writes JSON and a figure, prints a table.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from curves import first_reach
from openmm_cgflow.scoring.grid import kld_of_histogram, load_reference
from openmm_cgflow.systems.alanine_dipeptide import packaged_reference_path
from openmm_cgflow.scoring.kld import forward_kld


def md_curve(md_dir: Path, p_reference: np.ndarray) -> List[Dict[str, float]]:
    data = np.load(Path(md_dir) / "md_histograms.npz")
    return [{"md_steps": int(s), "forward_kld": kld_of_histogram(p_reference, c)} for s, c in zip(data["steps"], data["counts"])]


def metad_curve(metad_dir: Path, p_reference: np.ndarray) -> List[Dict[str, float]]:
    """KLD against steps of a `cgflow baseline metad aldp --out DIR` run, rescored against ``p_reference``."""
    data = np.load(Path(metad_dir) / "metad_snapshots.npz")
    return [{"md_steps": int(s), "forward_kld": forward_kld(p_reference, F.astype(np.float64))} for s, F in zip(data["steps"], data["free_energy_kT"])]


def steps_to_reach(curve: List[Dict[str, float]], kld: float, key: str = "md_steps") -> Optional[float]:
    """MD steps (or another cost, ``key``: a run's ``energy_evaluations``) at which a curve first reaches ``kld``
    (:func:`curves.first_reach`); None if it never does."""
    return first_reach([point[key] for point in curve], [point["forward_kld"] for point in curve], kld)


def versus_baseline(curve: List[Dict[str, float]], kld: float, evaluations: float) -> Dict[str, Optional[float]]:
    """A method's ``evaluations`` for ``kld`` against a baseline ``curve``: the baseline's steps to the same KLD, the
    speedup, or (baseline not there yet) a lower bound from its last step count."""
    reached = steps_to_reach(curve, kld)
    return {"steps_to_same_kld": reached, "speedup": reached / evaluations if reached is not None else None,
            "speedup_lower_bound": None if reached is not None else curve[-1]["md_steps"] / evaluations}


def convergence_law(curve: List[Dict[str, float]], from_steps: float, min_span: float = 10.0) -> Optional[Dict[str, float]]:
    """A baseline's KLD = a * steps^-b, fitted by least squares to (log steps, log KLD) over its snapshots with at
    least ``from_steps`` steps; None with fewer than 3 of them or when they span less than a factor ``min_span`` in
    steps (a law over a short stretch of a noisy curve extrapolates to anything: metadynamics over 5e6-1.2e7 steps
    gives exponents 0.58 +- 0.41 and 0.94 +- 0.16 for two seeds). Returns a, b, the standard error of b, the range of
    steps fitted and the number of snapshots (MD's KLD falls as ~1/steps once it samples every basin)."""
    points = [(r["md_steps"], r["forward_kld"]) for r in curve if r["md_steps"] >= from_steps and r["forward_kld"] > 0]
    if len(points) < 3 or points[-1][0] < min_span * points[0][0]:
        return None
    x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    (slope, intercept), residuals = np.polyfit(x, y, 1, full=True)[:2]
    residual_sum = float(residuals[0]) if len(residuals) else 0.0
    slope_error = math.sqrt(residual_sum / (len(x) - 2) / np.sum((x - x.mean()) ** 2))
    return {"a": float(math.exp(intercept)), "b": float(-slope), "b_standard_error": slope_error,
            "from_steps": float(points[0][0]), "to_steps": float(points[-1][0]), "n_snapshots": len(points)}


def law_steps(law: Optional[Dict[str, float]], kld: float) -> Optional[float]:
    """Steps at which a :func:`convergence_law` reaches ``kld`` (None without a law or if it does not decrease)."""
    if law is None or law["b"] <= 0:
        return None
    return float((law["a"] / kld) ** (1.0 / law["b"]))


def cost_to_target(methods: Dict[str, Dict[str, object]], baselines: Dict[str, list], target: float,
                   law_from: float = 5e6) -> Dict[str, object]:
    """The evaluations each run needs to first reach KLD ``target`` (interpolated; one iteration at or below it
    counts, so single iterations' scatter matters) and :func:`versus_baseline` there for every baseline curve; for a
    baseline that has not reached ``target``, also ``speedup_by_law``: the steps its :func:`convergence_law` (fitted
    from ``law_from`` steps on) needs, over the run's evaluations (an extrapolation)."""
    reached = {name: steps_to_reach(curve, target) for name, curve in baselines.items()}
    laws = {name: convergence_law(curve, law_from) for name, curve in baselines.items()}
    extrapolated = {name: law_steps(laws[name], target) if reached[name] is None else None for name in baselines}
    per_run = {}
    for label, m in methods.items():
        evaluations = steps_to_reach(m["curve"], target, key="energy_evaluations")
        versus = None
        if evaluations is not None:
            versus = {name: versus_baseline(curve, target, evaluations) for name, curve in baselines.items()}
            for name, row in versus.items():
                row["speedup_by_law"] = extrapolated[name] / evaluations if extrapolated[name] is not None else None
        per_run[label] = {"evaluations": evaluations, "versus": versus}
    return {"baseline_steps": reached, "baseline_steps_by_law": extrapolated, "laws": laws, "per_run": per_run}


def metrics_curve(run_dir: Path, p_reference: np.ndarray) -> List[Dict[str, float]]:
    """The curve of a run kept as ``metrics.json`` only (e.g. under benchmarks/results/aldp_runs/): its own KLDs,
    valid only if it was scored against the same reference."""
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    if metrics["config"]["metrics"]["reference"] != "packaged" or not np.allclose(p_reference, load_reference(packaged_reference_path()).probabilities.ravel()):
        raise SystemExit(f"{run_dir} has no checkpoint to rescore and was not scored against --reference")
    return [{"iteration": r["iteration"], "energy_evaluations": r["energy_evaluations"],
             "energy_evaluations_computed": r["energy_evaluations_computed"], "forward_kld": r["forward_kld"],
             "forward_kld_at_run_time": r["forward_kld"]} for r in metrics["iterations"]]


def method_curve(run_dir: Path, p_reference: np.ndarray) -> List[Dict[str, float]]:
    """Per iteration: evaluations (entries visited + starting MD; also the computed count) and the KLD of the
    ensemble-mean PMF on the grid against ``p_reference``. Needs the run's checkpoint (it holds the means)."""
    from openmm_cgflow.storage import load_checkpoint

    if not (Path(run_dir) / "checkpoint.pt").is_file():
        return metrics_curve(run_dir, p_reference)
    checkpoint = load_checkpoint(Path(run_dir) / "checkpoint.pt", required=("state",))
    rows = []
    for h in checkpoint["state"]["history"]:
        rows.append({
            "iteration": h["iteration"], "energy_evaluations": h["energy_evaluations"],
            "energy_evaluations_computed": h["energy_evaluations_computed"],
            "forward_kld": forward_kld(p_reference, np.asarray(h["mean"])), "forward_kld_at_run_time": h["forward_kld"],
        })
    return rows


def kld_at_budget(methods: Dict[str, Dict[str, object]], budget: float) -> Dict[str, object]:
    """Each method's KLD after ``budget`` evaluations (log-log interpolation between its iterations; None outside
    its range), and the mean, std (ddof 1) and range over those that reach it."""
    per_run: Dict[str, Optional[float]] = {}
    for label, m in methods.items():
        curve = m["curve"]
        value = None
        for a, b in zip(curve, curve[1:]):
            if a["energy_evaluations"] <= budget <= b["energy_evaluations"]:
                t = (math.log(budget) - math.log(a["energy_evaluations"])) / (math.log(b["energy_evaluations"]) - math.log(a["energy_evaluations"]))
                value = math.exp(math.log(a["forward_kld"]) + t * (math.log(b["forward_kld"]) - math.log(a["forward_kld"])))
                break
        per_run[label] = value
    reached = np.array([v for v in per_run.values() if v is not None])
    return {"per_run": per_run, "n": int(reached.size), "mean": float(reached.mean()) if reached.size else None,
            "std": float(reached.std(ddof=1)) if reached.size > 1 else None,
            "min": float(reached.min()) if reached.size else None, "max": float(reached.max()) if reached.size else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", default=[], metavar="LABEL=DIR", help="a finished or running cgflow run")
    parser.add_argument("--md", type=Path, action="append", default=[], help="an MD baseline directory (default: seed 0's; repeatable)")
    parser.add_argument("--metad", type=Path, action="append", default=[], help="a `cgflow baseline metad aldp` run directory")
    parser.add_argument("--reference", type=Path, default=packaged_reference_path())
    parser.add_argument("--budget", type=float, action="append", default=[], help="report each run's KLD at this many evaluations")
    parser.add_argument("--target", type=float, action="append", default=[],
                        help="report the evaluations each run needs to first reach this KLD, and the speedups there")
    parser.add_argument("--law-from", type=float, default=5e6,
                        help="fit each baseline's KLD ~ steps^-b from this many steps on (for --target's extrapolated speedups)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/aldp_efficiency"))
    args = parser.parse_args()
    reference = load_reference(args.reference)
    p = reference.probabilities.ravel()
    md_dirs = args.md or [Path("benchmarks/results/md_baseline_aldp_seed0")]
    md_runs = {str(d): md_curve(d, reference.probabilities) for d in md_dirs}
    md = md_runs[str(md_dirs[0])]
    metad = {str(d): metad_curve(d, p) for d in args.metad}
    methods = {}
    for item in args.run:
        label, _, directory = item.partition("=")
        rows = method_curve(Path(directory), p)
        for row in rows:
            headline = versus_baseline(md, row["forward_kld"], row["energy_evaluations"])
            row["md_steps_to_same_kld"] = headline["steps_to_same_kld"]
            row["speedup"], row["speedup_lower_bound"] = headline["speedup"], headline["speedup_lower_bound"]
            row["md"] = {name: versus_baseline(curve, row["forward_kld"], row["energy_evaluations"]) for name, curve in md_runs.items()}
            # the same against each metadynamics run (its steps to the same KLD)
            row["metad"] = {name: versus_baseline(curve, row["forward_kld"], row["energy_evaluations"]) for name, curve in metad.items()}
        methods[label] = {"run_dir": directory, "config": json.loads((Path(directory) / "metrics.json").read_text())["config"], "curve": rows}
    baselines = {**{f"MD {Path(k).name}": v for k, v in md_runs.items()}, **{f"metad {Path(k).name}": v for k, v in metad.items()}}
    result = {
        "reference": str(args.reference), "reference_kld_between_halves": reference.provenance.get("kld_between_halves"),
        "md_baseline": {"dir": str(md_dirs[0]), "curve": md}, "md_baselines": {name: {"curve": c} for name, c in md_runs.items()},
        "budgets": {f"{b:g}": kld_at_budget(methods, b) for b in args.budget},
        "targets": {f"{t:g}": cost_to_target(methods, baselines, t, args.law_from) for t in args.target},
        "metadynamics": {name: {"curve": c} for name, c in metad.items()}, "methods": methods,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "aldp_efficiency.json").write_text(json.dumps(result, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, curve) in enumerate(md_runs.items()):
        ax.loglog([r["md_steps"] for r in curve], [r["forward_kld"] for r in curve], "k.-" if i == 0 else "k.:", label=f"MD ({Path(name).name})")
    for name, curve in metad.items():
        ax.loglog([r["md_steps"] for r in curve], [r["forward_kld"] for r in curve], ".--", label=f"metadynamics ({Path(name).name})")
    for label, m in methods.items():
        ax.loglog([r["energy_evaluations"] for r in m["curve"]], [r["forward_kld"] for r in m["curve"]], "o-", label=label)
    ax.axhline(1e-3, color="C3", ls=":", lw=1, label="target 1e-3")
    if result["reference_kld_between_halves"]:
        ax.axhline(result["reference_kld_between_halves"], color="gray", ls="--", lw=1, label="reference floor (halves)")
    ax.set_xlabel("all-atom energy evaluations (MD: steps)")
    ax.set_ylabel("forward KLD vs reference")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "aldp_efficiency.png", dpi=120)
    print(f"{'method':<12}{'iteration':>10}{'evaluations':>14}{'KLD':>11}{'MD steps same KLD':>20}{'speedup':>12}")
    for name, curve in md_runs.items():
        print(f"{'MD':<12}{'':>10}{curve[-1]['md_steps']:>14}{curve[-1]['forward_kld']:>11.3e}   ({name})")
    for name, curve in metad.items():
        print(f"{'metad':<12}{'':>10}{curve[-1]['md_steps']:>14}{curve[-1]['forward_kld']:>11.3e}   ({name})")
    for label, m in methods.items():
        for r in m["curve"]:
            speed = f"{r['speedup']:.2f}" if r["speedup"] is not None else f"> {r['speedup_lower_bound']:.1f}"
            steps = f"{r['md_steps_to_same_kld']:.3g}" if r["md_steps_to_same_kld"] is not None else "not reached"
            versus_metad = "".join(
                f"  vs metad: {v['speedup']:.2f}" if v["speedup"] is not None else f"  vs metad: > {v['speedup_lower_bound']:.1f}"
                for v in r.get("metad", {}).values()
            )
            print(f"{label:<12}{r['iteration']:>10}{r['energy_evaluations']:>14}{r['forward_kld']:>11.3e}{steps:>20}{speed:>12}{versus_metad}")
    for budget, summary in result["budgets"].items():
        per_run = "  ".join(f"{k}: {v:.3e}" if v is not None else f"{k}: -" for k, v in summary["per_run"].items())
        spread = "no run reached it" if not summary["n"] else (
            f"{summary['mean']:.3e} +- {summary['std']:.1e} (n={summary['n']}, range {summary['min']:.2e}-{summary['max']:.2e})"
            if summary["std"] is not None else f"{summary['mean']:.3e} (n=1)")
        print(f"KLD at {budget} evaluations: {spread}   [{per_run}]")
    for target, summary in result["targets"].items():
        steps = ", ".join(f"{k} {v:.3g}" if v is not None else f"{k} not reached" for k, v in summary["baseline_steps"].items())
        print(f"KLD {target} first reached (baseline steps: {steps}):")
        for k, law in summary["laws"].items():
            if law is not None and summary["baseline_steps_by_law"][k] is not None:
                print(f"  {k}: law KLD ~ steps^-{law['b']:.2f} +- {law['b_standard_error']:.2f} over {law['from_steps']:.3g}-"
                      f"{law['to_steps']:.3g} steps ({law['n_snapshots']} snapshots) reaches it at ~{summary['baseline_steps_by_law'][k]:.3g}")
        for label, r in summary["per_run"].items():
            if r["evaluations"] is None:
                print(f"  {label:<12} not reached")
                continue
            speed = ", ".join(f"{k} {v['speedup']:.1f}x" if v["speedup"] is not None else f"{k} > {v['speedup_lower_bound']:.1f}x"
                              + (f" (~{v['speedup_by_law']:.1f}x by its law)" if v["speedup_by_law"] is not None else "")
                              for k, v in r["versus"].items())
            print(f"  {label:<12} {r['evaluations']:.4g} evaluations   {speed}")


if __name__ == "__main__":
    main()
