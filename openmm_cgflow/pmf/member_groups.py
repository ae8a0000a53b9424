"""The PMF ensemble's full-batch L-BFGS, run as independent groups of members, the first half of them on a spare core.

The members of the ensemble never interact: the loss is a sum of per-member MSEs. One L-BFGS over all members
couples them only through the shared line search and curvature history, which stops each member further from its
own minimum (ALDP labels, 500 iterations: KLD 5.07e-3 for one joint L-BFGS over 10 members, 2.64e-3 for 2 groups,
1.85e-3 for one L-BFGS per member; benchmarks/aldp_ensemble_fit.py). Splitting the members into a fixed number of
groups (``ensemble.lbfgs_groups``, whatever the machine; :data:`N_GROUPS` by default) gives a result that depends on
the split, never on the number of cores: the first half of the groups runs in a spare-core worker process when the
run has one, and every group one after another in this process otherwise, with bitwise identical results (one
thread, the same code). The worker is a fresh interpreter (:mod:`openmm_cgflow.processes`) serving
:mod:`.group_worker` requests.

A group is a dict of plain tensors (``w0, b0, w1, b1, ...`` with the members' leading dimension), so workers need
no module and no pickled code beyond this file's functions.
"""
from __future__ import annotations

import atexit
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..processes import launch_worker, stop_workers
from . import lbfgs

#: Default member groups of an L-BFGS fit (``ensemble.lbfgs_groups``; fixed per config, so results do not depend on
#: the cores a machine has).
N_GROUPS = 2

_WORKER = None  # (process, connection) of the spare-core worker, started on first use
_WORKER_CORE: Optional[int] = None


def split_members(n_members: int, n_groups: int = N_GROUPS) -> List[range]:
    """Contiguous member ranges, as equal as possible (fewer groups than requested for tiny ensembles)."""
    n_groups = max(1, min(n_groups, n_members))
    bounds = [round(k * n_members / n_groups) for k in range(n_groups + 1)]
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def members_forward(params: Dict[str, torch.Tensor], X: torch.Tensor, n_layers: int) -> torch.Tensor:
    """Member outputs (M, B) of sigmoid MLPs with weights ``w<i>`` (M, n_in, n_out) and biases ``b<i>`` (M, 1, n_out)
    on inputs X (M, B, n_features): the same arithmetic as :meth:`PMFEnsemble._members` without the offset."""
    h = X
    for i in range(n_layers):
        h = torch.baddbmm(params[f"b{i}"], h, params[f"w{i}"])
        if i < n_layers - 1:
            h = torch.sigmoid(h)
    return h.squeeze(-1)


