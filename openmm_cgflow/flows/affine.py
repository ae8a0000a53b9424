"""Conditional affine-Gaussian flow for Müller-Brown (SPEC §3.2).

x_fg = z * sigma(s) + mu(s), z ~ N(0, 1), with sigma and mu two separate MLPs
(cg_dim -> 64 -> 64 -> fg_dim, sigmoid hidden activations, linear output, PyTorch default init).
The condition s is standardised with fixed ``s_mean``/``s_std`` (those of the starting data).
log|det dx/dz| = sum ln|sigma(s)|; the sign of sigma is not constrained.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import nn

from .base import gaussian_log_prob


def sigmoid_mlp(n_in: int, hidden: Sequence[int], n_out: int) -> nn.Sequential:
    """Plain MLP with sigmoid hidden activations and a linear output layer."""
    layers: List[nn.Module] = []
    width = n_in
    for h in hidden:
        layers += [nn.Linear(width, h), nn.Sigmoid()]
        width = h
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


class ConditionalAffineFlow(nn.Module):
    """q(x_fg | s) = N(mu(s), sigma(s)^2), written as a flow z -> x_fg.

    All methods take and return tensors of shape (B, dim); log-dets have shape (B,).
    """

    def __init__(
        self,
        cg_dim: int = 1,
        fg_dim: int = 1,
        hidden: Sequence[int] = (64, 64),
        s_mean: float = 0.0,
        s_std: float = 1.0,
    ):
        super().__init__()
        if s_std <= 0:
            raise ValueError(f"s_std must be positive, got {s_std}")
        self.cg_dim = cg_dim
        self.fg_dim = fg_dim
        self.sigma_net = sigmoid_mlp(cg_dim, hidden, fg_dim)
        self.mu_net = sigmoid_mlp(cg_dim, hidden, fg_dim)
        self.register_buffer("s_mean", torch.tensor(float(s_mean)))
        self.register_buffer("s_std", torch.tensor(float(s_std)))

    def _scale_shift(self, s: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        h = (s - self.s_mean) / self.s_std
        return self.sigma_net(h), self.mu_net(h)

    def forward(self, z: torch.Tensor, s: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sampling direction: (z, s) -> (x_fg, ln|det dx/dz|)."""
        sigma, mu = self._scale_shift(s)
        return z * sigma + mu, torch.log(torch.abs(sigma)).sum(-1)

    @torch.jit.export
    def inverse(self, x: torch.Tensor, s: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Density direction: (x_fg, s) -> (z, ln|det dz/dx|)."""
        sigma, mu = self._scale_shift(s)
        return (x - mu) / sigma, -torch.log(torch.abs(sigma)).sum(-1)

    @torch.jit.export
    def base_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Log-density of the standard normal base, summed over dimensions (B,)."""
        return gaussian_log_prob(z)

    @torch.jit.export
    def log_prob(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """ln q(x_fg | s) (B,)."""
        z, logdet = self.inverse(x, s)
        return self.base_log_prob(z) + logdet

    def sample_base(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Draw n base samples z (n, fg_dim) from N(0, 1)."""
        dtype = self.s_mean.dtype
        return torch.randn(n, self.fg_dim, generator=generator, dtype=dtype)
