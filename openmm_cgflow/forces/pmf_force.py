"""The learned PMF as an OpenMM Force.

:func:`create_pmf_force` wraps a PMF ensemble (a model file written by :mod:`openmm_cgflow.export`, or a live
:class:`~openmm_cgflow.pmf.PMFEnsemble`) in a TorchScript module that computes the CG coordinates from the
particle positions and returns ``scale * kT * F(s)`` in kJ/mol; forces are its negative gradient. Backends:

* ``"torchforce"``: an ``openmmtorch.TorchForce`` (runs inside the Context on Reference, CPU and CUDA; the model
  is frozen when the Context is created, so rebuild the Context after retraining);
* ``"pythonforce"``: an ``openmm.PythonForce`` (OpenMM >= 8.5) calling the same TorchScript module from Python;
* ``"cmap"`` (dihedral CG coordinates, e.g. alanine dipeptide's phi/psi): the PMF tabulated on a periodic grid
  as an ``openmm.CMAPTorsionForce`` (bicubic interpolation), a frozen copy that runs at the speed of a torsion
  term on every platform: the choice for long biased all-atom runs. Its error is the interpolation error of the
  grid (:func:`tabulated_pmf_force`).

Both serialise with ``XmlSerializer`` (TorchForce stores the model file; PythonForce pickles a callable that
holds the TorchScript archive as bytes, never arbitrary objects). With openmmtorch 1.5 on OpenMM 8.6.1,
``XmlSerializer.deserialize`` of a TorchForce fails ("Unknown property 'encodedFileContents'", or a crash once
the plugins are reloaded); :func:`torchforce_from_xml` rebuilds it from the model embedded in the XML instead.
"""
from __future__ import annotations

import math

import io
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import openmm
import openmm.unit as unit
import torch
from torch import nn

from ..export import ModelFileError, ModelMetadata, load_model
from ..systems.cg_coordinates import cg_module_from_definition

BACKENDS = ("torchforce", "pythonforce", "cmap")
#: Why a TorchForce must not meet the OpenCL platform: the process would die, not raise.
OPENCL_TORCHFORCE_BROKEN = (
    "openmmtorch 1.5's OpenCL TorchForce plugin is broken with OpenMM >= 8.5 (it needs the missing symbol "
    "ContextImpl::getPositions and kills the process when a Context is created); use backend='pythonforce' on "
    "OpenCL, or the Reference, CPU or CUDA platform"
)


def check_platform_for_system(system: openmm.System, platform: str) -> None:
    """Raise a ValueError (instead of letting the process crash) if ``system`` holds a TorchForce and
    ``platform`` is OpenCL."""
    if platform != "OpenCL":
        return
    try:
        import openmmtorch
    except ImportError:  # pragma: no cover - no openmm-torch, no TorchForce
        return
    if any(openmmtorch.TorchForce.isinstance(system.getForce(i)) for i in range(system.getNumForces())):
        raise ValueError(OPENCL_TORCHFORCE_BROKEN)


