"""The trained model as an all-atom OpenMM force: U_theta(x) = kT [F(s(x)) - ln q(x_fg(x) | s(x)) + ln|det dx/dy|].

The model's joint density of an all-atom configuration is exp(-F(s)) q(x_fg | s) in the internal coordinates
y = (s, x_fg) of the Z-matrix transform; in Cartesian coordinates it picks up the Jacobian of y -> x, so its
energy is U_theta above (ln|det dx/dy| is the Z-matrix volume term sum(2 ln r + ln sin theta) plus the
normalisation; the rigid-body coordinates are free, as in U). The TorchScript module computes the internal
coordinates, the flow's density (its inverse pass) and the PMF from the positions, so forces are -grad U_theta
by autograd.

What it is for: evaluated beside the true force field U in the same OpenMM System (another force group), the
difference gives each configuration's log importance weight ln w = (U_theta - U) / kT = ln p(x) - ln q_model(x)
up to a constant: how well the model describes a configuration, for reweighting or for checking a backmapped
or simulated structure. Langevin dynamics on U_theta alone samples the model's own distribution, whose (phi,
psi) marginal is exp(-F).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple, Union

import openmm
import openmm.unit as unit
import torch
from torch import nn

from ..export import ModelFileError, ModelMetadata, load_model
from .pmf_force import force_from_module


class FlowFreeEnergy(nn.Module):
    """positions (n_replicas * n_atoms, 3) nm -> kT * sum over replicas of U_theta / kT (kJ/mol).

    ``fine_grained``: the system's :class:`~openmm_cgflow.systems.fine_grained.ZMatrixCG` (positions -> s, x_fg and
    ln|det dy/dx|)."""

    def __init__(self, fine_grained: nn.Module, flow: nn.Module, pmf: nn.Module, kT_kJ_per_mol: float, n_atoms: int, n_replicas: int = 1):
        super().__init__()
        self.fine_grained = fine_grained
        self.flow = flow
        self.pmf = pmf
        self.kT = float(kT_kJ_per_mol)
        self.n_atoms = int(n_atoms)
        self.n_replicas = int(n_replicas)
        self.n_particles = self.n_atoms * self.n_replicas

    @torch.jit.export
    def reduced_energy(self, positions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per replica: (U_theta / kT, s, ln q(x_fg | s)); U_theta / kT = F(s) - ln q + ln|det dx/dy|."""
        x = positions.to(torch.float64).reshape(self.n_replicas, self.n_atoms, 3)
        s, x_fg, log_det_yx = self.fine_grained.internal(x)
        log_q = self.flow.log_prob(x_fg, s)
        free_energy, _ = self.pmf.mean_std(s)
        return free_energy - log_q - log_det_yx, s, log_q

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        u, _, _ = self.reduced_energy(positions)
        return self.kT * u.sum()


def flow_energy_module(flow: Union[str, Path], pmf: Union[str, Path], n_replicas: int = 1) -> Tuple[torch.jit.ScriptModule, ModelMetadata]:
    """The scripted :class:`FlowFreeEnergy` of a flow model file and a PMF model file of the same system (the
    molecule and its internal coordinates come from the flow file's ``cg_system`` description)."""
    flow_module, flow_meta = load_model(flow, expected_kind="conditional_flow")
    pmf_module, pmf_meta = load_model(pmf, expected_kind="pmf_ensemble")
    for key in ("system", "temperature_K", "cg_dim"):
        if getattr(flow_meta, key) != getattr(pmf_meta, key):
            raise ModelFileError(f"the flow ({flow}) and the PMF ({pmf}) disagree on '{key}': {getattr(flow_meta, key)!r} vs {getattr(pmf_meta, key)!r}")
    if n_replicas < 1:
        raise ValueError(f"n_replicas must be >= 1, got {n_replicas}")
    cg_system = flow_meta.cg_system_model()
    if not hasattr(cg_system.fine_grained, "internal"):
        raise ValueError(f"system '{flow_meta.system}' has no internal-coordinate transform: the flow force needs one")
    if flow_meta.fg_dim != cg_system.fg_dim:
        raise ModelFileError(f"{flow}: a flow of {flow_meta.fg_dim} fine-grained coordinates, the system has {cg_system.fg_dim}")
    module = FlowFreeEnergy(cg_system.fine_grained, flow_module, pmf_module, flow_meta.kT, cg_system.n_atoms, n_replicas)
    return torch.jit.script(module), flow_meta


def create_flow_force(flow: Union[str, Path], pmf: Union[str, Path], backend: str = "torchforce", n_replicas: int = 1,
                      system: Optional[openmm.System] = None, check_masses: bool = True) -> openmm.Force:
    """An OpenMM Force with energy U_theta (kJ/mol) on ``n_replicas`` copies of the model's molecule (the System's
    first particles, in the model system's atom order). ``flow``/``pmf``: ``cgflow run``'s ``models/flow.pt`` and
    ``models/pmf_ensemble.pt``. Put it in its own force group to read U_theta beside the force field's U. ``system``:
    if given, it must hold the molecule first (the particle count, and every atom's mass within 0.1 % of the flow
    file's molecule; ``check_masses=False`` for hydrogen-mass repartitioning)."""
    module, meta = flow_energy_module(flow, pmf, n_replicas)
    if system is not None and system.getNumParticles() < module.n_particles:
        raise ValueError(f"the flow model of '{meta.system}' needs {module.n_particles} particles ({n_replicas} replica(s)), "
                         f"but the System has {system.getNumParticles()}")
    if system is not None and check_masses:
        molecule = meta.cg_system_model().system
        n_atoms = molecule.getNumParticles()
        for particle in range(module.n_particles):
            expected = molecule.getParticleMass(particle % n_atoms).value_in_unit(unit.dalton)
            found = system.getParticleMass(particle).value_in_unit(unit.dalton)
            if abs(found - expected) > 1e-3 * max(expected, 1.0):
                raise ValueError(f"the flow model of '{meta.system}' does not fit this System: its atom {particle % n_atoms} has mass {expected:g} Da, "
                                 f"the System's particle {particle} {found:g} Da (another molecule or atom order? for hydrogen-mass "
                                 "repartitioning use check_masses=False)")
    force = force_from_module(module, backend, module.n_particles, system)
    force.setName(f"cgflow flow free energy ({meta.system})")
    return force
