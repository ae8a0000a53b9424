"""Benchmark: where are a run's free-energy labels wrong, and is it the flow? Fresh importance sampling at labelled points.

    python benchmarks/aldp_label_quality.py RUN_DIR/checkpoint.pt [--per-band 6] [--worst-cells 2] [--per-cell 4] [--samples 4096] [--clip-k K] \\
        [--out benchmarks/results/aldp_label_quality.json]

From a run's checkpoint (it is copied first, so a running run can be inspected) and its own reference:
  labels     label minus reference free energy at every labelled point (as benchmarks/aldp_ensemble_fit.py), by
             reference-free-energy band and on an 8 x 8 map of the CG domain (mean residual per cell of the points
             with F_ref 4-12 kT), and the forward KLD that this map alone would cost (added to the reference's bins)
  fresh IS   at ``--per-band`` random labelled points per band and ``--per-cell`` points in each of the map's
             ``--worst-cells`` most biased cells, ``--samples`` new samples from the checkpoint's flow
             (the exported model through :class:`openmm_cgflow.Backmapper`, no chirality filter: it removes < 1 % of
             the samples of a trained flow) give F = -ln mean w and the ESS fraction (ESS / samples). Offsets are
             removed with the 0-2 kT band's points. A fresh F far from the reference where the point's ESS is tiny
             means the flow misses part of that point's fine-grained distribution: more samples of the same flow
             would not fix that label, a better flow there would.
Writes JSON and prints tables.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from aldp_ensemble_fit import label_residuals
from openmm_cgflow.active_learning.dataset import ActiveLearningDataset
from openmm_cgflow.active_learning.checkpoint import read_run_checkpoint
from openmm_cgflow.active_learning.outputs import export_checkpoint_models
from openmm_cgflow.active_learning.scoring import metric_grid_for_config
from openmm_cgflow.backmapping import Backmapper
from openmm_cgflow.scoring.kld import forward_kld

BANDS = ((0, 2), (2, 4), (4, 8), (8, 12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--per-band", type=int, default=6, help="labelled points per free-energy band sampled afresh")
    parser.add_argument("--worst-cells", type=int, default=2, help="map cells with the largest mean residual sampled afresh")
    parser.add_argument("--per-cell", type=int, default=4, help="labelled points per such cell")
    parser.add_argument("--samples", type=int, default=4096, help="fresh flow samples per point")
    parser.add_argument("--clip-k", type=int, default=None, help="label weight clipping (default: the run's labels.clip_k)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "aldp_label_quality.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    checkpoint = read_run_checkpoint(args.checkpoint)
    config = checkpoint["config"]
    clip_k = config["labels"]["clip_k"] if args.clip_k is None else args.clip_k
    dataset = ActiveLearningDataset.from_state_dict(checkpoint["dataset"])
    points, labels = dataset.labels(config["labels"]["samples"], clip_k)
    s = dataset.point_s[points]
    grid = metric_grid_for_config(config)
    f_ref, residual, bands = label_residuals(grid, config, s, labels)
    print(f"{len(labels)} labels from {args.checkpoint} (iteration {checkpoint['state']['iteration']}, clip_k {clip_k})")
    for band, r in bands.items():
        print(f"  labels - reference, F_ref {band:8s}: n {r['n']:6d}  mean {r['mean']:+.3f}  rms {r['rms']:.3f} kT")

    lo, hi = config["metrics"]["domain"]

    def cell_of(x: np.ndarray) -> np.ndarray:  # (row, column) of each 2-D point on the 8 x 8 map
        return np.clip(np.floor((x - lo) / (hi - lo) * 8).astype(int), 0, 7)

    cells = cell_of(s)
    cell_map, cell_points = [], {}
    print("mean label residual (kT) of points with F_ref 4-12 kT on an 8 x 8 map (rows: s0 from the domain's low end; '.' < 5 points)")
    for i in range(8):
        row = []
        for j in range(8):
            inside = (cells[:, 0] == i) & (cells[:, 1] == j) & (f_ref >= 4) & (f_ref < 12)
            cell_points[i, j] = np.flatnonzero(inside)
            mean = float(residual[inside].mean()) if inside.sum() >= 5 else None
            cell_map.append({"s0_cell": i, "s1_cell": j, "n": int(inside.sum()), "mean": mean})
            row.append(f"{mean:+6.2f}" if mean is not None else "     .")
        print(f"  s0 {lo + (hi - lo) * i / 8:+.2f} " + " ".join(row))
    # what that bias alone costs: the reference with each cell's mean residual added to its 4-12 kT bins
    p_ref = grid.p_reference
    f_grid = -np.log(np.maximum(p_ref, 1e-300))
    f_grid -= f_grid.min()
    grid_cells = cell_of(grid.centres)
    biased = f_grid.copy()
    for c in cell_map:
        if c["mean"] is not None:
            biased[(grid_cells[:, 0] == c["s0_cell"]) & (grid_cells[:, 1] == c["s1_cell"]) & (f_grid >= 4) & (f_grid < 12)] += c["mean"]
    bias_kld = forward_kld(p_ref, biased)
    print(f"forward KLD of the reference with that 4-12 kT bias map added: {bias_kld:.2e}")

    rng = np.random.default_rng(args.seed)
    chosen, groups = [], []
    for a, z in BANDS:
        inside = np.flatnonzero((f_ref >= a) & (f_ref < z))
        picked = rng.choice(inside, min(args.per_band, len(inside)), replace=False).tolist()
        chosen += picked
        groups += [f"{a}-{z} kT"] * len(picked)
    worst = sorted((c for c in cell_map if c["mean"] is not None), key=lambda c: -abs(c["mean"]))[: args.worst_cells]
    for c in worst:  # the map's most biased cells: is it the flow there, or the samples the labels accumulated?
        inside = cell_points[c["s0_cell"], c["s1_cell"]]
        picked = rng.choice(inside, min(args.per_cell, len(inside)), replace=False).tolist()
        chosen += picked
        groups += [f"cell ({c['s0_cell']}, {c['s1_cell']})"] * len(picked)
    chosen = np.array(chosen, dtype=np.int64)
    record = {"benchmark": "aldp_label_quality", "checkpoint": str(args.checkpoint), "iteration": checkpoint["state"]["iteration"],
              "n_labels": int(len(labels)), "clip_k": clip_k, "samples": args.samples, "label_residual_by_band": bands,
              "label_residual_map_4_12kT": cell_map, "kld_of_reference_plus_bias_map": bias_kld}
    if len(chosen):
        record.update(fresh_importance_sampling(args, config, s, f_ref, residual, chosen, groups))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(f"written to {args.out}")


def fresh_importance_sampling(args, config, s, f_ref, residual, chosen, groups) -> dict:
    """``args.samples`` new flow samples at each chosen labelled point: fresh labels and ESS fractions, by group."""
    with tempfile.TemporaryDirectory() as scratch:
        export_checkpoint_models(args.checkpoint, Path(scratch) / "models")
        result = Backmapper(Path(scratch) / "models" / "flow.pt", config["energy"]["platform"]).backmap(
            s[chosen], n_per_frame=args.samples, seed=args.seed)
    log_w = result.log_weights.reshape(len(chosen), args.samples)
    finite = np.where(np.isfinite(log_w), log_w, -np.inf)
    fresh = -(np.logaddexp.reduce(finite, axis=1) - np.log(args.samples))
    low = f_ref[chosen] < 2
    fresh_residual = fresh - f_ref[chosen]
    fresh_residual -= fresh_residual[low].mean() if low.any() else 0.0
    ess_fraction = result.ess / args.samples
    rows = [{"group": g, "s": s[k].tolist(), "F_ref": float(f_ref[k]), "label_residual": float(residual[k]),
             "fresh_residual": float(r), "ess_fraction": float(e)}
            for g, k, r, e in zip(groups, chosen, fresh_residual, ess_fraction)]
    print(f"fresh importance sampling, {args.samples} samples per point (residuals vs the reference, kT)")
    print(f"  {'s':>16s} {'F_ref':>6s} {'label':>7s} {'fresh':>7s} {'ESS':>7s}")
    for r in rows:
        print(f"  ({r['s'][0]:+.2f}, {r['s'][1]:+.2f}) {r['F_ref']:6.2f} {r['label_residual']:+7.2f} {r['fresh_residual']:+7.2f} {r['ess_fraction']:7.4f}  {r['group']}")
    summary = {}
    for group in dict.fromkeys(groups):
        inside = [r for r in rows if r["group"] == group]
        if inside:
            summary[group] = {
                "n": len(inside),
                "label_residual_mean": float(np.mean([r["label_residual"] for r in inside])),
                "fresh_residual_mean": float(np.mean([r["fresh_residual"] for r in inside])),
                "fresh_residual_max": float(np.max([r["fresh_residual"] for r in inside])),
                "ess_fraction_median": float(np.median([r["ess_fraction"] for r in inside])),
                "ess_fraction_min": float(np.min([r["ess_fraction"] for r in inside])),
            }
            q = summary[group]
            print(f"  {group:12s}: label {q['label_residual_mean']:+.2f}, fresh {q['fresh_residual_mean']:+.2f} (max "
                  f"{q['fresh_residual_max']:+.2f}), ESS median {q['ess_fraction_median']:.4f} min {q['ess_fraction_min']:.4f}")
    return {"fresh_points": rows, "fresh_by_group": summary}


if __name__ == "__main__":
    main()
