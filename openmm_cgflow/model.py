"""The learned models of a run, for OpenMM users: one object, four uses (the openmm-ml spirit of one entry point).

    model = CGFlowModel.load("runs/muller-brown")           # a run's folder, its models/ folder, or a shipped system
    system.addForce(model.pmf_force(scale=-0.5))            # bias an all-atom simulation by half the PMF
    s = model.cg_dynamics(s_start, n_steps=10_000)           # CG Langevin dynamics on the PMF
    result = model.backmap(s[-1], n_per_frame=10)            # all-atom structures with importance weights

Units are OpenMM's at the boundary (nm, kJ/mol, K, fs, 1/ps); free energies are in kT. CG values are radians for
dihedrals (nm for linear coordinates) in the ``frame`` each method takes: "iupac" (plain IUPAC dihedrals, the
default) or "model" (the model's own CG frame, ``model.cg_definition``; the built-in alanine dipeptide's is the
paper's shifted, sign-flipped frame). Values come back in the frame they were given in.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import openmm
import torch

from .backmapping import Backmapper, BackmapResult
from .export import ModelFileError, ModelMetadata, load_model
from .forces import create_flow_force, create_pmf_force
from .forces.cg_dynamics import cg_dynamics_system, run_cg_langevin
from .systems import CGDefinition, CGSystem, available_systems, create_system

PMF_FILE = "pmf_ensemble.pt"
FLOW_FILE = "flow.pt"
def shipped_models_dir() -> Path:
    """Where the shipped models are: inside the installed package (``pip install``), else the repository's
    ``torchscript_models/`` (a checkout or an editable install)."""
    installed = Path(__file__).resolve().parent / "torchscript_models"
    return installed if installed.is_dir() else Path(__file__).resolve().parent.parent / "torchscript_models"


class CGFlowModel:
    """A PMF ensemble (``pmf_ensemble.pt``) and, where the run wrote one, its conditional flow (``flow.pt``) of one
    system. Build it with :meth:`load`."""

    def __init__(self, pmf_path: Path, flow_path: Optional[Path] = None):
        self.pmf_path = Path(pmf_path)
        self.flow_path = Path(flow_path) if flow_path is not None else None
        self.ensemble, self.metadata = load_model(self.pmf_path, expected_kind="pmf_ensemble")
        if self.flow_path is not None:
            _, flow_metadata = load_model(self.flow_path, expected_kind="conditional_flow")
            if (flow_metadata.system, flow_metadata.temperature_K) != (self.metadata.system, self.metadata.temperature_K):
                raise ModelFileError(f"{self.flow_path} is a flow of '{flow_metadata.system}' at {flow_metadata.temperature_K} K, "
                                     f"{self.pmf_path} a PMF of '{self.metadata.system}' at {self.metadata.temperature_K} K")
            self._flow_metadata: Optional[ModelMetadata] = flow_metadata
        else:
            self._flow_metadata = None
        self._cg_system: Optional[CGSystem] = None

    @classmethod
    def load(cls, path: Union[str, Path]) -> "CGFlowModel":
        """The models in ``path``: a run's output folder (its ``models/``), a folder holding ``pmf_ensemble.pt`` (and
        ``flow.pt``), a PMF model file, or the name of a system whose models ship with the repository."""
        path = Path(path)
        if not path.exists() and str(path) in available_systems() and (shipped_models_dir() / str(path)).is_dir():
            path = shipped_models_dir() / str(path)
        if path.is_file():
            flow = path.parent / FLOW_FILE
            return cls(path, flow if flow.is_file() and flow != path else None)
        folder = path / "models" if (path / "models" / PMF_FILE).is_file() else path
        if not (folder / PMF_FILE).is_file():
            raise ModelFileError(f"no {PMF_FILE} in {path} (nor in {path / 'models'}): give a run's folder, its models/ folder or a model file")
        flow = folder / FLOW_FILE
        return cls(folder / PMF_FILE, flow if flow.is_file() else None)

    # ------------------------------------------------------------------ what the model is about
    @property
    def cg_definition(self) -> CGDefinition:
        """The CG coordinates the PMF is a function of (and the CG replica for dynamics)."""
        return self.metadata.definition()

    @property
    def temperature_K(self) -> float:
        return self.metadata.temperature_K

    @property
    def cg_system(self) -> CGSystem:
        """The all-atom system: from the flow file's description, else the registered system of the model's name."""
        if self._cg_system is None:
            if self._flow_metadata is not None:
                self._cg_system = self._flow_metadata.cg_system_model()
            elif self.metadata.system in available_systems():
                self._cg_system = create_system(self.metadata.system)
            else:
                raise ModelFileError(f"{self.pmf_path}: no flow.pt beside it and '{self.metadata.system}' is not a registered system, "
                                     "so the all-atom system is unknown")
        return self._cg_system

    def free_energy(self, s, frame: str = "iupac") -> Tuple[np.ndarray, np.ndarray]:
        """The PMF (ensemble mean) and its uncertainty (ensemble std), both in kT, at CG points ``s`` (n, cg_dim) in
        ``frame``."""
        s = self.cg_definition.to_model_frame(np.asarray(s, dtype=np.float64).reshape(-1, self.cg_definition.dim), frame)
        s = torch.as_tensor(s)
        with torch.no_grad():
            mean, std = self.ensemble.mean_std(s)
        return mean.numpy(), std.numpy()

    # ------------------------------------------------------------------ OpenMM forces
    def pmf_force(self, scale: float = 1.0, backend: str = "torchforce", n_replicas: int = 1, system: Optional[openmm.System] = None,
                  replica_atoms: Optional[Sequence[int]] = None) -> openmm.Force:
        """``scale`` x the PMF (kJ/mol) as an OpenMM Force on the molecule's particles
        (:func:`~openmm_cgflow.forces.create_pmf_force`; ``scale=-0.5`` biases by half the PMF's depth)."""
        return create_pmf_force(self.pmf_path, backend=backend, scale=scale, n_replicas=n_replicas, system=system, replica_atoms=replica_atoms)

    def flow_force(self, backend: str = "torchforce", n_replicas: int = 1, system: Optional[openmm.System] = None) -> openmm.Force:
        """The flow's joint free energy U_theta(x) (kJ/mol) as an OpenMM Force (:func:`~openmm_cgflow.forces.create_flow_force`)."""
        return create_flow_force(self._require_flow(), self.pmf_path, backend=backend, n_replicas=n_replicas, system=system)

    # ------------------------------------------------------------------ CG dynamics and backmapping
    def cg_dynamics(self, s_start, n_steps: int, record_every: int = 20, seed: int = 0, timestep_fs: float = 2.0,
                    friction_per_ps: float = 10.0, platform: str = "CPU", backend: str = "torchforce", frame: str = "iupac") -> np.ndarray:
        """Langevin dynamics of one CG replica per row of ``s_start`` (n_replicas, cg_dim, in ``frame``) on the PMF, at
        the model's temperature, in one OpenMM Context; returns s every ``record_every`` steps in the same frame,
        (frames, n_replicas, cg_dim)."""
        definition = self.cg_definition
        s_start = definition.to_model_frame(np.asarray(s_start, dtype=np.float64).reshape(-1, definition.dim), frame)
        system = cg_dynamics_system(self.cg_system, self.pmf_path, len(s_start), backend=backend)
        s = run_cg_langevin(self.cg_system, system, s_start, n_steps, record_every, seed, timestep_fs, friction_per_ps, platform)
        return definition.from_model_frame(s.reshape(-1, definition.dim), frame).reshape(s.shape)

    def backmap(self, cg_frames, n_per_frame: int = 10, seed: int = 0, refine: Optional[str] = None, platform: str = "CPU",
                frame: str = "iupac") -> BackmapResult:
        """All-atom structures for CG frames (n, cg_dim, in ``frame``) drawn from the flow, with their importance
        weights (:class:`~openmm_cgflow.backmapping.Backmapper`); ``refine="minimize"`` relaxes them with s restrained."""
        return Backmapper(self._require_flow(), platform).backmap(cg_frames, n_per_frame, seed, refine, frame=frame)

    def _require_flow(self) -> Path:
        if self.flow_path is None:
            raise ModelFileError(f"no {FLOW_FILE} beside {self.pmf_path}: the flow force and backmapping need the run's flow")
        return self.flow_path

    def __repr__(self) -> str:
        flow = f", flow {self.flow_path}" if self.flow_path else ""
        return f"CGFlowModel('{self.metadata.system}', {self.temperature_K:g} K, CG {self.cg_definition.names}: PMF {self.pmf_path}{flow})"
