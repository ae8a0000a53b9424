"""Metropolis MC samples a known density; the uncertainty search stops where the std is large;
diversity selection and spreading."""
import math

import numpy as np
import pytest
import torch

from openmm_cgflow.active_learning.settings import CGDynamicsBackend, MonteCarloBackend
from openmm_cgflow.sampling import (
    farthest_point_selection, metropolis, spread_disc, spread_uniform_interval, uncertainty_search, uncertainty_weighted_search,
)


def double_well(s):
    return 2.0 * (s[:, 0] ** 2 - 1.0) ** 2


def test_metropolis_samples_known_1d_density():
    gen = torch.Generator().manual_seed(0)
    start = torch.zeros(200, 1, dtype=torch.float64)
    trajectory, acceptance = metropolis(double_well, start, 3000, 0.5, gen)
    samples = trajectory[500:].reshape(-1).numpy()
    edges = np.linspace(-2.0, 2.0, 41)
    centres = 0.5 * (edges[1:] + edges[:-1])
    hist, _ = np.histogram(samples, edges)
    p_mc = hist / hist.sum()
    p_exact = np.exp(-double_well(torch.tensor(centres)[:, None]).numpy())
    p_exact /= p_exact.sum()
    assert 0.2 < acceptance < 0.9
    kld = np.sum(p_exact * np.log(p_exact / np.maximum(p_mc, 1e-12)))
    assert kld < 5e-3
    assert np.abs(p_mc - p_exact).max() < 0.01


def test_uncertainty_search_wraps_periodic_chains():
    """Chains at phi = 3.1 rad, on a flat PMF whose std exceeds the threshold only at phi in [-3.0, -2.6]: across
    the periodic boundary that region is 0.2 rad away, the long way round 5.7 rad. Periodic chains find it within
    a few dozen steps and return wrapped points in it; without wrapping the same chains do not get there."""
    class UncertainBehindThePeriodicEdge(torch.nn.Module):
        def mean_std(self, s):
            inside = (s[:, 0] >= -3.0) & (s[:, 0] <= -2.6)
            return torch.zeros(s.shape[0], dtype=s.dtype), inside.to(s.dtype)

    start = torch.full((8, 2), 3.1, dtype=torch.float64)
    found = uncertainty_search(UncertainBehindThePeriodicEdge(), start, 4, 0.3, 0.5, 1, 300, torch.Generator().manual_seed(0), periodic=True)
    assert found.success and found.points.shape == (4, 2)
    assert ((found.points[:, 0] >= -3.0) & (found.points[:, 0] <= -2.6)).all()
    assert ((found.points >= -math.pi) & (found.points < math.pi)).all()  # every coordinate wrapped
    unwrapped = uncertainty_search(UncertainBehindThePeriodicEdge(), start, 4, 0.3, 0.5, 1, 300, torch.Generator().manual_seed(0), periodic=False)
    assert not unwrapped.success


def test_uncertainty_weighted_chains_sample_exp_minus_F_times_std_squared():
    class Toy(torch.nn.Module):
        def mean_std(self, s):
            return double_well(s), 0.1 + torch.exp(-((s[:, 0] - 1.0) ** 2))  # std largest in the right well

    gen = torch.Generator().manual_seed(1)
    result = uncertainty_weighted_search(Toy(), torch.zeros(4000, 1, dtype=torch.float64), 400, 0.4, gen)
    edges = np.linspace(-2.0, 2.0, 21)
    centres = torch.tensor(0.5 * (edges[1:] + edges[:-1]))[:, None]
    mean, std = Toy().mean_std(centres)
    p_exact = (torch.exp(-mean) * std**2).numpy()
    p_exact /= p_exact.sum()
    hist, _ = np.histogram(result.points[:, 0].numpy(), edges)
    p = hist / hist.sum()
    assert result.points.shape == (4000, 1) and result.n_steps == 400
    assert np.abs(p - p_exact).max() < 0.02
    assert p[centres[:, 0].numpy() > 0].sum() > 0.8  # most weight where the std is large, not in both wells alike


