"""Write and read self-describing TorchScript model files.

A model file is a ``torch.jit.save`` archive with an extra file ``metadata.json`` (system, model kind,
CG definition, units, temperature, package version, and the SHA-256 of the model's tensors and metadata). Loading
never unpickles Python objects: TorchScript archives hold code and tensors only, the metadata is parsed as JSON and
validated, and the checksum is verified (a damaged file is refused; files written before checksums load with a
notice).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch

from ._version import __version__
from .storage import IntegrityError, atomic_write, check_digest, content_digest, notice_unverified
from .systems import CGDefinition, CGSystem, available_systems, create_system, kT_in_kJ_per_mol

METADATA_FILE = "metadata.json"
REQUIRED_METADATA = ("format_version", "kind", "system", "temperature_K", "energy_unit", "length_unit", "package_version")
FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A model file is missing, not TorchScript, or carries incomplete or mismatching metadata."""


@dataclass(frozen=True)
class ModelMetadata:
    """What a model file says about itself (its ``metadata.json``), typed.

    ``system``: the system's name; ``temperature_K``: K; ``cg_dim``: number of CG coordinates; ``cg_definition``:
    the CG coordinates and replica (files before version 0.2 name a built-in system instead); ``cg_metadata``: the
    system's description (:meth:`~openmm_cgflow.systems.CGSystem.description`); flow files also carry ``fg_dim``
    and ``cg_system`` (:meth:`~openmm_cgflow.systems.CGSystem.to_spec`: the whole molecule). Fields this version does
    not know are kept in ``extra`` and written back unchanged.
    """

    kind: str
    system: str
    temperature_K: float
    cg_dim: Optional[int] = None
    cg_definition: Optional[CGDefinition] = None
    cg_metadata: Mapping[str, Any] = field(default_factory=dict)
    fg_dim: Optional[int] = None
    cg_system: Optional[Mapping[str, Any]] = None
    format_version: int = FORMAT_VERSION
    energy_unit: str = "kT"
    length_unit: str = "nm"
    package_version: str = __version__
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def for_system(cls, cg_system: CGSystem, kind: str, include_system: bool = False) -> "ModelMetadata":
        """The metadata that makes a model file of ``cg_system`` self-describing: name, temperature, the CG
        definition and the system's description; with ``include_system`` (flow files) the whole system, so forces
        and backmapping rebuild it from the file alone."""
        return cls(kind=kind, system=cg_system.name, temperature_K=float(cg_system.temperature), cg_dim=cg_system.cg_dim,
                   cg_definition=cg_system.cg_definition, cg_metadata=cg_system.description.to_dict(),
                   fg_dim=cg_system.fg_dim if include_system else None, cg_system=cg_system.to_spec() if include_system else None)

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "ModelMetadata":
        """Parse a ``metadata.json`` record (a ValueError names a missing or malformed field)."""
        missing = [key for key in REQUIRED_METADATA if key not in record]
        if missing:
            raise ValueError(f"metadata is missing the field(s) {', '.join(missing)}")
        known = {f.name for f in fields(cls)} - {"extra"}
        temperature = record["temperature_K"]
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
            raise ValueError(f"metadata field temperature_K must be a finite positive number of kelvin, got {temperature!r}")
        for key, unit_name in (("energy_unit", "kT"), ("length_unit", "nm")):
            if record[key] != unit_name:
                raise ValueError(f"metadata field {key} must be '{unit_name}' (the unit this openmm-cgflow writes), got {record[key]!r}")
        cg_dim = record.get("cg_dim")
        if cg_dim is not None and (isinstance(cg_dim, bool) or not isinstance(cg_dim, int) or cg_dim < 1):
            raise ValueError(f"metadata field cg_dim must be a positive integer, got {cg_dim!r}")
        try:
            definition = record.get("cg_definition")
            return cls(
                kind=str(record["kind"]), system=str(record["system"]), temperature_K=float(record["temperature_K"]),
                cg_dim=None if record.get("cg_dim") is None else int(record["cg_dim"]),
                cg_definition=CGDefinition.from_dict(definition) if isinstance(definition, dict) and "coordinates" in definition else None,
                cg_metadata=dict(record.get("cg_metadata") or {}), fg_dim=None if record.get("fg_dim") is None else int(record["fg_dim"]),
                cg_system=record.get("cg_system"), format_version=int(record["format_version"]), energy_unit=str(record["energy_unit"]),
                length_unit=str(record["length_unit"]), package_version=str(record["package_version"]),
                extra={key: value for key, value in record.items() if key not in known},
            )
        except (TypeError, ValueError) as error:
            raise ValueError(f"metadata has a malformed field ({' '.join(str(error).split())[:160]})") from None

    def to_dict(self) -> Dict[str, Any]:
        """The ``metadata.json`` record (fields that are None are left out)."""
        record: Dict[str, Any] = {
            "format_version": self.format_version, "kind": self.kind, "system": self.system, "temperature_K": float(self.temperature_K),
            "energy_unit": self.energy_unit, "length_unit": self.length_unit, "package_version": self.package_version,
            "cg_metadata": dict(self.cg_metadata), "cg_dim": self.cg_dim,
            "cg_definition": self.cg_definition.to_dict() if self.cg_definition is not None else None,
            "fg_dim": self.fg_dim, "cg_system": self.cg_system, **self.extra,
        }
        return {key: value for key, value in record.items() if value is not None and not (key == "cg_metadata" and not value)}

    @property
    def kT(self) -> float:
        """Thermal energy at the model's temperature, kJ/mol."""
        return kT_in_kJ_per_mol(self.temperature_K)

    def definition(self) -> CGDefinition:
        """The model's CG definition; files written before it existed name a built-in system, whose definition it is."""
        if self.cg_definition is not None:
            return self.cg_definition
        if self.system in available_systems():
            return create_system(self.system).cg_definition
        raise ValueError(f"the model's metadata has no cg_definition and names no built-in system (system {self.system!r})")

    def cg_system_model(self) -> CGSystem:
        """The CGSystem a flow file carries (``cg_system``); files written before it existed name a built-in system."""
        if isinstance(self.cg_system, dict):
            return CGSystem.from_spec(self.cg_system)
        if self.system in available_systems():
            return create_system(self.system)
        raise ValueError(f"the model's metadata has no cg_system description and names no built-in system (system {self.system!r})")


