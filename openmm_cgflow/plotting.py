"""Figures of an active-learning run (matplotlib, no screen needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_pmf_1d(
    path: Path,
    centres: np.ndarray,
    exact: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    label_points: Sequence[np.ndarray],
    label_values: Sequence[np.ndarray],
    title: str = "",
    xlabel: str = "s = x1 - x2 (nm)",
) -> None:
    """Learned PMF (mean ± ensemble std) against the exact one, with the labelled training points of
    every iteration (colour = iteration that added them). All free energies in kT, shifted to min 0."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    shift = mean.min()
    if exact is not None:
        ax.plot(centres, exact - exact.min(), "k-", lw=2, label="exact")
    ax.plot(centres, mean - shift, "C3-", label="ensemble mean")
    ax.fill_between(centres, mean - shift - std, mean - shift + std, color="C3", alpha=0.25, label="± ensemble std")
    cmap = plt.get_cmap("viridis")
    n = max(len(label_points), 1)
    for i, (s, F) in enumerate(zip(label_points, label_values)):
        if len(s):
            ax.plot(s, F - shift, ".", ms=3, color=cmap(i / max(n - 1, 1)), label=f"labels, iteration {i}" if n <= 12 else None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("F (kT)")
    ax.set_xlim(centres[0], centres[-1])
    top = mean - shift if exact is None else exact - exact.min()
    ax.set_ylim(-1, max(15, float(np.nanmax(top)) + 2))
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_pmf_iterations(path: Path, centres: np.ndarray, exact: np.ndarray, history: List[Dict]) -> None:
    """One small panel per iteration: PMF mean ± std vs exact, and that iteration's KLD."""
    n = len(history)
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False, sharex=True, sharey=True)
    for ax, record in zip(axes.flat, history):
        mean, std = np.asarray(record["mean"]), np.asarray(record["std"])
        shift = mean.min()
        if exact is not None:
            ax.plot(centres, exact - exact.min(), "k-", lw=1)
        ax.plot(centres, mean - shift, "C3-", lw=1)
        ax.fill_between(centres, mean - shift - std, mean - shift + std, color="C3", alpha=0.3)
        score = f"KLD {record['forward_kld']:.1e}" if record.get("forward_kld") is not None else f"max std {record.get('std_visited_max', 0):.2f}"
        ax.set_title(f"iter {record['iteration']}: {score}", fontsize=8)
        ax.set_ylim(-1, 16)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_kld(path: Path, evaluations: Sequence[float], kld: Sequence[float], target: float = None, label: str = "active learning") -> None:
    """Forward KLD against the number of energy evaluations (log-log)."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.loglog(evaluations, kld, "o-", label=label)
    if target is not None:
        ax.axhline(target, color="k", ls="--", lw=1, label=f"target {target:g}")
    ax.set_xlabel("energy evaluations")
    ax.set_ylabel("forward KLD")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_pmf_2d(path: Path, edges: np.ndarray, reference: np.ndarray, mean: np.ndarray, std: np.ndarray, points: np.ndarray = None, title: str = "",
                labels: Sequence[str] = ("s_phi (rad)", "s_psi (rad)")) -> None:
    """Reference PMF (if given), learned PMF (ensemble mean) and ensemble std on a 2-D periodic grid (kT, minima 0),
    with the labelled CG points on the learned panel. Grids are (n, n) with axis 0 = first CG coordinate."""
    panels = [] if reference is None else [(reference - reference.min(), "reference F (kT)", 15)]
    panels += [(mean - mean.min(), "learned F (kT)", 15), (std, "ensemble std (kT)", None)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.7 * len(panels), 4.3))
    extent = [edges[0], edges[-1], edges[0], edges[-1]]
    for ax, (grid, name, vmax) in zip(axes, panels):
        im = ax.imshow(np.minimum(grid, vmax).T if vmax else grid.T, origin="lower", extent=extent, cmap="viridis")
        fig.colorbar(im, ax=ax, label=name)
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
    if points is not None and len(points):
        axes[len(panels) - 2].plot(points[:, 0], points[:, 1], "w.", ms=1, alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
