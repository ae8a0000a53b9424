"""Backmapping: all-atom structures from CG frames with the trained conditional flow.

For every CG frame s the flow draws fine-grained coordinates x ~ q(x | s); the Z-matrix transform assembles the
Cartesian structure. Each structure gets the log importance weight ln w = -u(x) + ln|det J| - ln q(x | s)
(u = U/kT from OpenMM), i.e. how much more (or less) likely it is under exp(-U/kT) at fixed s than under the flow;
normalised weights and the effective sample size ESS = (sum w)^2 / sum w^2 are reported per CG frame. Optional
refinement in an OpenMM Context: energy minimisation with the CG coordinates held by stiff restraints, so the
refined structure keeps its CG frame.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import mdtraj
import numpy as np
import openmm
import openmm.unit as unit
import torch

from .energy import EnergyOracle
from .export import load_model
from .systems.base import kT_in_kJ_per_mol


@dataclass
class BackmapResult:
    """``trajectory``: all-atom structures (frames x n_per_frame, grouped by CG frame); ``cg_index`` the CG frame
    of each structure; ``log_weights`` ln w (kT units) of the flow samples (before any refinement);
    ``weights`` normalised within each CG frame; ``ess`` per CG frame (between 1 and n_per_frame);
    ``reduced_energies`` u = U/kT of the returned (refined, if asked) structures."""

    trajectory: mdtraj.Trajectory
    cg_index: np.ndarray
    log_weights: np.ndarray
    weights: np.ndarray
    ess: np.ndarray
    reduced_energies: np.ndarray


class Backmapper:
    """Backmap CG frames of the flow model's system (``flow``: a model file from ``cgflow run``'s
    ``models/flow.pt``, kind conditional_flow)."""

    def __init__(self, flow: Union[str, Path], platform: str = "CPU"):
        self.flow, self.metadata = load_model(flow, expected_kind="conditional_flow")
        self.cg_system = self.metadata.cg_system_model()  # the molecule the file describes (no registry needed)
        if self.metadata.fg_dim != self.cg_system.fg_dim:
            raise ValueError(f"{flow}: flow of {self.metadata.fg_dim} fine-grained coordinates, system has {self.cg_system.fg_dim}")
        self.platform = platform
        self.circular = list(self.cg_system.flow_circular_indices)

    def _base(self, n: int, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, self.cg_system.fg_dim, generator=generator, dtype=torch.float64)
        if self.circular:
            u = torch.rand(n, len(self.circular), generator=generator, dtype=torch.float64) * 2 * math.pi - math.pi
            z[:, self.circular] = u
        return z

    def check_cg_frames(self, cg) -> np.ndarray:
        """``cg`` as a float64 (n_frames, cg_dim) array, or a one-line ValueError naming what is wrong (shape,
        NaN/inf, angles outside [-pi, pi] such as degrees given for radians)."""
        dim = self.cg_system.cg_dim
        try:
            array = np.asarray(cg, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"CG frames must be numbers of shape (n_frames, {dim})") from None
        if array.ndim == 1 and dim == 1:
            array = array[:, None]
        if array.ndim != 2 or array.shape[1] != dim or len(array) == 0:
            raise ValueError(
                f"CG frames must have shape (n_frames, {dim}) for the {self.metadata.system} model "
                f"({dim} CG coordinate(s) per frame), got {array.shape}"
            )
        if not np.isfinite(array).all():
            raise ValueError(f"CG frames contain NaN or inf (frame {int(np.flatnonzero(~np.isfinite(array).all(axis=1))[0])})")
        periodic = np.asarray(self.cg_system.cg_definition.periodic)
        if periodic.any() and np.abs(array[:, periodic]).max() > math.pi + 1e-9:
            raise ValueError(
                f"CG frames must be angles in radians within [-pi, pi] (largest |value| {np.abs(array[:, periodic]).max():.4g}); "
                "were degrees given?"
            )
        return array

    def backmap(self, cg: np.ndarray, n_per_frame: int = 10, seed: int = 0, refine: Optional[str] = None,
                restraint_kT_per_rad2: float = 1000.0, frame: str = "iupac") -> BackmapResult:
        """``cg``: (n_frames, cg_dim) CG coordinates, rad for dihedrals (nm for linear ones), in ``frame``: "iupac"
        (plain IUPAC dihedrals, the default) or "model" (the model's own CG frame; the built-in alanine dipeptide's
        is the paper's shifted, sign-flipped frame)."""
        cg = self.cg_system.cg_definition.to_model_frame(self.check_cg_frames(cg), frame)
        if isinstance(n_per_frame, bool) or int(n_per_frame) != n_per_frame or n_per_frame < 1:
            raise ValueError(f"n_per_frame must be a positive integer, got {n_per_frame!r}")
        n_per_frame = int(n_per_frame)
        if refine not in (None, "minimize"):
            raise ValueError(f"refine must be None or 'minimize', got {refine!r}")
        generator = torch.Generator().manual_seed(seed)
        s = torch.as_tensor(np.repeat(cg, n_per_frame, axis=0))
        with torch.no_grad():
            z = self._base(len(s), generator)
            x_fg, logdet = self.flow(z, s)
            log_q = self.flow.base_log_prob(z) - logdet
            positions, log_jacobian = self.cg_system.to_cartesian(s, x_fg)
        positions = positions.numpy()
        with EnergyOracle(self.cg_system, self.platform, nonfinite="nan") as oracle:
            u, _ = oracle.evaluate(positions)
            log_w = -u + log_jacobian.numpy() - log_q.numpy()  # weights of the flow's own samples
            if refine == "minimize":
                positions = self._minimise(positions, s.numpy(), restraint_kT_per_rad2)
                u, _ = oracle.evaluate(positions)
        grouped = log_w.reshape(len(cg), n_per_frame)
        finite = np.where(np.isfinite(grouped), grouped, -np.inf)
        shifted = np.exp(finite - finite.max(axis=1, keepdims=True))
        weights = shifted / shifted.sum(axis=1, keepdims=True)
        ess = 1.0 / (weights**2).sum(axis=1)
        trajectory = mdtraj.Trajectory(positions, mdtraj.Topology.from_openmm(self.cg_system.topology))
        return BackmapResult(trajectory, np.repeat(np.arange(len(cg)), n_per_frame), log_w, weights.ravel(), ess, u)

    def _minimise(self, positions: np.ndarray, s: np.ndarray, k_kT: float) -> np.ndarray:
        """Minimise each structure with its CG coordinates restrained at its CG frame (0.5 k (s - s_frame)^2,
        ``k_kT`` in kT per CG unit squared)."""
        from .platforms import default_properties, resolve_platform

        kT = kT_in_kJ_per_mol(self.cg_system.temperature)
        definition = self.cg_system.cg_definition
        system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(self.cg_system.system))
        for force in definition.restraint_forces(k_kT * kT):
            system.addForce(force)
        context = openmm.Context(system, openmm.VerletIntegrator(0.001), resolve_platform(self.platform), default_properties(self.platform))
        out = np.empty_like(positions)
        for i, (x, target) in enumerate(zip(positions, s)):
            for parameter, value in zip(definition.target_parameters(), target):
                context.setParameter(parameter, float(value))
            context.setPositions(x)
            openmm.LocalEnergyMinimizer.minimize(context, 1.0, 500)
            out[i] = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        return out
