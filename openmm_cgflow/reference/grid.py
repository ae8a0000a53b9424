"""The alanine-dipeptide scoring grid (SPEC §9.1): 100 x 100 bins over [-pi, pi)^2 in the paper's CG frame,
reference files on that grid, and histogram-based distributions (MD baselines).

Reference file (.npz, compressed): ``probabilities`` (n, n) summing to 1 (axis 0 = s_phi, axis 1 = s_psi),
``edges`` (n + 1,), ``frame`` = "paper", ``provenance`` (JSON text: method, steps, seeds, wall time, command).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict

import numpy as np

from ..coordinates.geometry import periodic_difference
from ..storage import atomic_write
from .kld import forward_kld

N_BINS = 100
FRAME = "paper"
PACKAGED_REFERENCE = "reference_aldp.npz"


def packaged_reference_path() -> Path:
    """The alanine-dipeptide reference shipped in the package (``openmm_cgflow/data/reference_aldp.npz``)."""
    return Path(__file__).resolve().parent.parent / "data" / PACKAGED_REFERENCE


def grid_edges(n_bins: int = N_BINS) -> np.ndarray:
    """Bin edges (n_bins + 1,) over [-pi, pi] in rad."""
    return np.linspace(-math.pi, math.pi, n_bins + 1)


def grid_centres(n_bins: int = N_BINS) -> np.ndarray:
    """Bin centres (n_bins^2, 2) in rad, s_phi-major (row k = (phi bin k // n, psi bin k % n))."""
    edges = grid_edges(n_bins)
    c = 0.5 * (edges[1:] + edges[:-1])
    phi, psi = np.meshgrid(c, c, indexing="ij")
    return np.stack([phi.ravel(), psi.ravel()], axis=-1)


def histogram_counts(s: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Counts (n_bins, n_bins) of CG points s (N, 2) in the paper frame (wrapped into [-pi, pi) first)."""
    s = periodic_difference(s)
    index = np.clip(np.floor((s + math.pi) / (2 * math.pi) * n_bins).astype(np.int64), 0, n_bins - 1)
    return np.bincount(index[:, 0] * n_bins + index[:, 1], minlength=n_bins * n_bins).reshape(n_bins, n_bins).astype(np.float64)


#: MD-baseline rule for bins MD has not visited (forward KLD would be infinite): add this pseudo-count to
#: every bin (Krichevsky-Trofimov estimator, p = (c + 1/2) / (N + K/2)).
MD_PSEUDOCOUNT = 0.5


def md_probabilities(counts: np.ndarray, pseudocount: float = MD_PSEUDOCOUNT) -> np.ndarray:
    """Bin probabilities of an MD histogram with a pseudo-count in every bin (never 0)."""
    counts = np.asarray(counts, dtype=np.float64)
    return (counts + pseudocount) / (counts.sum() + pseudocount * counts.size)


def kld_of_histogram(p_reference: np.ndarray, counts: np.ndarray, pseudocount: float = MD_PSEUDOCOUNT) -> float:
    """Forward KLD(p_ref || p_md) of an MD histogram, with the pseudo-count rule for empty bins."""
    return forward_kld(np.asarray(p_reference).ravel(), -np.log(md_probabilities(counts, pseudocount)).ravel())


@dataclass
class ReferencePMF:
    """Reference bin probabilities on the paper-frame grid, with provenance."""

    probabilities: np.ndarray
    provenance: Dict[str, object]

    @property
    def n_bins(self) -> int:
        return self.probabilities.shape[0]

    def free_energy(self) -> np.ndarray:
        """F = -ln p (kT), +inf in empty bins, minimum 0."""
        with np.errstate(divide="ignore"):
            F = -np.log(self.probabilities)
        return F - F[np.isfinite(F)].min()

    def kld(self, free_energy_at_centres: np.ndarray) -> float:
        """Forward KLD of a PMF (kT) evaluated at :func:`grid_centres` (n^2,) or on the grid (n, n)."""
        return forward_kld(self.probabilities.ravel(), np.asarray(free_energy_at_centres).ravel())


def save_reference(path: Path, probabilities: np.ndarray, provenance: Dict[str, object], frame: str = FRAME) -> Path:
    """Write a reference file atomically (``frame``: the CG frame of its axes, "paper" or "iupac")."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != p.shape[1] or abs(p.sum() - 1) > 1e-8 or (p < 0).any():
        raise ValueError("reference probabilities must be a square (n, n) grid of non-negative values summing to 1")
    return atomic_write(
        Path(path),
        lambda handle: np.savez_compressed(handle, probabilities=p, edges=grid_edges(p.shape[0]), frame=frame, provenance=json.dumps(provenance)),
    )


def load_reference(path: Path, n_bins: int = N_BINS, frame: str = FRAME) -> ReferencePMF:
    """Read a reference file and check it is for this grid and CG ``frame`` ("paper": the built-in alanine
    dipeptide's; "iupac": plain dihedrals, e.g. of ``CGSystem.from_openmm``); one clear ValueError otherwise."""
    expected_frame = frame
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference file not found: {path}")
    try:
        data = np.load(path, allow_pickle=False)
        probabilities, edges, found_frame = data["probabilities"], data["edges"], str(data["frame"])
        provenance = json.loads(str(data["provenance"]))
    except (KeyError, ValueError, OSError) as error:
        raise ValueError(f"{path} is not a reference file ({error})") from None
    if probabilities.shape != (n_bins, n_bins):
        raise ValueError(f"{path} is a reference on a {probabilities.shape[0]}x{probabilities.shape[1]} grid, expected {n_bins}x{n_bins}")
    if found_frame != expected_frame or not np.allclose(edges, grid_edges(n_bins)):
        raise ValueError(f"{path} uses frame '{found_frame}' or other bin edges; expected the {expected_frame} frame over [-pi, pi)")
    if abs(probabilities.sum() - 1) > 1e-8:
        raise ValueError(f"{path}: probabilities sum to {probabilities.sum():.6g}, not 1")
    return ReferencePMF(probabilities, provenance)
