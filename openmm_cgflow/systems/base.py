"""The CGSystem abstraction: an OpenMM System plus everything the method needs to know about it."""
from __future__ import annotations

import inspect

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import openmm
import openmm.unit as unit
import torch

from .cg_definition import CGDefinition
from .description import SystemDescription
from .fine_grained import fine_grained_from_spec

#: Molar gas constant in kJ/(mol K), as OpenMM uses it.
MOLAR_GAS_CONSTANT = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)


def kT_in_kJ_per_mol(temperature_K: float) -> float:
    """Thermal energy kT in kJ/mol at ``temperature_K`` kelvin."""
    return MOLAR_GAS_CONSTANT * float(temperature_K)


@dataclass
class CGSystem:
    """An all-atom (fine-grained) OpenMM system together with its coarse-grained description: the only place
    that knows a molecule. Everything else (training, active learning, forces, CG dynamics, backmapping,
    baselines) asks it, and model files carry its :meth:`to_spec` so nothing downstream needs its name.

    Attributes
    ----------
    name:
        A label, e.g. ``"alanine-dipeptide"`` (registry name) or a user's file name; only used in messages.
    system, topology:
        The OpenMM ``System`` whose potential defines the Boltzmann distribution, and its ``Topology``.
    positions:
        A reference configuration, ``(n_atoms, 3)`` array in nm (minimised, for molecules).
    temperature:
        Temperature in K; ``kT`` is derived from it.
    cg_definition:
        The CG coordinates (dihedrals or linear) and the CG replica for dynamics
        (:class:`~openmm_cgflow.systems.cg_definition.CGDefinition`).
    fine_grained:
        The map between (s, x_fg) and Cartesian positions (:mod:`~openmm_cgflow.systems.fine_grained`).
    flow_circular_indices:
        Entries of x_fg that are periodic (uniform base distribution in the flow).
    chirality_centres:
        ``(centre, n1, n2, n3, n4)`` per stereocentre (neighbours sorted); the ``geometric`` sample filter keeps
        the handedness of ``positions`` at every centre.
    description:
        Facts stored in exported model files (force field, angle convention, known basins; :class:`SystemDescription`).
    sample_filters:
        Extra named filters (``positions (B, n, 3) -> bool mask``) beside ``geometric``, e.g. ALDP's ``fab``.
    references:
        Named reference PMFs for scoring: ``name -> f(n_bins, domain) -> (bin centres (n, cg_dim), p (n,))``.
    starting_data:
        Optional replacement of the default starting MD (e.g. a cached trajectory); same signature as
        :meth:`starting_frames` without ``self`` (``progress`` is passed only to a callable that takes it).
    """

    name: str
    system: openmm.System
    topology: openmm.app.Topology
    positions: np.ndarray
    temperature: float
    cg_definition: CGDefinition
    fine_grained: torch.nn.Module
    flow_circular_indices: Tuple[int, ...] = ()
    chirality_centres: Tuple[Tuple[int, int, int, int, int], ...] = ()
    description: SystemDescription = field(default_factory=SystemDescription)
    sample_filters: Dict[str, Callable] = field(default_factory=dict)
    references: Dict[str, Callable] = field(default_factory=dict)
    starting_data: Optional[Callable] = None

    def __post_init__(self):
        self.positions = np.asarray(self.positions, dtype=np.float64)
        self.cg_definition.check_atoms(self.system.getNumParticles())
        if self.fine_grained.cg_dim != self.cg_definition.dim:
            raise ValueError(f"{self.name}: the fine-grained map has {self.fine_grained.cg_dim} CG coordinates, the CG definition {self.cg_definition.dim}")
        bad = [i for i in self.flow_circular_indices if not 0 <= i < self.fine_grained.fg_dim]
        if bad:
            raise ValueError(f"{self.name}: flow_circular_indices {bad} out of range for {self.fine_grained.fg_dim} fine-grained coordinates")

    # ------------------------------------------------------------------ CG description
    @property
    def cg_dim(self) -> int:
        """Number of CG coordinates s."""
        return self.cg_definition.dim

    @property
    def fg_dim(self) -> int:
        """Number of fine-grained coordinates the flow generates."""
        return self.fine_grained.fg_dim

    @property
    def cg_periodic(self) -> bool:
        """True when every CG coordinate is an angle (periodic on [-pi, pi))."""
        return all(self.cg_definition.periodic)

    @property
    def cg_domain(self) -> Tuple[Tuple[float, float], ...]:
        """(lower, upper) per CG coordinate (rad or nm): the range scored and explored."""
        return self.cg_definition.domain

    def to_cartesian(self, s: torch.Tensor, x_fg: torch.Tensor):
        """``(s, x_fg) -> (positions (B, n_atoms, 3) nm, ln|det dx/d(s, x_fg)|)``, torch, differentiable."""
        return self.fine_grained.to_cartesian(s, x_fg)

    def from_cartesian(self, positions: torch.Tensor):
        """``positions (B, n_atoms, 3) nm -> (s, x_fg)``, torch."""
        return self.fine_grained.from_cartesian(torch.as_tensor(positions, dtype=torch.float64))

    def cg_values(self, positions) -> np.ndarray:
        """CG coordinates (B, cg_dim) of positions (B, n_atoms, 3) nm, computed from the CG definition."""
        return self.cg_definition.values(self.check_positions(positions))

    def cg_variable_forces(self) -> List[openmm.Force]:
        """One new Force per CG coordinate whose potential energy *is* that coordinate (kJ/mol read as rad or
        nm), for OpenMM collective-variable tools such as ``app.Metadynamics``' ``BiasVariable``."""
        return self.cg_definition.variable_forces()

    # ------------------------------------------------------------------ sampling hooks
    def chirality_mask(self, positions) -> torch.Tensor:
        """True where every stereocentre has the handedness it has in :attr:`positions`."""
        x = torch.as_tensor(positions, dtype=torch.float64)
        reference = torch.as_tensor(self.positions, dtype=torch.float64)[None]
        keep = torch.ones(x.shape[0], dtype=torch.bool)
        for centre in self.chirality_centres:
            keep &= torch.sign(_signed_volume(x, centre)) == torch.sign(_signed_volume(reference, centre))
        return keep

    def sample_filter(self, kind: str) -> Optional[Callable]:
        """The filter ``energy_training.chirality_filter`` names: None for ``none``; ``geometric`` keeps the
        reference handedness at every stereocentre found in the topology (None for a molecule without one: there
        is nothing to keep, and the default recipe works for every molecule); other kinds come from
        :attr:`sample_filters`."""
        if kind == "none":
            return None
        if kind in self.sample_filters:
            return self.sample_filters[kind]
        if kind == "geometric":
            return self.chirality_mask if self.chirality_centres else None
        known = ["none", "geometric"] + sorted(self.sample_filters)
        raise ValueError(f"sample filter {kind!r} is not defined for {self.name} (available: {', '.join(known)})")

    def starting_frames(self, n_frames: int, save_every: int, equilibration_steps: int, timestep_fs: float,
                        friction_per_ps: float, seed: int, platform: str, progress: bool = False) -> Tuple[np.ndarray, int]:
        """Starting data: (frames (n_frames, n_atoms, 3) nm, MD steps they cost). Default: minimise, then
        LangevinMiddle MD at the system's temperature, keeping the last ``n_frames`` frames saved every
        ``save_every`` steps after ``equilibration_steps``; made once and cached
        (:func:`~openmm_cgflow.systems.starting_data.cached_starting_frames`). ``progress``: a progress bar on
        stderr while the MD runs (nothing when the frames come from the cache)."""
        if self.starting_data is not None:
            extra = {"progress": progress} if "progress" in inspect.signature(self.starting_data).parameters else {}
            return self.starting_data(n_frames, save_every, equilibration_steps, timestep_fs, friction_per_ps, seed, platform, **extra)
        from .starting_data import cached_starting_frames

        frames, md_steps, _ = cached_starting_frames(self, n_frames, save_every, equilibration_steps, timestep_fs, friction_per_ps,
                                                     seed, platform, progress=progress)
        return frames, md_steps

    @classmethod
    def from_openmm(cls, system: openmm.System, topology: openmm.app.Topology, positions, temperature, cg_dihedrals,
                    name: str = "molecule", minimize: bool = True, description: Optional[SystemDescription] = None) -> "CGSystem":
        """Any molecule: an OpenMM System (no constraints), its Topology, positions (nm or a Quantity), temperature
        (K or a Quantity) and the CG dihedrals as atom quadruples (or a mapping name -> quadruple); see
        :func:`openmm_cgflow.systems.molecule.molecule_fields`."""
        from .molecule import molecule_fields

        return cls(**molecule_fields(system, topology, positions, temperature, cg_dihedrals, name=name, minimize=minimize,
                                     description=description))

    # ------------------------------------------------------------------ serialisation
    def to_spec(self) -> Dict[str, object]:
        """Everything needed to rebuild this system's Hamiltonian and CG maps, as JSON-able data (the System as
        OpenMM XML); model files carry it. Hooks (sample filters, references, starting data) are not included."""
        return {
            "name": self.name,
            "system_xml": openmm.XmlSerializer.serialize(self.system),
            "topology": topology_to_dict(self.topology),
            "positions_nm": self.positions.tolist(),
            "temperature_K": float(self.temperature),
            "cg_definition": self.cg_definition.to_dict(),
            "fine_grained": self.fine_grained.spec(),
            "flow_circular_indices": [int(i) for i in self.flow_circular_indices],
            "chirality_centres": [list(c) for c in self.chirality_centres],
            "metadata": self.description.to_dict(),
        }

    @classmethod
    def from_spec(cls, spec: Dict[str, object]) -> "CGSystem":
        """Rebuild a CGSystem from :meth:`to_spec` (a ValueError names a missing or malformed field)."""
        required = ("name", "system_xml", "topology", "positions_nm", "temperature_K", "cg_definition", "fine_grained")
        missing = [key for key in required if not isinstance(spec, dict) or key not in spec]
        if missing:
            raise ValueError(f"a CG system description lacks {', '.join(missing)}")
        try:
            system = openmm.XmlSerializer.deserialize(spec["system_xml"])
        except Exception as error:  # OpenMM raises a bare Exception for malformed XML
            raise ValueError(f"the CG system description holds an unreadable OpenMM System ({' '.join(str(error).split())[:120]})") from None
        return cls(
            name=str(spec["name"]),
            system=system,
            topology=topology_from_dict(spec["topology"]),
            positions=np.asarray(spec["positions_nm"], dtype=np.float64),
            temperature=float(spec["temperature_K"]),
            cg_definition=CGDefinition.from_dict(spec["cg_definition"]),
            fine_grained=fine_grained_from_spec(spec["fine_grained"]),
            flow_circular_indices=tuple(int(i) for i in spec.get("flow_circular_indices", [])),
            chirality_centres=tuple(tuple(int(a) for a in c) for c in spec.get("chirality_centres", [])),
            description=SystemDescription.from_dict(spec.get("metadata", {})),
        )

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
        try:
            array = np.asarray(positions, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{self.name}: positions must be numbers (nm), an (n_atoms, 3) or (n_configurations, n_atoms, 3) array "
                             "or a Quantity") from None
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


