"""Where an energy oracle's OpenMM Contexts live: in this process, in local worker processes, or in Ray actors.

Every executor evaluates a batch of finite positions (B, n, 3) nm and returns energies (kJ/mol, (B,)) and forces
(kJ/mol/nm); the oracle above it validates, counts and handles non-finite values, so all executors give the same
numbers, bitwise, for the same batch (each configuration is evaluated on its own by an identical Context).

* :class:`InProcess`: one Context in the caller's process;
* :class:`ProcessPool`: one worker process per Context on this machine, each pinned to a core, over socket pairs
  (the zero-dependency default for ``n_workers > 1``);
* :class:`RayPool` (``executor="ray"``): one Ray actor per Context, on any node of a Ray cluster
  (``pip install openmm-cgflow[ray]``). An actor that dies is restarted by Ray and its chunk retried; the oracle
  counts evaluations on the driver, so a retried chunk is not counted twice.
"""
from __future__ import annotations

import os
import subprocess
from multiprocessing.connection import Connection
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..cluster import connect_ray, first_line
from ..platforms import worker_cores
from ..processes import launch_worker, stop_workers
from .context_evaluator import ContextEvaluator

_POLL_SECONDS = 0.05


class WorkerLost(RuntimeError):
    """An executor lost a worker for good (a process died, an actor is gone after its restarts); the oracle that
    owns it closes itself."""


def chunks(n_items: int, n_workers: int) -> List[np.ndarray]:
    """The non-empty index chunks of a batch of ``n_items`` over ``n_workers`` (as equal as possible, in order)."""
    return [c for c in np.array_split(np.arange(n_items), n_workers) if len(c)]


