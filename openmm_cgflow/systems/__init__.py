"""Registry of coarse-grainable systems (openmm-ml style: a name -> factory map, imported lazily).

Three ways in, all seen by the command line and by every verb that reopens a run:

* the built-in systems below;
* installed packages that declare an entry point in the group ``openmm_cgflow.systems`` (name = a system name,
  value = ``"package.module:function"`` returning a CGSystem), as openmm-ml finds its potentials; the function may
  carry an attribute ``config`` naming the built-in config whose recipe its runs use;
* a config's ``system: {factory: "package.module:function" | "file.py:function", arguments: {...}}``.

:func:`register_system` adds a name for the current Python process only (a script's own runs).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .base import CGSystem, kT_in_kJ_per_mol  # noqa: F401
from .cg_definition import CGDefinition, DihedralCV, LinearCV  # noqa: F401
from .description import SystemDescription  # noqa: F401

# name -> "module:function"; modules are imported only when the system is requested.
_REGISTRY: Dict[str, Union[str, Callable[..., CGSystem]]] = {
    "muller-brown": "openmm_cgflow.systems.muller_brown:create_muller_brown_system",
    "alanine-dipeptide": "openmm_cgflow.systems.alanine_dipeptide:create_alanine_dipeptide_system",
    "ace-ala2-nme": "openmm_cgflow.systems.peptides:create_ace_ala2_nme_system",
    "aldp-gbn2": "openmm_cgflow.systems.peptides:create_aldp_gbn2_system",
}
#: name -> the built-in config (``openmm_cgflow/configs/NAME.yaml``) whose keys and defaults a run of the system
#: uses; systems not listed use the molecule schema (``config.MOLECULE_DEFAULTS``).
_CONFIGS: Dict[str, str] = {"muller-brown": "muller-brown", "alanine-dipeptide": "aldp-fast"}
#: short names (the command line's) -> registered name
_ALIASES: Dict[str, str] = {"aldp": "alanine-dipeptide", "mb": "muller-brown"}
#: the systems that ship with the package (their configs set every key; other systems' defaults come from them)
BUILTIN_SYSTEMS = tuple(_REGISTRY)
#: the entry-point group through which installed packages add systems
ENTRY_POINT_GROUP = "openmm_cgflow.systems"
_entry_points_loaded = False


def _load_entry_points() -> None:
    """Add the systems installed packages declare (once per process; a name already registered is kept)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name not in _REGISTRY and point.name not in _ALIASES:
            _REGISTRY[point.name] = point.value


def available_systems() -> List[str]:
    """Names accepted by :func:`create_system` (built-in, installed through entry points, registered here)."""
    _load_entry_points()
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
    _load_entry_points()
    name = _ALIASES.get(text, text)
    return name if name in _REGISTRY else None


def default_config_name(name: str) -> Optional[str]:
    """The built-in config of registered system ``name``: the one it was registered with, or its factory's
    ``config`` attribute (None: chosen from its CG coordinates, see ``config.schema_name``)."""
    if name in _CONFIGS:
        return _CONFIGS[name]
    factory = _REGISTRY.get(name)
    if isinstance(factory, str) and name not in BUILTIN_SYSTEMS:
        factory = load_factory(factory)
    config = getattr(factory, "config", None)
    return config if isinstance(config, str) else None