def _signed_volume(x: torch.Tensor, centre: Sequence[int]) -> torch.Tensor:
    """det[n2 - n1, n3 - n1, n4 - n1] of a stereocentre's four neighbours (B,)."""
    _, a, b, c, d = centre
    return (torch.linalg.cross(x[:, b] - x[:, a], x[:, c] - x[:, a], dim=-1) * (x[:, d] - x[:, a])).sum(-1)


def topology_to_dict(topology: openmm.app.Topology) -> Dict[str, object]:
    """An OpenMM Topology as JSON-able data: chains of residues of atoms (name, element symbol), and bonds."""
    chains = []
    for chain in topology.chains():
        residues = []
        for residue in chain.residues():
            atoms = [[atom.name, atom.element.symbol if atom.element is not None else None] for atom in residue.atoms()]
            residues.append({"name": residue.name, "id": residue.id, "atoms": atoms})
        chains.append({"id": chain.id, "residues": residues})
    return {"chains": chains, "bonds": [[a.index, b.index] for a, b in topology.bonds()]}


def topology_from_dict(data: Dict[str, object]) -> openmm.app.Topology:
    """Inverse of :func:`topology_to_dict`."""
    from openmm.app import Element, Topology

    topology = Topology()
    atoms = []
    for chain_data in data["chains"]:
        chain = topology.addChain(chain_data.get("id"))
        for residue_data in chain_data["residues"]:
            residue = topology.addResidue(residue_data["name"], chain, residue_data.get("id"))
            for name, symbol in residue_data["atoms"]:
                atoms.append(topology.addAtom(name, Element.getBySymbol(symbol) if symbol else None, residue))
    for a, b in data["bonds"]:
        topology.addBond(atoms[a], atoms[b])
    return topology
