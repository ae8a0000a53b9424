"""The conditional-flow contract shared by every flow in this package.

A conditional flow is an ``nn.Module`` with

* ``forward(z, s) -> (x_fg, ln|det dx/dz|)``  (sampling direction),
* ``inverse(x_fg, s) -> (z, ln|det dz/dx|)``  (density direction),
* ``base_log_prob(z)`` and ``log_prob(x_fg, s)``,
* ``sample_base(n, generator)`` (Python only: draws base samples with a seeded torch.Generator),

all TorchScript-able except ``sample_base``. :func:`sample` combines them.
"""
from __future__ import annotations

from typing import Tuple

import torch



def gaussian_log_prob(z: torch.Tensor) -> torch.Tensor:
    """Standard-normal log-density summed over the last dimension."""
    log_2pi = 1.8378770664093453  # ln(2 pi); a literal so TorchScript can compile it
    return -0.5 * (z * z).sum(-1) - 0.5 * log_2pi * z.shape[-1]


def sample(flow: torch.nn.Module, s: torch.Tensor, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """Draw one x_fg per row of ``s`` and return ``(x_fg, ln q(x_fg | s))``, differentiable in the flow's parameters."""
    z = flow.sample_base(s.shape[0], generator)
    x, logdet = flow(z, s)
    return x, flow.base_log_prob(z) - logdet
