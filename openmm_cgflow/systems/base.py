"""The CGSystem abstraction: an OpenMM System plus everything the method needs to know about it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import openmm
import openmm.unit as unit
import torch

#: Molar gas constant in kJ/(mol K), as OpenMM uses it.
MOLAR_GAS_CONSTANT = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)


def kT_in_kJ_per_mol(temperature_K: float) -> float:
    """Thermal energy kT in kJ/mol at ``temperature_K`` kelvin."""
    return MOLAR_GAS_CONSTANT * float(temperature_K)


@dataclass
class CGSystem:
    """An all-atom (fine-grained) OpenMM system together with its coarse-grained description.

    Attributes
    ----------
    name:
        Registry name, e.g. ``"muller-brown"``.
    system:
        The OpenMM ``System`` whose potential defines the Boltzmann distribution.
    topology:
        The OpenMM ``Topology`` (used for trajectories and for building internal coordinates).
    positions:
        A reference configuration, ``(n_atoms, 3)`` array in nm.
    temperature:
        Temperature in K; ``kT`` is derived from it.
    cg_dim, fg_dim:
        Number of CG coordinates s and of fine-grained coordinates the flow generates.
    cg_periodic:
        True where the CG coordinates are angles (periodic on [-pi, pi)).
    to_cartesian:
        ``(s, x_fg) -> (positions (B, n_atoms, 3) in nm, log|det J| of that map)``, torch, differentiable.
    from_cartesian:
        ``positions (B, n_atoms, 3) -> (s, x_fg)``, torch.
    metadata:
        Free-form facts stored in exported model files (CG definition, angle convention, ...).
    cg_domain:
        Range of the CG coordinates that is scored and explored.
    extras:
        System-specific helpers (e.g. the internal-coordinate transform of a molecule).
    cg_variable_forces:
        ``() -> [openmm.Force, ...]``: one new Force per CG coordinate whose potential energy *is* that coordinate
        in the model's frame (kJ/mol read as rad or nm), for OpenMM collective-variable tools such as
        ``app.Metadynamics``'s ``BiasVariable``. None where the system has not defined them.
    """

    name: str
    system: openmm.System
    topology: openmm.app.Topology
    positions: np.ndarray
    temperature: float
    cg_dim: int
    fg_dim: int
    cg_periodic: bool
    to_cartesian: Callable[[torch.Tensor, torch.Tensor], tuple]
    from_cartesian: Callable[[torch.Tensor], tuple]
    metadata: Dict[str, object] = field(default_factory=dict)
    cg_domain: Optional[tuple] = None
    extras: Dict[str, object] = field(default_factory=dict)
    cg_variable_forces: Optional[Callable[[], List[openmm.Force]]] = None

    @property
    def n_atoms(self) -> int:
        """Number of particles in the OpenMM System."""
        return self.system.getNumParticles()

    @property
    def kT(self) -> float:
        """Thermal energy in kJ/mol."""
        return kT_in_kJ_per_mol(self.temperature)

    @property
    def beta(self) -> float:
        """Inverse thermal energy in mol/kJ."""
        return 1.0 / self.kT

    def check_positions(self, positions) -> np.ndarray:
        """Return ``positions`` as a float64 ``(B, n_atoms, 3)`` array in nm, or raise a clear ValueError.

        Accepts a single ``(n_atoms, 3)`` configuration, a batch, or an ``openmm.unit.Quantity``.
        """
        if unit.is_quantity(positions):
            if not positions.unit.is_compatible(unit.nanometer):
                raise ValueError(f"{self.name}: positions must be a length (e.g. unit.nanometer), got a Quantity in {positions.unit}")
            positions = positions.value_in_unit(unit.nanometer)
        if isinstance(positions, torch.Tensor):
            positions = positions.detach().cpu().numpy()
        array = np.asarray(positions, dtype=np.float64)
        if array.ndim == 2:
            array = array[None]
        if array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(
                f"{self.name}: positions must have shape (n_configurations, {self.n_atoms}, 3) in nm, "
                f"got {tuple(np.shape(positions))}"
            )
        if array.shape[1] != self.n_atoms:
            raise ValueError(
                f"{self.name}: wrong atom count: the system has {self.n_atoms} particles, "
                f"the positions have {array.shape[1]}"
            )
        return array
