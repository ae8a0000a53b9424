"""Conditional circular rational-quadratic spline coupling flow for alanine dipeptide (SPEC §3.1).

q(x_fg | s) over the 58 fine-grained internal coordinates, 10 of them circular (dihedrals on [-pi, pi)):

* base: uniform on [-pi, pi) for circular coordinates, N(0, 1) for the rest;
* ``n_layers`` couplings (default 12). Layer i transforms half of the coordinates with K-bin rational-quadratic
  splines (circular splines on [-pi, pi] for circular coordinates, linear tails on [-tail_bound, tail_bound] and
  the identity outside for the rest), whose parameters come from a residual conditioner that sees the other half
  (circular inputs as (sin, cos)) and the context; the other half gets a context-free element-wise spline
  (normflows' ``apply_unconditional_transform``). Masks: random halves (seeded by the layer index) for even
  layers, the complement for odd layers;
* the context is [cos s_phi, sin s_phi, cos s_psi, sin s_psi] ("periodic", default), the same with the harmonics
  k s for k = 1, 2 ("periodic2") or k = 1, 2, 3 ("periodic3"): a sharper dependence on s for the same width; or the
  raw s ("raw", the grid experiment of SPEC §8); it feeds the conditioner's first layer and the gate of every
  residual block;
* a volume-preserving circular shift of all circular coordinates by (u_i + 1/2) pi after layers 1, 3, 5, 7, 9;
* identity initialisation: every spline starts as the identity.

Directions: ``forward(z, s)`` is the sampling direction (splines evaluated forwards), ``inverse(x, s)`` the
density direction (which first wraps circular inputs into [-pi, pi)). Built in float64; ``flow.float()`` makes it
compute in float32 (``flow.precision``: ~1.4x faster per training step on a CPU core) while its inputs and outputs
stay in the caller's dtype.
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
from torch import nn

from .base import gaussian_log_prob
from .splines import DEFAULT_MIN_DERIVATIVE, rq_spline, spline_knots

_IDENTITY_DERIVATIVE = math.log(math.expm1(1.0 - DEFAULT_MIN_DERIVATIVE))  # softplus^-1(1 - min_d): derivative 1


def _wrap(x: torch.Tensor) -> torch.Tensor:
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi


class ResidualConditioner(nn.Module):
    """Linear(in + context -> H), residual blocks [ReLU, Linear, ReLU, Linear (init ±1e-3), GLU gate on the
    context], then Linear(H -> out) with zero weights and the given bias (identity splines)."""

    def __init__(self, n_in: int, n_context: int, n_out: int, hidden: int, n_blocks: int, output_bias: torch.Tensor):
        super().__init__()
        self.initial = nn.Linear(n_in + n_context, hidden)
        self.first = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(n_blocks)])
        self.second = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(n_blocks)])
        self.gates = nn.ModuleList([nn.Linear(n_context, hidden) for _ in range(n_blocks)])
        for layer in self.second:
            nn.init.uniform_(layer.weight, -1e-3, 1e-3)
            nn.init.uniform_(layer.bias, -1e-3, 1e-3)
        self.final = nn.Linear(hidden, n_out)
        nn.init.zeros_(self.final.weight)
        with torch.no_grad():
            self.final.bias.copy_(output_bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = self.initial(torch.cat([x, context], dim=-1))
        for first, second, gate in zip(self.first, self.second, self.gates):
            t = second(torch.relu(first(torch.relu(h))))
            h = h + torch.nn.functional.glu(torch.cat([t, gate(context)], dim=-1), dim=-1)
        return self.final(h)


def _identity_parameters(n: int, n_bins: int) -> torch.Tensor:
    """Unconstrained spline parameters (n, 3K + 1) of the identity: equal bins, all derivatives 1 (float64)."""
    return torch.cat([torch.zeros(n, 2 * n_bins, dtype=torch.float64), torch.full((n, n_bins + 1), _IDENTITY_DERIVATIVE, dtype=torch.float64)], dim=-1)


class SplineCoupling(nn.Module):
    """One conditional coupling layer; see the module docstring."""

    def __init__(self, transformed: Sequence[int], conditioning: Sequence[int], circular: Sequence[bool], n_context: int,
                 n_bins: int, hidden: int, n_blocks: int, tail_bound: float):
        super().__init__()
        self.n_bins = n_bins
        circ = torch.tensor(list(circular), dtype=torch.bool)
        t_idx = torch.tensor(list(transformed), dtype=torch.long)
        c_idx = torch.tensor(list(conditioning), dtype=torch.long)
        self.register_buffer("t_idx", t_idx)
        self.register_buffer("c_idx", c_idx)
        self.register_buffer("t_circular", circ[t_idx])
        self.register_buffer("c_circular", circ[c_idx])
        self.register_buffer("t_bound", torch.where(circ[t_idx], math.pi, tail_bound).double())
        self.register_buffer("c_bound", torch.where(circ[c_idx], math.pi, tail_bound).double())
        self.register_buffer("c_circ_pos", torch.nonzero(circ[c_idx]).flatten())
        self.register_buffer("c_lin_pos", torch.nonzero(~circ[c_idx]).flatten())
        # the sampling direction evaluates both halves' splines in one call: knots stacked as
        # [transformed, conditioning] and put back into coordinate order by ``order`` (derived from the masks, so
        # not in the state dict: checkpoints written before it existed still load)
        self.register_buffer("order", torch.argsort(torch.cat([t_idx, c_idx])), persistent=False)
        n_t, n_c = len(transformed), len(conditioning)
        n_features = len(self.c_lin_pos) + 2 * len(self.c_circ_pos)
        bias = _identity_parameters(n_t, n_bins).flatten()
        self.conditioner = ResidualConditioner(n_features, n_context, n_t * (3 * n_bins + 1), hidden, n_blocks, bias)
        self.unconditional = nn.Parameter(_identity_parameters(n_c, n_bins))
        self.scale = 1.0 / math.sqrt(hidden)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written while ``order`` was briefly a persistent buffer (one session, 2026-12-03) carry it;
        # it is derived from the masks, so it is dropped rather than refused as an unexpected key
        state_dict.pop(prefix + "order", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def reset_to_identity(self) -> None:
        """Make both splines exactly the identity in the current dtype (the float32 bias of an identity spline is
        off by ~1e-8 in the derivative)."""
        with torch.no_grad():
            self.conditioner.final.weight.zero_()
            self.conditioner.final.bias.copy_(_identity_parameters(self.t_idx.shape[0], self.n_bins).flatten())
            self.unconditional.copy_(_identity_parameters(self.c_idx.shape[0], self.n_bins))

    def _features(self, x_c: torch.Tensor) -> torch.Tensor:
        circ = x_c[:, self.c_circ_pos]
        return torch.cat([x_c[:, self.c_lin_pos], torch.sin(circ), torch.cos(circ)], dim=-1)

    def _knots(self, params: torch.Tensor, bound: torch.Tensor, circular: torch.Tensor, scale: float):
        K = self.n_bins
        return spline_knots(params[..., :K] * scale, params[..., K:2 * K] * scale, params[..., 2 * K:], bound, circular)

    def _conditional_knots(self, x_c: torch.Tensor, context: torch.Tensor):
        params = self.conditioner(self._features(x_c), context).reshape(x_c.shape[0], self.t_idx.shape[0], 3 * self.n_bins + 1)
        return self._knots(params, self.t_bound, self.t_circular, self.scale)

    def _stacked(self, conditional: torch.Tensor, unconditional: torch.Tensor, n: int) -> torch.Tensor:
        """Per-sample knots (n, dim, K + 1) of all coordinates in coordinate order."""
        return torch.cat([conditional, unconditional.expand(n, -1, -1)], dim=1)[:, self.order]

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sampling direction. Both splines read only ``x`` here, so their knots are stacked (the context-free
        ones computed once, not per sample) and one element-wise spline call transforms all coordinates."""
        n = x.shape[0]
        xs, ys, ds = self._conditional_knots(x[:, self.c_idx], context)
        uxs, uys, uds = self._knots(self.unconditional, self.c_bound, self.c_circular, 1.0)
        y, ld = rq_spline(x, self._stacked(xs, uxs, n), self._stacked(ys, uys, n), self._stacked(ds, uds, n), False)
        return y, ld.sum(-1)

    @torch.jit.export
    def inverse(self, y: torch.Tensor, context: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Density direction."""
        uxs, uys, uds = self._knots(self.unconditional, self.c_bound, self.c_circular, 1.0)
        x_c, ld_c = rq_spline(y[:, self.c_idx], uxs.expand(y.shape[0], -1, -1), uys.expand(y.shape[0], -1, -1), uds.expand(y.shape[0], -1, -1), True)
        xs, ys, ds = self._conditional_knots(x_c, context)
        x_t, ld_t = rq_spline(y[:, self.t_idx], xs, ys, ds, True)
        x = y.clone()
        x[:, self.t_idx] = x_t
        x[:, self.c_idx] = x_c
        return x, ld_t.sum(-1) + ld_c.sum(-1)


def random_half_mask(dim: int, seed: int) -> List[int]:
    """Indices of a random half of ``dim`` coordinates (ceil(dim / 2)), from a torch Generator seeded ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(dim, generator=generator)[: (dim + 1) // 2].tolist())


#: flow contexts and the harmonics of s each feeds the conditioners (0: the raw s)
CONTEXTS = {"periodic": 1, "periodic2": 2, "periodic3": 3, "raw": 0}


class ConditionalSplineFlow(nn.Module):
    """q(x_fg | s); the flow contract of :mod:`.base`. Shapes: x, z (B, fg_dim); s (B, cg_dim)."""

    def __init__(self, fg_dim: int = 58, circular_indices: Sequence[int] = (), cg_dim: int = 2, n_layers: int = 12,
                 n_bins: int = 8, hidden: int = 256, n_blocks: int = 1, tail_bound: float = 5.0, context: str = "periodic",
                 shift_seed: int = 0):
        super().__init__()
        if context not in CONTEXTS:
            raise ValueError(f"context must be one of {', '.join(repr(c) for c in CONTEXTS)}, got '{context}'")
        if any(not 0 <= i < fg_dim for i in circular_indices):
            raise ValueError(f"circular indices {list(circular_indices)} out of range for fg_dim {fg_dim}")
        self.fg_dim = fg_dim
        self.cg_dim = cg_dim
        self.harmonics = CONTEXTS[context]  # harmonics of s in the context (0: the raw s)
        circular = [i in set(circular_indices) for i in range(fg_dim)]
        n_context = 2 * self.harmonics * cg_dim if self.harmonics else cg_dim
        layers = []
        shifts: List[float] = []
        mask: List[int] = []
        for i in range(n_layers):
            if i % 2 == 0:
                mask = random_half_mask(fg_dim, i)
                transformed = mask
            else:
                transformed = [j for j in range(fg_dim) if j not in set(mask)]
            conditioning = [j for j in range(fg_dim) if j not in set(transformed)]
            layers.append(SplineCoupling(transformed, conditioning, circular, n_context, n_bins, hidden, n_blocks, tail_bound))
            generator = torch.Generator().manual_seed(shift_seed + i)
            shifts.append((float(torch.rand(1, generator=generator)) + 0.5) * math.pi if (i % 2 == 1 and i < n_layers - 1) else 0.0)
        self.layers = nn.ModuleList(layers)
        self.register_buffer("shifts", torch.tensor(shifts, dtype=torch.float64))
        self.shift_values: List[float] = shifts  # the same as Python floats: no tensor-to-float sync per layer
        self.register_buffer("circular", torch.tensor(circular, dtype=torch.bool))
        self.register_buffer("circ_idx", torch.nonzero(self.circular).flatten())
        self.register_buffer("lin_idx", torch.nonzero(~self.circular).flatten())
        self.double()
        for layer in self.layers:
            layer.reset_to_identity()

    def _context(self, s: torch.Tensor) -> torch.Tensor:
        if self.harmonics == 0:
            return s
        features: List[torch.Tensor] = []
        for k in range(1, self.harmonics + 1):
            features.append(torch.cos(k * s))
            features.append(torch.sin(k * s))
        return torch.cat(features, dim=-1)

    def _shift(self, x: torch.Tensor, amount: float) -> torch.Tensor:
        return torch.where(self.circular, _wrap(x + amount), x)

    def forward(self, z: torch.Tensor, s: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sampling direction: (z, s) -> (x_fg, ln|det dx/dz|), computed in the flow's dtype (float64 unless
        converted, e.g. ``flow.float()``) and returned in z's."""
        dtype = z.dtype
        z = z.to(self.shifts.dtype)
        context = self._context(s.to(self.shifts.dtype))
        x = z
        logdet = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        for i, layer in enumerate(self.layers):
            x, ld = layer(x, context)
            logdet = logdet + ld
            shift = self.shift_values[i]
            if shift != 0.0:
                x = self._shift(x, shift)
        return x.to(dtype), logdet.to(dtype)

    @torch.jit.export
    def inverse(self, x: torch.Tensor, s: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Density direction: (x_fg, s) -> (z, ln|det dz/dx|); circular inputs are wrapped into [-pi, pi) first.
        Computed in the flow's dtype, returned in x's."""
        dtype = x.dtype
        x = x.to(self.shifts.dtype)
        context = self._context(s.to(self.shifts.dtype))
        z = self._shift(x, 0.0)
        logdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        n = len(self.layers)
        for j, layer in enumerate(self.layers[::-1]):
            i = n - 1 - j
            shift = self.shift_values[i]
            if shift != 0.0:
                z = self._shift(z, -shift)
            z, ld = layer.inverse(z, context)
            logdet = logdet + ld
        return z.to(dtype), logdet.to(dtype)

    @torch.jit.export
    def base_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Uniform on [-pi, pi) (density 1 / 2 pi) for circular coordinates, N(0, 1) for the rest (B,)."""
        return gaussian_log_prob(z[:, self.lin_idx]) - math.log(2 * math.pi) * self.circ_idx.shape[0]

    @torch.jit.export
    def log_prob(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """ln q(x_fg | s) (B,)."""
        z, logdet = self.inverse(x, s)
        return self.base_log_prob(z) + logdet

    def sample_base(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n base samples (n, fg_dim), float64 on the generator's device (the flow may live on another one, e.g.
        CUDA with a CPU generator: the same draws on every device)."""
        z = torch.randn(n, self.fg_dim, generator=generator, dtype=torch.float64, device=generator.device)
        u = torch.rand(n, self.fg_dim, generator=generator, dtype=torch.float64, device=generator.device) * (2 * math.pi) - math.pi
        return torch.where(self.circular.to(z.device), u, z)
