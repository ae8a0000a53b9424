"""Full-batch L-BFGS on one flat parameter vector, with the inverse-Hessian product in compact (matrix) form.

``torch.optim.LBFGS`` spends much of a small fit in Python: its two-loop recursion issues ~4 tensor operations per
stored pair per iteration (history 50: ~200 small ops), and every line-search evaluation copies the parameters in
and out of the model's tensors. The history's matrix-vector products remain, so the gain is modest:
``benchmarks/ensemble_lbfgs.py`` measured 1.1-1.4x less CPU time per member-group fit at Müller-Brown label counts
and 1.0-1.14x at alanine-dipeptide ones. :func:`minimize` runs the same algorithm (same step rule, history
update, strong-Wolfe line search -- torch's own ``_strong_wolfe`` -- and stopping tests) on a flat vector, and
computes the L-BFGS direction with the compact representation of Byrd, Nocedal & Schnabel (1994, Math. Prog. 63,
eq. 3.1), a handful of matrix-vector products on ring buffers of the history:

    H g = gamma g + S a + gamma Y b,  a = R^-T ((D + gamma Y^T Y) R^-1 S^T g - gamma Y^T g),  b = -R^-1 S^T g

with R the upper triangle of S^T Y (pairs in chronological order), D its diagonal and gamma = s^T y / y^T y of the
newest pair. In exact arithmetic this equals the two-loop recursion; the small (m x m) algebra runs in float64
whatever the parameters' precision. ``tests/test_lbfgs.py`` checks the directions against the two-loop recursion
and whole fits against ``torch.optim.LBFGS``.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch
from torch.optim.lbfgs import _strong_wolfe

Objective = Callable[[torch.Tensor], Tuple[float, torch.Tensor]]


class CompactHistory:
    """The last ``size`` curvature pairs (s, y) of L-BFGS in ring buffers, with S^T Y and Y^T Y kept up to date
    (each new pair costs three matrix-vector products) so the inverse-Hessian product needs no loop over pairs."""

    def __init__(self, n: int, size: int, dtype: torch.dtype):
        self.size = size
        self.S = torch.zeros(size, n, dtype=dtype)
        self.Y = torch.zeros(size, n, dtype=dtype)
        self.SY = torch.zeros(size, size, dtype=torch.float64)  # SY[i, j] = s_i . y_j (ring slots)
        self.YY = torch.zeros(size, size, dtype=torch.float64)
        self.count = 0  # pairs stored so far (the newest is in slot (count - 1) % size)
        self.gamma = 1.0

    def __len__(self) -> int:
        return min(self.count, self.size)

    def push(self, s: torch.Tensor, y: torch.Tensor, ys: float) -> None:
        slot = self.count % self.size
        self.S[slot] = s
        self.Y[slot] = y
        s_dot_Y = (self.Y @ s).double()  # s . y_j for every slot (this slot's y included)
        S_dot_y = (self.S @ y).double()  # s_i . y
        Y_dot_y = (self.Y @ y).double()
        self.SY[slot, :] = s_dot_Y
        self.SY[:, slot] = S_dot_y
        self.YY[slot, :] = Y_dot_y
        self.YY[:, slot] = Y_dot_y
        self.count += 1
        self.gamma = ys / float(Y_dot_y[slot])

    def inverse_hessian_times(self, g: torch.Tensor) -> torch.Tensor:
        """H g, H the L-BFGS inverse-Hessian approximation from the stored pairs (g itself if none)."""
        m = len(self)
        if m == 0:
            return g.clone()
        # chronological order of the used slots
        order = (torch.arange(m) + (self.count - m)) % self.size
        gamma = self.gamma
        Sg = (self.S @ g).double()[order]
        Yg = (self.Y @ g).double()[order]
        SY = self.SY[order][:, order]
        R = torch.triu(SY)
        u = torch.linalg.solve_triangular(R, Sg[:, None], upper=True)  # R^-1 S^T g
        inner = (torch.diag(torch.diagonal(SY)) + gamma * self.YY[order][:, order]) @ u - gamma * Yg[:, None]
        a = torch.linalg.solve_triangular(R.T, inner, upper=False)[:, 0]
        b = -u[:, 0]
        coef_S = torch.zeros(self.size, dtype=torch.float64)
        coef_Y = torch.zeros(self.size, dtype=torch.float64)
        coef_S[order] = a
        coef_Y[order] = gamma * b
        return gamma * g + coef_S.to(g.dtype) @ self.S + coef_Y.to(g.dtype) @ self.Y


def minimize(objective: Objective, x0: torch.Tensor, max_iter: int, lr: float = 1.0, history_size: int = 50,
             tolerance_grad: float = 1e-12, tolerance_change: float = 1e-15, max_eval: Optional[int] = None) -> torch.Tensor:
    """Minimise ``objective`` (flat tensor -> (loss, flat gradient)) from ``x0`` by L-BFGS with a strong-Wolfe line
    search: the control flow of one ``torch.optim.LBFGS(lr, max_iter, max_eval, tolerance_grad, tolerance_change,
    history_size, line_search_fn="strong_wolfe").step`` call, except that a line search ending at a non-finite step
    or loss stops the minimisation at the last finite point, where torch's would continue from NaN parameters (in
    float32, labels of ~1e10 kT from an untrained flow make the loss ~1e19, whose changes along a step fall below
    the precision, and the cubic interpolation divides 0 by 0). Returns the final point (a new tensor)."""
    if max_eval is None:
        max_eval = max_iter * 5 // 4
    x = x0.detach().clone()
    loss, g = objective(x)
    evals = 1
    if float(g.abs().max()) <= tolerance_grad:
        return x
    history = CompactHistory(x.numel(), history_size, x.dtype)

    def along(x_base, step, direction):  # the line search's view of the objective
        return objective(x_base + step * direction)

    d = t = prev_g = None
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        if n_iter == 1:
            d = g.neg()
        else:
            y = g - prev_g
            s = d * t
            ys = float(y.dot(s))
            if ys > 1e-10:
                history.push(s, y, ys)
            d = history.inverse_hessian_times(g).neg_()
        prev_g = g
        prev_loss = loss
        t = min(1.0, 1.0 / float(g.abs().sum())) * lr if n_iter == 1 else lr
        gtd = g.dot(d)
        if gtd > -tolerance_change:
            break

        new_loss, new_g, t, ls_evals = _strong_wolfe(along, x, t, d, loss, g, gtd)
        t = float(t)
        evals += ls_evals
        if not (math.isfinite(t) and math.isfinite(new_loss)):
            break  # the line search broke down (a loss beyond the precision's resolution): keep the last finite point
        loss, g = new_loss, new_g
        x = x + t * d
        if n_iter == max_iter or evals >= max_eval:
            break
        if float(g.abs().max()) <= tolerance_grad:
            break
        if float((d * t).abs().max()) <= tolerance_change:
            break
        if abs(loss - prev_loss) < tolerance_change:
            break
    return x
