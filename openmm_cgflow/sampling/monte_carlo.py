"""Metropolis Monte Carlo in CG space on a learned PMF, with the ensemble-uncertainty stop (SPEC §7).

All chains move at once (vectorised). Energies are free energies in kT, so acceptance is
min(1, exp(-(F_new - F_old))).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch

from ..coordinates.geometry import wrap_angle


@dataclass
class UncertaintySearchResult:
    """Points where chains stopped (n_found, cg_dim), chain indices, and the number of MC steps run."""

    points: torch.Tensor
    chains: torch.Tensor
    n_steps: int
    success: bool


def ensemble_evaluator(ensemble: torch.nn.Module, precision: str = "float64") -> Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]:
    """``points (B, cg_dim) -> (mean, std)`` of the ensemble in kT, without gradients, returned in the points'
    dtype. ``precision`` "float32" evaluates a single-precision copy (the member MLPs' batched products are
    compute-bound: about half the time); the chains themselves stay in the points' precision."""
    if precision == "float64":
        def evaluate(points: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
            with torch.no_grad():
                return ensemble.mean_std(points)

        return evaluate
    if precision != "float32":
        raise ValueError(f"unknown precision '{precision}' (use 'float32' or 'float64')")
    single = copy.deepcopy(ensemble).to(torch.float32)

    def evaluate_single(points: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            mean, std = single.mean_std(points.to(torch.float32))
        return mean.to(points.dtype), std.to(points.dtype)

    return evaluate_single


def _metropolis_step(evaluate, x, f, aux, step_size, generator, periodic, active, bounds=None):
    """One vectorised Metropolis step; ``evaluate(x) -> (F in kT, aux)``; frozen chains (``~active``) stay put.
    Proposals outside ``bounds`` (lower, upper), if given, are rejected (the target is restricted to the box)."""
    proposal = x + step_size * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    if periodic:
        proposal = wrap_angle(proposal)
    f_new, aux_new = evaluate(proposal)
    u = torch.rand(x.shape[0], generator=generator, dtype=x.dtype)
    accept = (torch.log(u) < -(f_new - f)) & active
    if bounds is not None:
        accept = accept & ((proposal >= bounds[0]) & (proposal <= bounds[1])).all(-1)
    x = torch.where(accept[:, None], proposal, x)
    return x, torch.where(accept, f_new, f), torch.where(accept, aux_new, aux), accept


def metropolis(
    free_energy: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    n_steps: int,
    step_size: float,
    generator: torch.Generator,
    periodic: bool = False,
) -> Tuple[torch.Tensor, float]:
    """Plain Metropolis chains on ``free_energy`` (kT). Returns the trajectory (n_steps, n_chains, dim)
    and the acceptance rate."""

    def evaluate(points):
        f = free_energy(points)
        return f, f

    x = start.clone()
    f, aux = evaluate(x)
    active = torch.ones(x.shape[0], dtype=torch.bool)
    trajectory = torch.empty((n_steps,) + tuple(x.shape), dtype=x.dtype)
    accepted = 0
    for t in range(n_steps):
        x, f, aux, acc = _metropolis_step(evaluate, x, f, aux, step_size, generator, periodic, active)
        accepted += int(acc.sum())
        trajectory[t] = x
    return trajectory, accepted / (n_steps * x.shape[0])


def uncertainty_search(
    ensemble: torch.nn.Module,
    start: torch.Tensor,
    n_wanted: int,
    step_size: float,
    std_threshold: float,
    min_steps: int,
    max_steps: int,
    generator: torch.Generator,
    periodic: bool = False,
    bounds: Optional[Tuple[float, float]] = None,
    precision: str = "float64",
) -> UncertaintySearchResult:
    """Run Metropolis chains on the ensemble-mean PMF until ``n_wanted`` chains have stopped.

    After every step, a chain that is still running stops (freezes) if the ensemble std at its current
    state exceeds ``std_threshold`` (kT) and it has taken more than ``min_steps`` steps. The first
    ``n_wanted`` stopped chains by chain index are returned. If ``max_steps`` pass first, the search
    fails (``success=False``) and returns the chains that did stop. ``bounds`` = (lower, upper) confines
    the chains to the CG range of interest (proposals outside are rejected). ``precision``: see
    :func:`ensemble_evaluator`.
    """
    n_chains = start.shape[0]
    if n_wanted > n_chains:
        raise ValueError(f"cannot stop {n_wanted} chains out of {n_chains}")
    evaluate = ensemble_evaluator(ensemble, precision)

    x = start.clone()
    f, std = evaluate(x)
    running = torch.ones(n_chains, dtype=torch.bool)
    steps = 0
    while steps < max_steps:
        x, f, std, _ = _metropolis_step(evaluate, x, f, std, step_size, generator, periodic, running, bounds)
        steps += 1
        if steps > min_steps:
            running = running & ~(std > std_threshold)
            if int((~running).sum()) >= n_wanted:
                chains = torch.nonzero(~running).flatten()[:n_wanted]
                return UncertaintySearchResult(x[chains].clone(), chains, steps, True)
    chains = torch.nonzero(~running).flatten()
    return UncertaintySearchResult(x[chains].clone(), chains, steps, False)


def uncertainty_weighted_search(
    ensemble: torch.nn.Module,
    start: torch.Tensor,
    n_steps: int,
    step_size: float,
    generator: torch.Generator,
    periodic: bool = False,
    bounds: Optional[Tuple[float, float]] = None,
    power: float = 2.0,
    precision: str = "float64",
) -> UncertaintySearchResult:
    """Metropolis chains on the uncertainty-weighted Boltzmann density exp(-F(s)) std(s)^power (F, std in kT)
    for ``n_steps`` steps; returns every chain's final state.

    Why this target: the forward KLD of a PMF with errors dF is ~ 1/2 sum_s p(s) (dF(s) - <dF>)^2, so a new label
    at s is worth about p(s) std(s)^2: these chains put new points where the model is both probable and uncertain,
    instead of stopping at the first point whose std exceeds a fixed threshold (which, once the ensemble std is of
    the order of the label noise everywhere, is next to the chains' starting points).
    """

    mean_std = ensemble_evaluator(ensemble, precision)

    def evaluate(points):
        mean, std = mean_std(points)
        energy = mean - power * torch.log(std.clamp_min(1e-6))
        return energy, energy

    x = start.clone()
    energy, aux = evaluate(x)
    running = torch.ones(x.shape[0], dtype=torch.bool)
    for _ in range(n_steps):
        x, energy, aux, _ = _metropolis_step(evaluate, x, energy, aux, step_size, generator, periodic, running, bounds)
    return UncertaintySearchResult(x.clone(), torch.arange(x.shape[0]), n_steps, True)