class PMFEnergy(nn.Module):
    """positions (n_particles, 3) nm -> PMF energy (kJ/mol): scale * kT * sum over replicas of F(s)."""

    def __init__(self, cg: nn.Module, pmf: nn.Module, kT_kJ_per_mol: float, scale: float = 1.0):
        super().__init__()
        self.cg = cg
        self.pmf = pmf
        self.kT = float(kT_kJ_per_mol)
        self.scale = float(scale)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        mean, _ = self.pmf.mean_std(self.cg(positions))
        return (self.scale * self.kT) * mean.sum()

    @torch.jit.export
    def free_energy(self, positions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(s, F mean, F std) per replica, F in kT."""
        s = self.cg(positions)
        mean, std = self.pmf.mean_std(s)
        return s, mean, std


def load_torch_plugins() -> None:
    """Load openmm-torch's platform plugins if ``import openmm`` ran before ``import torch``: they link libraries
    (e.g. libnvrtc) that only importing torch puts on the search path, so OpenMM's start-up load failed and a
    Context would report "does not support all required kernels". Loading them again now succeeds."""
    import re

    for failure in openmm.Platform.getPluginLoadFailures():
        match = re.match(r"Error loading library (\S*OpenMMTorch\w*\.(?:so|dylib|dll)): ", failure)
        if match and "OpenCL" not in match.group(1):
            try:
                openmm.Platform.loadPluginLibrary(match.group(1))
            except Exception:  # noqa: BLE001 - e.g. the CUDA plugin without a GPU; the others still load
                pass


def check_replica_atoms(definition, replica_atoms: Optional[Sequence[int]]) -> Optional[List[int]]:
    """``replica_atoms`` as distinct atom indices of the model's molecule, or a ValueError naming the bad entry."""
    if replica_atoms is None:
        return None
    atoms = []
    for a in replica_atoms:
        if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
            raise ValueError(f"replica_atoms must be atom indices (integers), got {a!r}")
        if a < 0 or (definition.n_atoms and a >= definition.n_atoms):
            raise ValueError(f"replica_atoms: atom {int(a)} is out of range for the model's molecule of {definition.n_atoms} atoms (0-based)")
        atoms.append(int(a))
    if len(set(atoms)) != len(atoms):
        raise ValueError(f"replica_atoms must be distinct, got {list(replica_atoms)}")
    return atoms


def check_model_fits_system(metadata: ModelMetadata, system: openmm.System, n_replicas: int, replica_atoms: Optional[Sequence[int]] = None,
                            check_masses: bool = True) -> None:
    """Refuse (one line naming the model and the System) a System the model was not made for: fewer particles than
    ``n_replicas`` copies of the model's molecule (or of its ``replica_atoms``); CG atoms whose masses differ from
    those the model recorded (beyond 0.1 %; ``check_masses=False`` for hydrogen-mass repartitioning); consecutive
    atoms of a CG dihedral that the System does not bond (where it has bonds at all)."""
    definition = metadata.definition()
    local = list(replica_atoms) if replica_atoms is not None else list(range(definition.n_atoms or (max(definition.atoms) + 1)))
    size = len(local)
    if system.getNumParticles() < size * n_replicas:
        raise ValueError(f"the PMF model of '{metadata.system}' needs {size * n_replicas} particles ({n_replicas} replica(s) of {size}), "
                         f"but the System has {system.getNumParticles()}")
    replica = definition.replica
    recorded = dict(zip(replica.atoms, replica.masses)) if hasattr(replica, "atoms") else (
        {definition.coordinates[0].particle: replica.mass} if replica is not None else {})
    if check_masses:
        for atom, mass in recorded.items():
            if atom not in local:
                continue
            for r in range(n_replicas):
                particle = r * size + local.index(atom)
                found = system.getParticleMass(particle).value_in_unit(unit.dalton)
                if abs(found - mass) > 1e-3 * max(abs(mass), 1.0):
                    raise ValueError(f"the PMF model of '{metadata.system}' does not fit this System: its CG atom {atom} has mass {mass:g} Da, "
                                     f"the System's particle {particle} {found:g} Da (another molecule or atom order? for "
                                     "hydrogen-mass repartitioning use check_masses=False)")
    bonded = set()
    for force in system.getForces():
        if isinstance(force, openmm.HarmonicBondForce):
            bonded.update(frozenset(force.getBondParameters(i)[:2]) for i in range(force.getNumBonds()))
    bonded.update(frozenset(system.getConstraintParameters(i)[:2]) for i in range(system.getNumConstraints()))
    if bonded and definition.kind == "dihedral":
        for cv in definition.coordinates:
            if not all(a in local for a in cv.atoms):
                continue
            for a, b in zip(cv.atoms[:-1], cv.atoms[1:]):
                pa, pb = local.index(a), local.index(b)
                if frozenset((pa, pb)) not in bonded:
                    raise ValueError(f"the PMF model of '{metadata.system}' does not fit this System: its CG dihedral '{cv.name}' needs "
                                     f"particles {pa} and {pb} bonded, and the System does not bond them")


def pmf_energy_module(model: Union[str, Path, nn.Module], metadata: Optional[ModelMetadata] = None, scale: float = 1.0,
                      n_replicas: int = 1, replica_atoms: Optional[Sequence[int]] = None) -> Tuple[torch.jit.ScriptModule, ModelMetadata]:
    """The scripted :class:`PMFEnergy` of a PMF model file (or a live ensemble with its
    :class:`~openmm_cgflow.export.ModelMetadata`); ``replica_atoms`` as in
    :func:`~openmm_cgflow.systems.cg_coordinates.cg_module_from_definition`."""
    if isinstance(model, (str, Path)):
        ensemble, metadata = load_model(model, expected_kind="pmf_ensemble")
    else:
        if not isinstance(metadata, ModelMetadata):
            raise ValueError("a live PMF ensemble needs its ModelMetadata (ModelMetadata.for_system(cg_system, 'pmf_ensemble')); "
                             "or pass a model file")
        ensemble = model
    if metadata.cg_dim is None:
        raise ModelFileError("PMF model metadata is missing the field 'cg_dim'")
    try:
        definition = metadata.definition()
    except ValueError as error:
        raise ModelFileError(str(error)) from None
    replica_atoms = check_replica_atoms(definition, replica_atoms)
    cg = cg_module_from_definition(definition, n_replicas, replica_atoms=replica_atoms)
    module = PMFEnergy(cg, ensemble, metadata.kT, scale)
    probe = cg(torch.zeros(cg.n_particles, 3, dtype=torch.float64))
    if probe.shape[-1] != metadata.cg_dim:
        raise ModelFileError(f"the model takes {metadata.cg_dim} CG coordinates but its CG definition gives {probe.shape[-1]}")
    return torch.jit.script(module), metadata


class TorchScriptEnergy:
    """A picklable PythonForce computation: holds a TorchScript archive as bytes, loads it lazily, and returns
    (energy kJ/mol, forces kJ/mol/nm) by autograd."""

    def __init__(self, archive: bytes):
        self.archive = archive
        self._module = None

    def __getstate__(self):
        return {"archive": self.archive}

    def __setstate__(self, state):
        self.archive = state["archive"]
        self._module = None

    def __call__(self, state):
        if self._module is None:
            self._module = torch.jit.load(io.BytesIO(self.archive), map_location="cpu")
        x = torch.tensor(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer), dtype=torch.float64, requires_grad=True)
        energy = self._module(x)
        (grad,) = torch.autograd.grad(energy, x)
        return float(energy.detach()), (-grad).numpy()


