"""The PMF ensemble: M small MLPs trained at once (batched matrix products), mean = PMF, std = uncertainty.

SPEC §6.2. Inputs are the CG coordinates s: standardised (non-periodic, Müller-Brown) or mapped to
(cos s_k, sin s_k) (periodic, alanine dipeptide). Outputs are free energies in kT. All members are
re-initialised and trained from scratch at every fit.
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import numpy as np
import torch
from torch import nn


class BatchedLinear(nn.Module):
    """M independent linear layers applied to a (M, B, n_in) input."""

    def __init__(self, n_members: int, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_members, n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_members, 1, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class PMFEnsemble(nn.Module):
    """Ensemble of sigmoid MLPs F_m(s) (kT). ``forward(s)`` returns (M, B) member predictions.

    Parameters
    ----------
    cg_dim: number of CG coordinates.
    n_members: ensemble size M.
    hidden: hidden layer widths.
    periodic: CG coordinates are angles in radians; inputs become (cos, sin) pairs.
    """

    def __init__(self, cg_dim: int, n_members: int = 10, hidden: Sequence[int] = (64, 64), periodic: bool = False):
        super().__init__()
        self.cg_dim = cg_dim
        self.n_members = n_members
        self.periodic = periodic
        n_features = 2 * cg_dim if periodic else cg_dim
        widths = [n_features] + list(hidden) + [1]
        self.layers = nn.ModuleList([BatchedLinear(n_members, a, b) for a, b in zip(widths[:-1], widths[1:])])
        self.register_buffer("input_mean", torch.zeros(n_features))
        self.register_buffer("input_std", torch.ones(n_features))
        self.register_buffer("output_offset", torch.tensor(0.0))

    def features(self, s: torch.Tensor) -> torch.Tensor:
        if self.periodic:
            f = torch.cat([torch.cos(s), torch.sin(s)], dim=-1)
        else:
            f = s
        return (f - self.input_mean) / self.input_std

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """Member predictions F_m(s) in kT, shape (M, B), for s of shape (B, cg_dim)."""
        h = self.features(s).unsqueeze(0).expand(self.n_members, -1, -1)
        return self._members(h)

    def _members(self, h: torch.Tensor) -> torch.Tensor:
        n_layers = len(self.layers)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < n_layers - 1:
                h = torch.sigmoid(h)
        return h.squeeze(-1) + self.output_offset

    @torch.jit.export
    def mean_std(self, s: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Ensemble mean (the PMF) and unbiased std (its uncertainty), both (B,) in kT."""
        values = self.forward(s)
        return values.mean(0), values.std(0)

    # ------------------------------------------------------------------ training
    def reset_parameters(self, init: str, generator: torch.Generator) -> None:
        """Re-initialise every member: "xavier" (Xavier-uniform weights, zero biases) or
        "gaussian_uniform" (weights and biases ~ N(0, sigma^2), sigma ~ U(0.1, 3.0) per layer and member)."""
        with torch.no_grad():
            for layer in self.layers:
                m, n_in, n_out = layer.weight.shape
                if init == "xavier":
                    bound = math.sqrt(6.0 / (n_in + n_out))
                    layer.weight.copy_((torch.rand(m, n_in, n_out, generator=generator, dtype=layer.weight.dtype) * 2 - 1) * bound)
                    layer.bias.zero_()
                elif init == "gaussian_uniform":
                    sigma = 0.1 + 2.9 * torch.rand(m, 1, 1, generator=generator, dtype=layer.weight.dtype)
                    layer.weight.copy_(torch.randn(m, n_in, n_out, generator=generator, dtype=layer.weight.dtype) * sigma)
                    layer.bias.copy_(torch.randn(m, 1, n_out, generator=generator, dtype=layer.weight.dtype) * sigma)
                else:
                    raise ValueError(f"unknown ensemble init '{init}' (use 'xavier' or 'gaussian_uniform')")

    def fit(
        self,
        s: np.ndarray,
        F: np.ndarray,
        epochs: int,
        batch_size: int,
        lr: float,
        strategy: str,
        init: str,
        generator: torch.Generator,
        optimizer: str = "adam",
    ) -> List[float]:
        """Train all members from scratch on labels ``F`` (kT) at CG points ``s`` (n, cg_dim).

        strategy "bagging": one common random 90 % subset, then a bootstrap resample of it per member.
        strategy "fraction": an independent random 80 % subset per member.
        ``optimizer`` "adam" is the paper's recipe (mini-batches of ``batch_size`` for ``epochs`` epochs);
        "lbfgs" runs ``epochs`` full-batch L-BFGS iterations (strong-Wolfe line search, ``lr`` = initial
        step, ``batch_size`` unused): as accurate on MB labels at a tenth of the CPU time.
        Returns the mean training MSE (kT^2) per epoch (per function evaluation for L-BFGS).
        """
        dtype = self.input_mean.dtype
        s_t = torch.as_tensor(np.asarray(s), dtype=dtype).reshape(-1, self.cg_dim)
        F_t = torch.as_tensor(np.asarray(F), dtype=dtype).reshape(-1)
        n = len(F_t)
        if n < 2:
            raise ValueError(f"the PMF ensemble needs at least 2 labelled CG points, got {n}")
        if not torch.isfinite(F_t).all():
            raise ValueError("PMF labels must be finite")
        with torch.no_grad():
            if not self.periodic:
                self.input_mean.copy_(s_t.mean(0))
                self.input_std.copy_(s_t.std(0, unbiased=False).clamp_min(1e-8))
            self.output_offset.copy_(F_t.median())
        self.reset_parameters(init, generator)
        M = self.n_members
        if strategy == "bagging":
            common = torch.randperm(n, generator=generator)[: max(1, int(0.9 * n))]
            members = common[torch.randint(len(common), (M, len(common)), generator=generator)]
        elif strategy == "fraction":
            k = max(1, int(0.8 * n))
            members = torch.stack([torch.randperm(n, generator=generator)[:k] for _ in range(M)])
        else:
            raise ValueError(f"unknown ensemble strategy '{strategy}' (use 'bagging' or 'fraction')")
        n_member = members.shape[1]
        batch_size = min(batch_size, n_member)
        n_batches = n_member // batch_size
        X = self.features(s_t)  # (n, features)
        if optimizer == "lbfgs":
            return self._fit_lbfgs(X[members], F_t[members], epochs, lr)
        if optimizer != "adam":
            raise ValueError(f"unknown ensemble optimizer '{optimizer}' (use 'adam' or 'lbfgs')")
        adam = torch.optim.Adam(self.parameters(), lr=lr, fused=True)
        history = []
        rows = torch.arange(M)[:, None]
        for _ in range(epochs):
            order = torch.argsort(torch.rand(M, n_member, generator=generator), dim=1)
            shuffled = members[rows, order]
            total = 0.0
            for b in range(n_batches):
                idx = shuffled[:, b * batch_size : (b + 1) * batch_size]
                pred = self._members(X[idx])
                loss = ((pred - F_t[idx]) ** 2).mean(1).sum()
                adam.zero_grad(set_to_none=True)
                loss.backward()
                adam.step()
                total += float(loss.detach())
            history.append(total / (n_batches * M))
        return history

    def _fit_lbfgs(self, X: torch.Tensor, Y: torch.Tensor, iterations: int, lr: float) -> List[float]:
        """Full-batch L-BFGS on the sum of the members' MSEs (members stay independent: the sum separates)."""
        optimizer = torch.optim.LBFGS(
            self.parameters(), lr=lr, max_iter=iterations, history_size=50, line_search_fn="strong_wolfe",
            tolerance_grad=1e-12, tolerance_change=1e-15,
        )
        history: List[float] = []

        def closure():
            optimizer.zero_grad(set_to_none=True)
            loss = ((self._members(X) - Y) ** 2).mean(1).sum()
            loss.backward()
            history.append(float(loss.detach()) / self.n_members)
            return loss

        optimizer.step(closure)
        return history

    def predict(self, s: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Numpy convenience: (mean, std) in kT at CG points ``s`` (n, cg_dim)."""
        with torch.no_grad():
            mean, std = self.mean_std(torch.as_tensor(np.asarray(s), dtype=self.input_mean.dtype).reshape(-1, self.cg_dim))
        return mean.numpy(), std.numpy()
