"""One OpenMM Context that evaluates energies and forces of a batch of configurations: the unit of work of every
energy executor (in-process, a worker process, a Ray actor)."""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import openmm

from ..platforms import resolve_platform


class ContextEvaluator:
    """One OpenMM Context (from a System's XML) that evaluates energies (kJ/mol) and forces (kJ/mol/nm) of a batch of
    positions (B, n, 3) nm."""

    def __init__(self, system_xml: str, platform_name: str, properties: Dict[str, str]):
        system = openmm.XmlSerializer.deserialize(system_xml)
        integrator = openmm.VerletIntegrator(0.001)
        platform = resolve_platform(platform_name)
        self.context = openmm.Context(system, integrator, platform, properties)
        self._n_atoms = system.getNumParticles()

    def evaluate(self, positions: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        energies = np.empty(len(positions))
        forces = np.zeros((len(positions), self._n_atoms, 3))
        for i, x in enumerate(positions):
            self.context.setPositions(x)
            state = self.context.getState(getEnergy=True, getForces=True)
            energies[i] = _raw_energy(state)
            _read_forces(state, forces[i])
        return energies, forces


# OpenMM's native units are kJ/mol and kJ/mol/nm. State.getPotentialEnergy/getForces wrap their values in unit
# Quantities (and getForces probes its cache with dir()): ~11 us of a Müller-Brown evaluation's ~15 us, and
# 10-30 us of an alanine dipeptide one's ~220 us on one core (benchmarks/oracle_state_read.py). The SWIG layer
# below them fills our own arrays with the same numbers, bitwise; older/other OpenMM builds fall back to the
# public calls.
if hasattr(openmm.State, "_getVectorAsNumpy") and hasattr(openmm._openmm, "State_getPotentialEnergy"):
    def _raw_energy(state) -> float:
        return openmm._openmm.State_getPotentialEnergy(state)

    def _read_forces(state, out: np.ndarray) -> None:
        state._getVectorAsNumpy(openmm.State.Forces, out)
else:  # pragma: no cover - the pinned OpenMM has the SWIG layer
    def _raw_energy(state) -> float:
        return state.getPotentialEnergy()._value

    def _read_forces(state, out: np.ndarray) -> None:
        out[...] = state.getForces(asNumpy=True)._value
