"""CG dynamics on a learned PMF in OpenMM.

Alanine dipeptide: each replica is the five backbone atoms that define the CG dihedrals, C(ACE) - N - CA - C -
N(NME) (all-atom indices 4, 6, 8, 14, 16, with their all-atom masses), with harmonic restraints on the four
bonds and three angles (equilibrium values from our minimised structure) plus the PMF force on (phi, psi). Why
the (phi, psi) marginal of this System is exactly exp(-F): in the chain's internal coordinates (6 rigid-body
coordinates, 4 bond lengths b, 3 angles theta, the 2 dihedrals) the Cartesian volume element is
prod b_i^2 prod sin(theta_j) times the rigid-body measure, with no dependence on the dihedrals; the energy is
U_restraints(b, theta) + kT F(phi, psi). The Boltzmann density therefore factorises into a (b, theta) part and
exp(-F(phi, psi)), whatever the restraint stiffness. Stiffness only sets how fast the chain may be integrated.

Müller-Brown: one particle per replica at (x, y, z) with U = kT F(s) + k_perp/2 s_perp^2 + k_z/2 z^2 (+ walls),
s = x - y, s_perp = x + y. The map (x, y) -> (s, s_perp) is linear (constant Jacobian) and the energy is a sum
of a term in s and terms in the other coordinates, so the Boltzmann marginal of s is exactly exp(-F(s)) between
the walls. Flat-bottomed harmonic walls keep s inside the domain the PMF was learned on (outside it the
ensemble only extrapolates). Many replicas share one Context and one batched model call.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import openmm
import openmm.unit as unit
from torch import nn

import torch

from ..coordinates.geometry import bond_angles, bond_lengths, dihedral_angles, place_atom
from ..systems.base import kT_in_kJ_per_mol
from ..systems.muller_brown import MB_CG_DOMAIN, MB_TEMPERATURE
from .pmf_force import create_pmf_force


def muller_brown_cg_system(model: Union[str, Path, nn.Module], n_replicas: int, metadata: Optional[dict] = None,
                           backend: str = "torchforce", k_perp_kT: float = 10.0, k_z_kT: float = 10.0,
                           walls: Tuple[float, float] = MB_CG_DOMAIN, k_wall_kT: float = 1000.0, mass_dalton: float = 1.0) -> openmm.System:
    """An OpenMM System of ``n_replicas`` CG particles on the PMF ``model`` (spring constants in kT/nm^2)."""
    kT = kT_in_kJ_per_mol(MB_TEMPERATURE)
    system = openmm.System()
    for _ in range(n_replicas):
        system.addParticle(mass_dalton)
    restraint = openmm.CustomExternalForce(
        "0.5*k_perp*(x + y)^2 + 0.5*k_z*z^2 + 0.5*k_wall*(max(0, s_lo - (x - y))^2 + max(0, (x - y) - s_hi)^2)"
    )
    for name, value in (("k_perp", k_perp_kT * kT), ("k_z", k_z_kT * kT), ("k_wall", k_wall_kT * kT), ("s_lo", walls[0]), ("s_hi", walls[1])):
        restraint.addGlobalParameter(name, value)
    for i in range(n_replicas):
        restraint.addParticle(i, [])
    restraint.setName("CG restraints (s_perp, z, walls on s)")
    system.addForce(restraint)
    system.addForce(create_pmf_force(model, metadata, backend=backend, n_replicas=n_replicas, system=system))
    return system


#: The all-atom ALDP atoms each CG particle stands for: C(ACE), N, CA, C, N(NME) (phi = 0-1-2-3, psi = 1-2-3-4).
ALDP_BACKBONE_ATOMS = (4, 6, 8, 14, 16)


def _aldp_backbone_geometry() -> dict:
    """Masses (Da), bond lengths (nm), angles (rad) and positions (nm) of the backbone chain in our minimum."""
    from ..systems.alanine_dipeptide import create_openmm_system, minimised_structure

    system, _, _ = create_openmm_system()
    x = torch.as_tensor(minimised_structure()[list(ALDP_BACKBONE_ATOMS)])
    return {
        "masses": [system.getParticleMass(a).value_in_unit(unit.dalton) for a in ALDP_BACKBONE_ATOMS],
        "bonds": [float(bond_lengths(x[i], x[i + 1])) for i in range(4)],
        "angles": [float(bond_angles(x[i], x[i + 1], x[i + 2])) for i in range(3)],
        "positions": x.numpy(),
    }


def alanine_dipeptide_cg_system(model: Union[str, Path, nn.Module], n_replicas: int, metadata: Optional[dict] = None,
                                backend: str = "torchforce", k_bond: float = 2.0e5, k_angle: float = 400.0,
                                scale: float = 1.0) -> openmm.System:
    """An OpenMM System of ``n_replicas`` five-atom backbone chains on the ALDP PMF ``model`` (see the module
    docstring). ``k_bond`` in kJ/mol/nm^2 and ``k_angle`` in kJ/mol/rad^2 (OpenMM's harmonic convention
    k/2 (r - r0)^2); the defaults are Amber-like and allow a 2 fs step. ``scale`` multiplies the PMF."""
    geometry = _aldp_backbone_geometry()
    system = openmm.System()
    bonds, angles = openmm.HarmonicBondForce(), openmm.HarmonicAngleForce()
    for r in range(n_replicas):
        first = 5 * r
        for mass in geometry["masses"]:
            system.addParticle(mass)
        for i, length in enumerate(geometry["bonds"]):
            bonds.addBond(first + i, first + i + 1, length, k_bond)
        for i, angle in enumerate(geometry["angles"]):
            angles.addAngle(first + i, first + i + 1, first + i + 2, angle, k_angle)
    bonds.setName("CG restraints (backbone bonds)")
    angles.setName("CG restraints (backbone angles)")
    system.addForce(bonds)
    system.addForce(angles)
    system.addForce(create_pmf_force(model, metadata, backend=backend, scale=scale, n_replicas=n_replicas, system=system,
                                     replica_atoms=ALDP_BACKBONE_ATOMS))
    return system


def aldp_backbone_positions(phi_psi_iupac: np.ndarray) -> np.ndarray:
    """Positions (n_replicas * 5, 3) nm of backbone chains with the minimum's bonds and angles and the given IUPAC
    (phi, psi) in rad, shape (n_replicas, 2); replicas are stacked 1 nm apart along x (they do not interact)."""
    angles = torch.as_tensor(np.asarray(phi_psi_iupac, dtype=np.float64).reshape(-1, 2))
    n = angles.shape[0]
    geometry = _aldp_backbone_geometry()
    x0 = torch.as_tensor(geometry["positions"])
    c0, n1, ca = (x0[i].expand(n, 3) for i in range(3))
    r = torch.as_tensor(geometry["bonds"], dtype=torch.float64)
    theta = torch.as_tensor(geometry["angles"], dtype=torch.float64)
    one = torch.ones(n, dtype=torch.float64)
    c = place_atom(ca, n1, c0, r[2] * one, theta[1] * one, angles[:, 0])      # dihedral C(ACE)-N-CA-C = phi
    n2 = place_atom(c, ca, n1, r[3] * one, theta[2] * one, angles[:, 1])      # dihedral N-CA-C-N(NME) = psi
    chain = torch.stack([c0, n1, ca, c, n2], dim=1)
    chain = chain + torch.arange(n, dtype=torch.float64)[:, None, None] * torch.tensor([1.0, 0.0, 0.0])
    return chain.reshape(-1, 3).numpy()


def aldp_backbone_phi_psi(positions: np.ndarray) -> np.ndarray:
    """IUPAC (phi, psi) in rad, (..., n_replicas, 2), of backbone-chain positions (..., n_replicas * 5, 3) nm."""
    x = torch.as_tensor(np.asarray(positions, dtype=np.float64))
    x = x.reshape(x.shape[:-2] + (-1, 5, 3))
    phi = dihedral_angles(x[..., 0, :], x[..., 1, :], x[..., 2, :], x[..., 3, :])
    psi = dihedral_angles(x[..., 1, :], x[..., 2, :], x[..., 3, :], x[..., 4, :])
    return torch.stack([phi, psi], dim=-1).numpy()


def positions_for_s(s: np.ndarray) -> np.ndarray:
    """Positions (n, 3) nm with the given s = x - y and s_perp = z = 0."""
    s = np.asarray(s, dtype=np.float64).ravel()
    return np.stack([s / 2, -s / 2, np.zeros_like(s)], axis=-1)


def run_langevin_frames(system: openmm.System, positions: np.ndarray, n_steps: int, record_every: int, temperature_K: float,
                        seed: int = 0, timestep_fs: float = 2.0, friction_per_ps: float = 10.0, platform: str = "CPU") -> np.ndarray:
    """LangevinMiddle dynamics of a CG System; returns the positions (frames, particles, 3) nm every
    ``record_every`` steps."""
    from ..energy.oracle import default_properties, resolve_platform
    from .pmf_force import check_platform_for_system

    check_platform_for_system(system, platform)
    integrator = openmm.LangevinMiddleIntegrator(temperature_K * unit.kelvin, friction_per_ps / unit.picosecond, timestep_fs * unit.femtosecond)
    integrator.setRandomNumberSeed(seed + 1)
    context = openmm.Context(system, integrator, resolve_platform(platform), default_properties(platform))
    context.setPositions(positions)
    context.setVelocitiesToTemperature(temperature_K * unit.kelvin, seed + 1)
    frames = []
    for _ in range(n_steps // record_every):
        integrator.step(record_every)
        frames.append(context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    return np.asarray(frames)


def run_cg_langevin(system: openmm.System, positions: np.ndarray, n_steps: int, record_every: int, seed: int = 0,
                    timestep_fs: float = 5.0, friction_per_ps: float = 10.0, temperature_K: float = MB_TEMPERATURE,
                    platform: str = "CPU") -> np.ndarray:
    """Müller-Brown CG dynamics; returns s = x - y per recorded frame and replica, (frames, replicas)."""
    x = run_langevin_frames(system, positions, n_steps, record_every, temperature_K, seed, timestep_fs, friction_per_ps, platform)
    return x[..., 0] - x[..., 1]
