"""Run configuration: documented YAML files, built-in defaults, ``key=value`` overrides, strict validation.

A config is a nested dict. Built-in configs live in ``openmm_cgflow/configs/NAME.yaml`` and are also the
schema: a user file or an override may only use keys that exist there, with values of the same type.
Every problem raises :class:`ConfigError` with a one-line message naming the key.
"""
from __future__ import annotations

import copy
import math
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import yaml

from .errors import ConfigError  # noqa: F401  (the config's error type, defined with the others)

CONFIG_DIR = Path(__file__).parent / "configs"

# Keys whose default is null accept these types too.
_NULLABLE = {"energy.address": str, "loop.stop_kld": float, "loop.stable_ratio": float, "loop.max_wall_s": float, "loop.max_evaluations": int, "ensemble.epochs_warm": int, "dataset.start_entries": int, "dataset.max_start_points": int, "search.bounds": list, "search.start": list, "flow.hidden": list}
#: The schema (keys and defaults) of a system whose registry entry names no config of its own
#: (``systems.register_system(..., config=...)``): a molecule given by a ``system:`` mapping, or a system registered by the user.
MOLECULE_DEFAULTS = "aldp-vacuum"
#: Keys of a ``system:`` mapping that name files (resolved against the config file's folder).
_SYSTEM_FILE_KEYS = ("prmtop", "inpcrd", "pdb")

_CHOICES = {
    "energy.platform": ("Reference", "CPU", "OpenCL", "CUDA"),
    "energy.executor": ("local", "ray"),
    "flow.kind": ("affine", "spline"),
    "flow.context": ("periodic", "periodic2", "periodic3", "raw"),
    "flow.precision": ("float32", "float64"),
    "energy_training.schedule": ("per_iteration", "global_cosine", "per_iteration_cosine"),
    "energy_training.chirality_filter": ("none", "fab", "geometric"),
    "dataset.kind": ("active", "grid", "grid_then_active"),
    "ensemble.strategy": ("bagging", "fraction"),
    "ensemble.init": ("gaussian_uniform", "xavier"),
    "ensemble.optimizer": ("lbfgs", "adam"),
    "ensemble.precision": ("float32", "float64"),
    "spreading.kind": ("interval", "disc"),
    "labels.samples": ("last", "all"),
    "search.backend": ("mc", "cg_dynamics"),
    "search.acquisition": ("stop_at_uncertainty", "uncertainty_weighted"),
}
_FRACTIONS = ("dataset.train_fraction", "energy_training.replay_fraction", "ensemble.average_fraction")
_NON_NEGATIVE = ("energy_training.warmup_epochs_first", "energy_training.warmup_epochs", "energy_training.clip_warmup_epochs", "energy_training.skip_top_k", "labels.clip_k", "labels.accumulate_from_epoch", "labels.cell_width", "search.min_steps", "starting_data.equilibration_steps", "seed")


