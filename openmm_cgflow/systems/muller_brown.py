"""The Müller-Brown potential as a one-particle OpenMM System (SPEC §2.1).

Units: positions in nm and energies in kJ/mol carry the Müller-Brown numbers unchanged, and the
temperature is chosen so that beta = 1/kT = 0.1 mol/kJ, as in the paper (T = 10 kJ/mol / R ≈ 1202.7 K).

CG map: s = x1 - x2 (CG) and s_perp = x1 + x2 (fine-grained). Inverse: x1 = (s + s_perp)/2,
x2 = (s_perp - s)/2, with the constant log|det J| = ln 0.5 of (s, s_perp) -> (x1, x2).

The system owns its analytical answer: the exact PMF in s by numerical quadrature (:func:`exact_pmf`), the
``exact`` reference its runs are scored against.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
from scipy import integrate

from .base import MOLAR_GAS_CONSTANT, CGSystem
from .cg_definition import CGDefinition, LinearCV, ParticleReplica
from .description import SystemDescription
from .fine_grained import PlanarParticleCG

#: Parameters of the standard (non-regularised) Müller-Brown potential, SPEC §2.1.
MB_A = (-200.0, -100.0, -170.0, 15.0)
MB_a = (-1.0, -1.0, -6.5, 0.7)
MB_b = (0.0, 0.0, 11.0, 0.6)
MB_c = (-10.0, -10.0, -6.5, 0.7)
MB_X = (1.0, 0.0, -0.5, -1.0)
MB_Y = (0.0, 0.5, 1.5, 1.0)

#: beta in mol/kJ (dimensionless in the paper's units).
MB_BETA = 0.1
#: Temperature in K at which kT = 10 kJ/mol.
MB_TEMPERATURE = 1.0 / (MB_BETA * MOLAR_GAS_CONSTANT)
#: Log-Jacobian of (s, s_perp) -> (x1, x2).
MB_LOG_JACOBIAN = math.log(0.5)
#: Spring constant (kJ/mol/nm^2) holding the particle in the z = 0 plane during dynamics.
MB_Z_SPRING = 1.0e4
#: The upper-left minimum, where starting data is drawn (nm).
MB_UPPER_LEFT_MINIMUM = (-0.558224, 1.441726)
#: Metric/plot domain of s (SPEC §2.1).
MB_CG_DOMAIN = (-2.5, 1.1)
#: CG and fine-grained rows of the planar map: s = x1 - x2, s_perp = x1 + x2.
MB_CG_ROW = (1.0, -1.0)
MB_FG_ROW = (1.0, 1.0)


def muller_brown_energy(x, y):
    """Müller-Brown potential U(x, y) in kJ/mol for arrays ``x``, ``y`` in nm (numpy)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    total = np.zeros(np.broadcast(x, y).shape)
    for A, a, b, c, X, Y in zip(MB_A, MB_a, MB_b, MB_c, MB_X, MB_Y):
        dx, dy = x - X, y - Y
        total = total + A * np.exp(a * dx * dx + b * dx * dy + c * dy * dy)
    return total


def _energy_expression() -> str:
    terms = []
    for A, a, b, c, X, Y in zip(MB_A, MB_a, MB_b, MB_c, MB_X, MB_Y):
        dx, dy = f"(x-({X}))", f"(y-({Y}))"
        terms.append(f"({A})*exp(({a})*{dx}^2+({b})*{dx}*{dy}+({c})*{dy}^2)")
    return "+".join(terms) + f"+0.5*{MB_Z_SPRING}*z^2"


#: Integration range of y = x2 at fixed s (SPEC §2.1).
Y_RANGE = (-1.0, 3.0)


def exact_pmf(s: np.ndarray, beta: float = MB_BETA) -> np.ndarray:
    """F(s) = -ln ∫ exp(-beta U(s + y, y)) dy in kT, up to an additive constant, at the points ``s`` (nm).

    The constant is fixed so that min F = 0. Integrated with scipy.integrate.quad (relative tolerance 1e-11).
    """
    s = np.atleast_1d(np.asarray(s, dtype=np.float64))
    values = np.empty(len(s))
    for i, si in enumerate(s):
        integral, _ = integrate.quad(
            lambda y: np.exp(-beta * muller_brown_energy(si + y, y)), *Y_RANGE, epsabs=0.0, epsrel=1e-11, limit=200
        )
        values[i] = -np.log(integral)
    return values - values.min()


def bin_centres(n_bins: int = 100, domain=MB_CG_DOMAIN) -> np.ndarray:
    """Centres of ``n_bins`` equal bins over ``domain`` (nm)."""
    edges = np.linspace(domain[0], domain[1], n_bins + 1)
    return 0.5 * (edges[1:] + edges[:-1])


@lru_cache(maxsize=4)
def _reference(n_bins: int, domain: tuple) -> np.ndarray:
    return exact_pmf(bin_centres(n_bins, domain))


def reference_probabilities(n_bins: int = 100, domain=MB_CG_DOMAIN) -> np.ndarray:
    """Exact bin probabilities ∝ exp(-F(bin centre)), normalised over the bins."""
    F = _reference(n_bins, tuple(domain))
    w = np.exp(-F)
    return w / w.sum()


def cg_definition() -> CGDefinition:
    """s = x - y (nm) on the domain MB_CG_DOMAIN; the CG replica is one particle held near the line x + y = 0 and
    the plane z = 0 by springs of 10 kT/nm^2 (these change nothing in the marginal of s)."""
    return CGDefinition(
        (LinearCV("s", 0, (1.0, -1.0, 0.0), MB_CG_DOMAIN),),
        ParticleReplica(mass=1.0, restraints=(((1.0, 1.0, 0.0), 10.0), ((0.0, 0.0, 1.0), 10.0)), wall_kT_per_nm2=1000.0),
        n_atoms=1,
    )


def exact_reference(n_bins: int, domain):
    """Bin centres (n_bins, 1) and exact bin probabilities of the Müller-Brown PMF over ``domain`` (nm)."""
    domain = tuple(domain)
    return bin_centres(n_bins, domain)[:, None], reference_probabilities(n_bins, domain)


def create_muller_brown_system(mass: float = 1.0) -> CGSystem:
    """Build the Müller-Brown CGSystem.

    Parameters
    ----------
    mass:
        Particle mass in dalton (only matters for dynamics).
    """
    system = openmm.System()
    system.addParticle(mass * unit.dalton)
    force = openmm.CustomExternalForce(_energy_expression())
    force.addParticle(0, [])
    force.setName("MullerBrown")
    system.addForce(force)

    topology = app.Topology()
    chain = topology.addChain()
    residue = topology.addResidue("MB", chain)
    topology.addAtom("P", app.element.argon, residue)

    positions = np.array([[MB_UPPER_LEFT_MINIMUM[0], MB_UPPER_LEFT_MINIMUM[1], 0.0]])
    return CGSystem(
        name="muller-brown",
        system=system,
        topology=topology,
        positions=positions,
        temperature=MB_TEMPERATURE,
        cg_definition=cg_definition(),
        fine_grained=PlanarParticleCG(MB_CG_ROW, MB_FG_ROW),
        description=SystemDescription(notes={
            "cg_map": "s = x1 - x2 (nm), s_perp = x1 + x2",
            "log_jacobian": MB_LOG_JACOBIAN,
            "beta_mol_per_kJ": MB_BETA,
        }),
        references={"exact": exact_reference},
    )
