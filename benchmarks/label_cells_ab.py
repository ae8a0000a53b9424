"""Should the molecule recipe merge labels into CG cells? The molecule default (``labels.cell_width: 0``, one fit
row per labelled CG point) against 64 cells per CG dihedral (``labels.cell_width = 2 pi / 64``, ``aldp-fast``'s),
three seeds each, on alanine dipeptide in vacuum at the panel's protocol: each run alone on the 2-core machine for
``--minutes`` of wall clock, no other stopping limit, scored against the vacuum reference (umbrella + mean force).

    python benchmarks/label_cells_ab.py --launch [--runs runs/cells-ab] [--minutes 30]
    python benchmarks/label_cells_ab.py [--runs runs/cells-ab] [--source none:0=runs/panel/aldp-vacuum/al-seed0/metrics.json]

``--launch`` runs the missing (arm, seed) runs one after another (a shorter finished run is resumed to the longer
limit). ``--source ARM:SEED=PATH`` reads that arm's seed from another run's metrics.json (e.g. the panel's own AL
runs, which are the ``none`` arm at 30 minutes). The summary (``benchmarks/results/label_cells_ab.json``, and a
table) gives per run: iterations and energy evaluations by each wall point, the forward KLD there (log-log
interpolated between iterations), the share of the wall spent fitting the ensemble, and the fit rows of the last
iteration, and the KLD at 1e6 and 2e6 evaluations (cells change no evaluation: accuracy apart from speed); per arm
the geometric mean KLD over seeds at each wall point and budget. A run's first iteration includes the starting MD
where its cache was empty (``first_iteration_wall_s``).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import panel
from curves import kld_at

ROOT = Path(__file__).resolve().parents[1]
MOLECULE = panel.PANEL["aldp-vacuum"]
SEEDS = (0, 1, 2)
CELL_WIDTH = 2 * math.pi / 64
#: energy budgets at which the arms are also compared (cells change no evaluation; this separates accuracy from speed)
EVALUATION_POINTS = (1e6, 2e6)
ARMS: Dict[str, Tuple[str, ...]] = {"none": (), "cells64": ("--set", f"labels.cell_width={CELL_WIDTH!r}")}


def launch(runs: Path, minutes: float, sources: Dict[Tuple[str, int], Path]) -> None:
    """Run every (arm, seed) that no ``--source`` names, one at a time."""
    for seed in SEEDS:
        for arm, overrides in ARMS.items():
            if (arm, seed) not in sources:
                panel.launch_al_run(MOLECULE.config, seed, runs / f"{arm}-seed{seed}", minutes * 60, "--set", f"metrics.reference={MOLECULE.reference}",
                                    *overrides)


def run_row(metrics_path: Path, wall_points: List[float]) -> Dict:
    """What one run did by each wall point (seconds)."""
    metrics = json.loads(metrics_path.read_text())
    iterations = metrics["iterations"]
    walls = [it["wall_s"] for it in iterations]
    klds = [it["forward_kld"] for it in iterations]
    evaluations = [it["energy_evaluations"] for it in iterations]
    source = metrics_path.resolve()
    row = {"source": str(source.relative_to(ROOT) if source.is_relative_to(ROOT) else metrics_path), "cell_width": metrics["config"]["labels"]["cell_width"], "wall_s": walls[-1], "at": {},
           "first_iteration_wall_s": walls[0],
           "kld_at_evaluations": {f"{n:g}": kld_at(evaluations, klds, n) for n in EVALUATION_POINTS}}
    for t in wall_points:
        done = [it for it in iterations if it["wall_s"] <= t]
        fit = sum(it["stage_wall_s"]["fit_pmf"] for it in done)
        row["at"][f"{t:g}"] = {"iterations": len(done), "energy_evaluations": done[-1]["energy_evaluations"] if done else 0,
                               "forward_kld": kld_at(walls, klds, t), "fit_share": fit / done[-1]["wall_s"] if done else None,
                               "fit_rows": done[-1]["n_fit_rows"] if done else None}
    return row


def geometric_mean(values: List[Optional[float]]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def summarise(runs: Path, sources: Dict[Tuple[str, int], Path], minutes: float, out: Path) -> Dict:
    wall_points = [minutes * 30.0, minutes * 60.0]
    result = {"molecule": "aldp-vacuum", "reference": str(Path(MOLECULE.reference).relative_to(ROOT)), "wall_points_s": wall_points,
              "arms": {}}
    for arm, overrides in ARMS.items():
        seeds = {}
        for seed in SEEDS:
            path = sources.get((arm, seed), runs / f"{arm}-seed{seed}" / "metrics.json")
            if path.is_file():
                seeds[seed] = run_row(path, wall_points)
        means = {f"{t:g}": geometric_mean([r["at"][f"{t:g}"]["forward_kld"] for r in seeds.values()]) for t in wall_points}
        by_evaluations = {f"{n:g}": geometric_mean([r["kld_at_evaluations"][f"{n:g}"] for r in seeds.values()]) for n in EVALUATION_POINTS}
        result["arms"][arm] = {"overrides": list(overrides[1::2]), "seeds": seeds, "geometric_mean_kld": means,
                               "geometric_mean_kld_at_evaluations": by_evaluations}
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"ALDP in vacuum, each run alone on the 2-core machine; forward KLD against {Path(MOLECULE.reference).name}")
    group = f"{'it':>3s} {'evaluations':>11s} {'KLD':>8s} {'fit %':>5s} {'rows':>6s}"
    print(f"{'':13s} | " + " | ".join(f"at {t:g} s".center(len(group)) for t in wall_points))
    print(f"{'arm':8s} {'seed':>4s} | " + " | ".join(group for _ in wall_points))
    for arm, entry in result["arms"].items():
        for seed, row in entry["seeds"].items():
            cells = []
            for t in wall_points:
                a = row["at"][f"{t:g}"]
                kld = f"{a['forward_kld']:.2e}" if a["forward_kld"] else "-"
                share = f"{100 * a['fit_share']:.0f}" if a["fit_share"] is not None else "-"
                cells.append(f"{a['iterations']:3d} {a['energy_evaluations']:11,d} {kld:>8s} {share:>5s} {a['fit_rows'] or 0:6d}")
            print(f"{arm:8s} {seed:4d} | " + " | ".join(cells))
        means = {**{f"{t:g} s": v for t, v in zip(wall_points, entry["geometric_mean_kld"].values())},
                 **{f"{n:.0e} evaluations": v for n, v in zip(EVALUATION_POINTS, entry["geometric_mean_kld_at_evaluations"].values())}}
        print(f"{arm:8s} geometric mean KLD: " + ", ".join(f"{v:.2e} at {k}" if v else f"- at {k}" for k, v in means.items()))
    print(f"wrote {out}")
    return result


def _source(text: str) -> Tuple[Tuple[str, int], Path]:
    key, path = text.split("=", 1)
    arm, seed = key.split(":")
    if arm not in ARMS:
        raise argparse.ArgumentTypeError(f"unknown arm {arm!r} (one of {', '.join(ARMS)})")
    return (arm, int(seed)), Path(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "cells-ab")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--launch", action="store_true")
    parser.add_argument("--source", type=_source, action="append", default=[], metavar="ARM:SEED=PATH")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "label_cells_ab.json")
    args = parser.parse_args()
    sources = dict(args.source)
    if args.launch:
        launch(args.runs, args.minutes, sources)
    summarise(args.runs, sources, args.minutes, args.out)


if __name__ == "__main__":
    main()
