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
import time
import weakref
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import openmm

from ..platforms import default_properties, resolve_platform
from ..systems.base import CGSystem, kT_in_kJ_per_mol
from ..cluster import EXECUTORS
from .executors import InProcess, ProcessPool, RayPool, WorkerLost

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
    executor:
        ``"local"`` (default: this process, or worker processes on this machine) or ``"ray"``: one Ray actor per
        Context, on any node of a Ray cluster (:class:`~openmm_cgflow.energy.executors.RayPool`); same numbers.
    address:
        With ``executor="ray"``: ``None`` (a local Ray, or the one this process is connected to), ``"auto"`` (the
        cluster started on this machine with ``ray start``) or ``"ray://HOST:PORT"`` / ``"HOST:PORT"``.

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
        executor: str = "local",
        address: Optional[str] = None,
    ):
        if isinstance(n_workers, bool) or not isinstance(n_workers, (int, np.integer)) or n_workers < 1:
            raise ValueError(f"n_workers must be an integer >= 1, got {n_workers!r}")
        if not isinstance(platform, str):
            raise ValueError(f"platform must be an OpenMM platform name (a string), got {platform!r}")
        if nonfinite not in ("raise", "nan"):
            raise ValueError(f"nonfinite must be 'raise' or 'nan', got {nonfinite!r}")
        if executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
        if address is not None and (executor != "ray" or not isinstance(address, str)):
            raise ValueError(f"address names a Ray cluster (a string, with executor='ray'), got {address!r}")
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
        self.executor = executor
        self._closed = False
        self._executor = None
        system_xml = openmm.XmlSerializer.serialize(cg_system.system)
        if in_process is None:
            in_process = platform != "CPU"
        if executor == "ray":
            self._executor = RayPool(system_xml, platform, self.properties, self.n_workers, pin_workers, address)
        elif self.n_workers == 1 and in_process:
            self._executor = InProcess(system_xml, platform, self.properties)
        else:
            self._executor = ProcessPool(system_xml, platform, self.properties, self.n_workers, pin_workers)
        _LIVE_ORACLES.add(self)

    def close(self) -> None:
        """Stop the worker processes (idempotent). A closed oracle refuses further evaluations."""
        if self._closed:
            return
        self._closed = True
        if self._executor is not None:
            self._executor.close()

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
        """Process ids of the pool's workers or Ray actors (empty for the in-process oracle)."""
        return self._executor.pids if self._executor is not None else []

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
        try:
            return self._executor.evaluate(positions)
        except WorkerLost:
            self.close()
            raise

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