def test_farthest_point_selection_picks_extremes():
    points = np.array([[0.0], [0.1], [0.2], [5.0], [-5.0]])
    chosen = farthest_point_selection(points, 3, np.random.default_rng(0))
    assert {3, 4} <= set(chosen.tolist())


def test_periodic_farthest_point_uses_torus_distance():
    # 3.0 and -3.0 are close on the circle: the diverse pair is one of them with 0.0
    points = np.array([[3.0, 0.0], [-3.0, 0.0], [0.0, 0.0]])
    chosen = farthest_point_selection(points, 2, np.random.default_rng(1), periodic=True)
    assert 2 in chosen.tolist()


def test_spreading_stays_within_bounds():
    rng = np.random.default_rng(0)
    pts = spread_uniform_interval(np.array([[0.5]]), 0.5, 1000, rng)
    assert pts.shape == (1000, 1) and pts.min() >= 0.0 and pts.max() <= 1.0
    disc = spread_disc(np.array([[3.0, 0.0]]), 0.6, 2000, rng)
    assert disc.shape == (2000, 2) and (disc >= -np.pi).all() and (disc < np.pi).all()
    d = np.remainder(disc - np.array([3.0, 0.0]) + np.pi, 2 * np.pi) - np.pi
    assert np.linalg.norm(d, axis=1).max() <= 0.6 + 1e-12
    # uniform in the disc: half of the points inside radius 0.6/sqrt(2)
    assert abs(np.mean(np.linalg.norm(d, axis=1) < 0.6 / np.sqrt(2)) - 0.5) < 0.04


class FlatWithUncertainRegion(torch.nn.Module):
    """A scriptable stand-in PMF ensemble: F = 0 everywhere, std = 1 kT where s[0] > edge, else 0."""

    def __init__(self, edge: float):
        super().__init__()
        self.edge = edge

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return torch.zeros(1, s.shape[0], dtype=s.dtype)

    @torch.jit.export
    def mean_std(self, s: torch.Tensor):
        return 0.0 * s[:, 0], (s[:, 0] > self.edge).to(s.dtype)  # 0 * s: a zero PMF that autograd can differentiate


SEARCH_BACKENDS = {
    "mc": lambda cg_system: MonteCarloBackend(step_size=0.2 if cg_system.cg_periodic else 0.1),
    "cg_dynamics": lambda cg_system: CGDynamicsBackend(timestep_fs=2.0 if cg_system.cg_periodic else 5.0, friction_per_ps=10.0, check_every=10),
}


@pytest.mark.parametrize("system", ["muller-brown", "alanine-dipeptide"])
@pytest.mark.parametrize("backend", sorted(SEARCH_BACKENDS))
def test_search_backend_contract(backend, system):
    """Every search backend, on a linear (Müller-Brown) and a periodic (alanine dipeptide) CG space, with a flat PMF
    whose std is 1 kT beyond s[0] = edge: it stops exactly ``n_wanted`` chains, only where std > threshold, inside
    the CG domain, after more than ``min_steps`` steps; with a threshold the std never reaches it runs out of steps
    and says so; the same generators give the same result."""
    from openmm_cgflow.systems import create_system

    cg_system = create_system(system)
    search = SEARCH_BACKENDS[backend](cg_system)
    edge, bounds = (0.5, (-2.5, 1.1)) if system == "muller-brown" else (1.0, None)
    start = np.full((20, cg_system.cg_dim), -2.0 if system == "muller-brown" else 0.0)

    def run(threshold, max_steps, seed=0):
        return search.search(FlatWithUncertainRegion(edge), cg_system, start, 5, threshold, 20, max_steps, np.random.default_rng(seed),
                             torch.Generator().manual_seed(seed), bounds, "float64", "CPU")

    found = run(0.5, 50_000)
    assert found.success and found.points.shape == (5, cg_system.cg_dim) and found.n_steps > 20
    assert (found.points[:, 0] > edge).all()
    lo, hi = np.array(cg_system.cg_domain).T
    slack = 0.0 if cg_system.cg_periodic else 0.1  # linear coordinates: soft (harmonic) walls of CG dynamics at the domain
    assert ((found.points.numpy() >= lo - slack) & (found.points.numpy() <= hi + slack)).all()
    again = run(0.5, 50_000)
    assert torch.equal(found.points, again.points) and found.n_steps == again.n_steps
    failed = run(2.0, 200)
    assert not failed.success and failed.n_steps == 200


