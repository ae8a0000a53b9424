"""Plain Langevin MD in OpenMM, used for starting data (SPEC §2.2) and for MD baselines."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import openmm
import openmm.unit as unit

from ..energy.oracle import default_properties, openmm_random_seed, resolve_platform
from ..systems.base import CGSystem


@dataclass
class MDResult:
    """Frames (n_frames, n_atoms, 3) in nm and the number of integration steps (= energy evaluations)."""

    frames: np.ndarray
    n_steps: int


def run_langevin(
    cg_system: CGSystem,
    n_steps: int,
    save_every: int,
    seed: int,
    timestep_fs: float = 1.0,
    friction_per_ps: float = 1.0,
    platform: str = "Reference",
    minimize: bool = True,
    positions: Optional[np.ndarray] = None,
    properties: Optional[dict] = None,
) -> MDResult:
    """Minimise (optional), then run ``n_steps`` LangevinMiddle steps at the system's temperature,
    saving every ``save_every``-th frame. Minimiser force evaluations are not counted as MD steps.
    ``properties`` default to :func:`~openmm_cgflow.energy.oracle.default_properties` of the platform."""
    if n_steps < 1 or save_every < 1:
        raise ValueError("n_steps and save_every must be >= 1")
    integrator = openmm.LangevinMiddleIntegrator(
        cg_system.temperature * unit.kelvin, friction_per_ps / unit.picosecond, timestep_fs * unit.femtosecond
    )
    integrator.setRandomNumberSeed(openmm_random_seed(seed))
    context = openmm.Context(cg_system.system, integrator, resolve_platform(platform), default_properties(platform) if properties is None else properties)
    start = cg_system.check_positions(cg_system.positions if positions is None else positions)[0]
    context.setPositions(start)
    if minimize:
        openmm.LocalEnergyMinimizer.minimize(context)
    context.setVelocitiesToTemperature(cg_system.temperature * unit.kelvin, openmm_random_seed(seed))
    frames = []
    for _ in range(n_steps // save_every):
        integrator.step(save_every)
        frames.append(context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    return MDResult(np.asarray(frames), (n_steps // save_every) * save_every)
