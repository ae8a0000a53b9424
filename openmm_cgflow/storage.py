"""Atomic file writes for everything a run leaves behind (checkpoints, metrics, models, data, references):
write to a temporary file in the same folder, fsync, then rename over the old one, so a kill never leaves a
half-written file."""
from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Iterable

import numpy as np
import torch


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(handle)`` on a temporary binary file, then atomically move it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


CHECKPOINT_FORMAT = "openmm-cgflow-checkpoint"
CHECKPOINT_VERSION = 2
_ARRAY_TAG = "__ndarray__"


class CheckpointError(ValueError):
    """A checkpoint is corrupted, foreign, or holds objects that loading could execute; one-line message."""


def _encode(value: Any, where: str = "state") -> Any:
    """Turn a checkpoint state into tensors and plain data only (numpy arrays become tagged tensors)."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise TypeError(f"{where}: numpy arrays of dtype {value.dtype} cannot be checkpointed")
        return {_ARRAY_TAG: torch.from_numpy(np.ascontiguousarray(value).copy())}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: _encode(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_encode(item, f"{where}[{i}]") for i, item in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    if value is None or isinstance(value, (bool, int, float, str, bytes, torch.Tensor)):
        return value
    raise TypeError(f"{where}: objects of type {type(value).__name__} cannot be checkpointed")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {_ARRAY_TAG} and isinstance(value[_ARRAY_TAG], torch.Tensor):
            return value[_ARRAY_TAG].numpy()
        return {key: _decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_decode(item) for item in value)
    return value


def _legacy_numpy_globals() -> list:
    """The numpy array/scalar constructors that version-1 checkpoints (pickled numpy arrays) need. They only
    rebuild numeric arrays: every object inside still goes through torch's weights-only unpickler."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    dtypes = [getattr(np.dtypes, name) for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType", "UInt32DType", "UInt8DType")]
    return [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar, *dtypes]


def save_checkpoint(path: Path, state: Dict[str, Any]) -> None:
    """Write ``state`` (tensors, numpy numeric arrays, plain Python data) atomically.

    The file holds tensors and plain data only, so :func:`load_checkpoint` reads it with
    ``torch.load(weights_only=True)``: loading a checkpoint never executes code.
    """
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "state": _encode(state)}
    atomic_write(path, lambda handle: torch.save(payload, handle))


def load_checkpoint(path: Path, required: Iterable[str] = ()) -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` without executing anything it contains.

    Raises FileNotFoundError for a missing file and :class:`CheckpointError` (one line) for a file that is
    corrupted, not a checkpoint, lacks one of the ``required`` keys, or carries pickled Python objects
    beyond tensors and plain data (such a file is refused: unpickling it could run code).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from: {path}")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since torch 1.6
        raise CheckpointError(f"{path} is corrupted or not a checkpoint (not a torch zip archive)")
    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            with torch.serialization.safe_globals(_legacy_numpy_globals()):
                data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path} was refused: it holds pickled Python objects other than tensors, numeric arrays and plain data, "
            "and loading it could run code (openmm-cgflow never writes such checkpoints)"
        ) from None
    except Exception as error:  # truncated zip, random bytes, a directory, ...
        reason = " ".join(str(error).split())[:160]
        raise CheckpointError(f"{path} is corrupted or not a checkpoint ({type(error).__name__}: {reason})") from None
    if isinstance(data, dict) and data.get("format") == CHECKPOINT_FORMAT:
        if not isinstance(data.get("version"), int) or data["version"] > CHECKPOINT_VERSION:
            raise CheckpointError(f"{path} has checkpoint format version {data.get('version')!r}; this openmm-cgflow reads <= {CHECKPOINT_VERSION}")
        data = _decode(data.get("state"))
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not an openmm-cgflow checkpoint (it holds a {type(data).__name__}, not a mapping)")
    missing = [key for key in required if key not in data]
    if missing:
        raise CheckpointError(f"{path} is not an openmm-cgflow checkpoint of this kind (missing: {', '.join(missing)})")
    return data


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (metrics files are read while runs go on)."""
    atomic_write(path, lambda handle: handle.write(json.dumps(data, indent=2).encode()))
