"""OpenMM platforms and CPU cores: which platform, with which properties, on which core.

The bottom floor of the package (it imports nothing of it): every module that creates an OpenMM Context takes its
platform and properties from here, and every process that pins itself to a core does it here.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

import openmm

PLATFORM_NAMES = ("Reference", "CPU", "OpenCL", "CUDA")
_DEFAULT_PROPERTIES = {"CPU": {"Threads": "1"}, "CUDA": {"Precision": "double"}, "OpenCL": {"Precision": "double"}}


def default_properties(platform: str) -> Dict[str, str]:
    """Platform properties used unless a caller gives its own: one thread on CPU (pin the process; see
    :func:`pin_to_core`), double precision on GPUs."""
    return dict(_DEFAULT_PROPERTIES.get(platform, {}))


def pin_to_core(core: Optional[int] = None) -> None:
    """Pin this process to one core (default: the lowest it may use). A Threads=1 CPU-platform Context in an
    unpinned process runs ~4-10x slower (it wakes an idle core on every call). No-op where unsupported."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0)) if core is None else core})


#: cores for EnergyOracle workers once :func:`pin_driver` has pinned this process (the others first)
_WORKER_CORES: List[int] = []


def pin_driver() -> Optional[int]:
    """Pin this process (the one training the flow) to one core, the highest it may use, and keep the others for
    the EnergyOracle's worker processes, which then start on them before sharing the driver's core. So a run uses
    every core without any two busy threads on one, with no ``taskset`` in the shell. Returns the core (None
    where affinity is unsupported)."""
    global _WORKER_CORES
    if not hasattr(os, "sched_setaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    driver = cores[-1]
    os.sched_setaffinity(0, {driver})
    _WORKER_CORES = [c for c in cores if c != driver] + [driver]
    return driver


def spare_cores() -> List[int]:
    """Cores this process may give to helper processes besides the one it runs on: after :func:`pin_driver`, the
    cores it kept for workers; in an unpinned process, every allowed core but the highest. Empty on one core."""
    if _WORKER_CORES:
        return list(_WORKER_CORES[:-1])
    if not hasattr(os, "sched_getaffinity"):
        return []
    return sorted(os.sched_getaffinity(0))[:-1]


def openmm_random_seed(seed: int) -> int:
    """The OpenMM random-number seed (integrator noise, initial velocities) for a run's ``seed``.

    OpenMM reads a seed of 0 as "choose a new random seed every time", which would make seed 0 (every config's
    default) irreproducible; it is mapped to -1, a fixed seed no config can ask for (config seeds are >= 0).
    Other seeds pass unchanged."""
    seed = int(seed)
    return -1 if seed == 0 else seed


def resolve_platform(name: str) -> openmm.Platform:
    """Return the OpenMM platform ``name`` or raise a ValueError naming the available ones."""
    available = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
    if name not in available:
        raise ValueError(f"unknown or unavailable OpenMM platform '{name}'; available here: {', '.join(available)}")
    return openmm.Platform.getPlatformByName(name)


def worker_cores() -> List[int]:
    """The cores kept for worker processes by :func:`pin_driver` (the driver's own core last); empty before it."""
    return list(_WORKER_CORES)