def builtin_configs() -> List[str]:
    """Names of the configs shipped with the package."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def config_summary(name: str) -> str:
    """The first sentence of a built-in config's header comment (what ``cgflow configs`` prints beside its name)."""
    header = []
    for line in (CONFIG_DIR / f"{name}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("#").strip())
    text = " ".join(header)
    return re.split(r"(?<=[a-z)])[.:] ", text, maxsplit=1)[0].rstrip(".")


class _DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: Any, line: int):
        super().__init__(f"key {key!r} appears twice in one mapping (again at line {line})")


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that repeats a key (plain YAML keeps the last one without a word)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise _DuplicateKeyError(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> Dict[str, Any]:
    try:
        data = yaml.load(path.read_text(), Loader=_StrictLoader)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not a text (YAML) file") from None
    except OSError as error:
        raise ConfigError(f"config file {path} cannot be read: {error.strerror}") from None
    except _DuplicateKeyError as error:
        raise ConfigError(f"config file {path}: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must contain a mapping of sections")
    return data


def builtin_config(name: str) -> Dict[str, Any]:
    """A built-in config as a nested dict. A built-in file that starts with ``extends: OTHER`` holds only what differs
    from the built-in config ``OTHER`` (alanine dipeptide's recipe is the molecule recipe plus its Hamiltonian and
    reference): its keys replace OTHER's, which it resolves the same way."""
    chain = [name]
    tree = _read_yaml(CONFIG_DIR / f"{name}.yaml")
    layers = [tree]
    while "extends" in tree:
        base = tree.pop("extends")
        if base not in builtin_configs() or base in chain:
            raise ConfigError(f"built-in config {chain[-1]!r}: 'extends' must name another built-in config without a cycle, got {base!r}")
        chain.append(base)
        tree = _read_yaml(CONFIG_DIR / f"{base}.yaml")
        layers.append(tree)
    flat: Dict[str, Any] = {}
    for layer in reversed(layers):  # the base first, each file's own keys over it
        flat.update(_flatten(layer))
    return _nest(flat)


def _flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name != "system":  # a system mapping is one value
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _check_system(value: Any) -> Any:
    """A config's ``system``: a registered name, a ``{factory, arguments}`` mapping, or a mapping describing a
    molecule (checked, not built)."""
    from .systems import available_systems, check_factory_config, is_factory_config

    if isinstance(value, str):
        if value not in available_systems():
            raise ConfigError(f"config key 'system' must name a registered system ({', '.join(available_systems())}) or describe a molecule, "
                              f"got {value!r} (a system of your own: an entry point in the group openmm_cgflow.systems, or "
                              "system: {factory: 'module:function'})")
        return value
    if is_factory_config(value):
        try:
            check_factory_config(value)
        except ValueError as error:
            raise ConfigError(f"config key {error}" if str(error).startswith("'system") else f"config key 'system': {error}") from None
        return dict(value)
    from .systems.molecule import check_system_config

    try:
        check_system_config(value)
    except ValueError as error:
        raise ConfigError(f"config key {error}" if str(error).startswith("'system") else f"config key 'system': {error}") from None
    return dict(value)


#: The recipe of systems of one's own whose CG coordinates are not all angles (linear coordinates, nm): Müller-Brown's
#: with a spline flow (configs/linear.yaml; benchmarks/studies/flow-multimodal.md).
LINEAR_DEFAULTS = "linear"


def is_user_system(system: Any) -> bool:
    """Whether ``system`` is one of the user's own (registered in Python, installed through an entry point, or a
    factory mapping) rather than a built-in system or a molecule mapping: its CG domain is not in any built-in config."""
    from .systems import BUILTIN_SYSTEMS, is_factory_config, registered_name

    if isinstance(system, str):
        return registered_name(system) not in BUILTIN_SYSTEMS
    return is_factory_config(system)


def schema_name(system: Any) -> str:
    """The built-in config whose keys and defaults apply to a config of ``system``: a registered system's own, the
    one a factory names (``config``), else the molecule recipe for CG angles and the linear recipe (Müller-Brown's with a
    spline flow) for linear CG coordinates (a system of one's own is built once to find out which)."""
    from .systems import default_config_name, is_factory_config, registered_name

    chosen = None
    if isinstance(system, str):
        name = registered_name(system)
        chosen = default_config_name(name) if name is not None else None
    elif is_factory_config(system):
        chosen = system.get("config")
        if chosen is not None and chosen not in builtin_configs():
            raise ConfigError(f"config key 'system.config' must name a built-in config ({', '.join(builtin_configs())}), got {chosen!r}")
    if chosen is None and is_user_system(system):
        chosen = MOLECULE_DEFAULTS if all(_system_facts(system).periodic) else LINEAR_DEFAULTS
    return chosen or MOLECULE_DEFAULTS


def _system_facts(system: Any):
    """The CG facts of a system of one's own (one line if building it fails)."""
    from .systems import cg_facts, load_factory

    if not isinstance(system, str):
        try:
            load_factory(system["factory"])  # a missing file, module or function: its own line
        except ValueError as error:
            raise ConfigError(f"config key 'system': {error}") from None
    try:
        return cg_facts(system)
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001 - the user's factory: any failure is bad input, told in one line
        label = system if isinstance(system, str) else system.get("factory")
        reason = " ".join(str(error).split())[:300]
        raise ConfigError(f"config key 'system': building {label!r} failed ({type(error).__name__}: {reason})") from None


#: lengths in a recipe's CG units that a system of one's own with linear CG coordinates gets scaled by its domain's
#: width over the recipe's (a Müller-Brown step of 0.1 nm on a 3.6 nm range is 1/36 of any other range)
_DOMAIN_SCALED_KEYS = ("search.step_size", "spreading.width")


def _own_domain_defaults(system: Any, user_keys: Iterable[str], schema: Dict[str, Any]) -> Dict[str, Any]:
    """For a system of one's own, the keys a config leaves unset that must come from the system and not from the
    built-in config lending its recipe (``schema``): ``metrics.domain`` (the CG coordinates' common domain),
    ``search.bounds`` (that domain for one linear coordinate, else null), ``search.start`` (null: the first starting
    frame), ``metrics.reference`` (the system's first reference, else none) and, for linear CG coordinates, the
    search's step and the spreading width in proportion to the domain (:data:`_DOMAIN_SCALED_KEYS`)."""
    if not is_user_system(system):
        return {}
    facts = _system_facts(system)
    values: Dict[str, Any] = {}
    domains = sorted(set(facts.domain))
    if "metrics.domain" not in user_keys:
        if len(domains) != 1:
            raise ConfigError(f"config key 'metrics.domain' must be set: the system's CG coordinates have different domains {list(facts.domain)}")
        values["metrics.domain"] = list(domains[0])
    if not any(facts.periodic):
        lower, upper = values.get("metrics.domain") or domains[0]
        recipe = _flatten(schema)
        scale = (upper - lower) / (recipe["metrics.domain"][1] - recipe["metrics.domain"][0])
        for key in _DOMAIN_SCALED_KEYS:
            if key not in user_keys:
                values[key] = recipe[key] * scale
    if "search.bounds" not in user_keys:
        values["search.bounds"] = list(facts.domain[0]) if len(facts.domain) == 1 and not facts.periodic[0] else None
    if "search.start" not in user_keys:
        values["search.start"] = None
    if "metrics.reference" not in user_keys:  # one of its own references, else none (never another system's)
        values["metrics.reference"] = facts.references[0] if facts.references else "none"
    return values


def _check_value(key: str, value: Any, default: Any) -> Any:
    if key == "system":
        return _check_system(value)
    expected = _NULLABLE.get(key, type(default))
    if value is None:
        if key in _NULLABLE:
            return None
        raise ConfigError(f"config key '{key}' must not be null")
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected is float and isinstance(value, str):  # YAML 1.1 reads 2e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}")
    if expected is list:
        if isinstance(value, list) and any(isinstance(v, float) and not math.isfinite(v) for v in value):
            raise ConfigError(f"config key '{key}' must list finite numbers, got {value!r}")
        if key == "search.bounds" and isinstance(value, list) and len(value) != 2:
            raise ConfigError(f"config key '{key}' must be null or [lower, upper], got {value!r}")
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
            raise ConfigError(f"config key '{key}' must be a list of numbers, got {value!r}")
        if key in ("search.start", "metrics.domain") and default is not None and len(value) != len(default):
            raise ConfigError(f"config key '{key}' must have {len(default)} entries, got {len(value)}")
        if key.endswith("hidden") and (not value or any(int(v) != v or v < 1 for v in value)):
            raise ConfigError(f"config key '{key}' must list positive integer layer widths, got {value!r}")
        return value
    if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
        raise ConfigError(f"config key '{key}' must be of type {expected.__name__}, got {value!r}")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ConfigError(f"config key '{key}' must be one of {', '.join(_CHOICES[key])}, got {value!r}")
    if expected in (int, float) and not isinstance(value, bool):
        if key in _FRACTIONS and not 0.0 <= value <= 1.0:
            raise ConfigError(f"config key '{key}' must lie in [0, 1], got {value!r}")
        if key in _NON_NEGATIVE and value < 0:
            raise ConfigError(f"config key '{key}' must be >= 0, got {value!r}")
        if key not in _FRACTIONS and key not in _NON_NEGATIVE and not value > 0:
            raise ConfigError(f"config key '{key}' must be > 0, got {value!r}")
    return value


def validate(config: Dict[str, Any], schema: Dict[str, Any]) -> Dict[str, Any]:
    """Check every key of ``config`` against ``schema`` (a built-in config); return a normalised copy."""
    flat_schema = _flatten(schema)
    sections = {k.split(".")[0] for k in flat_schema}
    result = copy.deepcopy(schema)
    for key, value in _flatten(config).items():
        if key not in flat_schema:
            shown = key.encode("unicode_escape").decode("ascii")  # a key with a line break stays on one line
            if key.split(".")[0] in sections and key not in sections:
                known = sorted(k for k in flat_schema if k.startswith(key.split(".")[0] + "."))
                raise ConfigError(f"unknown config key '{shown}' (known keys here: {', '.join(known)})")
            raise ConfigError(f"unknown config key '{shown}'")
        checked = _check_value(key, value, flat_schema[key])
        node = result
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = checked
    _check_relations(result)
    return result


#: Most CG grid points a metric or grid-baseline grid may have (n ** cg_dim): 4e6 points keep the grid's arrays
#: (centres, reference, ensemble predictions) within a few hundred MB.
MAX_GRID_POINTS = 4_000_000


def _check_relations(cfg: Dict[str, Any]) -> None:
    """Checks that involve more than one key (each message names the keys)."""
    def fail(message: str) -> None:
        raise ConfigError(message)

    if cfg["ensemble"]["n_members"] < 2:
        fail("config key 'ensemble.n_members' must be >= 2 (the std needs two members)")
    if cfg["ensemble"]["average_fraction"] >= 1:
        fail("config key 'ensemble.average_fraction' must be < 1 (the PMF averages the fits of that last fraction of the run's evaluations)")
    address = cfg["energy"]["address"]
    if address is not None and cfg["energy"]["executor"] != "ray":
        fail(f"config key 'energy.address' ({address!r}) names a Ray cluster: set 'energy.executor' to ray, or the address to null")
    if address is not None and address != "auto" and not re.fullmatch(r"(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d+", address):
        fail(f"config key 'energy.address' must be null, auto, ray://HOST:PORT or HOST:PORT, got {address!r}")
    if cfg["labels"]["clip_k"] == 1:
        fail("config key 'labels.clip_k' must be 0 (off) or >= 2")
    if cfg["labels"]["clip_k"] > cfg["dataset"]["copies"]:
        fail(f"config key 'labels.clip_k' ({cfg['labels']['clip_k']}) must not exceed 'dataset.copies' ({cfg['dataset']['copies']})")
    if cfg["dataset"]["train_fraction"] == 0:
        fail("config key 'dataset.train_fraction' must be > 0 (no CG point would get a label)")
    flow = cfg["flow"]
    if flow["kind"] == "affine" and (flow["precision"] != "float64" or flow["compile"]):
        fail("config keys 'flow.precision' and 'flow.compile' apply to flow.kind=spline; the affine flow is float64 and eager")
    et = cfg["energy_training"]
    if et["skip_top_k"] >= et["batch_size"]:
        fail(f"config key 'energy_training.skip_top_k' ({et['skip_top_k']}) must be < 'energy_training.batch_size' ({et['batch_size']})")
    search, metrics = cfg["search"], cfg["metrics"]
    for key, interval in (("metrics.domain", metrics["domain"]), ("search.bounds", search["bounds"])):
        if interval is not None and not interval[0] < interval[1]:
            fail(f"config key '{key}' must be [lower, upper] with lower < upper, got {interval!r}")
    limits, limits_key = (search["bounds"], "search.bounds") if search["bounds"] is not None else (metrics["domain"], "metrics.domain")
    if search["start"] is not None and any(not limits[0] <= v <= limits[1] for v in search["start"]):
        fail(
            f"config key 'search.start' {search['start']!r} lies outside '{limits_key}' {limits!r} "
            "(CG units: nm, or radians for angles)"
        )
    wanted = search["n_new_points"] * search["diversity_multiplier"]
    if search["acquisition"] == "stop_at_uncertainty" and wanted > search["n_chains"]:
        fail(
            f"config keys 'search.n_new_points' x 'search.diversity_multiplier' ({wanted}) must not exceed 'search.n_chains' "
            f"({search['n_chains']}): the search stops once that many chains have stopped"
        )
    if search["acquisition"] == "uncertainty_weighted" and search["n_new_points"] > search["n_chains"]:
        fail(f"config key 'search.n_new_points' ({search['n_new_points']}) must not exceed 'search.n_chains' ({search['n_chains']})")
    system = cfg["system"]
    if search["start"] is not None:
        cg_dim = len(search["start"])
    elif is_user_system(system):
        cg_dim = len(_system_facts(system).periodic)
    else:
        cg_dim = len(system["cg_dihedrals"]) if isinstance(system, dict) else 1
    dataset = cfg["dataset"]
    grid_sized = dataset["kind"] == "grid" or (dataset["kind"] == "grid_then_active" and (dataset["max_start_points"] is None
                                                                                           or dataset["grid_points"] ** cg_dim <= dataset["max_start_points"]))
    for key, n in (("metrics.n_bins", metrics["n_bins"]), ("dataset.grid_points", dataset["grid_points"] if grid_sized else 1)):
        if n ** cg_dim > MAX_GRID_POINTS:
            fail(f"config key '{key}' = {n} gives {n}^{cg_dim} grid points; at most {MAX_GRID_POINTS:,} are allowed")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cfg["energy"]["executor"] == "local" and cfg["energy"]["n_workers"] > max(cores, 1) * 4:
        fail(f"config key 'energy.n_workers' = {cfg['energy']['n_workers']} is more than 4x the {cores} core(s) this process may use")


#: Keys added after runs were already stored, with the value that reproduces those runs (a stored config that
#: lacks one ran with this value, whatever today's default is).
LEGACY_VALUES = {"energy.executor": "local", "energy.address": None, "labels.cell_width": 0.0, "dataset.start_entries": None, "dataset.max_start_points": None, "loop.stable_ratio": None, "loop.stable_iterations": 3, "loop.max_wall_s": None, "loop.max_evaluations": None, "search.coverage_check": False, "ensemble.precision": "float64", "ensemble.lbfgs_groups": 1, "ensemble.warm_start": False, "ensemble.epochs_warm": None, "ensemble.average_fraction": 0.0, "flow.precision": "float64", "flow.compile": False}


def validate_config(config: Any) -> Dict[str, Any]:
    """Validate a complete config from elsewhere (e.g. stored in a checkpoint) against its system's schema; keys
    it predates take their :data:`LEGACY_VALUES`."""
    if not isinstance(config, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(config).__name__}")
    flat = _flatten(config)
    missing = {key: value for key, value in LEGACY_VALUES.items() if key not in flat and key.split(".")[0] in config}
    if missing:
        config = _nest({**flat, **missing})
    system = _check_system(config.get("system"))
    return validate(config, builtin_config(schema_name(system)))


def parse_override(text: str) -> Tuple[str, Any]:
    """Split ``section.key=value`` and parse the value as YAML (so 1e-3, [1, 2], null work)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has no key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"override '{text}': cannot parse value {raw!r}") from None
    return key, value


def _nest(flat: Dict[str, Any]) -> Dict[str, Any]:
    tree: Dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return tree


def load_config(name_or_path: str, overrides: Iterable[str] = (), seed: Optional[int] = None) -> Dict[str, Any]:
    """Load a built-in config by name or a YAML file, apply ``overrides`` and ``seed``, validate.

    A user file names its ``system``; keys it omits take the defaults of that system's built-in config.
    """
    path = Path(name_or_path)
    if name_or_path in builtin_configs():
        user: Dict[str, Any] = builtin_config(name_or_path)
        schema = builtin_config(schema_name(user["system"]))
    elif path.suffix in (".yaml", ".yml") or path.exists():
        user = _read_yaml(path)
        if "system" not in user:
            raise ConfigError(f"config file {path} must name its 'system' (a registered system or a molecule mapping)")
        system = _check_system(user["system"])
        if isinstance(system, dict):  # files named in the system mapping (a factory's file too) are relative to the config file
            for key in _SYSTEM_FILE_KEYS:
                if key in system:
                    system[key] = str((path.parent / str(system[key])).resolve())
            module, _, function = str(system.get("factory", "")).rpartition(":")
            if module.endswith(".py"):
                system["factory"] = f"{(path.parent / module).resolve()}:{function}"
        user["system"] = system
        schema = builtin_config(schema_name(system))
    else:
        raise ConfigError(f"'{name_or_path}' is neither a built-in config ({', '.join(builtin_configs())}) nor a YAML file")
    flat = _flatten(user)
    flat = {**_own_domain_defaults(user["system"], {text.split("=", 1)[0].strip() for text in overrides} | set(flat), schema), **flat}
    for text in overrides:
        key, value = parse_override(text)
        if key == "system":
            raise ConfigError("the system cannot be overridden; choose another config")
        flat[key] = value
    if seed is not None:
        flat["seed"] = seed
    return validate(_nest(flat), schema)


def config_differences(a: Dict[str, Any], b: Dict[str, Any]) -> List[str]:
    """Keys whose values differ between two configs."""
    fa, fb = _flatten(a), _flatten(b)
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))