def create_pmf_force(model: Union[str, Path, nn.Module], metadata: Optional[ModelMetadata] = None, backend: str = "torchforce",
                     scale: float = 1.0, n_replicas: int = 1, system: Optional[openmm.System] = None,
                     replica_atoms: Optional[Sequence[int]] = None, check_masses: bool = True) -> openmm.Force:
    """An OpenMM Force applying ``scale`` x the learned PMF (kJ/mol) to a System of ``n_replicas`` copies of the
    model's molecule (its particles first, in the model system's order; or, with ``replica_atoms``, copies of a
    subset of its atoms: ``replica_atoms[j]`` is the model atom that particle j of a replica stands for).

    ``model``: a PMF model file from :func:`openmm_cgflow.export.save_model` (or ``cgflow run``'s
    ``models/pmf_ensemble.pt``), or a live ``PMFEnsemble`` with its :class:`~openmm_cgflow.export.ModelMetadata`. ``system``: if given,
    the model is checked to fit it (:func:`check_model_fits_system`: particle count, the CG atoms' masses, the CG
    dihedrals' bonds). ``scale``: e.g. -0.5 for a bias of half the PMF's depth.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend '{backend}': use one of {', '.join(BACKENDS)}")
    if isinstance(n_replicas, bool) or int(n_replicas) != n_replicas or n_replicas < 1:
        raise ValueError(f"n_replicas must be an integer >= 1, got {n_replicas!r}")
    if not math.isfinite(float(scale)):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    if backend == "cmap":
        return tabulated_pmf_force(model, metadata, scale, n_replicas=n_replicas, system=system, replica_atoms=replica_atoms,
                                   check_masses=check_masses)
    module, metadata = pmf_energy_module(model, metadata, scale, n_replicas, replica_atoms)
    n_particles = module.cg.n_particles
    if system is not None:
        check_model_fits_system(metadata, system, n_replicas, replica_atoms, check_masses)
    force = force_from_module(module, backend, n_particles, system)
    force.setName(f"cgflow PMF ({metadata.system}, scale {scale:g})")
    return force


#: Default CMAP grid (10 degree spacing). OpenMM's CPU platform re-derives the bicubic coefficients of the map
#: at every evaluation, so its cost grows with grid^2: on one core with all-atom ALDP, 24 -> 3,840 steps/s,
#: 48 -> 2,590, 96 -> 1,040 (unbiased: 4,380); the interpolation error falls as spacing^4.
CMAP_GRID = 36


def tabulated_pmf_force(model: Union[str, Path, nn.Module], metadata: Optional[ModelMetadata] = None, scale: float = 1.0, grid: int = CMAP_GRID,
                        n_replicas: int = 1, system: Optional[openmm.System] = None,
                        replica_atoms: Optional[Sequence[int]] = None, check_masses: bool = True) -> openmm.CMAPTorsionForce:
    """``scale`` x the PMF (kJ/mol) of a model on two dihedral CG coordinates, tabulated on a ``grid`` x ``grid``
    periodic map of the IUPAC torsions (OpenMM's convention: entry i + grid * j at angles (2 pi i / grid,
    2 pi j / grid)) as a ``CMAPTorsionForce`` on every replica. See :data:`CMAP_GRID` for the cost of the grid
    size; for exact reweighting read the bias actually applied from its force group's energy."""
    module, metadata = pmf_energy_module(model, metadata, scale, 1, replica_atoms)
    cg = module.cg
    if not hasattr(cg, "indices") or cg.indices.shape[1] != 2:
        raise ValueError(f"backend='cmap' tabulates PMFs of two dihedral CG coordinates; '{metadata.system}' has other CG coordinates")
    angles = torch.arange(grid, dtype=torch.float64) * (2 * torch.pi / grid)
    phi, psi = torch.meshgrid(angles, angles, indexing="ij")
    iupac = torch.stack([phi.reshape(-1), psi.reshape(-1)], dim=-1)
    s = torch.remainder(cg.signs * iupac - cg.offsets + torch.pi, 2 * torch.pi) - torch.pi  # the model's CG frame
    with torch.no_grad():
        mean, _ = module.pmf.mean_std(s)
    energy = (module.scale * module.kT) * mean.reshape(grid, grid)  # [i, j] at (phi_i, psi_j)
    force = openmm.CMAPTorsionForce()
    force.addMap(grid, energy.T.reshape(-1).tolist())  # element i + grid * j
    quadruples = cg.indices[0].tolist()
    n_atoms = cg.n_particles
    if system is not None:
        check_model_fits_system(metadata, system, n_replicas, replica_atoms, check_masses)
    for r in range(n_replicas):
        a, b = ([atom + r * n_atoms for atom in q] for q in quadruples)
        force.addTorsion(0, *a, *b)
    force.setName(f"cgflow PMF ({metadata.system}, scale {scale:g}, {grid}x{grid} CMAP)")
    return force


