"""Starting data, made once and cached: the short MD a run starts from (its MD steps count in every evaluation
budget, ``md_steps`` in the file), simulated by :func:`run_langevin`.

* Any system (:func:`cached_starting_frames`, what ``CGSystem.starting_frames`` uses by default and
  ``cgflow data start SYSTEM`` makes ahead of a run): minimise, then LangevinMiddle MD at the system's temperature.
  The cache file is named by a hash of everything that determines the frames (the System XML, temperature,
  start positions, MD settings, seed, platform), so a changed molecule or setting never reuses stale frames.
  Frames are stored in float64: a run gives bitwise the same numbers whether its frames were cached or not.
* Alanine dipeptide (SPEC §2.2, :func:`aldp_starting_data`): minimise, 50,000 x 1 fs Langevin steps at 300 K
  (friction 1/ps), every 10th frame (5,000 frames), one file that every ALDP config slices.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
from tqdm.auto import tqdm

from ..dynamics import LangevinDynamics
from ..platforms import openmm_random_seed
from ..storage import load_arrays, save_arrays

N_STEPS = 50_000
SAVE_EVERY = 10


@dataclass
class MDResult:
    """Frames (n_frames, n_atoms, 3) in nm and the number of integration steps (= energy evaluations)."""

    frames: np.ndarray
    n_steps: int


def run_langevin(cg_system, n_steps: int, save_every: int, seed: int, timestep_fs: float = 1.0, friction_per_ps: float = 1.0,
                 platform: str = "Reference", minimize: bool = True, positions: Optional[np.ndarray] = None,
                 properties: Optional[dict] = None, progress: bool = False) -> MDResult:
    """Minimise (optional), then run ``n_steps`` LangevinMiddle steps of ``cg_system`` at its temperature, saving every
    ``save_every``-th frame (:class:`~openmm_cgflow.dynamics.LangevinDynamics`, seeded with
    :func:`~openmm_cgflow.platforms.openmm_random_seed`). Minimiser force evaluations are not counted as MD steps.
    ``progress``: a progress bar on stderr (minimisation, then the MD steps)."""
    if n_steps < 1 or save_every < 1:
        raise ValueError("n_steps and save_every must be >= 1")
    dynamics = LangevinDynamics(cg_system.system, cg_system.temperature, timestep_fs, friction_per_ps, platform,
                                random_seed=openmm_random_seed(seed), properties=properties)
    start = cg_system.check_positions(cg_system.positions if positions is None else positions)[0]
    n_saved = n_steps // save_every
    with tqdm(total=n_saved * save_every, unit="step", disable=not progress, leave=False,
              desc=f"starting MD of {cg_system.name}" + (": minimising" if minimize else "")) as bar:
        dynamics.start(start, openmm_random_seed(seed), minimize=minimize)
        bar.set_description(f"starting MD of {cg_system.name}")
        frames = dynamics.frames(n_saved, save_every, on_frame=bar.update)
    return MDResult(frames, n_saved * save_every)


def default_cache_dir() -> Path:
    """``$CGFLOW_CACHE`` or ``~/.cache/openmm-cgflow``."""
    return Path(os.environ.get("CGFLOW_CACHE", Path.home() / ".cache" / "openmm-cgflow"))


def aldp_starting_data(cg_system, seed: int = 0, platform: str = "CPU", path: Optional[Path] = None, n_steps: int = N_STEPS,
                       progress: bool = False) -> dict:
    """The SPEC §2.2 starting data of ``cg_system`` (the built-in alanine dipeptide; its cache file is named for
    it): load it, or make it. Returns {"frames": (n, n_atoms, 3) nm, "md_steps": int, "provenance": dict}."""
    path = Path(path) if path is not None else default_cache_dir() / f"aldp_start_seed{seed}_{n_steps}.npz"
    if path.is_file():
        data = load_arrays(path, ("frames", "md_steps", "provenance"), what="a starting-data file")
        return {"frames": data["frames"].astype(np.float64), "md_steps": int(data["md_steps"]), "provenance": json.loads(str(data["provenance"])), "path": path}
    start = time.perf_counter()
    md = run_langevin(cg_system, n_steps=n_steps, save_every=SAVE_EVERY, seed=seed, timestep_fs=1.0, friction_per_ps=1.0, platform=platform,
                      progress=progress)
    provenance = {
        "protocol": f"minimise, {n_steps} x 1 fs LangevinMiddle steps at 300 K, friction 1/ps, every {SAVE_EVERY}th frame",
        "seed": seed,
        "platform": platform,
        "wall_s": time.perf_counter() - start,
        "command": f"cgflow data start aldp --seed {seed} --platform {platform}",
    }
    stored = md.frames.astype(np.float32)  # the cache's precision (~1e-7 nm), returned as the cache will return it:
    # a run must not depend on whether it made the cache or read it (the same seed gave different runs before)
    save_arrays(path, frames=stored, md_steps=md.n_steps, provenance=json.dumps(provenance))
    return {"frames": stored.astype(np.float64), "md_steps": md.n_steps, "provenance": provenance, "path": path}


def starting_data_key(cg_system, n_frames: int, save_every: int, equilibration_steps: int, timestep_fs: float,
                      friction_per_ps: float, seed: int, platform: str) -> str:
    """16 hex digits of a SHA-256 over everything that determines the starting frames."""
    import openmm

    digest = hashlib.sha256()
    digest.update(openmm.XmlSerializer.serialize(cg_system.system).encode())
    digest.update(np.ascontiguousarray(cg_system.positions, dtype=np.float64).tobytes())
    settings = [float(cg_system.temperature), int(n_frames), int(save_every), int(equilibration_steps), float(timestep_fs),
                float(friction_per_ps), int(seed), str(platform)]
    digest.update(json.dumps(settings).encode())
    return digest.hexdigest()[:16]


def cached_starting_frames(cg_system, n_frames: int, save_every: int, equilibration_steps: int, timestep_fs: float,
                           friction_per_ps: float, seed: int, platform: str, cache_dir: Optional[Path] = None,
                           progress: bool = False) -> Tuple[np.ndarray, int, Path]:
    """(frames (n_frames, n_atoms, 3) nm, MD steps, cache file) of the default starting MD of ``cg_system``: the
    last ``n_frames`` frames saved every ``save_every`` steps after ``equilibration_steps``, from the cache when
    it holds them, else simulated and written there (atomically, with provenance)."""
    key = starting_data_key(cg_system, n_frames, save_every, equilibration_steps, timestep_fs, friction_per_ps, seed, platform)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", cg_system.name) or "system"
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = path / f"start_{name}_{key}.npz"
    if path.is_file():
        data = load_arrays(path, ("frames", "md_steps"), what="a starting-data file")
        frames = data["frames"]
        if frames.shape != (n_frames, cg_system.n_atoms, 3):
            raise ValueError(f"{path} holds frames of shape {frames.shape}, expected {(n_frames, cg_system.n_atoms, 3)}; delete it")
        return frames, int(data["md_steps"]), path
    start = time.perf_counter()
    md = run_langevin(cg_system, n_steps=equilibration_steps + n_frames * save_every, save_every=save_every, seed=seed,
                      timestep_fs=timestep_fs, friction_per_ps=friction_per_ps, platform=platform, progress=progress)
    frames = md.frames[-n_frames:]
    provenance = {
        "system": cg_system.name,
        "protocol": f"minimise, {md.n_steps} x {timestep_fs} fs LangevinMiddle steps at {cg_system.temperature:g} K, friction "
                    f"{friction_per_ps}/ps, the last {n_frames} of the frames saved every {save_every} steps",
        "seed": seed,
        "platform": platform,
        "wall_s": time.perf_counter() - start,
        "key": key,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_arrays(path, frames=frames, md_steps=md.n_steps, provenance=json.dumps(provenance))
    return frames, md.n_steps, path
