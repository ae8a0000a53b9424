"""Training a conditional flow by example (maximum likelihood, SPEC §4) and by energy (reverse KL, SPEC §5)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, List, Optional

import numpy as np
import torch

from ..energy import EnergyOracle
from ..systems.base import CGSystem


def train_by_example(
    flow: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    s: torch.Tensor,
    x_fg: torch.Tensor,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    progress: Optional[Callable[[int, float], None]] = None,
) -> List[float]:
    """Minimise -mean ln q(x_fg | s) over shuffled batches (last partial batch dropped).

    Returns the mean loss of every epoch (nats per sample).
    """
    n = s.shape[0]
    n_batches = n // batch_size
    if n_batches == 0:
        raise ValueError(f"training by example needs at least batch_size={batch_size} samples, got {n}")
    losses = []
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for b in range(n_batches):
            idx = order[b * batch_size : (b + 1) * batch_size]
            loss = -flow.log_prob(x_fg[idx], s[idx]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        losses.append(total / n_batches)
        if progress is not None:
            progress(epoch, losses[-1])
    return losses


@dataclass
class EnergyStep:
    """Outcome of one batch of training by energy.

    log_w: ln p~(x) - ln q(x|s) per batch entry (NaN where the sample was filtered out or not finite).
    loss: batch loss (kT), NaN if the batch was skipped.
    skipped: the loss was not finite and no update was made.
    n_computed: energies actually computed by OpenMM for this batch.
    n_failed: samples whose energy could not be computed (NaN from the oracle, e.g. an xTB SCF that did not
    converge on a distorted sample): left out of the loss, and NaN in ``log_w`` so no label uses them.
    """

    log_w: np.ndarray
    loss: float
    skipped: bool
    n_computed: int
    n_failed: int = 0


class EnergyTrainer:
    """One optimizer step of reverse-KL training at fixed s, with energies and forces from OpenMM.

    Per sample: L_i = -ln p~(x_i) - ln|det dx/dz|, where ln p~ = -u(x) + ln|det dC/dx_int| and u = U/kT
    comes from :class:`EnergyOracle`. The ``skip_top_k`` largest losses are dropped before averaging. ``compile``:
    sample and map to Cartesians through ``torch.compile`` (see :meth:`step`).
    ``sample_filter(positions) -> bool mask`` (e.g. a chirality test) removes samples *before* energy
    evaluation; they are neither evaluated nor part of the loss. The flow may live on another device than the CPU
    (``flow.to("cuda")``): base samples are drawn on ``generator``'s device (the same draws everywhere), and its
    outputs come back to the CPU, where the Z-matrix map, OpenMM and the loss run.
    """

    def __init__(
        self,
        flow: torch.nn.Module,
        cg_system: CGSystem,
        oracle: EnergyOracle,
        optimizer: torch.optim.Optimizer,
        skip_top_k: int = 0,
        sample_filter: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        compile: bool = False,
    ):
        self.flow = flow
        # compiled (flow.compile): the flow's sampling direction (~2x per training step with a float32 flow) and
        # the internal-to-Cartesian map (~10 % more); torch.compile shares the flow's parameters
        self._compiled = (torch.compile(flow), torch.compile(cg_system.to_cartesian)) if compile else None
        self.cg_system = cg_system
        self.oracle = oracle
        self.optimizer = optimizer
        self.skip_top_k = int(skip_top_k)
        self.sample_filter = sample_filter
        self.steps_done = 0

    @property
    def compiling(self) -> bool:
        """True until the first step of a compiled trainer: that step compiles (tens of seconds, once per process)."""
        return self._compiled is not None and self.steps_done == 0

    def step(self, s: torch.Tensor, generator: torch.Generator, clip_norm: Optional[float]) -> EnergyStep:
        """Sample one x_fg per row of ``s`` (B, cg_dim), evaluate energies, and take one optimizer step.

        With ``compile``, a step whose compiled forward or backward fails (no C++ compiler on the machine, a
        compiler bug for this flow's shapes) warns once and is redone eagerly, as is every later step; the
        optimizer has not moved by then (a failed step's energies are counted twice)."""
        self.steps_done += 1
        if self._compiled is None:
            return self._step(s, generator, clip_norm, self.flow, self.cg_system.to_cartesian)
        state = generator.get_state()
        try:
            return self._step(s, generator, clip_norm, *self._compiled)
        except ValueError:  # bad input (e.g. NaN energies): the error of the eager step too
            raise
        except Exception as error:  # noqa: BLE001 - any compiler failure: the same computation, eagerly
            first_line = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
            warnings.warn(f"flow.compile: the compiled training step failed here ({type(error).__name__}: {first_line}); "
                          "training eagerly from now on", RuntimeWarning, stacklevel=2)
            self._compiled = None
            self.optimizer.zero_grad()
            generator.set_state(state)
            return self._step(s, generator, clip_norm, self.flow, self.cg_system.to_cartesian)

    def _step(self, s: torch.Tensor, generator: torch.Generator, clip_norm: Optional[float], sample_direction: Callable,
              to_cartesian: Callable) -> EnergyStep:
        flow = self.flow
        device = next(flow.parameters()).device  # the flow's device (CPU, or e.g. CUDA)
        z = flow.sample_base(s.shape[0], generator).to(device)
        x_fg, logdet = sample_direction(z, s.to(device))
        log_q = (flow.base_log_prob(z) - logdet).cpu()
        x_fg, logdet = x_fg.cpu(), logdet.cpu()  # the Z-matrix map, OpenMM and the loss stay on the CPU (no-ops there)
        positions, log_jacobian = to_cartesian(s, x_fg)
        before = self.oracle.n_evaluations
        if self.sample_filter is None:
            keep = torch.ones(s.shape[0], dtype=torch.bool)
            u = self.oracle(positions)
        else:
            keep = self.sample_filter(positions.detach())
            u = torch.full((s.shape[0],), float("nan"), dtype=positions.dtype)
            if bool(keep.any()):
                u = u.index_put((keep,), self.oracle(positions[keep]))
        log_p = -u + log_jacobian
        log_w = (log_p - log_q).detach().numpy().copy()
        per_sample = -log_p - logdet
        evaluated = keep & torch.isfinite(u.detach())
        failed = int((keep & ~torch.isfinite(u.detach())).sum())
        losses = per_sample if bool(evaluated.all()) else per_sample[evaluated]
        if self.skip_top_k and losses.numel() > self.skip_top_k:
            losses = torch.sort(losses).values[: losses.numel() - self.skip_top_k]
        loss = losses.mean() if losses.numel() else torch.tensor(float("nan"))
        computed = self.oracle.n_evaluations - before
        log_w[~np.isfinite(log_w)] = np.nan
        if not bool(torch.isfinite(loss)):
            return EnergyStep(log_w, float("nan"), True, computed, failed)
        self.optimizer.zero_grad()
        loss.backward()
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(flow.parameters(), clip_norm)
        self.optimizer.step()
        return EnergyStep(log_w, float(loss.detach()), False, computed, failed)
