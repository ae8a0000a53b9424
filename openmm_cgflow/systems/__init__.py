"""Registry of coarse-grainable systems (openmm-ml style: a name -> factory map, imported lazily)."""
from __future__ import annotations

import importlib
from typing import Callable, Dict, List

from .base import CGSystem, kT_in_kJ_per_mol  # noqa: F401

# name -> "module:function"; modules are imported only when the system is requested.
_REGISTRY: Dict[str, str] = {
    "muller-brown": "openmm_cgflow.systems.muller_brown:create_muller_brown_system",
    "alanine-dipeptide": "openmm_cgflow.systems.alanine_dipeptide:create_alanine_dipeptide_system",
}


def available_systems() -> List[str]:
    """Names accepted by :func:`create_system`."""
    return sorted(_REGISTRY)


def register_system(name: str, factory: str) -> None:
    """Register ``factory`` (``"module:function"`` returning a CGSystem) under ``name``."""
    _REGISTRY[name] = factory


def create_system(name: str, **kwargs) -> CGSystem:
    """Create the registered CGSystem ``name`` (e.g. ``"muller-brown"``)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown system '{name}'; available: {', '.join(available_systems())}")
    module_name, function_name = _REGISTRY[name].split(":")
    factory: Callable[..., CGSystem] = getattr(importlib.import_module(module_name), function_name)
    return factory(**kwargs)