def load_factory(spec: str) -> Callable[..., CGSystem]:
    """The function ``spec`` names: ``"package.module:function"``, or ``"path/to/file.py:function"`` (a Python file
    imported as a module of its own). ValueError naming what is missing."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(f"a system factory must be 'package.module:function' or 'file.py:function', got {spec!r}")
    module_name, function_name = spec.split(":")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise ValueError(f"system factory file not found: {module_name}")
        key = "openmm_cgflow_user_system_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
        module = sys.modules.get(key)
        if module is None:
            spec_ = importlib.util.spec_from_file_location(key, path)
            module = importlib.util.module_from_spec(spec_)
            sys.modules[key] = module
            try:
                spec_.loader.exec_module(module)
            except BaseException:
                del sys.modules[key]
                raise
    else:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            raise ValueError(f"system factory {spec!r}: module {error.name!r} cannot be imported") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(f"system factory {spec!r}: {module_name} has no function {function_name!r}")
    return function


def create_system(name: str, **kwargs) -> CGSystem:
    """Create the registered CGSystem ``name`` (e.g. ``"muller-brown"``; aliases such as ``"aldp"`` work too)."""
    resolved = registered_name(name)
    if resolved is None:
        raise ValueError(f"unknown system '{name}'; available: {', '.join(available_systems())}")
    factory = _REGISTRY[resolved]
    if isinstance(factory, str):
        factory = load_factory(factory)
    return factory(**kwargs)


#: the keys of a ``system: {factory: ...}`` mapping, with what each does (the configuration page lists them)
FACTORY_KEY_DOCS = {
    "factory": "a function returning a CGSystem: 'package.module:function', or 'file.py:function' (relative to the config file)",
    "arguments": "keyword arguments of the factory (default: none)",
    "config": "the built-in config whose recipe the run uses for keys you leave out (default: aldp-vacuum for CG dihedrals, "
              "linear for linear CG coordinates: Müller-Brown's recipe with a spline flow); the CG domain, search bounds and reference always come from the system",
}


def is_factory_config(value: Any) -> bool:
    """Whether a config's ``system`` value is a ``{factory: ..., arguments: ...}`` mapping."""
    return isinstance(value, Mapping) and "factory" in value


def check_factory_config(value: Mapping[str, Any]) -> None:
    """ValueError naming the problem in a ``system: {factory: ..., arguments: ...}`` mapping (nothing is built)."""
    unknown = sorted(set(value) - set(FACTORY_KEY_DOCS))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)} in 'system' with a factory (known: {', '.join(FACTORY_KEY_DOCS)})")
    if not isinstance(value["factory"], str) or value["factory"].count(":") != 1 or not all(value["factory"].split(":")):
        raise ValueError(f"'system.factory' must be 'package.module:function' or 'file.py:function', got {value['factory']!r}")
    arguments = value.get("arguments", {})
    if not isinstance(arguments, Mapping) or any(not isinstance(k, str) for k in arguments):
        raise ValueError(f"'system.arguments' must be a mapping of keyword arguments, got {arguments!r}")
    if "config" in value and not isinstance(value["config"], str):
        raise ValueError(f"'system.config' must name a built-in config, got {value['config']!r}")


def system_from_config(value) -> CGSystem:
    """The CGSystem a config's ``system`` names: a registered name, a ``{factory, arguments}`` mapping, or a mapping
    describing a molecule (see :mod:`openmm_cgflow.systems.molecule`)."""
    if isinstance(value, str):
        return create_system(value)
    if is_factory_config(value):
        check_factory_config(value)
        system = load_factory(value["factory"])(**dict(value.get("arguments", {})))
        if not isinstance(system, CGSystem):
            raise ValueError(f"system factory {value['factory']!r} returned {type(system).__name__}, not a CGSystem")
        return system
    from .molecule import molecule_inputs_from_config

    return CGSystem.from_openmm(**molecule_inputs_from_config(value))


@dataclass(frozen=True)
class CGFacts:
    """What a config needs to know of a system before its run: whether each CG coordinate is periodic, its domain
    (CG units: nm or rad), and the names of the reference PMFs it carries."""

    periodic: Tuple[bool, ...]
    domain: Tuple[Tuple[float, float], ...]
    references: Tuple[str, ...] = ()


_FACTS: Dict[str, CGFacts] = {}


def cg_facts(value: Any) -> CGFacts:
    """The :class:`CGFacts` of a config's ``system`` value (a registered name or a factory mapping); the system is
    built once per process to find them."""
    key = repr(value) if not isinstance(value, Mapping) else repr(sorted((k, repr(v)) for k, v in value.items()))
    if key not in _FACTS:
        system = system_from_config(value)
        _FACTS[key] = CGFacts(tuple(bool(p) for p in system.cg_definition.periodic), tuple(tuple(map(float, d)) for d in system.cg_domain),
                              tuple(system.references))
    return _FACTS[key]


def system_label(value) -> str:
    """A short name for a config's ``system`` value (for messages and metrics)."""
    if isinstance(value, str):
        return value
    if is_factory_config(value):
        return str(value["factory"]).rsplit(":", 1)[-1]
    return str(value.get("name") or value.get("openmmtools") or value.get("prmtop") or value.get("pdb") or "molecule")
