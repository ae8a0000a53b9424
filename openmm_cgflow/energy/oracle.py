"""EnergyOracle: reduced energies and forces of many configurations through OpenMM Contexts.

OpenMM has no batched energy API, so a batch is split over a pool of worker processes with one
Context each (``n_workers == 1`` evaluates in-process, without a pool). Inside the method energies
are reduced, u = U / kT (dimensionless), and forces are returned as f = F / kT in 1/nm, so that
du/dx = -f.

Every configuration handed to OpenMM is counted in :attr:`EnergyOracle.n_evaluations`. What happens to a
configuration with non-finite coordinates, or one whose energy OpenMM cannot compute (NaN, e.g. coordinates scaled
to 1e20), is the oracle's ``nonfinite`` setting: ``"raise"`` (the default for users) refuses the batch with one line
naming the first such configuration; ``"nan"`` (what training and backmapping ask for, with flow samples that can be
wildly distorted) gives it u = NaN and zero forces, and non-finite coordinates are not sent to OpenMM (nor counted).
"""
from __future__ import annotations

import atexit
import os
import subprocess
import time
import weakref
from multiprocessing.connection import Connection
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import openmm

from ..platforms import default_properties, resolve_platform, worker_cores
from ..processes import launch_worker, stop_workers
from ..systems.base import CGSystem, kT_in_kJ_per_mol

_POLL_SECONDS = 0.05