def lbfgs_group(params: Dict[str, torch.Tensor], X: torch.Tensor, Y: torch.Tensor, offset: torch.Tensor, n_layers: int,
                iterations: int, lr: float, W: Optional[torch.Tensor] = None) -> Tuple[Dict[str, torch.Tensor], List[float]]:
    """Full-batch L-BFGS (:func:`.lbfgs.minimize`: strong-Wolfe line search, history 50, ``lr`` = initial step) of
    one member group on the sum of its members' MSEs between their outputs plus ``offset`` and the targets Y (M, B)
    (kT), each row weighted by W (M, B) where given, on one flat parameter vector. Returns the trained parameters and
    the group's mean member MSE (kT^2) per function evaluation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        keys = list(params)
        shapes = [params[key].shape for key in keys]
        sizes = [params[key].numel() for key in keys]
        history: List[float] = []
        n_members = Y.shape[0]

        def unflatten(flat: torch.Tensor) -> Dict[str, torch.Tensor]:
            return {key: part.view(shape) for key, part, shape in zip(keys, torch.split(flat, sizes), shapes)}

        def objective(flat: torch.Tensor) -> Tuple[float, torch.Tensor]:
            flat = flat.detach().requires_grad_(True)
            squared = (members_forward(unflatten(flat), X, n_layers) + offset - Y) ** 2
            loss = squared.mean(1).sum() if W is None else ((W * squared).sum(1) / W.sum(1)).sum()
            (grad,) = torch.autograd.grad(loss, flat)
            value = float(loss.detach())
            if math.isfinite(value) or not history:  # a broken-down line search's NaN trials are not the fit's loss
                history.append(value / n_members)
            return value, grad

        x0 = torch.cat([params[key].detach().reshape(-1) for key in keys])
        trained = lbfgs.minimize(objective, x0, iterations, lr, history_size=50, tolerance_grad=1e-12, tolerance_change=1e-15)
        return {key: value.clone() for key, value in unflatten(trained).items()}, history
    finally:
        torch.set_num_threads(threads)


def lbfgs_group_numpy(params: Dict[str, np.ndarray], X: np.ndarray, Y: np.ndarray, offset: np.ndarray, n_layers: int,
                      iterations: int, lr: float, W: Optional[np.ndarray] = None) -> Tuple[Dict[str, np.ndarray], List[float]]:
    """:func:`lbfgs_group` on numpy arrays (what crosses the worker connection)."""
    trained, history = lbfgs_group({k: torch.from_numpy(v) for k, v in params.items()}, torch.from_numpy(X), torch.from_numpy(Y),
                                   torch.from_numpy(np.asarray(offset)), n_layers, iterations, lr, None if W is None else torch.from_numpy(W))
    return {k: v.numpy() for k, v in trained.items()}, history


def run_groups(jobs: Sequence[Tuple[Dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor, int, int, float,
                                    Optional[torch.Tensor]]]
               ) -> List[Tuple[Dict[str, torch.Tensor], List[float]]]:
    """Run :func:`lbfgs_group` on every job, in order; the first half of the jobs (rounded up) goes to the spare-core
    worker when there is one, as one request, while the others run here. If the worker fails or dies, its jobs run
    here instead (the worker is then retired)."""
    worker = _spare_core_worker() if len(jobs) > 1 else None
    n_remote = 0
    if worker is not None:
        n_remote = (len(jobs) + 1) // 2
        request = [
            ({k: v.numpy() for k, v in params.items()}, X.numpy(), Y.numpy(), offset.numpy(), n_layers, iterations, lr,
             None if W is None else W.numpy())
            for params, X, Y, offset, n_layers, iterations, lr, W in jobs[:n_remote]
        ]
        try:
            worker[1].send(("fit", request))
        except (OSError, ValueError):
            _retire_worker()
            n_remote = 0
    local = [lbfgs_group(*job) for job in jobs[n_remote:]]
    if n_remote == 0:
        return local
    answer = _receive(worker)
    if answer is None:
        remote = [lbfgs_group(*job) for job in jobs[:n_remote]]
    else:
        remote = [({k: torch.from_numpy(v) for k, v in trained.items()}, history) for trained, history in answer]
    return remote + local


def _receive(worker) -> Optional[List[Tuple[Dict[str, np.ndarray], List[float]]]]:
    """The worker's answers, or None (worker retired) if it failed, died or lost its connection."""
    process, conn = worker
    try:
        while not conn.poll(0.05):
            if process.poll() is not None:
                raise EOFError(f"exit code {process.returncode}")
        status, payload = conn.recv()
    except (EOFError, OSError):
        _retire_worker()
        return None
    if status != "ok":
        _retire_worker()
        return None
    return payload


def _spare_core_worker():
    """(process, connection) of the worker on a spare core, started on first use; None on one core."""
    global _WORKER, _WORKER_CORE
    core = _spare_core()
    if core is None:
        return None
    if _WORKER is None or _WORKER_CORE != core or _WORKER[0].poll() is not None:
        _retire_worker()
        _WORKER = launch_worker("openmm_cgflow.pmf.group_worker", core)
        _WORKER_CORE = core
    return _WORKER


def _spare_core() -> Optional[int]:
    """A core this run may use besides the one it trains on (:func:`~openmm_cgflow.energy.oracle.spare_cores`)."""
    from ..platforms import spare_cores

    cores = spare_cores()
    return cores[0] if cores else None


def _retire_worker() -> None:
    global _WORKER, _WORKER_CORE
    if _WORKER is not None:
        stop_workers([_WORKER])
    _WORKER, _WORKER_CORE = None, None


atexit.register(_retire_worker)
