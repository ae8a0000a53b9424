"""CG dynamics on a learned PMF in OpenMM.

Müller-Brown: one particle per replica at (x, y, z) with U = kT F(s) + k_perp/2 s_perp^2 + k_z/2 z^2 (+ walls),
s = x - y, s_perp = x + y. The map (x, y) -> (s, s_perp) is linear (constant Jacobian) and the energy is a sum
of a term in s and terms in the other coordinates, so the Boltzmann marginal of s is exactly exp(-F(s)) between
the walls. Flat-bottomed harmonic walls keep s inside the domain the PMF was learned on (outside it the
ensemble only extrapolates). Many replicas share one Context and one batched model call.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import openmm
import openmm.unit as unit
from torch import nn

from ..systems.base import kT_in_kJ_per_mol
from ..systems.muller_brown import MB_CG_DOMAIN, MB_TEMPERATURE
from .pmf_force import create_pmf_force


def muller_brown_cg_system(model: Union[str, Path, nn.Module], n_replicas: int, metadata: Optional[dict] = None,
                           backend: str = "torchforce", k_perp_kT: float = 10.0, k_z_kT: float = 10.0,
                           walls: Tuple[float, float] = MB_CG_DOMAIN, k_wall_kT: float = 1000.0, mass_dalton: float = 1.0) -> openmm.System:
    """An OpenMM System of ``n_replicas`` CG particles on the PMF ``model`` (spring constants in kT/nm^2)."""
    kT = kT_in_kJ_per_mol(MB_TEMPERATURE)
    system = openmm.System()
    for _ in range(n_replicas):
        system.addParticle(mass_dalton)
    restraint = openmm.CustomExternalForce(
        "0.5*k_perp*(x + y)^2 + 0.5*k_z*z^2 + 0.5*k_wall*(max(0, s_lo - (x - y))^2 + max(0, (x - y) - s_hi)^2)"
    )
    for name, value in (("k_perp", k_perp_kT * kT), ("k_z", k_z_kT * kT), ("k_wall", k_wall_kT * kT), ("s_lo", walls[0]), ("s_hi", walls[1])):
        restraint.addGlobalParameter(name, value)
    for i in range(n_replicas):
        restraint.addParticle(i, [])
    restraint.setName("CG restraints (s_perp, z, walls on s)")
    system.addForce(restraint)
    system.addForce(create_pmf_force(model, metadata, backend=backend, n_replicas=n_replicas, system=system))
    return system


def positions_for_s(s: np.ndarray) -> np.ndarray:
    """Positions (n, 3) nm with the given s = x - y and s_perp = z = 0."""
    s = np.asarray(s, dtype=np.float64).ravel()
    return np.stack([s / 2, -s / 2, np.zeros_like(s)], axis=-1)


def run_cg_langevin(system: openmm.System, positions: np.ndarray, n_steps: int, record_every: int, seed: int = 0,
                    timestep_fs: float = 5.0, friction_per_ps: float = 10.0, temperature_K: float = MB_TEMPERATURE,
                    platform: str = "CPU") -> np.ndarray:
    """Langevin dynamics of the CG System; returns s = x - y per recorded frame and replica, (frames, replicas)."""
    from ..energy.oracle import default_properties, resolve_platform

    integrator = openmm.LangevinMiddleIntegrator(temperature_K * unit.kelvin, friction_per_ps / unit.picosecond, timestep_fs * unit.femtosecond)
    integrator.setRandomNumberSeed(seed + 1)
    context = openmm.Context(system, integrator, resolve_platform(platform), default_properties(platform))
    context.setPositions(positions)
    context.setVelocitiesToTemperature(temperature_K * unit.kelvin, seed + 1)
    frames = []
    for _ in range(n_steps // record_every):
        integrator.step(record_every)
        x = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        frames.append(x[:, 0] - x[:, 1])
    return np.asarray(frames)
