"""openmm-cgflow: coarse-grained free-energy surfaces from conditional normalizing flows.

Units at the public API are OpenMM's (nm, kJ/mol, K); inside the math energies are reduced (kT).

torch is imported before openmm on purpose: openmm-torch's TorchForce kernels only register when
torch's libraries are loaded first.
"""
import torch  # noqa: F401  (must precede openmm; see module docstring)

__version__ = "0.1.0"

from .systems import CGSystem, create_system, available_systems  # noqa: E402,F401
from .energy import EnergyOracle  # noqa: E402,F401