class InProcess:
    """One Context in this process."""

    def __init__(self, system_xml: str, platform: str, properties: Dict[str, str]):
        self._evaluator = ContextEvaluator(system_xml, platform, properties)
        self.pids: List[int] = []

    def evaluate(self, positions: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        return self._evaluator.evaluate(positions)

    def close(self) -> None:
        self._evaluator = None


class ProcessPool:
    """``n_workers`` worker processes on this machine (fresh interpreters, :func:`~openmm_cgflow.processes.launch_worker`:
    they never re-import the caller's ``__main__``, and no fork of a threaded process happens), each with one Context
    and pinned to its own core where ``pin``. A worker that dies shuts the pool down with an error."""

    def __init__(self, system_xml: str, platform: str, properties: Dict[str, str], n_workers: int, pin: bool = True):
        self._workers: List[Tuple[subprocess.Popen, Connection]] = []
        cores = worker_cores() or (sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [])
        for rank in range(n_workers):
            core = cores[rank % len(cores)] if (pin and cores) else -1
            process, conn = launch_worker("openmm_cgflow.energy.worker", core)
            self._workers.append((process, conn))
            conn.send((system_xml, platform, properties))
        for rank in range(n_workers):
            status, payload = self._receive(rank)
            if status != "ready":
                self.close()
                raise RuntimeError(f"EnergyOracle worker {rank} failed to start: {payload}")

    @property
    def pids(self) -> List[int]:
        return [process.pid for process, _ in self._workers]

    def _receive(self, rank: int):
        process, conn = self._workers[rank]
        while not conn.poll(_POLL_SECONDS):
            if process.poll() is not None:
                self.close()
                raise WorkerLost(f"EnergyOracle worker {rank} (pid {process.pid}) died with exit code {process.returncode}; "
                                   "the pool was shut down")
        try:
            return conn.recv()
        except (EOFError, OSError) as error:
            self.close()
            raise WorkerLost(f"EnergyOracle worker {rank} lost its connection ({error}); pool shut down") from None

    def evaluate(self, positions: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        parts = chunks(len(positions), len(self._workers))
        for rank, chunk in enumerate(parts):
            try:
                self._workers[rank][1].send(("eval", positions[chunk]))
            except (OSError, BrokenPipeError) as error:
                self.close()
                raise WorkerLost(f"EnergyOracle worker {rank} is unreachable ({error}); pool shut down") from None
        energies, forces, errors = np.empty(len(positions)), np.empty(positions.shape), []
        for rank, chunk in enumerate(parts):
            status, payload = self._receive(rank)
            if status == "ok":
                energies[chunk], forces[chunk] = payload
            else:
                errors.append(f"worker {rank}: {payload}")
        if errors:
            raise RuntimeError("OpenMM evaluation failed: " + "; ".join(errors))
        return energies, forces

    def close(self) -> None:
        stop_workers(self._workers)
        self._workers = []


# ---------------------------------------------------------------------------------------------------------- Ray
class ContextActor:
    """A Ray actor holding one Context (the class is wrapped by ``ray.remote`` in :class:`RayPool`). ``core >= 0``:
    pin the actor's process to that core of its node (modulo the node's cores), as the local workers are; a
    restarted actor pins itself again."""

    def __init__(self, system_xml: str, platform: str, properties: Dict[str, str], core: int):
        if core >= 0 and hasattr(os, "sched_getaffinity"):
            from ..platforms import pin_to_core

            available = sorted(os.sched_getaffinity(0))
            pin_to_core(available[core % len(available)])
        self._evaluator = ContextEvaluator(system_xml, platform, properties)

    def pid(self) -> int:
        return os.getpid()

    def evaluate(self, positions: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        return self._evaluator.evaluate(positions)


class RayPool:
    """``n_workers`` Ray actors with one Context each (1 CPU each; Ray places them on the cluster's nodes). An actor
    that dies (its process killed, its node lost for a while) is restarted up to ``max_restarts`` times and its
    chunk retried; after that, or if a node never comes back, :meth:`evaluate` raises one line."""

    def __init__(self, system_xml: str, platform: str, properties: Dict[str, str], n_workers: int, pin: bool = True,
                 address: Optional[str] = None, max_restarts: int = 3, start_timeout_s: float = 300.0):
        self._ray = ray = connect_ray(address)
        self.max_restarts = int(max_restarts)
        actor = ray.remote(num_cpus=1, max_restarts=self.max_restarts, max_task_retries=self.max_restarts)(ContextActor)
        self._actors = [actor.remote(system_xml, platform, properties, rank if pin else -1) for rank in range(n_workers)]
        try:
            ray.get([a.pid.remote() for a in self._actors], timeout=start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise RuntimeError(f"{n_workers} Ray actors (1 CPU each) did not start within {start_timeout_s:.0f} s: "
                               f"the cluster has {ray.cluster_resources().get('CPU', 0):.0f} CPUs") from None
        except ray.exceptions.RayError as error:
            self.close()
            raise RuntimeError(f"a Ray energy actor failed to start: {first_line(error)}") from None

    @property
    def pids(self) -> List[int]:
        """Process ids of the actors now (on their nodes; a restarted actor has a new one)."""
        return self._ray.get([a.pid.remote() for a in self._actors])

    @property
    def actors(self) -> list:
        return list(self._actors)

    def evaluate(self, positions: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        ray = self._ray
        parts = chunks(len(positions), len(self._actors))
        refs = [self._actors[rank].evaluate.remote(positions[chunk]) for rank, chunk in enumerate(parts)]
        try:
            results = ray.get(refs)
        except ray.exceptions.RayActorError as error:
            raise WorkerLost(f"a Ray energy actor is gone after {self.max_restarts} restarts (its node lost?): "
                               f"{first_line(error)}") from None
        except ray.exceptions.RayTaskError as error:
            raise RuntimeError(f"OpenMM evaluation failed in a Ray actor: {first_line(error)}") from None
        energies, forces = np.empty(len(positions)), np.empty(positions.shape)
        for chunk, (e, f) in zip(parts, results):
            energies[chunk], forces[chunk] = e, f
        return energies, forces

    def close(self) -> None:
        for a in getattr(self, "_actors", []):
            try:
                self._ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - an actor already gone
                pass
        self._actors = []
