"""CG dynamics on a learned PMF in OpenMM, for any CG definition (:class:`~openmm_cgflow.systems.cg_definition.CGDefinition`).

Dihedral CG coordinates ("chain" replica): each replica holds only the atoms of the CG dihedrals (alanine
dipeptide: C(ACE) - N - CA - C - N(NME), with their all-atom masses), with harmonic restraints on the bonds i-j,
j-k, k-l and angles i-j-k, j-k-l of every quadruple (equilibrium values from the minimised structure) plus the
PMF force on s. Why the marginal of s in this System is exactly exp(-F): the replica's bond graph is a tree and
each CG dihedral turns about its own bond, so its internal coordinates are the rigid-body coordinates, the bond
lengths b, the angles theta (restrained, plus any free branch angles) and the CG dihedrals; the Cartesian volume
element is prod b_i^2 prod sin(theta_j) times the rigid-body measure, with no dependence on the dihedrals, and the
energy is U_restraints(b, theta) + kT F(s). The Boltzmann density therefore factorises into a (b, theta) part
and exp(-F(s)), whatever the restraint stiffness; stiffness only sets how fast the chain may be integrated.

Linear CG coordinates ("particle" replica, Müller-Brown): one particle per replica with U = kT F(s) + harmonic
restraints on the directions orthogonal to s (+ flat-bottomed walls at the domain). The map to (s, the restrained
directions) is linear (constant Jacobian) and the energy separates, so the marginal of s is exactly exp(-F(s))
between the walls. Flat-bottomed harmonic walls keep s inside the domain the PMF was learned on (outside it the
ensemble only extrapolates). Many replicas share one Context and one batched model call.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import openmm
from torch import nn

import torch

from ..coordinates.geometry import dihedral_angles
from ..export import ModelMetadata
from ..dynamics import LangevinDynamics
from ..systems.base import CGSystem, kT_in_kJ_per_mol
from ..systems.cg_definition import CGDefinition, ChainReplica, ParticleReplica
from ..systems.cg_coordinates import cg_module_from_definition
from .pmf_force import create_pmf_force


def cg_replica_system(definition: CGDefinition, model: Union[str, Path, nn.Module], n_replicas: int,
                      temperature_K: float, metadata: Optional[ModelMetadata] = None, backend: str = "torchforce",
                      walls: Optional[Sequence[Tuple[float, float]]] = None, scale: float = 1.0) -> openmm.System:
    """An OpenMM System of ``n_replicas`` CG replicas (see the module docstring) on the PMF ``model`` (a model file,
    or a live ensemble with its :class:`~openmm_cgflow.export.ModelMetadata`). ``walls``: (lower, upper) per linear CG coordinate (default:
    its domain); ``scale`` multiplies the PMF."""
    replica = definition.replica
    system = openmm.System()
    if isinstance(replica, ChainReplica):
        bonds, angles = openmm.HarmonicBondForce(), openmm.HarmonicAngleForce()
        size = len(replica.atoms)
        for r in range(n_replicas):
            first = size * r
            for mass in replica.masses:
                system.addParticle(mass)
            for i, j, length in replica.bonds:
                bonds.addBond(first + i, first + j, length, replica.bond_k)
            for i, j, k, angle in replica.angles:
                angles.addAngle(first + i, first + j, first + k, angle, replica.angle_k)
        bonds.setName("CG restraints (bonds)")
        angles.setName("CG restraints (angles)")
        system.addForce(bonds)
        system.addForce(angles)
        system.addForce(create_pmf_force(model, metadata, backend=backend, scale=scale, n_replicas=n_replicas, system=system,
                                         replica_atoms=replica.atoms))
        return system
    if not isinstance(replica, ParticleReplica) or definition.kind != "linear" or definition.dim != 1:
        raise ValueError(f"no CG replica for dynamics is described for these CG coordinates ({definition.names})")
    kT = kT_in_kJ_per_mol(temperature_K)
    cv = definition.coordinates[0]
    lo, hi = walls[0] if walls is not None else cv.domain
    s_expr = f"({cv.energy_expression()})"
    terms = [f"0.5*k_r{n}*(({c[0]!r})*x + ({c[1]!r})*y + ({c[2]!r})*z)^2" for n, (c, _) in enumerate(replica.restraints)]
    terms.append(f"0.5*k_wall*(max(0, s_lo - {s_expr})^2 + max(0, {s_expr} - s_hi)^2)")
    restraint = openmm.CustomExternalForce(" + ".join(terms))
    for n, (_, k) in enumerate(replica.restraints):
        restraint.addGlobalParameter(f"k_r{n}", float(k) * kT)
    for name, value in (("k_wall", replica.wall_kT_per_nm2 * kT), ("s_lo", lo), ("s_hi", hi)):
        restraint.addGlobalParameter(name, value)
    for _ in range(n_replicas):
        restraint.addParticle(system.addParticle(replica.mass), [])
    restraint.setName("CG restraints (orthogonal directions, walls on s)")
    system.addForce(restraint)
    system.addForce(create_pmf_force(model, metadata, backend=backend, scale=scale, n_replicas=n_replicas, system=system,
                                     replica_atoms=[cv.particle]))
    return system


def _side(n_atoms: int, bonds: Sequence[Sequence[float]], start: int, blocked: int) -> List[int]:
    """Atoms reachable from ``start`` in the replica's bond graph without passing ``blocked``."""
    neighbours: Dict[int, List[int]] = {i: [] for i in range(n_atoms)}
    for i, j, _ in bonds:
        neighbours[int(i)].append(int(j))
        neighbours[int(j)].append(int(i))
    seen, stack = {start}, [start]
    while stack:
        a = stack.pop()
        for b in neighbours[a]:
            if b != blocked and b not in seen:
                seen.add(b)
                stack.append(b)
    return sorted(seen)


