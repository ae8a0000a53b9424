"""Benchmark: CPU time of one member group's L-BFGS fit, torch.optim.LBFGS against the package's compact-form L-BFGS.

    python benchmarks/ensemble_lbfgs.py [--repeats 3] [--out benchmarks/results/ensemble_lbfgs.json]

One group of the PMF ensemble (5 members, hidden 64 x 64, 500 iterations, float32, one thread, as
``ensemble.lbfgs_groups: 2`` runs it) fitted to a smooth synthetic PMF at the label counts of the Müller-Brown main job
(1 CG feature, 80 and 340 labels: its first and last iterations) and of an ``aldp-fast`` run (4 periodic features,
1,600 and 6,000 labels). The two optimisers run interleaved, ``--repeats`` times each, on the same start, in this
process pinned to one core; CPU time (``time.process_time``), so other load on the machine matters less. Reports
the median seconds per fit, the speed-up and each fit's final mean member MSE (kT^2). Writes JSON, prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from openmm_cgflow.pmf.member_groups import lbfgs_group, members_forward

CASES = [("muller-brown first", 1, 80), ("muller-brown last", 1, 340), ("aldp-fast first", 4, 1600), ("aldp-fast last", 4, 6000)]


def problem(n_features: int, n_labels: int, members: int = 5, hidden: int = 64, seed: int = 0):
    """Inputs (M, B, features), targets (M, B) in kT and a Xavier-like start for ``members`` sigmoid MLPs."""
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(members, n_labels, n_features, generator=g) * 2 - 1
    Y = 4 * torch.sin(3 * X[..., 0]) * torch.cos(2 * X[..., -1]) + X.pow(2).sum(-1)
    sizes = [(n_features, hidden), (hidden, hidden), (hidden, 1)]
    params = {}
    for i, (a, b) in enumerate(sizes):
        params[f"w{i}"] = torch.randn(members, a, b, generator=g) * (2.0 / (a + b)) ** 0.5
        params[f"b{i}"] = torch.zeros(members, 1, b)
    return params, X, Y, torch.tensor(0.0)


def torch_lbfgs_group(params, X, Y, offset, n_layers, iterations, lr) -> Tuple[Dict[str, torch.Tensor], List[float]]:
    """The group fit as the package ran it before :mod:`openmm_cgflow.pmf.lbfgs` (torch.optim.LBFGS on the tensors)."""
    params = {key: value.detach().clone().requires_grad_(True) for key, value in params.items()}
    optimizer = torch.optim.LBFGS(list(params.values()), lr=lr, max_iter=iterations, history_size=50,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-12, tolerance_change=1e-15)
    history: List[float] = []

    def closure():
        optimizer.zero_grad(set_to_none=True)
        loss = ((members_forward(params, X, n_layers) + offset - Y) ** 2).mean(1).sum()
        loss.backward()
        history.append(float(loss.detach()) / Y.shape[0])
        return loss

    optimizer.step(closure)
    return {key: value.detach() for key, value in params.items()}, history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--out", default="benchmarks/results/ensemble_lbfgs.json")
    args = parser.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    torch.set_num_threads(1)
    rows = []
    for name, n_features, n_labels in CASES:
        params, X, Y, offset = problem(n_features, n_labels)
        times = {"torch.optim.LBFGS": [], "compact": []}
        mse = {}
        for _ in range(args.repeats):
            for label, fit in (("torch.optim.LBFGS", torch_lbfgs_group), ("compact", lbfgs_group)):
                start = time.process_time()
                _, history = fit(params, X, Y, offset, 3, args.iterations, 1.0)
                times[label].append(time.process_time() - start)
                mse[label] = (history[-1], len(history))
        row = {"case": name, "features": n_features, "labels": n_labels}
        for label in times:
            row[label] = {"cpu_s": statistics.median(times[label]), "all_cpu_s": times[label],
                          "final_mse_kT2": mse[label][0], "evaluations": mse[label][1]}
        row["speedup"] = row["torch.optim.LBFGS"]["cpu_s"] / row["compact"]["cpu_s"]
        rows.append(row)
        print(f"{name:20s} torch {row['torch.optim.LBFGS']['cpu_s']:6.2f} s  compact {row['compact']['cpu_s']:6.2f} s  "
              f"x{row['speedup']:.2f}  MSE {mse['torch.optim.LBFGS'][0]:.2e} / {mse['compact'][0]:.2e}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "ensemble_lbfgs", "iterations": args.iterations, "repeats": args.repeats,
                               "cpu_count": os.cpu_count(), "rows": rows}, indent=1))
    print()
    print(f"{'case':20s} {'labels':>6s} {'torch s':>8s} {'compact s':>10s} {'speed-up':>8s} {'MSE torch':>10s} {'MSE compact':>11s}")
    for row in rows:
        print(f"{row['case']:20s} {row['labels']:6d} {row['torch.optim.LBFGS']['cpu_s']:8.2f} {row['compact']['cpu_s']:10.2f} "
              f"{row['speedup']:8.2f} {row['torch.optim.LBFGS']['final_mse_kT2']:10.2e} {row['compact']['final_mse_kT2']:11.2e}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
