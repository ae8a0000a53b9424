"""The uncertainty search by OpenMM CG dynamics: an exploration backend beside Metropolis MC (SPEC §7).

Instead of Metropolis chains on the ensemble-mean PMF, ``n_chains`` replicas of the system's CG model
(:mod:`openmm_cgflow.forces.cg_dynamics`: the CG replica of the model's CG definition, e.g. Müller-Brown CG
particles or alanine-dipeptide backbone chains) run
Langevin dynamics at the system's temperature in one OpenMM Context, on the PMF force (the ensemble mean as
a TorchForce: one batched model call per step for all replicas). Their stationary distribution in s is
exp(-F), the same as the MC chains'. Every ``check_every`` steps the ensemble std at each replica's current s is
computed; a replica that has run more than ``min_steps`` steps stops (its first point with std > the
threshold is kept) and the search succeeds once ``n_wanted`` replicas have stopped (the first ``n_wanted`` by
replica index, as in the MC search). Dynamics moves along the PMF's gradient rather than by blind proposals,
and runs on any OpenMM platform.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from ..dynamics import LangevinDynamics
from ..export import ModelMetadata
from ..forces import cg_dynamics
from ..forces.pmf_force import check_platform_for_system
from ..systems import CGSystem
from .monte_carlo import UncertaintySearchResult


def cg_dynamics_search(
    ensemble: torch.nn.Module,
    cg_system: CGSystem,
    start: np.ndarray,
    n_wanted: int,
    std_threshold: float,
    min_steps: int,
    max_steps: int,
    seed: int,
    timestep_fs: float,
    friction_per_ps: float,
    check_every: int = 10,
    bounds: Optional[Tuple[float, float]] = None,
    platform: str = "CPU",
    backend: str = "torchforce",
) -> UncertaintySearchResult:
    """Langevin CG dynamics on the ensemble-mean PMF until ``n_wanted`` replicas reach std > ``std_threshold`` (kT).

    ``cg_system``: the system the ensemble was fitted on (its CG definition and temperature). ``start``:
    (n_chains, cg_dim) CG coordinates in the system's frame (rad or nm). ``bounds``: walls (nm) of a linear CG
    coordinate (default: its domain).
    ``max_steps``: MD steps before the search gives up (``success=False``).
    """
    start = np.asarray(start, dtype=np.float64).reshape(len(start), -1)
    n_chains = len(start)
    if n_wanted > n_chains:
        raise ValueError(f"cannot stop {n_wanted} replicas out of {n_chains}")
    walls = [tuple(bounds)] if bounds is not None else None
    system = cg_dynamics.cg_dynamics_system(cg_system, ensemble, n_chains, ModelMetadata.for_system(cg_system, "pmf_ensemble"),
                                            backend=backend, walls=walls)
    positions = cg_dynamics.replica_positions(cg_system.cg_definition, start)
    check_platform_for_system(system, platform)
    dynamics = LangevinDynamics(system, cg_system.temperature, timestep_fs, friction_per_ps, platform, random_seed=seed + 1)
    dynamics.start(positions, velocity_seed=seed + 1)
    stopped = np.zeros(n_chains, dtype=bool)
    stop_point = np.zeros_like(start)
    steps = 0
    while steps < max_steps:
        dynamics.step(check_every)
        steps += check_every
        x = dynamics.positions()
        s = np.asarray(cg_dynamics.replica_cg(cg_system.cg_definition, x), dtype=np.float64).reshape(n_chains, -1)
        if steps <= min_steps:
            continue
        with torch.no_grad():
            _, std = ensemble.mean_std(torch.as_tensor(s, dtype=torch.float64))
        new = (std.numpy() > std_threshold) & ~stopped
        stop_point[new] = s[new]
        stopped |= new
        if stopped.sum() >= n_wanted:
            chains = np.flatnonzero(stopped)[:n_wanted]
            return UncertaintySearchResult(torch.as_tensor(stop_point[chains]), torch.as_tensor(chains), steps, True)
    chains = np.flatnonzero(stopped)
    return UncertaintySearchResult(torch.as_tensor(stop_point[chains]), torch.as_tensor(chains), steps, False)