def replica_positions(definition: CGDefinition, s: np.ndarray) -> np.ndarray:
    """Positions (n_replicas * particles_per_replica, 3) nm of replicas at CG points ``s`` (n_replicas, cg_dim),
    in the definition's frame; replicas are stacked 1 nm apart along x (they do not interact). Chains keep the
    minimum's bonds and angles: each CG dihedral is set by turning the atoms behind its bond about that bond."""
    replica = definition.replica
    s = np.asarray(s, dtype=np.float64).reshape(-1, definition.dim)
    if isinstance(replica, ParticleReplica):
        c = np.asarray(definition.coordinates[0].coefficients)
        return s[:, :1] * c[None] / float(c @ c)
    atoms = list(replica.atoms)
    x = torch.as_tensor(np.asarray(replica.positions, dtype=np.float64)).expand(len(s), -1, -1).clone()
    for k, cv in enumerate(definition.coordinates):
        i, j, kk, l = (atoms.index(a) for a in cv.atoms)
        moving = _side(len(atoms), replica.bonds, kk, j)
        target = torch.as_tensor(cv.sign * (s[:, k] + cv.offset))  # IUPAC angle of s = wrap(sign * angle - offset)
        delta = target - dihedral_angles(x[:, i], x[:, j], x[:, kk], x[:, l])
        axis = x[:, kk] - x[:, j]
        axis = axis / torch.linalg.norm(axis, dim=-1, keepdim=True)
        v = x[:, moving] - x[:, kk, None]
        cos, sin = torch.cos(delta)[:, None, None], torch.sin(delta)[:, None, None]
        u = axis[:, None, :]
        rotated = v * cos + torch.linalg.cross(u.expand_as(v), v, dim=-1) * sin + u * (v * u).sum(-1, keepdim=True) * (1 - cos)
        x[:, moving] = rotated + x[:, kk, None]
    x = x + torch.arange(len(s), dtype=torch.float64)[:, None, None] * torch.tensor([1.0, 0.0, 0.0])
    return x.reshape(-1, 3).numpy()


def replica_cg(definition: CGDefinition, positions: np.ndarray) -> np.ndarray:
    """CG coordinates (..., n_replicas, cg_dim) of replica positions (..., n_replicas * particles_per_replica, 3) nm."""
    replica = definition.replica
    local = list(replica.atoms) if isinstance(replica, ChainReplica) else [definition.coordinates[0].particle]
    x = torch.as_tensor(np.asarray(positions, dtype=np.float64))
    lead = x.shape[:-2]
    n_replicas = x.shape[-2] // len(local)
    module = cg_module_from_definition(definition, n_replicas=n_replicas, replica_atoms=local)
    with torch.no_grad():
        values = [module(frame) for frame in x.reshape(-1, x.shape[-2], 3)]
    return torch.stack(values).reshape(lead + (n_replicas, definition.dim)).numpy()


def cg_dynamics_system(cg_system: CGSystem, model: Union[str, Path, nn.Module], n_replicas: int, metadata: Optional[ModelMetadata] = None,
                       backend: str = "torchforce", walls: Optional[Sequence[Tuple[float, float]]] = None, scale: float = 1.0) -> openmm.System:
    """The OpenMM System of ``n_replicas`` CG replicas of ``cg_system`` (its CG definition, at its temperature) on
    the PMF ``model``; see :func:`cg_replica_system`. Start it from :func:`replica_positions` and read s back with
    :func:`replica_cg` (or use :func:`run_cg_langevin`)."""
    return cg_replica_system(cg_system.cg_definition, model, n_replicas, cg_system.temperature, metadata, backend, walls, scale)


def run_langevin_frames(system: openmm.System, positions: np.ndarray, n_steps: int, record_every: int, temperature_K: float,
                        seed: int = 0, timestep_fs: float = 2.0, friction_per_ps: float = 10.0, platform: str = "CPU") -> np.ndarray:
    """LangevinMiddle dynamics of a CG System; returns the positions (frames, particles, 3) nm every
    ``record_every`` steps."""
    from .pmf_force import check_platform_for_system

    check_platform_for_system(system, platform)
    dynamics = LangevinDynamics(system, temperature_K, timestep_fs, friction_per_ps, platform, random_seed=seed + 1)
    dynamics.start(positions, velocity_seed=seed + 1)
    return dynamics.frames(n_steps // record_every, record_every)


def run_cg_langevin(cg_system: CGSystem, system: openmm.System, s_start: np.ndarray, n_steps: int, record_every: int, seed: int = 0,
                    timestep_fs: float = 2.0, friction_per_ps: float = 10.0, platform: str = "CPU",
                    temperature_K: Optional[float] = None) -> np.ndarray:
    """Langevin dynamics of a :func:`cg_dynamics_system` of ``cg_system`` at its temperature (or the thermostat
    at ``temperature_K``, K), started with the replicas at CG points ``s_start`` (n_replicas, cg_dim) (the system's
    CG frame and units); returns s per recorded frame and replica, (frames, n_replicas, cg_dim)."""
    definition = cg_system.cg_definition
    positions = replica_positions(definition, np.asarray(s_start, dtype=np.float64).reshape(-1, definition.dim))
    frames = run_langevin_frames(system, positions, n_steps, record_every, temperature_K or cg_system.temperature, seed, timestep_fs, friction_per_ps, platform)
    return replica_cg(definition, frames)
