"""Scoring grids of CG spaces: n bins per CG dihedral over [-pi, pi) in the system's CG frame (alanine dipeptide,
SPEC §9.1: 100 x 100 in the paper frame; 1-D: 100 bins; 3-D: 36^3 bins of 10 degrees), or n bins per linear CG
coordinate over its domain (nm, frame "linear"); reference files on them, and histogram-based distributions (MD
baselines).

Reference file (.npz, compressed): ``probabilities`` (n,) * d summing to 1 (axis k = CG coordinate k; ALDP: s_phi,
s_psi), ``edges`` (n + 1,) shared by every axis, ``frame`` ("paper", "iupac" or "linear"), ``provenance`` (JSON
text: method, steps, seeds, wall time, command).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from ..coordinates.geometry import periodic_difference
from ..storage import load_arrays, save_arrays
from .kld import forward_kld

N_BINS = 100
#: bins per dimension of a grid of d CG dihedrals (3-D: 10-degree bins, 46,656 in all)
DEFAULT_BINS = {1: 100, 2: N_BINS, 3: 36}
FRAME = "paper"


#: the domain of a dihedral grid (rad)
ANGLES = (-math.pi, math.pi)


def grid_edges(n_bins: int = N_BINS, domain: Tuple[float, float] = ANGLES) -> np.ndarray:
    """Bin edges (n_bins + 1,) over ``domain`` (default [-pi, pi] in rad; a linear coordinate's domain in nm)."""
    return np.linspace(domain[0], domain[1], n_bins + 1)


def default_bins(dim: int) -> int:
    """Bins per dimension of the scoring grid of ``dim`` CG dihedrals (1-3)."""
    if dim not in DEFAULT_BINS:
        raise ValueError(f"grids cover 1-3 CG dihedrals, not {dim}")
    return DEFAULT_BINS[dim]


def grid_centres(n_bins: int = N_BINS, dim: int = 2, domain: Tuple[float, float] = ANGLES) -> np.ndarray:
    """Bin centres (n_bins^dim, dim) over ``domain`` per axis (rad by default), first-coordinate-major (2-D: row
    k = (bin k // n, bin k % n)), the order of ``probabilities.ravel()``."""
    edges = grid_edges(n_bins, domain)
    c = 0.5 * (edges[1:] + edges[:-1])
    axes = np.meshgrid(*([c] * dim), indexing="ij")
    return np.stack([a.ravel() for a in axes], axis=-1)


def histogram_counts(s: np.ndarray, n_bins: Optional[int] = None, domain: Optional[Tuple[float, float]] = None) -> np.ndarray:
    """Counts (n_bins,) * d of CG points s (N, d): dihedrals (``domain`` None) wrapped into [-pi, pi) first; linear
    coordinates counted over ``domain`` (nm), points outside it left out. ``n_bins`` defaults to
    :func:`default_bins` of d."""
    s = np.asarray(s, dtype=np.float64)
    dim = s.shape[1]
    n_bins = default_bins(dim) if n_bins is None else n_bins
    if domain is None:
        s, domain = periodic_difference(s), ANGLES
    else:
        s = s[((s >= domain[0]) & (s < domain[1])).all(axis=1)]
    index = np.clip(np.floor((s - domain[0]) / (domain[1] - domain[0]) * n_bins).astype(np.int64), 0, n_bins - 1)
    flat = np.ravel_multi_index(tuple(index.T), (n_bins,) * dim)
    return np.bincount(flat, minlength=n_bins**dim).reshape((n_bins,) * dim).astype(np.float64)


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
    """Reference bin probabilities on a grid of its CG frame, with provenance and the bin edges of every axis."""

    probabilities: np.ndarray
    provenance: Dict[str, object]
    edges: Optional[np.ndarray] = None

    @property
    def n_bins(self) -> int:
        return self.probabilities.shape[0]

    @property
    def domain(self) -> Tuple[float, float]:
        """(lower, upper) of every axis (rad, or nm for linear CG coordinates)."""
        edges = grid_edges(self.n_bins) if self.edges is None else self.edges
        return float(edges[0]), float(edges[-1])

    def centres(self) -> np.ndarray:
        """Bin centres (n^d, d), in the order of ``probabilities.ravel()``."""
        return grid_centres(self.n_bins, self.probabilities.ndim, self.domain)

    def free_energy(self) -> np.ndarray:
        """F = -ln p (kT), +inf in empty bins, minimum 0."""
        with np.errstate(divide="ignore"):
            F = -np.log(self.probabilities)
        return F - F[np.isfinite(F)].min()

    def kld(self, free_energy_at_centres: np.ndarray) -> float:
        """Forward KLD of a PMF (kT) evaluated at :func:`grid_centres` (n^2,) or on the grid (n, n)."""
        return forward_kld(self.probabilities.ravel(), np.asarray(free_energy_at_centres).ravel())


def save_reference(path: Path, probabilities: np.ndarray, provenance: Dict[str, object], frame: str = FRAME,
                   domain: Optional[Tuple[float, float]] = None) -> Path:
    """Write a reference file atomically, with its checksum (``frame``: the CG frame of its axes, "paper" or "iupac"
    for dihedrals over [-pi, pi), "linear" for linear CG coordinates over ``domain`` in nm)."""
    p = np.asarray(probabilities, dtype=np.float64)
    if not 1 <= p.ndim <= 3 or len(set(p.shape)) != 1 or not np.isfinite(p).all() or abs(p.sum() - 1) > 1e-8 or (p < 0).any():
        raise ValueError("reference probabilities must be an (n,) * d grid (d = 1-3) of finite non-negative values summing to 1")
    if (frame == "linear") != (domain is not None):
        raise ValueError("a reference on linear CG coordinates needs their domain (nm), and only such a reference has one")
    if domain is not None and not (np.isfinite(domain).all() and domain[0] < domain[1]):
        raise ValueError(f"domain must be (lower, upper) with lower < upper, got {domain!r}")
    edges = grid_edges(p.shape[0], ANGLES if domain is None else (float(domain[0]), float(domain[1])))
    return save_arrays(Path(path), probabilities=p, edges=edges, frame=frame, provenance=json.dumps(provenance))


def load_reference(path: Path, n_bins: Optional[int] = N_BINS, frame: str = FRAME, dim: int = 2,
                   domain: Optional[Tuple[float, float]] = None) -> ReferencePMF:
    """Read a reference file and check it is a grid of ``dim`` CG coordinates with ``n_bins`` per dimension (None:
    any) in CG ``frame`` ("paper": the built-in alanine dipeptide's; "iupac": plain dihedrals, e.g. of
    ``CGSystem.from_openmm``; "linear": linear CG coordinates on equal bins, over ``domain`` in nm when given);
    one clear ValueError otherwise."""
    expected_frame = frame
    path = Path(path)
    data = load_arrays(path, ("probabilities", "edges", "frame", "provenance"), what="a reference file")
    try:
        probabilities, edges, found_frame = data["probabilities"].astype(np.float64), data["edges"], str(data["frame"])
        provenance = json.loads(str(data["provenance"]))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path} is not a reference file ({' '.join(str(error).split())[:120]})") from None
    if probabilities.ndim != dim or len(set(probabilities.shape)) != 1:
        raise ValueError(f"{path} is a reference on a {'x'.join(map(str, probabilities.shape))} grid, expected {dim} CG dihedral(s) "
                         f"with equal bins")
    n_bins = probabilities.shape[0] if n_bins is None else n_bins
    if probabilities.shape != (n_bins,) * dim:
        raise ValueError(f"{path} is a reference on a {'x'.join(map(str, probabilities.shape))} grid, expected {'x'.join([str(n_bins)] * dim)}")
    edges = np.asarray(edges, dtype=np.float64)
    if expected_frame == "linear":
        if found_frame != "linear" or edges.shape != (n_bins + 1,) or not np.isfinite(edges).all() or not edges[0] < edges[-1] \
                or not np.allclose(edges, grid_edges(n_bins, (edges[0], edges[-1]))):
            raise ValueError(f"{path} uses frame '{found_frame}' or uneven bin edges; expected linear CG coordinates (nm) on equal bins")
        if domain is not None and not np.allclose((edges[0], edges[-1]), domain):
            raise ValueError(f"{path} covers [{edges[0]:g}, {edges[-1]:g}] nm; expected the domain [{domain[0]:g}, {domain[1]:g}] nm")
    elif found_frame != expected_frame or edges.shape != (n_bins + 1,) or not np.allclose(edges, grid_edges(n_bins)):
        raise ValueError(f"{path} uses frame '{found_frame}' or other bin edges; expected the {expected_frame} frame over [-pi, pi)")
    if not np.isfinite(probabilities).all() or (probabilities < 0).any():
        raise ValueError(f"{path}: probabilities must be finite and non-negative (found {'NaN or inf' if not np.isfinite(probabilities).all() else 'negative values'})")
    if abs(probabilities.sum() - 1) > 1e-8:
        raise ValueError(f"{path}: probabilities sum to {probabilities.sum():.6g}, not 1")
    return ReferencePMF(probabilities, provenance, edges)
