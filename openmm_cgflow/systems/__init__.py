"""Registry of coarse-grainable systems (openmm-ml style: a name -> factory map, imported lazily)."""
from __future__ import annotations

import importlib
from typing import Callable, Dict, List, Optional, Sequence, Union

from .base import CGSystem, kT_in_kJ_per_mol  # noqa: F401
from .cg_definition import CGDefinition, DihedralCV, LinearCV  # noqa: F401
from .description import SystemDescription  # noqa: F401

# name -> "module:function"; modules are imported only when the system is requested.
_REGISTRY: Dict[str, Union[str, Callable[..., CGSystem]]] = {
    "muller-brown": "openmm_cgflow.systems.muller_brown:create_muller_brown_system",
    "alanine-dipeptide": "openmm_cgflow.systems.alanine_dipeptide:create_alanine_dipeptide_system",
    "ace-ala2-nme": "openmm_cgflow.systems.peptides:create_ace_ala2_nme_system",
}
#: name -> the built-in config (``openmm_cgflow/configs/NAME.yaml``) whose keys and defaults a run of the system
#: uses; systems not listed use the molecule schema (``config.MOLECULE_DEFAULTS``).
_CONFIGS: Dict[str, str] = {"muller-brown": "muller-brown", "alanine-dipeptide": "aldp"}
#: short names (the command line's) -> registered name
_ALIASES: Dict[str, str] = {"aldp": "alanine-dipeptide", "mb": "muller-brown"}


def available_systems() -> List[str]:
    """Names accepted by :func:`create_system`."""
    return sorted(_REGISTRY)


def system_aliases() -> Dict[str, str]:
    """Short names accepted for registered systems (alias -> name)."""
    return dict(_ALIASES)


def register_system(name: str, factory: Union[str, Callable[..., CGSystem]], config: Optional[str] = None,
                    aliases: Sequence[str] = ()) -> None:
    """Register ``factory`` (a function returning a CGSystem, or ``"module:function"`` imported when first
    used) under ``name``; e.g. ``register_system("my-peptide", lambda: CGSystem.from_openmm(...))``.
    ``config``: the built-in config whose keys and defaults its runs use (default: the molecule schema);
    ``aliases``: short names for it."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a system name must be a non-empty string, got {name!r}")
    if not (callable(factory) or (isinstance(factory, str) and factory.count(":") == 1)):
        raise ValueError(f"factory must be a function or 'module:function', got {factory!r}")
    for alias in aliases:
        if alias in _REGISTRY or _ALIASES.get(alias, name) != name:
            raise ValueError(f"alias '{alias}' already names another system")
    _REGISTRY[name] = factory
    if config is not None:
        _CONFIGS[name] = config
    else:
        _CONFIGS.pop(name, None)
    _ALIASES.update({alias: name for alias in aliases})


def registered_name(text: str) -> Optional[str]:
    """The registered name ``text`` stands for (itself or an alias), or None."""
    name = _ALIASES.get(text, text)
    return name if name in _REGISTRY else None


def default_config_name(name: str) -> Optional[str]:
    """The built-in config of registered system ``name`` (None: the molecule schema applies)."""
    return _CONFIGS.get(name)


def create_system(name: str, **kwargs) -> CGSystem:
    """Create the registered CGSystem ``name`` (e.g. ``"muller-brown"``; aliases such as ``"aldp"`` work too)."""
    resolved = registered_name(name)
    if resolved is None:
        raise ValueError(f"unknown system '{name}'; available: {', '.join(available_systems())}")
    factory = _REGISTRY[resolved]
    if isinstance(factory, str):
        module_name, function_name = factory.split(":")
        factory = getattr(importlib.import_module(module_name), function_name)
    return factory(**kwargs)


def system_from_config(value) -> CGSystem:
    """The CGSystem a config's ``system`` names: a registered name, or a mapping describing a molecule (see
    :mod:`openmm_cgflow.systems.molecule`)."""
    if isinstance(value, str):
        return create_system(value)
    from .molecule import molecule_inputs_from_config

    return CGSystem.from_openmm(**molecule_inputs_from_config(value))


def system_label(value) -> str:
    """A short name for a config's ``system`` value (for messages and metrics)."""
    if isinstance(value, str):
        return value
    return str(value.get("name") or value.get("openmmtools") or value.get("prmtop") or value.get("pdb") or "molecule")
