"""The OpenMM bridge: energies and forces of batches of configurations."""
from .oracle import EnergyOracle, ReducedEnergy  # noqa: F401
