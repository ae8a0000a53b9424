"""Atomic file writes for everything a run leaves behind (checkpoints, metrics, models, data, references):
write to a temporary file in the same folder, fsync, then rename over the old one, so a kill never leaves a
half-written file."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict

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


def save_checkpoint(path: Path, state: Dict[str, Any]) -> None:
    """Write ``state`` (tensors, numpy arrays, plain Python) atomically with torch.save."""
    atomic_write(path, lambda handle: torch.save(state, handle))


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (our own file, so full unpickling is allowed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from: {path}")
    return torch.load(path, map_location="cpu", weights_only=False)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (metrics files are read while runs go on)."""
    atomic_write(path, lambda handle: handle.write(json.dumps(data, indent=2).encode()))