@pytest.mark.parametrize("seed", [0, 3])
def test_langevin_md_is_reproducible_for_every_seed(seed):
    """OpenMM reads random seed 0 as "pick one at random": seed 0 (the configs' default) must still repeat."""
    from openmm_cgflow.systems.starting_data import run_langevin
    from openmm_cgflow.systems import create_system

    system = create_system("muller-brown")
    first, again = (run_langevin(system, 200, 50, seed=seed, friction_per_ps=10.0).frames for _ in range(2))
    other = run_langevin(system, 200, 50, seed=seed + 1, friction_per_ps=10.0).frames
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3


def test_spreading_in_more_than_two_dimensions_fills_a_ball():
    from openmm_cgflow.sampling.acquisition import spread_disc

    centres = np.array([[3.0, 0.0, -1.0, 0.5]])
    points = spread_disc(centres, 0.4, 20000, np.random.default_rng(1), periodic=True)
    offset = (points - centres + np.pi) % (2 * np.pi) - np.pi
    radius = np.linalg.norm(offset, axis=1)
    assert points.shape == (20000, 4) and radius.max() <= 0.4 + 1e-12 and (np.abs(points) <= np.pi).all()
    assert radius.mean() == pytest.approx(0.4 * 4 / 5, rel=0.01)  # E|r| = R d / (d + 1) in a uniform 4-ball
    assert np.abs(offset.mean(axis=0)).max() < 0.01


def test_coverage_gaps_are_probable_points_without_a_label_nearby():
    """The points a search that found no uncertain point missed: probable under the model (F within ln 1e3 kT of its
    minimum) and farther than the radius from every label, most probable first; on a periodic domain the distance
    wraps, so a label at -pi covers +pi."""
    from openmm_cgflow.sampling.acquisition import coverage_gaps

    grid = np.linspace(-1.55, 1.55, 32)[:, None]
    free_energy = np.where(grid[:, 0] < 1.0, 5.0 * (grid[:, 0] ** 2 - 1) ** 2 / 2.494, 0.2)  # flat beyond the labels, as an ensemble extrapolates
    free_energy[0] = 20.0  # improbable: never a gap
    labelled = np.linspace(-1.6, 1.0, 200)[:, None]
    gaps = coverage_gaps(grid, free_energy, labelled, radius=0.1)
    assert len(gaps) > 0 and (grid[gaps, 0] > 1.1 - 1e-9).all()
    assert set(np.flatnonzero((grid[:, 0] > 1.1) & (free_energy - free_energy.min() <= np.log(1e3)))) == set(gaps)
    assert list(free_energy[gaps]) == sorted(free_energy[gaps])
    assert len(coverage_gaps(grid, free_energy, np.linspace(-1.6, 1.6, 400)[:, None], radius=0.1)) == 0
    # periodic: labels on [-pi, -2] only; +3.1 rad lies 0.08 rad from -3.14 across the boundary
    angles = np.array([[3.1], [0.0]])
    near_boundary = coverage_gaps(angles, np.zeros(2), np.linspace(-np.pi, -2.0, 50)[:, None], radius=0.2, periodic=True)
    assert list(near_boundary) == [1]
    assert list(coverage_gaps(angles, np.zeros(2), np.linspace(-np.pi, -2.0, 50)[:, None], radius=0.2, periodic=False)) == [0, 1]
