"""Files a run leaves behind (checkpoints, metrics, models, data, references): written atomically (a temporary file
in the same folder, fsync, then a rename over the old one, so a kill never leaves a half-written file) and carrying
a SHA-256 digest of their content (:func:`content_digest`), checked on every load, so that a damaged file is refused
in one line instead of being read as numbers. Files written before digests existed still load, with a one-line
notice (:func:`notice_unverified`)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Iterable, Mapping

import numpy as np
import torch

_LOG = logging.getLogger("openmm_cgflow")


class IntegrityError(ValueError):
    """A file's content does not match the digest it carries (damaged after it was written); one-line message."""


def _feed(digest, value: Any) -> None:
    """Feed a nested structure into ``digest``, unambiguously: a type tag, then the content (arrays and tensors as
    dtype, shape and bytes; mappings in the order of their sorted keys)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().contiguous()
        digest.update(f"T{value.dtype}{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    elif isinstance(value, np.ndarray):
        digest.update(f"A{value.dtype.str}{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, Mapping):
        digest.update(f"D{len(value)}".encode())
        for key in sorted(value, key=lambda k: (type(k).__name__, repr(k))):
            _feed(digest, key)
            _feed(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"{'L' if isinstance(value, list) else 'U'}{len(value)}".encode())
        for item in value:
            _feed(digest, item)
    elif isinstance(value, bytes):
        digest.update(b"B%d:" % len(value) + value)
    elif isinstance(value, np.generic):
        _feed(digest, value.item())
    else:  # str, int, float, bool, None
        text = repr(value).encode()
        digest.update(f"S{type(value).__name__}{len(text)}:".encode() + text)


def content_digest(value: Any) -> str:
    """SHA-256 (hex) of a nested structure of mappings, lists, tuples, arrays, tensors and plain values."""
    digest = hashlib.sha256()
    _feed(digest, value)
    return digest.hexdigest()


def notice_unverified(path: Path, what: str) -> None:
    """One line on stderr: ``path`` carries no digest (written before 0.2), so its content cannot be verified."""
    _LOG.warning(f"note: {path} is {what} written before files carried a checksum; it loads, but its content cannot be verified")


def check_digest(path: Path, stored: Any, content: Any, what: str) -> None:
    """Raise :class:`IntegrityError` (one line naming ``path``) if ``content`` does not hash to ``stored``."""
    if not isinstance(stored, str) or content_digest(content) != stored:
        raise IntegrityError(f"{path} is damaged: its content does not match the checksum it was written with ({what}); "
                             "restore it from a copy or write it again")


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
#: 3: with the SHA-256 digest of the state (``sha256``); 2: tensors and plain data; 1: plain torch.save pickles
CHECKPOINT_VERSION = 3
_ARRAY_TAG = "__ndarray__"


class CheckpointError(ValueError):
    """A checkpoint is corrupted, foreign, or holds objects that loading could execute; one-line message."""


def _encode(value: Any, where: str = "state") -> Any:
    """Turn a checkpoint state into tensors and plain data only (numpy arrays become tagged tensors)."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise TypeError(f"{where}: numpy arrays of dtype {value.dtype} cannot be checkpointed")
        return {_ARRAY_TAG: torch.from_numpy(np.array(value, copy=True, order="C"))}  # (ascontiguousarray makes 0-d arrays 1-d)
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
    ``torch.load(weights_only=True)``: loading a checkpoint never executes code. It carries the digest of that content.
    """
    encoded = _encode(state)
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "state": encoded, "sha256": content_digest(encoded)}
    atomic_write(path, lambda handle: torch.save(payload, handle))


def load_checkpoint(path: Path, required: Iterable[str] = ()) -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` without executing anything it contains.

    Raises FileNotFoundError for a missing file and :class:`CheckpointError` (one line) for a file that is
    corrupted, damaged (its content does not match its checksum), not a checkpoint, lacks one of the ``required``
    keys, or carries pickled Python objects beyond tensors and plain data (such a file is refused: unpickling it
    could run code). A checkpoint of an earlier version (no checksum) loads with a one-line notice.
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
        if data["version"] >= 3:
            try:
                check_digest(path, data.get("sha256"), data.get("state"), "checkpoint state")
            except IntegrityError as error:
                raise CheckpointError(str(error)) from None
        else:
            notice_unverified(path, "a checkpoint")
        data = _decode(data.get("state"))
    elif isinstance(data, dict):
        notice_unverified(path, "a checkpoint")
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not an openmm-cgflow checkpoint (it holds a {type(data).__name__}, not a mapping)")
    missing = [key for key in required if key not in data]
    if missing:
        raise CheckpointError(f"{path} is not an openmm-cgflow checkpoint of this kind (missing: {', '.join(missing)})")
    return data


def save_arrays(path: Path, compressed: bool = True, **arrays: Any) -> Path:
    """Write numpy arrays (and strings) to an .npz file atomically, with the digest of their content (``sha256``)."""
    arrays = {key: np.asarray(value) for key, value in arrays.items()}
    if "sha256" in arrays:
        raise ValueError("'sha256' is the digest's own entry")
    save = np.savez_compressed if compressed else np.savez
    return atomic_write(Path(path), lambda handle: save(handle, sha256=content_digest(arrays), **arrays))


def load_arrays(path: Path, required: Iterable[str] = (), what: str = "an array file") -> Dict[str, np.ndarray]:
    """The arrays of an .npz file written by :func:`save_arrays`, their digest checked (:class:`IntegrityError`, one
    line); files without a digest load with a notice. A missing file is FileNotFoundError; a file that is not an
    .npz archive, or lacks a ``required`` entry, a ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what[0].upper() + what[1:] if what else 'file'} not found: {path}")
    try:
        data = np.load(path, allow_pickle=False)
        if not hasattr(data, "files"):
            raise ValueError("a single array, not an .npz archive of named arrays")
        with data:
            arrays = {key: data[key] for key in data.files}
    except Exception as error:  # a damaged archive fails in zipfile, zlib, numpy's header parser, ...
        raise ValueError(f"{path} is not {what} (an .npz archive) or is damaged: {type(error).__name__}: "
                         f"{' '.join(str(error).split())[:120]}") from None
    stored = arrays.pop("sha256", None)
    if stored is None:
        notice_unverified(path, what)
    else:
        check_digest(path, str(stored), arrays, what)
    missing = [key for key in required if key not in arrays]
    if missing:
        raise ValueError(f"{path} is not {what} (missing: {', '.join(missing)})")
    return arrays


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (metrics files are read while runs go on)."""
    atomic_write(path, lambda handle: handle.write(json.dumps(data, indent=2).encode()))
