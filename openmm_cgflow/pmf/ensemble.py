"""The PMF ensemble: M small MLPs trained at once (batched matrix products), mean = PMF, std = uncertainty.

SPEC §6.2. Inputs are the CG coordinates s: standardised (non-periodic, Müller-Brown) or mapped to
(cos s_k, sin s_k) (periodic, alanine dipeptide). Outputs are free energies in kT. All members are
re-initialised and trained from scratch at every fit, unless a fit is asked to continue from the members' current
parameters (``warm_start``; ``ensemble.warm_start`` in a run's config).
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from . import member_groups


#: ``fit(precision=...)``: the floating-point type training runs in.
PRECISIONS = {"float64": torch.float64, "float32": torch.float32}


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
        precision: str = "float64",
        lbfgs_groups: int = member_groups.N_GROUPS,
        warm_start: bool = False,
        weights: Optional[np.ndarray] = None,
    ) -> List[float]:
        """Train all members from scratch on labels ``F`` (kT) at CG points ``s`` (n, cg_dim).

        strategy "bagging": one common random 90 % subset, then a bootstrap resample of it per member.
        strategy "fraction": an independent random 80 % subset per member.
        ``optimizer`` "adam" is the paper's recipe (mini-batches of ``batch_size`` for ``epochs`` epochs);
        "lbfgs" runs ``epochs`` full-batch L-BFGS iterations (strong-Wolfe line search, ``lr`` = initial
        step, ``batch_size`` unused): as accurate on MB labels at a tenth of the CPU time.
        ``precision`` "float32" trains in single precision (about half the CPU time: L-BFGS's vector updates and
        the batched products are memory-bound) and stores the result back in the module's own precision; the
        initial weights, the bagging draws and the input standardisation are computed in the module's precision first,
        so both settings start from the same (rounded) point. Free energies of tens of kT keep ~1e-6 kT.
        ``lbfgs_groups``: L-BFGS runs on this many independent groups of members (:mod:`.member_groups`; 1 = one
        joint L-BFGS over all members, as runs recorded before the groups existed).
        ``warm_start``: continue from the members' current parameters, input standardisation and output offset (those
        of an earlier fit, or of a loaded state) instead of re-initialising them; only the members' data subsets are
        drawn anew. Across active-learning iterations the optimisation then accumulates: a from-scratch L-BFGS fit of
        ``epochs`` iterations stops far from its minimum once there are thousands of labels (benchmarks/aldp_ensemble_fit.py).
        ``weights`` (n,) > 0: each row's weight in the members' mean squared errors (e.g. the number of labels a row
        stands for, :func:`~openmm_cgflow.pmf.labels.merge_in_cells`); None: every row counts once (the same
        arithmetic as before weights existed).
        Returns the mean training MSE (kT^2) per epoch (per function evaluation for L-BFGS).
        """
        if precision not in PRECISIONS:
            raise ValueError(f"unknown ensemble precision '{precision}' (use {' or '.join(repr(p) for p in PRECISIONS)})")
        dtype = self.input_mean.dtype
        s_t = torch.as_tensor(np.asarray(s), dtype=dtype).reshape(-1, self.cg_dim)
        F_t = torch.as_tensor(np.asarray(F), dtype=dtype).reshape(-1)
        n = len(F_t)
        if n < 2:
            raise ValueError(f"the PMF ensemble needs at least 2 labelled CG points, got {n}")
        if not torch.isfinite(F_t).all():
            raise ValueError("PMF labels must be finite")
        W_t = None
        if weights is not None:
            W_t = torch.as_tensor(np.asarray(weights), dtype=dtype).reshape(-1)
            if len(W_t) != n or not (torch.isfinite(W_t).all() and (W_t > 0).all()):
                raise ValueError(f"fit weights must be {n} finite positive numbers")
        if not warm_start:
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
        if optimizer not in ("adam", "lbfgs"):
            raise ValueError(f"unknown ensemble optimizer '{optimizer}' (use 'adam' or 'lbfgs')")
        compute = PRECISIONS[precision]
        X = self.features(s_t).to(compute)  # (n, features)
        F_t = F_t.to(compute)
        self.to(compute)
        try:
            W_members = None if W_t is None else W_t.to(compute)[members]
            if optimizer == "lbfgs":
                return self._fit_lbfgs(X[members], F_t[members], epochs, lr, lbfgs_groups, W_members)
            return self._fit_adam(X, F_t, members, epochs, batch_size, lr, generator, None if W_t is None else W_t.to(compute))
        finally:
            self.to(dtype)

    def _fit_adam(self, X: torch.Tensor, F_t: torch.Tensor, members: torch.Tensor, epochs: int, batch_size: int, lr: float,
                  generator: torch.Generator, W_t: Optional[torch.Tensor] = None) -> List[float]:
        """The paper's recipe: Adam on mini-batches, each member on its own resample ``members`` (M, n_member); rows
        weighted by ``W_t`` (n,) within each batch where given."""
        M, n_member = members.shape
        batch_size = min(batch_size, n_member)
        n_batches = n_member // batch_size
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
                if W_t is None:
                    loss = ((pred - F_t[idx]) ** 2).mean(1).sum()
                else:
                    loss = ((W_t[idx] * (pred - F_t[idx]) ** 2).sum(1) / W_t[idx].sum(1)).sum()
                adam.zero_grad(set_to_none=True)
                loss.backward()
                adam.step()
                total += float(loss.detach())
            history.append(total / (n_batches * M))
        return history

    def _fit_lbfgs(self, X: torch.Tensor, Y: torch.Tensor, iterations: int, lr: float, n_groups: int,
                   W: Optional[torch.Tensor] = None) -> List[float]:
        """Full-batch L-BFGS on the members' MSEs, in ``n_groups`` independent groups of members (members never
        interact; the first half of the groups runs on a spare core where the run has one). Returns the mean
        member MSE per function evaluation of the group that made the most evaluations, the others padded with
        their last value."""
        n_layers = len(self.layers)
        offset = self.output_offset.detach().clone()
        groups = member_groups.split_members(self.n_members, n_groups)
        jobs = []
        for group in groups:
            rows = slice(group.start, group.stop)
            params = {}
            for i, layer in enumerate(self.layers):
                params[f"w{i}"] = layer.weight.detach()[rows]
                params[f"b{i}"] = layer.bias.detach()[rows]
            jobs.append((params, X[rows], Y[rows], offset, n_layers, iterations, lr, None if W is None else W[rows]))
        results = member_groups.run_groups(jobs)
        with torch.no_grad():
            for group, (params, _) in zip(groups, results):
                rows = slice(group.start, group.stop)
                for i, layer in enumerate(self.layers):
                    layer.weight[rows] = params[f"w{i}"]
                    layer.bias[rows] = params[f"b{i}"]
        histories = [h for _, h in results]
        sizes = [len(g) for g in groups]
        length = max(len(h) for h in histories)
        padded = [h + [h[-1]] * (length - len(h)) for h in histories]
        return [sum(n * h[k] for n, h in zip(sizes, padded)) / self.n_members for k in range(length)]

    @classmethod
    def stack(cls, ensembles: Sequence["PMFEnsemble"]) -> "PMFEnsemble":
        """One ensemble whose members are all the members of ``ensembles`` (same CG dimension, periodicity and
        hidden widths): its mean is the mean over every member, its std their std. Each ensemble's input
        standardisation is folded into its members' first layer and its output offset into their last bias, so the
        result has none of its own and is an ordinary :class:`PMFEnsemble` (exported and used as any other)."""
        if not ensembles:
            raise ValueError("stacking needs at least one ensemble")
        first = ensembles[0]
        widths = [layer.weight.shape[1:] for layer in first.layers]
        for other in ensembles[1:]:
            if other.cg_dim != first.cg_dim or other.periodic != first.periodic or [layer.weight.shape[1:] for layer in other.layers] != widths:
                raise ValueError("stacked ensembles must have the same CG dimension, periodicity and hidden widths")
        dtype = first.input_mean.dtype
        hidden = [int(w[1]) for w in widths[:-1]]
        stacked = cls(first.cg_dim, sum(e.n_members for e in ensembles), hidden, periodic=first.periodic).to(dtype)
        with torch.no_grad():
            weights = [[layer.weight.detach().to(dtype).clone() for layer in e.layers] for e in ensembles]
            biases = [[layer.bias.detach().to(dtype).clone() for layer in e.layers] for e in ensembles]
            for e, w, b in zip(ensembles, weights, biases):
                scale = 1.0 / e.input_std.to(dtype)  # features (f - mean) / std: W' = W / std, b' = b - (mean / std) W
                b[0] = b[0] - torch.einsum("i,mio->mo", e.input_mean.to(dtype) * scale, w[0]).unsqueeze(1)
                w[0] = w[0] * scale[None, :, None]
                b[-1] = b[-1] + e.output_offset.to(dtype)
            for i, layer in enumerate(stacked.layers):
                layer.weight.copy_(torch.cat([w[i] for w in weights]))
                layer.bias.copy_(torch.cat([b[i] for b in biases]))
        return stacked

    def predict(self, s: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Numpy convenience: (mean, std) in kT at CG points ``s`` (n, cg_dim)."""
        with torch.no_grad():
            mean, std = self.mean_std(torch.as_tensor(np.asarray(s), dtype=self.input_mean.dtype).reshape(-1, self.cg_dim))
        return mean.numpy(), std.numpy()
