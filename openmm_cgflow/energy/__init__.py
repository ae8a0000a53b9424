"""The OpenMM bridge: energies and forces of batches of configurations."""
from .oracle import EnergyOracle, ReducedEnergy, default_properties, pin_driver, pin_to_core, resolve_platform, PLATFORM_NAMES  # noqa: F401
