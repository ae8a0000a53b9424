"""Turning stopped MC chains into new CG points: farthest-point diversity and spreading (SPEC §7 c-e)."""
from __future__ import annotations

import math

import numpy as np

from ..coordinates.geometry import periodic_difference


def farthest_point_selection(points: np.ndarray, n: int, rng: np.random.Generator, periodic: bool = False) -> np.ndarray:
    """Greedy farthest-point sampling: indices of ``n`` diverse rows of ``points`` (m, d).

    Starts from a random point, then repeatedly adds the point whose minimum distance to the chosen
    set is largest. ``periodic`` measures distance on the torus [-pi, pi)^d (the paper used the plain
    Euclidean distance, SPEC §13.7).
    """
    points = np.asarray(points, dtype=np.float64)
    m = len(points)
    if n >= m:
        return np.arange(m)
    chosen = [int(rng.integers(m))]
    distance = np.full(m, np.inf)
    for _ in range(n - 1):
        delta = points - points[chosen[-1]]
        if periodic:
            delta = periodic_difference(points, points[chosen[-1]])
        distance = np.minimum(distance, np.linalg.norm(delta, axis=1))
        chosen.append(int(np.argmax(distance)))
    return np.asarray(chosen)


def spread_uniform_interval(centres: np.ndarray, half_width: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points per centre, uniform on [c - half_width, c + half_width] in every coordinate (MB)."""
    centres = np.asarray(centres, dtype=np.float64)
    offsets = rng.uniform(-half_width, half_width, size=(len(centres), n, centres.shape[1]))
    return (centres[:, None, :] + offsets).reshape(-1, centres.shape[1])


def spread_disc(centres: np.ndarray, radius: float, n: int, rng: np.random.Generator, periodic: bool = True) -> np.ndarray:
    """``n`` points per centre, uniform in a disc (2-D centres) or ball (other dimensions) of ``radius`` (rad),
    wrapped into [-pi, pi) when periodic."""
    centres = np.asarray(centres, dtype=np.float64)
    dim = centres.shape[1]
    if dim != 2:  # uniform in a d-ball: isotropic direction, radius R u^(1/d)
        direction = rng.standard_normal(size=(len(centres), n, dim))
        direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
        r = radius * rng.uniform(size=(len(centres), n, 1)) ** (1.0 / dim)
        points = (centres[:, None, :] + r * direction).reshape(-1, dim)
        return periodic_difference(points, 0.0) if periodic else points
    r = radius * np.sqrt(rng.uniform(size=(len(centres), n)))
    angle = rng.uniform(0, 2 * math.pi, size=(len(centres), n))
    points = centres[:, None, :] + np.stack([r * np.cos(angle), r * np.sin(angle)], axis=-1)
    points = points.reshape(-1, 2)
    return periodic_difference(points, 0.0) if periodic else points


def coverage_gaps(grid: np.ndarray, free_energy: np.ndarray, labelled: np.ndarray, radius: float, periodic: bool = False,
                  max_free_energy_kT: float = math.log(1e3)) -> np.ndarray:
    """Indices of the points of ``grid`` (n, d) that the model calls probable but no label supports: within
    ``max_free_energy_kT`` of the minimum of ``free_energy`` (n,) kT (by default a probability density above 1e-3 of
    its maximum) and farther than ``radius`` (CG units) from every ``labelled`` point (m, d). Most probable first.

    An ensemble extrapolates beyond its labels, often flat and with a small spread there, so a search for uncertain
    points can find none while a probable region has never been sampled; these are the points such a search missed.
    ``periodic`` measures distance on the torus [-pi, pi)^d."""
    grid, labelled = np.asarray(grid, dtype=np.float64), np.asarray(labelled, dtype=np.float64)
    free_energy = np.asarray(free_energy, dtype=np.float64)
    probable = np.flatnonzero(free_energy - free_energy.min() <= max_free_energy_kT)
    if len(labelled) == 0:
        return probable[np.argsort(free_energy[probable], kind="stable")]
    from scipy.spatial import cKDTree

    if periodic:  # the torus [0, 2 pi)^d: cKDTree measures periodic distances with boxsize
        tree = cKDTree(np.mod(labelled + math.pi, 2 * math.pi), boxsize=2 * math.pi)
        distance, _ = tree.query(np.mod(grid[probable] + math.pi, 2 * math.pi))
    else:
        distance, _ = cKDTree(labelled).query(grid[probable])
    gaps = probable[distance > radius]
    return gaps[np.argsort(free_energy[gaps], kind="stable")]
