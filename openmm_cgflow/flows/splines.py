"""Rational-quadratic splines (Durkan et al., *Neural Spline Flows*, 2019), written to be TorchScript-able.

A monotonic spline on [-B, B] with K bins is given by its K + 1 knots (xs, ys) and the K + 1 derivatives ds at
the knots; outside [-B, B] it is the identity with log-det 0 (the "linear tails"; SPEC §3.1 asks for the identity
there, not normflows' zero). :func:`spline_knots` turns unconstrained network outputs into knots:

* widths and heights: ``min_bin + (1 - K min_bin) softmax(logits)``,
* derivatives: ``min_derivative + softplus(raw)``; boundary derivatives are 1 for linear-tail coordinates, and
  the right one equals the left one for circular coordinates (bound pi), which makes the map periodic.

:func:`rq_spline` evaluates either direction and returns ``(y, ln|dy/dx|)``.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

DEFAULT_MIN_BIN = 1e-3
DEFAULT_MIN_DERIVATIVE = 1e-3


def _cumulative_knots(logits: torch.Tensor, bound: torch.Tensor, min_bin: float) -> torch.Tensor:
    K = logits.shape[-1]
    size = min_bin + (1.0 - min_bin * K) * torch.softmax(logits, dim=-1)
    cum = F.pad(torch.cumsum(size, dim=-1), (1, 0), value=0.0)
    knots = bound.unsqueeze(-1) * (2.0 * cum - 1.0)
    # pin the ends exactly at -B and B (cumsum rounding)
    return torch.cat([-bound.unsqueeze(-1).expand_as(knots[..., :1]), knots[..., 1:-1], bound.unsqueeze(-1).expand_as(knots[..., :1])], dim=-1)


def spline_knots(
    widths: torch.Tensor,
    heights: torch.Tensor,
    derivatives: torch.Tensor,
    bound: torch.Tensor,
    circular: torch.Tensor,
    min_bin_width: float = DEFAULT_MIN_BIN,
    min_bin_height: float = DEFAULT_MIN_BIN,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Knots from unconstrained parameters.

    widths, heights: (..., n, K); derivatives: (..., n, K + 1); bound: (n,) the half-width B of each
    coordinate's interval; circular: (n,) bool. Returns xs, ys, ds, each (..., n, K + 1).
    """
    bound = bound.to(widths.dtype).expand(widths.shape[:-1])
    xs = _cumulative_knots(widths, bound, min_bin_width)
    ys = _cumulative_knots(heights, bound, min_bin_height)
    ds = min_derivative + F.softplus(derivatives)
    one = torch.ones_like(ds[..., :1])
    linear = torch.cat([one, ds[..., 1:-1], one], dim=-1)
    periodic = torch.cat([ds[..., :-1], ds[..., :1]], dim=-1)
    return xs, ys, torch.where(circular.unsqueeze(-1), periodic, linear)


def rq_spline(x: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, ds: torch.Tensor, inverse: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """The spline y = g(x) (or x = g^-1(y) with ``inverse``) element-wise; returns (output, ln|d output/d input|).

    x: (...,); xs, ys, ds: (..., K + 1). Identity outside the knot range.
    """
    if inverse:
        lo, hi, knots = ys[..., 0], ys[..., -1], ys
    else:
        lo, hi, knots = xs[..., 0], xs[..., -1], xs
    inside = (x >= lo) & (x <= hi)
    xc = torch.minimum(torch.maximum(x, lo), hi)
    k = (knots[..., 1:-1] <= xc.unsqueeze(-1)).sum(-1, keepdim=True)
    x0 = xs.gather(-1, k).squeeze(-1)
    x1 = xs.gather(-1, k + 1).squeeze(-1)
    y0 = ys.gather(-1, k).squeeze(-1)
    y1 = ys.gather(-1, k + 1).squeeze(-1)
    d0 = ds.gather(-1, k).squeeze(-1)
    d1 = ds.gather(-1, k + 1).squeeze(-1)
    w = x1 - x0
    h = y1 - y0
    slope = h / w
    curvature = d0 + d1 - 2.0 * slope
    if inverse:
        dy = xc - y0
        a = h * (slope - d0) + dy * curvature
        b = h * d0 - dy * curvature
        c = -slope * dy
        discriminant = torch.clamp(b * b - 4.0 * a * c, min=0.0)
        theta = 2.0 * c / (-b - torch.sqrt(discriminant))
        out = x0 + theta * w
    else:
        theta = (xc - x0) / w
        out = y0 + h * (slope * theta * theta + d0 * theta * (1.0 - theta)) / (slope + curvature * theta * (1.0 - theta))
    one_minus = 1.0 - theta
    denominator = slope + curvature * theta * one_minus
    derivative = slope * slope * (d1 * theta * theta + 2.0 * slope * theta * one_minus + d0 * one_minus * one_minus) / (denominator * denominator)
    logdet = torch.log(derivative)
    if inverse:
        logdet = -logdet
    return torch.where(inside, out, x), torch.where(inside, logdet, torch.zeros_like(logdet))
