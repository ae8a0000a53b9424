"""OPES on the CG coordinates (On-the-fly Probability Enhanced Sampling; Invernizzi & Parrinello 2020), with the
``openmm-opes`` package (installed with openmm-cgflow): the other enhanced-sampling baseline a user would pick beside
well-tempered metadynamics.

OPES biases the CG coordinates s (the system's ``cg_variable_forces``, in its CG frame) towards a target
distribution that flattens barriers up to ``barrier_kT``, from an on-the-fly kernel density estimate; its
free-energy estimate is the reweighted density, F(s) = -kT ln P(s) (``OPES.getFreeEnergy``), read off the grid of
the bias variables, interpolated to the scoring grid and scored like metadynamics' by forward KLD at log-spaced step
counts (the shared runner :func:`~openmm_cgflow.baselines.metadynamics.run_biased`). One MD step is one energy
evaluation. The kernel density's state (``OPES.getState``) and the OpenMM state are checkpointed, so a run resumes
exactly and extends with a larger ``steps``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit

from ..systems.base import CGSystem, kT_in_kJ_per_mol
from .metadynamics import free_energy_at, run_biased


@dataclass(frozen=True)
class OPESProtocol:
    """OPES settings. ``barrier_kT``: the free-energy barrier to overcome (kT; it sets the bias factor
    barrier / kT unless ``bias_factor`` is given); ``deposit_every``: MD steps between kernels; ``adaptive_variance``:
    kernel widths from the CG coordinates' running variance (updated every ``variance_every`` steps; PLUMED's
    default ADAPTIVE_SIGMA_STRIDE is 10 kernels), else the fixed ``width`` (the unbiased standard deviation, CG units);
    ``explore``: OPES-explore; ``correct_smoothing``: F from the kernel estimate with its smoothing bias removed
    (``getFreeEnergy(correctSmoothing=True)``); ``grid_points``: the bias grid per CG coordinate (0: 100); timestep_fs,
    friction_per_ps: Langevin."""

    barrier_kT: float = 20.0
    deposit_every: int = 500
    adaptive_variance: bool = True
    variance_every: int = 0
    width: float = 0.15
    bias_factor: float = 0.0
    explore: bool = False
    correct_smoothing: bool = False
    grid_points: int = 0
    timestep_fs: float = 1.0
    friction_per_ps: float = 1.0

    def __post_init__(self):
        for name in ("barrier_kT", "width", "timestep_fs", "friction_per_ps"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"OPES {name} must be a finite number > 0, got {getattr(self, name)}")
        if self.deposit_every < 1 or self.variance_every < 0 or self.grid_points < 0 or self.grid_points == 1:
            raise ValueError("OPES deposit_every must be >= 1, variance_every >= 0 (0: 10 kernels) and grid_points 0 (default) or >= 2")
        if self.bias_factor and not 1 < self.bias_factor < math.inf:
            raise ValueError(f"OPES bias_factor must be 0 (barrier / kT) or a finite number > 1, got {self.bias_factor}")


class OPESSampler:
    """What :func:`~openmm_cgflow.baselines.metadynamics.run_biased` needs of OPES."""

    name = "opes"
    files = ("opes_checkpoint.pt", "opes_snapshots.npz", "opes_baseline.json")
    state_key = "opes_state"
    method = "OPES (openmm-opes), F = -kT ln P from the reweighted kernel density"

    def __init__(self, protocol: OPESProtocol):
        self.protocol = protocol

    def build(self, system: openmm.System, cg_system: CGSystem) -> None:
        try:
            from openmm_opes.opes import OPES
        except ImportError:
            raise ValueError("the OPES baseline needs the openmm-opes package: pip install openmm-opes") from None
        protocol, kT = self.protocol, kT_in_kJ_per_mol(cg_system.temperature)
        if cg_system.cg_dim > 3:
            raise ValueError(f"OPES biases 1 to 3 collective variables; {cg_system.name} has {cg_system.cg_dim}")
        grid = protocol.grid_points or 100
        self.variables = [app.BiasVariable(force, lo, hi, protocol.width, periodic, grid)
                          for force, (lo, hi), periodic in zip(cg_system.cg_variable_forces(), cg_system.cg_domain, cg_system.cg_definition.periodic)]
        variance_every = (protocol.variance_every or protocol.deposit_every) if protocol.adaptive_variance else None
        self.opes = OPES(system, self.variables, cg_system.temperature * unit.kelvin, protocol.barrier_kT * kT * unit.kilojoule_per_mole,
                         protocol.deposit_every, variance_every, biasFactor=protocol.bias_factor or None, exploreMode=protocol.explore,
                         bounded=not all(cg_system.cg_definition.periodic))

    def step(self, simulation: app.Simulation, steps: int) -> None:
        self.opes.step(simulation, steps)

    def state(self) -> Dict[str, Any]:
        return {key: np.asarray(value) for key, value in self.opes.getState().items()}

    def restore(self, state, context: openmm.Context) -> None:
        self.opes.setState(state)
        self.opes.updateContext(context)

    def free_energy(self, points: np.ndarray, kT: float) -> np.ndarray:
        return free_energy_at(self, self.variables, points, kT)

    def getFreeEnergy(self):
        """F on the bias grid (kJ/mol), as :func:`~openmm_cgflow.baselines.metadynamics.free_energy_at` reads it."""
        return self.opes.getFreeEnergy(correctSmoothing=self.protocol.correct_smoothing)


def run_opes(cg_system: CGSystem, out: Path, steps: int, p_reference: Optional[np.ndarray], centres: np.ndarray,
             protocol: OPESProtocol = OPESProtocol(), seed: int = 0, platform: str = "CPU", resume: bool = False, progress: bool = True,
             chunk_steps: int = 100_000) -> Dict[str, Any]:
    """OPES of ``cg_system`` for ``steps`` MD steps into ``out``: writes ``opes_checkpoint.pt``, ``opes_snapshots.npz``
    and ``opes_baseline.json`` (as :func:`~openmm_cgflow.baselines.metadynamics.run_metadynamics`) and returns the
    summary."""
    return run_biased(OPESSampler(protocol), cg_system, out, steps, p_reference, centres, seed, platform, resume, progress, chunk_steps)
