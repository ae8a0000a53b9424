"""Results tables and figures, generated from the committed result files under ``benchmarks/results/`` (never typed
by hand): the README's headline tables and the docs site's results page.

    python benchmarks/report.py                 print the headline tables
    python benchmarks/report.py --readme        rewrite the tables between the README's <!-- results:NAME --> markers
    python benchmarks/report.py --check         exit 1 if the README's tables differ from what the results say

``docs/hooks.py`` builds the results page and its figures with :func:`results_page` and :func:`figures` while
``mkdocs build`` runs; ``tests/test_docs.py`` runs ``--check``.

Which runs the tables show is set here (``ALDP_RUNS``, ``ALDP_BASELINES``): a study that replaces them changes these
constants and commits the runs' ``metrics.json`` under ``results/aldp_runs/``.
"""
from __future__ import annotations

import argparse
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from curves import kld_at, stays_below

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"

#: The alanine-dipeptide active-learning runs of the headline: (label, run folders under results/aldp_runs/, cores
#: of the wall times, or 0 where the runs were not timed one at a time on the whole machine).
ALDP_RUNS: Sequence[Tuple[str, Sequence[str], int]] = (
    ("active learning, `aldp-fast`", [f"aldp-fast-averaged-seed{s}" for s in (0, 1, 2)], 2),
    ("active learning, `aldp-fast`, latest fit only", [f"aldp-fast-cells64-seed{s}" for s in (0, 1, 2)], 2),
    ("active learning, `aldp-fast` before label cells", [f"aldp-fast-periodic2-groups10-seed{s}" for s in (0, 1, 2)], 0),
)
#: The baselines: (label, kind, folders under results/, timing); each ran on one pinned core. Timing "recorded": each
#: point's own wall time; "probe": steps / the kind's one-core steps/s that ``wallclock_aldp.py --probe`` measured
#: beside the AL runs (``results/wallclock_aldp.json``), for runs that shared a loaded machine for part of their time.
ALDP_BASELINES: Sequence[Tuple[str, str, Sequence[str], str]] = (
    ("plain MD", "md", ["md_baseline_aldp_seed0", "md_baseline_aldp_seed1"], "recorded"),
    ("well-tempered metadynamics, defaults (a Gaussian every 500 steps)", "metad", ["metad_aldp_seed0", "metad_aldp_seed1"], "recorded"),
    ("well-tempered metadynamics, swept (0.5 kT, 0.35 rad, every 100 steps)", "metad", ["metad100_aldp_seed0", "metad100_aldp_seed1"], "probe"),
    ("OPES (barrier 10 kT, a kernel every 100 steps)", "opes", ["opes_aldp_seed0", "opes_aldp_seed1"], "recorded"),
)
BUDGETS = (1e6, 5e6)
TARGETS = (2e-3, 1.5e-3, 1.2e-3)


@dataclass
class Curve:
    """Forward KLD against all-atom energy evaluations (MD steps for a baseline) and wall seconds of one run."""

    name: str
    evaluations: np.ndarray
    kld: np.ndarray
    wall_s: Optional[np.ndarray]  # None where the run did not record it per point

    def kld_at(self, x: float) -> Optional[float]:
        """Log-log interpolation between the points around ``x``; None outside the run."""
        return kld_at(self.evaluations, self.kld, x)

    def wall_at(self, x: float) -> Optional[float]:
        if self.wall_s is None or x < self.evaluations[0] or x > self.evaluations[-1]:
            return None
        return float(np.interp(x, self.evaluations, self.wall_s))

    def wall_stays_below(self, target: float) -> Optional[float]:
        """Wall seconds of the first point from which the KLD stays at or below ``target`` to the end of the run
        (a curve that dips below and comes back up counts from its last crossing); None if its last point is above."""
        return stays_below(self.wall_s, self.kld, target)


def al_curve(folder: str) -> Curve:
    rows = json.loads((RESULTS / "aldp_runs" / folder / "metrics.json").read_text())["iterations"]
    rows = [r for r in rows if r.get("forward_kld") is not None]
    return Curve(folder, np.array([r["energy_evaluations"] for r in rows], float), np.array([r["forward_kld"] for r in rows]),
                 np.array([r["wall_s"] for r in rows], float))


def probed_steps_per_s(kind: str) -> float:
    """The one-core steps/s of a baseline kind measured beside the AL runs (``results/wallclock_aldp.json``)."""
    return float(json.loads((RESULTS / "wallclock_aldp.json").read_text())["baseline_steps_per_s_probe"][kind])


def baseline_curve(kind: str, folder: str, timing: str = "recorded") -> Curve:
    """A baseline's curve; wall = each point's recorded wall time, or where its points carry none (or ``timing`` is
    "probe"), steps / the run's mean steps per second (the probe's)."""
    path = RESULTS / folder
    report = json.loads((path / f"{kind}_baseline.json").read_text())
    points = json.loads((path / "md_baseline_kld.json").read_text())["curve"] if kind == "md" else report["curve"]
    steps = np.array([p["md_steps"] for p in points], float)
    if timing == "probe":
        wall = steps / probed_steps_per_s(kind)
    else:
        wall = np.array([p["wall_s"] for p in points], float) if all("wall_s" in p for p in points) else steps / report["steps_per_s"]
    return Curve(folder, steps, np.array([p["forward_kld"] for p in points]), wall)


