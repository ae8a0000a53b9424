"""The OpenMM bridge: energies and forces of batches of configurations."""
from .oracle import EnergyOracle, ReducedEnergy, resolve_platform, PLATFORM_NAMES  # noqa: F401
