"""Benchmark: is a run's PMF limited by its labels or by the ensemble fit? Refits a checkpoint's labels.

    python benchmarks/aldp_ensemble_fit.py RUN_DIR/checkpoint.pt [--scratch 500 2000] [--groups 2] \\
        [--clip-k K] [--warm-rounds 4] [--warm-iterations 250] [--out benchmarks/results/aldp_ensemble_fit.json]

From the run's own labels (its config's ``labels`` settings) and against its own reference (``metrics.reference``):
  labels       label minus reference free energy at each labelled CG point (nearest reference bin; the offset
               removed with the reference's weights): rms by reference-free-energy band; a floor on any fit
  checkpoint   the checkpoint's ensemble: forward KLD and rms of the fit to the labels
  scratch N    a fresh ensemble (the run's ensemble settings, seeds ``--fit-seeds``) fitted for N L-BFGS iterations,
               to every label (cell width 0) or to the labels merged in cells of each ``--cell-widths`` (labels.cell_width)
  warm k       the checkpoint's ensemble continued for another ``--warm-iterations`` per round (ensemble.warm_start)
CPU time per fit (this process; member groups on a spare core are not counted) and wall time. Writes JSON and prints
a table.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from openmm_cgflow.active_learning.dataset import ActiveLearningDataset
from openmm_cgflow.active_learning.checkpoint import read_run_checkpoint
from openmm_cgflow.active_learning.scoring import metric_grid_for_config
from openmm_cgflow.pmf import merge_in_cells
from openmm_cgflow.pmf.ensemble import PMFEnsemble
from openmm_cgflow.scoring.kld import forward_kld


def nearest_bin(s: np.ndarray, n: int, lo: float, hi: float) -> np.ndarray:
    """Index into a row-major n x n grid over [lo, hi)^2 of the bin holding each 2-D point."""
    index = np.clip(np.floor((s - lo) / (hi - lo) * n).astype(np.int64), 0, n - 1)
    return index[:, 0] * n + index[:, 1]


def label_residuals(grid, config, s: np.ndarray, labels: np.ndarray):
    """Labels (kT) at 2-D CG points ``s`` against the run's reference ``grid`` (nearest bin): (F_ref at the points,
    label - F_ref with the offset removed with the reference's weights, {band: n, mean, rms} by F_ref band)."""
    if grid is None or grid.centres.shape[1] != 2:
        raise SystemExit("this benchmark needs a run scored against a 2-D reference grid")
    p = grid.p_reference
    f_ref = -np.log(np.maximum(p, 1e-300))
    f_ref -= f_ref.min()
    n = int(round(np.sqrt(len(p))))
    lo, hi = config["metrics"]["domain"]
    if not np.array_equal(nearest_bin(grid.centres, n, lo, hi), np.arange(len(p))):
        raise SystemExit("unexpected reference grid layout")
    b = nearest_bin(s, n, lo, hi)
    residual = labels - f_ref[b]
    residual -= np.sum(p[b] * residual) / np.sum(p[b])
    bands = {}
    for a, z in ((0, 2), (2, 4), (4, 8), (8, 12)):
        inside = (f_ref[b] >= a) & (f_ref[b] < z)
        if inside.any():
            bands[f"{a}-{z} kT"] = {"n": int(inside.sum()), "mean": float(residual[inside].mean()),
                                    "rms": float(np.sqrt(np.mean(residual[inside] ** 2)))}
    return f_ref[b], residual, bands


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--scratch", type=int, nargs="*", default=[500, 2000], help="L-BFGS iterations of fresh fits")
    parser.add_argument("--groups", type=int, default=None, help="member groups (default: the run's ensemble.lbfgs_groups)")
    parser.add_argument("--clip-k", type=int, default=None,
                        help="label weight clipping (default: the run's labels.clip_k; 0 = none) for the labels and fits")
    parser.add_argument("--cell-widths", type=float, nargs="*", default=[0.0], help="labels.cell_width of the scratch fits (0: every label)")
    parser.add_argument("--fit-seeds", type=int, nargs="*", default=[0], help="generator seeds of the scratch fits")
    parser.add_argument("--warm-rounds", type=int, default=4)
    parser.add_argument("--warm-iterations", type=int, default=250)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "aldp_ensemble_fit.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    checkpoint = read_run_checkpoint(args.checkpoint)
    config, ens = checkpoint["config"], checkpoint["config"]["ensemble"]
    groups = ens["lbfgs_groups"] if args.groups is None else args.groups
    dataset = ActiveLearningDataset.from_state_dict(checkpoint["dataset"])
    grid = metric_grid_for_config(config)
    clip_k = config["labels"]["clip_k"] if args.clip_k is None else args.clip_k
    points, labels = dataset.labels(config["labels"]["samples"], clip_k)  # what the run fits (with clip_k)
    s = dataset.point_s[points]
    f_ref, residual, bands = label_residuals(grid, config, s, labels)
    p = grid.p_reference
    rows = []

    def score(tag: str, ensemble: PMFEnsemble, cpu_s: float, wall_s: float = 0.0, **extra) -> None:
        mean, _ = ensemble.predict(grid.centres)
        fit, _ = ensemble.predict(s)
        rows.append({"fit": tag, "forward_kld": forward_kld(p, mean), "fit_rms_kT": float(np.sqrt(np.mean((fit - labels) ** 2))),
                     "cpu_s": cpu_s, "wall_s": wall_s, **extra})
        print(f"  {tag:36s} KLD {rows[-1]['forward_kld']:.3e}  fit rms {rows[-1]['fit_rms_kT']:.3f} kT  cpu {cpu_s:.0f} s  wall {wall_s:.1f} s",
              flush=True)

    def fresh() -> PMFEnsemble:
        return PMFEnsemble(s.shape[1], ens["n_members"], ens["hidden"], periodic=True)

    def fit(ensemble: PMFEnsemble, iterations: int, generator: torch.Generator, warm: bool, cell_width: float = 0.0):
        start, wall = time.process_time(), time.perf_counter()
        rows_s, rows_f, weights = (s, labels, None) if not cell_width else merge_in_cells(s, labels, cell_width, True)
        ensemble.fit(rows_s, rows_f, iterations, ens["batch_size"], ens["lr"], ens["strategy"], ens["init"], generator, "lbfgs",
                     ens["precision"], groups, warm_start=warm, weights=weights)
        return time.process_time() - start, time.perf_counter() - wall, len(rows_f)

    print(f"{len(labels)} labels from {args.checkpoint} (iteration {checkpoint['state']['iteration']}, clip_k {clip_k}); "
          f"{groups} member group(s)")
    for band, r in bands.items():
        print(f"  labels - reference, F_ref {band:8s}: n {r['n']:6d}  mean {r['mean']:+.3f}  rms {r['rms']:.3f} kT")
    ensemble = fresh()
    ensemble.load_state_dict(checkpoint["ensemble"])
    score("checkpoint", ensemble, 0.0)
    for width in args.cell_widths:
        for iterations in args.scratch:
            for seed in args.fit_seeds:
                scratch = fresh()
                cpu, wall, n_rows = fit(scratch, iterations, torch.Generator().manual_seed(seed), False, width)
                score(f"scratch {iterations} cells {width:g} seed {seed} ({n_rows} rows)", scratch, cpu, wall, cell_width=width, seed=seed,
                      iterations=iterations, n_rows=n_rows)
    generator = torch.Generator().manual_seed(0)
    for k in range(args.warm_rounds):
        cpu, wall, _ = fit(ensemble, args.warm_iterations, generator, True)
        score(f"warm +{(k + 1) * args.warm_iterations}", ensemble, cpu, wall)
    record = {"benchmark": "aldp_ensemble_fit", "checkpoint": str(args.checkpoint), "iteration": checkpoint["state"]["iteration"],
              "n_labels": int(len(labels)), "clip_k": clip_k, "groups": groups, "label_residual_by_band": bands, "fits": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