def force_from_module(module: torch.jit.ScriptModule, backend: str, n_particles: int, system: Optional[openmm.System] = None) -> openmm.Force:
    """Wrap a scripted energy module (positions (n_particles, 3) nm -> energy kJ/mol) as an OpenMM Force on the
    System's first ``n_particles`` particles: an ``openmmtorch.TorchForce`` or an ``openmm.PythonForce``."""
    if backend not in ("torchforce", "pythonforce"):
        raise ValueError(f"a TorchScript module becomes a 'torchforce' or a 'pythonforce', not '{backend}'")
    if backend == "torchforce":
        try:
            import openmmtorch
        except ImportError as error:  # pragma: no cover - depends on the installation
            raise ImportError("backend='torchforce' needs openmmtorch (pip install openmmtorch==1.5); or use backend='pythonforce'") from error
        load_torch_plugins()
        return openmmtorch.TorchForce(module)
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    force = openmm.PythonForce(TorchScriptEnergy(buffer.getvalue()))
    if system is not None and system.getNumParticles() != n_particles:
        force.setParticles(list(range(n_particles)))
    return force


def torchforce_from_xml(xml: str) -> openmm.Force:
    """Rebuild a serialised TorchForce from the TorchScript model its XML carries (hex ``encodedFileContents``);
    the workaround for openmmtorch 1.5's failing deserialiser. Force group and the uses-periodic flag are kept."""
    import xml.etree.ElementTree as ElementTree

    import openmmtorch

    load_torch_plugins()
    root = ElementTree.fromstring(xml)
    if root.get("type") != "TorchForce" or not root.get("encodedFileContents"):
        raise ValueError("not a serialised TorchForce with an embedded model (encodedFileContents)")
    module = torch.jit.load(io.BytesIO(bytes.fromhex(root.get("encodedFileContents"))), map_location="cpu")
    force = openmmtorch.TorchForce(module)
    force.setForceGroup(int(root.get("forceGroup", 0)))
    force.setUsesPeriodicBoundaryConditions(root.get("usesPeriodic", "0") == "1")
    force.setOutputsForces(root.get("outputsForces", "0") == "1")
    return force
