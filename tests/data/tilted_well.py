"""A system of a user's own, as a test stands in for one: one particle in a tilted double well,
U = 5 (q^2 - 1)^2 + V(p) + c q p kJ/mol with q = x cos t + y sin t, p = -x sin t + y cos t (nm), and the CG
coordinate s = q on its own domain. V(p) = 20 p^2, or with ``perp_barrier`` B > 0 a second double well
B (p^2 - 1)^2, whose conditional p(p | s) has two modes. Without the ``coupling`` c its PMF is exact in closed form
whatever V: F(s) = 5 (s^2 - 1)^2 / kT + const (p separates). With c != 0 the two modes' weights change with s (at
s = +1 the mode at p = -1 holds more, at s = -1 the one at p = +1), so a flow that covers one mode gets an error that
changes with s, up to ln 2 kT where the weights are equal; F(s) is then exact by quadrature over p."""
import functools
import math

import numpy as np
import openmm
import openmm.app as app

from openmm_cgflow.systems import CGDefinition, CGSystem, LinearCV, kT_in_kJ_per_mol
from openmm_cgflow.systems.cg_definition import ParticleReplica
from openmm_cgflow.systems.fine_grained import PlanarParticleCG

TEMPERATURE = 300.0


def exact_pmf_kT(s: np.ndarray, perp_barrier: float = 0.0, coupling: float = 0.0) -> np.ndarray:
    """F(s) in kT, minimum 0 (with a ``coupling``: the perpendicular part integrated by quadrature over p)."""
    kT = kT_in_kJ_per_mol(TEMPERATURE)
    s = np.asarray(s, dtype=np.float64)
    F = 5.0 * (s ** 2 - 1.0) ** 2 / kT
    if coupling:
        p = np.linspace(-4.0, 4.0, 16001)
        V = perp_barrier * (p ** 2 - 1.0) ** 2 if perp_barrier > 0 else 20.0 * p ** 2
        u = (V[None, :] + coupling * s.reshape(-1, 1) * p[None, :]) / kT
        low = u.min(1, keepdims=True)
        F = F - (np.log(np.trapezoid(np.exp(-(u - low)), p, axis=1)) - low[:, 0]).reshape(s.shape)
    return F - F.min()


def exact_reference(n_bins: int, domain, perp_barrier: float = 0.0, coupling: float = 0.0):
    """Bin centres (n_bins, 1) and bin probabilities of the exact PMF over ``domain`` (nm)."""
    edges = np.linspace(domain[0], domain[1], n_bins + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    w = np.exp(-exact_pmf_kT(centres, perp_barrier, coupling))
    return centres[:, None], w / w.sum()


def create(tilt: float = 0.3, domain=(-1.6, 1.6), perp_barrier: float = 0.0, coupling: float = 0.0) -> CGSystem:
    c, s = math.cos(tilt), math.sin(tilt)
    reference = functools.partial(exact_reference, perp_barrier=perp_barrier, coupling=coupling) if coupling else exact_reference
    system = openmm.System()
    system.addParticle(1.0)
    perpendicular = f"{float(perp_barrier)}*(p^2-1)^2" if perp_barrier > 0 else "20*p^2"
    force = openmm.CustomExternalForce(f"5*(q^2-1)^2 + {perpendicular} + {float(coupling)}*q*p; q={c}*x+{s}*y; p={-s}*x+{c}*y")
    force.addParticle(0, [])
    system.addForce(force)
    topology = app.Topology()
    topology.addAtom("P", app.element.argon, topology.addResidue("TW", topology.addChain()))
    definition = CGDefinition((LinearCV("s", 0, (c, s, 0.0), tuple(domain)),),
                              ParticleReplica(mass=1.0, restraints=(((-s, c, 0.0), 10.0), ((0.0, 0.0, 1.0), 10.0)), wall_kT_per_nm2=1000.0),
                              n_atoms=1)
    return CGSystem(name="tilted-well", system=system, topology=topology, positions=np.array([[-c, -s, 0.0]]), temperature=TEMPERATURE,
                    cg_definition=definition, fine_grained=PlanarParticleCG((c, s), (-s, c)), references={"exact": reference})


create.config = "muller-brown"  # the recipe its registered runs use: the affine flow is enough for one Gaussian across s and
                                # quicker than the linear recipe's spline (a factory in YAML gets the linear recipe)
