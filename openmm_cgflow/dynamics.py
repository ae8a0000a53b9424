"""Langevin dynamics in OpenMM: the one place in the package that builds a LangevinMiddleIntegrator with its Context
and steps it (the idea of openmmtools' ``BaseIntegratorMove``).

Every simulation the package runs goes through :class:`LangevinDynamics`: the starting MD of a run, the MD and
metadynamics baselines, umbrella windows, CG dynamics on a learned PMF, and the uncertainty search by CG dynamics.
It knows OpenMM objects only (a System, positions in nm, a temperature in K), so it sits below the CG systems.

Seeds are OpenMM's own: ``random_seed`` seeds the integrator's noise and ``velocity_seed`` the initial velocities
(OpenMM reads 0 as "pick one at random"; callers map their run seed with
:func:`~openmm_cgflow.platforms.openmm_random_seed` or an offset, and keep that mapping so that their stored
checkpoints stay resumable bit for bit).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit

from .platforms import default_properties, resolve_platform


class LangevinDynamics:
    """LangevinMiddle dynamics of an OpenMM ``system`` at ``temperature_K`` (K), ``timestep_fs`` (fs) and
    ``friction_per_ps`` (1/ps) on ``platform`` (default properties: :func:`~openmm_cgflow.platforms.default_properties`).

    With a ``topology`` the Context belongs to an ``openmm.app.Simulation`` (:attr:`simulation`), for tools that
    step a Simulation (``app.Metadynamics``); otherwise it is a bare ``openmm.Context``.
    """

    def __init__(self, system: openmm.System, temperature_K: float, timestep_fs: float = 1.0, friction_per_ps: float = 1.0,
                 platform: str = "CPU", random_seed: Optional[int] = None, properties: Optional[Dict[str, str]] = None,
                 topology: Optional[app.Topology] = None):
        self.temperature_K = float(temperature_K)
        self.integrator = openmm.LangevinMiddleIntegrator(self.temperature_K * unit.kelvin, friction_per_ps / unit.picosecond,
                                                          timestep_fs * unit.femtosecond)
        if random_seed is not None:
            self.integrator.setRandomNumberSeed(int(random_seed))
        properties = default_properties(platform) if properties is None else dict(properties)
        self.simulation: Optional[app.Simulation] = None
        if topology is not None:
            self.simulation = app.Simulation(topology, system, self.integrator, resolve_platform(platform), properties)
            self.context = self.simulation.context
        else:
            self.context = openmm.Context(system, self.integrator, resolve_platform(platform), properties)

    def start(self, positions: np.ndarray, velocity_seed: int, minimize: bool = False) -> None:
        """Set ``positions`` (n, 3) nm, minimise the energy if asked (OpenMM's default tolerance), and draw velocities
        at the temperature with ``velocity_seed``.

        A minimisation that ends at a non-finite or higher energy is undone (the given positions are kept): with a
        Hamiltonian whose energy can fail, such as tight binding whose SCF does not converge at a trial step far
        from the start, OpenMM's minimiser can end in a broken structure, and dynamics from it would never recover."""
        self.context.setPositions(positions)
        if minimize:
            before = self.context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            openmm.LocalEnergyMinimizer.minimize(self.context)
            after = self.context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            if np.isfinite(before) and not (np.isfinite(after) and after <= before):
                self.context.setPositions(positions)
        self.context.setVelocitiesToTemperature(self.temperature_K * unit.kelvin, int(velocity_seed))

    def step(self, n_steps: int) -> None:
        """Advance ``n_steps`` integration steps."""
        self.integrator.step(int(n_steps))

    def positions(self) -> np.ndarray:
        """Current positions (n, 3) in nm."""
        return self.context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)

    def positions_and_forces(self) -> Tuple[np.ndarray, np.ndarray]:
        """Current positions (n, 3) nm and forces (n, 3) kJ/mol/nm."""
        state = self.context.getState(getPositions=True, getForces=True)
        return state.getPositions(asNumpy=True)._value, state.getForces(asNumpy=True)._value

    def positions_and_velocities(self) -> Tuple[np.ndarray, np.ndarray]:
        """Current positions (n, 3) nm and velocities (n, 3) nm/ps."""
        state = self.context.getState(getPositions=True, getVelocities=True)
        return state.getPositions(asNumpy=True)._value, state.getVelocities(asNumpy=True)._value

    def set_state(self, positions: np.ndarray, velocities: np.ndarray) -> None:
        """Continue from stored positions (nm) and velocities (nm/ps)."""
        self.context.setPositions(positions)
        self.context.setVelocities(velocities)

    def frames(self, n_frames: int, every: int, on_frame: Optional[Callable[[int], None]] = None) -> np.ndarray:
        """Run ``n_frames * every`` steps and return the positions after every ``every`` steps, (n_frames, n, 3) nm.
        ``on_frame(every)`` is called after each frame (a progress bar's ``update``)."""
        frames = []
        for _ in range(int(n_frames)):
            self.step(every)
            frames.append(self.positions())
            if on_frame is not None:
                on_frame(every)
        return np.asarray(frames)

    def checkpoint(self) -> bytes:
        """OpenMM's binary checkpoint of the Context (positions, velocities, integrator and random-number state)."""
        return self.context.createCheckpoint()

    def restore(self, checkpoint: bytes) -> None:
        """Continue from :meth:`checkpoint`'s bytes (OpenMM raises for a foreign or damaged state)."""
        self.context.loadCheckpoint(checkpoint)