def _sci(x: Optional[float], digits: int = 1) -> str:
    if x is None:
        return "-"
    mantissa, exponent = f"{x:.{digits}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _mean_std(values: List[Optional[float]]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    if len(known) == 1:
        return _sci(known[0], 2)
    return f"{_sci(float(np.mean(known)), 2)} ± {_sci(float(np.std(known)), 1)}" + ("" if len(known) == len(values) else f" ({len(known)} of {len(values)})")


def _seconds(values: List[Optional[float]]) -> str:
    known = [v for v in values if v is not None]
    return "-" if not known else f"{np.mean(known):,.0f}"


# ------------------------------------------------------------------------------------------------------- tables
def aldp_table() -> str:
    """Alanine dipeptide: forward KLD against the packaged reference at 1e6 and 5e6 all-atom energy evaluations (MD
    steps for the baselines), and the wall seconds from which the KLD stays at or below 2e-3 and 1.5e-3, per seed."""
    head = ["| method (seeds) | cores | KLD at 1e6 evaluations | KLD at 5e6 | "
            + " | ".join(f"wall s to stay <= {_sci(t)}" for t in TARGETS) + " |", "|---|---|---|---|" + "---|" * len(TARGETS)]
    rows = []
    for label, folders, cores in ALDP_RUNS:
        rows.append(_row(f"{label} ({len(folders)})", [al_curve(f) for f in folders], cores))
    for label, kind, folders, timing in ALDP_BASELINES:
        rows.append(_row(f"{label} ({len(folders)})", [baseline_curve(kind, f, timing) for f in folders], 1))
    return "\n".join(head + rows)


def _row(label: str, curves: List[Curve], cores: int) -> str:
    at = [_mean_std([c.kld_at(b) for c in curves]) for b in BUDGETS]
    walls = []
    for target in TARGETS:
        if not cores:
            walls.append("not timed alone")
            continue
        per_seed = [c.wall_stays_below(target) for c in curves]
        walls.append(" / ".join(f"{w:,.0f}" if w is not None else f"> {c.wall_s[-1]:,.0f}" for w, c in zip(per_seed, curves)))
    return f"| {label} | {cores or '-'} | {at[0]} | {at[1]} | " + " | ".join(walls) + " |"


def muller_brown_table() -> str:
    """Müller-Brown main job: the final forward KLD against the exact PMF, energy evaluations and wall seconds."""
    report = json.loads((RESULTS / "muller_brown_al.json").read_text())
    runs = [r for r in report["runs"] if r["variant"] == "default"]
    head = ["| seed | iterations | energy evaluations | forward KLD vs the exact PMF | wall s |", "|---|---|---|---|---|"]
    rows = [f"| {r['seed']} | {r['iterations']} | {r['energy_evaluations']:,} | {_sci(r['final_forward_kld'], 2)} | {r['run_wall_s']:.0f} |"
            for r in runs]
    version = report.get("package_version", "before 0.2.0 (training batches of 8)")
    return "\n".join(head + rows + ["", f"Recorded with openmm-cgflow {version}, on a 2-core CPU."])


TABLES = {"aldp": aldp_table, "muller-brown": muller_brown_table}