class _ContextEvaluator:
    """One OpenMM Context that evaluates energies (kJ/mol) and forces (kJ/mol/nm) for a batch."""

    def __init__(self, system_xml: str, platform_name: str, properties: Dict[str, str]):
        system = openmm.XmlSerializer.deserialize(system_xml)
        integrator = openmm.VerletIntegrator(0.001)
        platform = resolve_platform(platform_name)
        self.context = openmm.Context(system, integrator, platform, properties)
        self._n_atoms = system.getNumParticles()

    def evaluate(self, positions: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        energies = np.empty(len(positions))
        forces = np.zeros((len(positions), self._n_atoms, 3))
        for i, x in enumerate(positions):
            self.context.setPositions(x)
            state = self.context.getState(getEnergy=True, getForces=True)
            energies[i] = _raw_energy(state)
            _read_forces(state, forces[i])
        return energies, forces


# OpenMM's native units are kJ/mol and kJ/mol/nm. State.getPotentialEnergy/getForces wrap their values in unit
# Quantities (and getForces probes its cache with dir()): ~11 us of a Müller-Brown evaluation's ~15 us, and
# 10-30 us of an alanine dipeptide one's ~220 us on one core (benchmarks/oracle_state_read.py). The SWIG layer
# below them fills our own arrays with the same numbers, bitwise; older/other OpenMM builds fall back to the
# public calls.
if hasattr(openmm.State, "_getVectorAsNumpy") and hasattr(openmm._openmm, "State_getPotentialEnergy"):
    def _raw_energy(state) -> float:
        return openmm._openmm.State_getPotentialEnergy(state)

    def _read_forces(state, out: np.ndarray) -> None:
        state._getVectorAsNumpy(openmm.State.Forces, out)
else:  # pragma: no cover - the pinned OpenMM has the SWIG layer
    def _raw_energy(state) -> float:
        return state.getPotentialEnergy()._value

    def _read_forces(state, out: np.ndarray) -> None:
        out[...] = state.getForces(asNumpy=True)._value


_LIVE_ORACLES: "weakref.WeakSet[EnergyOracle]" = weakref.WeakSet()


@atexit.register
def _close_live_oracles():
    for oracle in list(_LIVE_ORACLES):
        oracle.close()


class EnergyOracle:
    """Reduced energies u = U/kT and reduced forces F/kT (1/nm) for batches of Cartesian configurations.

    Parameters
    ----------
    cg_system:
        The CGSystem (its OpenMM System and temperature are used).
    platform:
        OpenMM platform name: "Reference", "CPU", "OpenCL" or "CUDA". Always named explicitly,
        because installing an OpenCL driver silently changes OpenMM's default.
    n_workers:
        Number of Contexts. More than 1 starts a pool of worker processes.
    in_process:
        With ``n_workers == 1``, evaluate in this process (no pool). Default: yes, except on the CPU
        platform, whose Threads=1 Context runs ~4x slower unless its process is pinned to one core, so
        there one pinned worker process is used instead (pinning this process would pin torch too).
    properties:
        Platform properties; defaults to Threads=1 on CPU and double precision on GPUs.
    pin_workers:
        Pin each worker process to its own core (``os.sched_setaffinity``). The CPU platform with
        Threads=1 is ~10x slower when unpinned.
    nonfinite:
        ``"raise"`` (default) or ``"nan"``: see the module docstring.

    Use as a context manager or call :meth:`close`; pools are also closed at interpreter exit.
    """

    def __init__(
        self,
        cg_system: CGSystem,
        platform: str = "Reference",
        n_workers: int = 1,
        properties: Optional[Dict[str, str]] = None,
        pin_workers: bool = True,
        in_process: Optional[bool] = None,
        nonfinite: str = "raise",
    ):
        if isinstance(n_workers, bool) or not isinstance(n_workers, (int, np.integer)) or n_workers < 1:
            raise ValueError(f"n_workers must be an integer >= 1, got {n_workers!r}")
        if not isinstance(platform, str):
            raise ValueError(f"platform must be an OpenMM platform name (a string), got {platform!r}")
        if nonfinite not in ("raise", "nan"):
            raise ValueError(f"nonfinite must be 'raise' or 'nan', got {nonfinite!r}")
        if properties is not None and (not isinstance(properties, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in properties.items())):
            raise ValueError(f"properties must map OpenMM property names to strings, got {properties!r}")
        resolve_platform(platform)
        self.nonfinite = nonfinite
        self.cg_system = cg_system
        self.platform = platform
        self.n_workers = int(n_workers)
        self.kT = kT_in_kJ_per_mol(cg_system.temperature)
        self.properties = default_properties(platform) if properties is None else dict(properties)
        self.n_evaluations = 0
        self.evaluation_s = 0.0  # wall seconds spent in evaluate_kj (the pool round trip included)
        self._closed = False
        system_xml = openmm.XmlSerializer.serialize(cg_system.system)
        self._local: Optional[_ContextEvaluator] = None
        self._workers: List[Tuple[subprocess.Popen, Connection]] = []
        if in_process is None:
            in_process = platform != "CPU"
        if self.n_workers == 1 and in_process:
            self._local = _ContextEvaluator(system_xml, platform, self.properties)
        else:
            self._start_pool(system_xml, pin_workers)
        _LIVE_ORACLES.add(self)

    # ------------------------------------------------------------------ pool management
    def _start_pool(self, system_xml: str, pin_workers: bool):
        # Workers are fresh interpreters (:func:`~openmm_cgflow.processes.launch_worker`): they never re-import the
        # caller's __main__, and no fork of a threaded process happens.
        cores = worker_cores() or (sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [])
        for rank in range(self.n_workers):
            core = cores[rank % len(cores)] if (pin_workers and cores) else -1
            process, conn = launch_worker("openmm_cgflow.energy.worker", core)
            self._workers.append((process, conn))
            conn.send((system_xml, self.platform, self.properties))
        for rank in range(self.n_workers):
            status, payload = self._receive(rank)
            if status != "ready":
                self.close()
                raise RuntimeError(f"EnergyOracle worker {rank} failed to start: {payload}")

    def _receive(self, rank: int):
        process, conn = self._workers[rank]
        while not conn.poll(_POLL_SECONDS):
            if process.poll() is not None:
                self.close()
                raise RuntimeError(
                    f"EnergyOracle worker {rank} (pid {process.pid}) died with exit code {process.returncode}; "
                    "the pool was shut down"
                )
        try:
            return conn.recv()
        except (EOFError, OSError) as error:
            self.close()
            raise RuntimeError(f"EnergyOracle worker {rank} lost its connection ({error}); pool shut down") from None

    def close(self) -> None:
        """Stop the worker processes (idempotent). A closed oracle refuses further evaluations."""
        if self._closed:
            return
        self._closed = True
        stop_workers(self._workers)
        self._workers = []
        self._local = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    @property
    def worker_pids(self) -> List[int]:
        """Process ids of the pool's workers (empty for the in-process oracle)."""
        return [process.pid for process, _ in self._workers]

    # ------------------------------------------------------------------ evaluation
    def evaluate_kj(self, positions) -> Tuple[np.ndarray, np.ndarray]:
        """Energies (kJ/mol, shape (B,)) and forces (kJ/mol/nm, shape (B, n_atoms, 3)) of ``positions`` (nm)."""
        if self._closed:
            raise RuntimeError("EnergyOracle is closed")
        start = time.perf_counter()
        positions = self.cg_system.check_positions(positions)
        energies = np.full(len(positions), np.nan)
        forces = np.zeros(positions.shape)
        finite = np.isfinite(positions).all(axis=(1, 2))
        if self.nonfinite == "raise" and not finite.all():
            raise ValueError(f"positions contain NaN or inf (configuration {int(np.flatnonzero(~finite)[0])} of {len(positions)}); "
                             "EnergyOracle(..., nonfinite='nan') gives such configurations u = NaN instead")
        index = np.flatnonzero(finite)
        if len(index):
            e, f = self._evaluate_finite(positions[index])
            energies[index], forces[index] = e, f
            self.n_evaluations += len(index)
        bad = ~np.isfinite(energies)
        if self.nonfinite == "raise" and bad.any():
            raise ValueError(f"OpenMM could not compute the energy of configuration {int(np.flatnonzero(bad)[0])} of {len(positions)} "
                             f"(NaN or inf; {int(bad.sum())} in all): coordinates far outside a molecule's range (nm expected)?")
        forces[bad] = 0.0
        self.evaluation_s += time.perf_counter() - start
        return energies, forces

    def _evaluate_finite(self, positions: np.ndarray):
        if self._local is not None:
            return self._local.evaluate(positions)
        chunks = [c for c in np.array_split(np.arange(len(positions)), self.n_workers) if len(c)]
        for rank, chunk in enumerate(chunks):
            try:
                self._workers[rank][1].send(("eval", positions[chunk]))
            except (OSError, BrokenPipeError) as error:
                self.close()
                raise RuntimeError(f"EnergyOracle worker {rank} is unreachable ({error}); pool shut down") from None
        energies = np.empty(len(positions))
        forces = np.empty(positions.shape)
        errors = []
        for rank, chunk in enumerate(chunks):
            status, payload = self._receive(rank)
            if status == "ok":
                energies[chunk], forces[chunk] = payload
            else:
                errors.append(f"worker {rank}: {payload}")
        if errors:
            raise RuntimeError("OpenMM evaluation failed: " + "; ".join(errors))
        return energies, forces

    def evaluate(self, positions) -> Tuple[np.ndarray, np.ndarray]:
        """Reduced energies u = U/kT (B,) and reduced forces F/kT (B, n_atoms, 3) in 1/nm."""
        energies, forces = self.evaluate_kj(positions)
        return energies / self.kT, forces / self.kT

    def reduced_energy(self, positions: torch.Tensor) -> torch.Tensor:
        """Differentiable u = U/kT of ``positions`` (B, n_atoms, 3) in nm; the gradient comes from OpenMM forces."""
        return ReducedEnergy.apply(positions, self)

    __call__ = reduced_energy


class ReducedEnergy(torch.autograd.Function):
    """torch autograd function u(x) = U(x)/kT whose backward pass uses the OpenMM forces, du/dx = -F/kT."""

    @staticmethod
    def forward(ctx, positions: torch.Tensor, oracle: EnergyOracle):
        u, f = oracle.evaluate(positions.detach().cpu().numpy())
        ctx.save_for_backward(torch.as_tensor(-f, dtype=positions.dtype, device=positions.device))
        return torch.as_tensor(u, dtype=positions.dtype, device=positions.device)

    @staticmethod
    def backward(ctx, grad_u: torch.Tensor):
        (grad_positions,) = ctx.saved_tensors
        return grad_u[:, None, None] * grad_positions, None
