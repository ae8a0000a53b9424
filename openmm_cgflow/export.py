"""Write and read self-describing TorchScript model files.

A model file is a ``torch.jit.save`` archive with an extra file ``metadata.json`` (system, model kind,
CG definition, units, temperature, package version). Loading never unpickles Python objects: TorchScript
archives hold code and tensors only, and the metadata is parsed as JSON and validated.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import torch

from . import __version__
from .storage import atomic_write

METADATA_FILE = "metadata.json"
REQUIRED_METADATA = ("format_version", "kind", "system", "temperature_K", "energy_unit", "length_unit", "package_version")
FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A model file is missing, not TorchScript, or carries incomplete or mismatching metadata."""


def save_model(module: torch.nn.Module, path: Union[str, Path], kind: str, system: str, temperature_K: float, **metadata: Any) -> Path:
    """Script ``module`` and write it with its metadata to ``path`` (atomically)."""
    record = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "system": system,
        "temperature_K": float(temperature_K),
        "energy_unit": "kT",
        "length_unit": "nm",
        "package_version": __version__,
        **metadata,
    }
    scripted = torch.jit.script(module)
    extra = {METADATA_FILE: json.dumps(record, sort_keys=True)}
    return atomic_write(Path(path), lambda handle: torch.jit.save(scripted, handle, _extra_files=extra))


def load_model(path: Union[str, Path], expected_kind: str = None, expected_system: str = None) -> Tuple[torch.jit.ScriptModule, Dict[str, Any]]:
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
        metadata = json.loads(extra[METADATA_FILE])
    except json.JSONDecodeError:
        raise ModelFileError(f"{path}: {METADATA_FILE} is not valid JSON") from None
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ModelFileError(f"{path}: metadata is missing the field(s) {', '.join(missing)}")
    if expected_kind is not None and metadata["kind"] != expected_kind:
        raise ModelFileError(f"{path} holds a '{metadata['kind']}' model, expected '{expected_kind}'")
    if expected_system is not None and metadata["system"] != expected_system:
        raise ModelFileError(f"{path} is a model of system '{metadata['system']}', not '{expected_system}'")
    return module, metadata


def cg_system_metadata(cg_system, include_system: bool = False) -> Dict[str, Any]:
    """The metadata that makes a model file of ``cg_system`` self-describing: its name, temperature, number of CG
    coordinates and their declarative definition; with ``include_system`` (flow files) the whole system
    (:meth:`~openmm_cgflow.systems.CGSystem.to_spec`: OpenMM System XML, topology, internal coordinates), so
    forces and backmapping rebuild it from the file alone."""
    metadata = dict(system=cg_system.name, temperature_K=cg_system.temperature, cg_metadata=cg_system.metadata,
                    cg_dim=cg_system.cg_dim, cg_definition=cg_system.cg_definition.to_dict())
    if include_system:
        metadata.update(fg_dim=cg_system.fg_dim, cg_system=cg_system.to_spec())
    return metadata