def save_model(module: torch.nn.Module, path: Union[str, Path], metadata: Optional[ModelMetadata] = None, **fields_: Any) -> Path:
    """Script ``module`` and write it with its ``metadata`` (or the metadata ``fields_``: kind, system,
    temperature_K, ...) to ``path`` (atomically)."""
    if metadata is None:
        metadata = ModelMetadata.from_dict({"format_version": FORMAT_VERSION, "energy_unit": "kT", "length_unit": "nm",
                                            "package_version": __version__, **fields_})
    elif fields_:
        raise TypeError("give either metadata or its fields, not both")
    scripted = torch.jit.script(module) if not isinstance(module, torch.jit.ScriptModule) else module
    return write_model_file(scripted, path, metadata.to_dict())


def model_digest(module: torch.jit.ScriptModule, record: Dict[str, Any]) -> str:
    """SHA-256 of a model's tensors (its state dict) and its metadata record (without the digest itself)."""
    return content_digest({"state": dict(module.state_dict()), "metadata": {k: v for k, v in record.items() if k != "sha256"}})


def write_model_file(scripted: torch.jit.ScriptModule, path: Union[str, Path], record: Dict[str, Any]) -> Path:
    """Write a scripted module with its metadata ``record`` and their checksum (atomically)."""
    record = {**{k: v for k, v in record.items() if k != "sha256"}, "sha256": model_digest(scripted, record)}
    extra = {METADATA_FILE: json.dumps(record, sort_keys=True)}
    return atomic_write(Path(path), lambda handle: torch.jit.save(scripted, handle, _extra_files=extra))


def load_model(path: Union[str, Path], expected_kind: str = None, expected_system: str = None) -> Tuple[torch.jit.ScriptModule, ModelMetadata]:
    """Load a model file written by :func:`save_model`; return ``(module, metadata)``.

    Raises :class:`ModelFileError` for a missing or non-TorchScript file, missing metadata fields,
    or a kind/system other than the expected one.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    extra = {METADATA_FILE: ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as error:
        raise ModelFileError(f"{path} is not a readable TorchScript model file ({type(error).__name__})") from None
    if not extra[METADATA_FILE]:
        raise ModelFileError(f"{path} has no {METADATA_FILE}: not written by openmm-cgflow's export")
    try:
        record = json.loads(extra[METADATA_FILE])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelFileError(f"{path}: {METADATA_FILE} is not valid JSON (damaged?)") from None
    if not isinstance(record, dict):
        raise ModelFileError(f"{path}: {METADATA_FILE} is not a mapping")
    if "sha256" in record:
        try:
            check_digest(path, record["sha256"], {"state": dict(module.state_dict()), "metadata": {k: v for k, v in record.items() if k != "sha256"}},
                         "model tensors and metadata")
        except IntegrityError as error:
            raise ModelFileError(str(error)) from None
        record = {k: v for k, v in record.items() if k != "sha256"}
    else:
        notice_unverified(path, "a model file")
    try:
        metadata = ModelMetadata.from_dict(record)
    except ValueError as error:
        raise ModelFileError(f"{path}: {error}") from None
    if expected_kind is not None and metadata.kind != expected_kind:
        raise ModelFileError(f"{path} holds a '{metadata.kind}' model, expected '{expected_kind}'")
    if expected_system is not None and metadata.system != expected_system:
        raise ModelFileError(f"{path} is a model of system '{metadata.system}', not '{expected_system}'")
    return module, metadata