# ------------------------------------------------------------------------------------------------------- docs page
def figures() -> Dict[str, bytes]:
    """PNG figures of the results page, ``{file name: bytes}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    styles = {"md": ("tab:gray", "MD"), "metad": ("tab:orange", "metadynamics"), "opes": ("tab:green", "OPES")}
    for label, folders, cores in ALDP_RUNS:
        for k, folder in enumerate(folders):
            c = al_curve(folder)
            axes[0].loglog(c.evaluations, c.kld, color="tab:blue", lw=1, label=label.replace("`", "") if k == 0 else None)
            if cores:  # wall times of runs that shared their cores would mislead
                axes[1].loglog(c.wall_s, c.kld, color="tab:blue", lw=1, label=label.replace("`", "") if k == 0 else None)
    kinds_drawn = set()
    for label, kind, folders, timing in ALDP_BASELINES:
        line = "--" if kind in kinds_drawn else "-"   # a second row of one kind (other settings): dashed
        kinds_drawn.add(kind)
        for k, folder in enumerate(folders):
            c = baseline_curve(kind, folder, timing)
            color = styles.get(kind, ("tab:green", kind))[0]
            axes[0].loglog(c.evaluations, c.kld, color=color, ls=line, lw=1, label=label if k == 0 else None)
            axes[1].loglog(c.wall_s, c.kld, color=color, ls=line, lw=1, label=label if k == 0 else None)
    axes[0].set_xlabel("all-atom energy evaluations (MD steps)")
    axes[1].set_xlabel("wall seconds (active learning: 2 cores; baselines: 1 core)")
    for ax in axes:
        ax.set_ylabel("forward KLD to the reference")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return {"aldp_kld.png": buffer.getvalue()}


def results_page() -> str:
    """The docs site's results page (Markdown; its figure is :func:`figures`'s ``aldp_kld.png``)."""
    efficiency = RESULTS / "aldp_efficiency_groups10" / "aldp_efficiency.json"
    halves = json.loads(efficiency.read_text())["reference_kld_between_halves"]
    lines = [
        "# Results",
        "",
        "<!-- generated by benchmarks/report.py from benchmarks/results/: edit the results, not this page -->",
        "",
        "Every number here is read from a result file committed under `benchmarks/results/`; the studies under",
        "`benchmarks/studies/` give the commands that made them and what was decided from them. Measured on this",
        "project's 2-core CPU machine (no GPU).",
        "",
        "## Alanine dipeptide (OBC1 implicit solvent, 300 K)",
        "",
        "Forward KLD of exp(-F) against the packaged umbrella-sampling / mean-force reference (100 x 100 bins; its two",
        f"independent halves differ by {_sci(halves, 1)}). Active learning counts every all-atom energy evaluation,",
        "its starting MD included; a baseline counts MD steps (one evaluation each).",
        "",
        aldp_table(),
        "",
        "![forward KLD against evaluations and wall clock](aldp_kld.png)",
        "",
        "Per seed, at each budget (log-log interpolation between iterations):",
        "",
    ]
    budgets = (6e5, 1e6, 1.5e6, 2e6, 3e6, 4e6, 5e6)
    curves = [(label, al_curve(f)) for label, folders, _ in ALDP_RUNS for f in folders]
    curves += [(label, baseline_curve(kind, f, timing)) for label, kind, folders, timing in ALDP_BASELINES for f in folders]
    lines += ["| run | " + " | ".join(_sci(b) for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for label, c in curves:
        lines.append(f"| {label.replace('`', '')}: {c.name} | " + " | ".join(_sci(c.kld_at(b), 2) for b in budgets) + " |")
    lines += ["", "## Müller-Brown (the main job)", "",
              "`cgflow run muller-brown`, seeds 0-2, scored against the exact PMF (numerical integral):", "",
              muller_brown_table(), ""]
    vacuum = json.loads((RESULTS / "molecule_aldp-vacuum.json").read_text())
    lines += ["## A molecule through the generic path: alanine dipeptide in vacuum", "",
              "`cgflow run aldp-vacuum` scored against well-tempered metadynamics of the same system "
              f"({', '.join(f'{s:.0e}' for s in vacuum['metad_steps'])} steps per seed):", "",
              "| iteration | evaluations | KLD vs metadynamics | ensemble std mean / max (kT) |", "|---|---|---|---|"]
    for r in vacuum["iterations"]:
        lines.append(f"| {r['iteration']} | {r['energy_evaluations']:,} | {_sci(r['forward_kld_vs_metad_reference'], 2)} | "
                     f"{r['std_visited_mean']:.2f} / {r['std_visited_max']:.2f} |")
    ace = json.loads((RESULTS / "marginals_ace-ala2-nme.json").read_text())
    lines += ["", "## Four CG dihedrals: Ace-Ala-Ala-Nme", "",
              f"`cgflow run ace-ala2-nme` ({ace['run_totals']['iterations']} iterations, {ace['run_totals']['energy_evaluations']:,} "
              f"evaluations, {ace['run_totals']['wall_s']:,.0f} s): every 2-D marginal of exp(-F) against {ace['md_steps']:,.0f} MD steps "
              f"({ace['bins']} bins per dihedral). No reference handles 4-D.", "",
              "| pair | KLD(MD ‖ run) | KLD between MD halves |", "|---|---|---|"]
    for p in ace["pairs"]:
        lines.append(f"| {p['pair']} | {p['kld_md_to_run']:.3f} | {p['kld_md_halves']:.3f} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------- README
MARKER = re.compile(r"(<!-- results:(?P<name>[a-z-]+) -->\n)(?P<body>(?:(?!<!-- ).*\n)*?)(<!-- /results -->)")


def readme_with_tables(text: str) -> str:
    return MARKER.sub(lambda m: m.group(1) + TABLES[m.group("name")]() + "\n" + m.group(4), text)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--readme", action="store_true", help="rewrite the README's tables")
    group.add_argument("--check", action="store_true", help="exit 1 if the README's tables are out of date")
    args = parser.parse_args(argv)
    if args.readme or args.check:
        text = README.read_text()
        if not MARKER.search(text):
            print("README.md has no <!-- results:NAME --> markers", file=sys.stderr)
            return 1
        updated = readme_with_tables(text)
        if args.check:
            if updated != text:
                print("README.md's results tables are out of date: run python benchmarks/report.py --readme", file=sys.stderr)
                return 1
            print("README.md's results tables are up to date")
            return 0
        README.write_text(updated)
        print("README.md's results tables rewritten")
        return 0
    for name, table in TABLES.items():
        print(f"{name}:\n{table()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
