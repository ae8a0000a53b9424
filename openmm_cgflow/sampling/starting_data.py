"""Starting data for alanine dipeptide (SPEC §2.2): minimise, 50,000 x 1 fs Langevin steps at 300 K
(friction 1/ps), keep every 10th frame (5,000 frames). Cached as a compressed .npz with its provenance;
its MD steps count in every evaluation budget (``md_steps`` in the file)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ..storage import atomic_write
from ..systems import create_system
from .molecular_dynamics import run_langevin

N_STEPS = 50_000
SAVE_EVERY = 10


def default_cache_dir() -> Path:
    """``$CGFLOW_CACHE`` or ``~/.cache/openmm-cgflow``."""
    return Path(os.environ.get("CGFLOW_CACHE", Path.home() / ".cache" / "openmm-cgflow"))


def aldp_starting_data(seed: int = 0, platform: str = "CPU", path: Optional[Path] = None, n_steps: int = N_STEPS) -> dict:
    """Load the cached starting data, or make it: returns {"frames": (n, 22, 3) nm, "md_steps": int, "provenance": dict}."""
    path = Path(path) if path is not None else default_cache_dir() / f"aldp_start_seed{seed}_{n_steps}.npz"
    if path.is_file():
        data = np.load(path)
        return {"frames": data["frames"].astype(np.float64), "md_steps": int(data["md_steps"]), "provenance": json.loads(str(data["provenance"])), "path": path}
    aldp = create_system("alanine-dipeptide")
    start = time.perf_counter()
    md = run_langevin(aldp, n_steps=n_steps, save_every=SAVE_EVERY, seed=seed, timestep_fs=1.0, friction_per_ps=1.0, platform=platform)
    provenance = {
        "protocol": f"minimise, {n_steps} x 1 fs LangevinMiddle steps at 300 K, friction 1/ps, every {SAVE_EVERY}th frame",
        "seed": seed,
        "platform": platform,
        "wall_s": time.perf_counter() - start,
        "command": f"cgflow data aldp-start --seed {seed} --platform {platform}",
    }
    atomic_write(path, lambda handle: np.savez_compressed(handle, frames=md.frames.astype(np.float32), md_steps=md.n_steps, provenance=json.dumps(provenance)))
    return {"frames": md.frames, "md_steps": md.n_steps, "provenance": provenance, "path": path}
