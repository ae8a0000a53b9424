"""The compact-form L-BFGS equals the two-loop recursion and follows torch.optim.LBFGS step for step."""
import pytest
import torch

from openmm_cgflow.pmf.lbfgs import CompactHistory, minimize


def _two_loop(pairs, g):
    """Textbook two-loop recursion (Nocedal & Wright, Alg. 7.4), H0 = (s.y / y.y) I of the newest pair."""
    q = g.clone()
    alphas = []
    for s, y in reversed(pairs):
        alpha = s.dot(q) / y.dot(s)
        q -= alpha * y
        alphas.append(alpha)
    s, y = pairs[-1]
    r = q * (s.dot(y) / y.dot(y))
    for (s, y), alpha in zip(pairs, reversed(alphas)):
        beta = y.dot(r) / y.dot(s)
        r += s * (alpha - beta)
    return r


@pytest.mark.parametrize("n_pairs,size", [(1, 4), (4, 4), (11, 4)])
def test_compact_product_equals_two_loop_recursion(n_pairs, size):
    """Ring wrap-around included (11 pairs in 4 slots: only the newest 4 count)."""
    g = torch.Generator().manual_seed(n_pairs)
    n = 30
    A = torch.randn(n, n, generator=g, dtype=torch.float64)
    A = A @ A.T + n * torch.eye(n, dtype=torch.float64)  # SPD: every pair has s.y > 0
    history = CompactHistory(n, size, torch.float64)
    pairs = []
    for _ in range(n_pairs):
        s = torch.randn(n, generator=g, dtype=torch.float64)
        y = A @ s
        history.push(s, y, float(s.dot(y)))
        pairs.append((s, y))
    grad = torch.randn(n, generator=g, dtype=torch.float64)
    expected = _two_loop(pairs[-size:], grad)
    torch.testing.assert_close(history.inverse_hessian_times(grad), expected, rtol=1e-10, atol=1e-12)


def test_the_product_satisfies_the_newest_secant_equation():
    """H y_k = s_k for the newest pair, whatever the pairs before it."""
    g = torch.Generator().manual_seed(3)
    n = 8
    A = torch.randn(n, n, generator=g, dtype=torch.float64)
    A = A @ A.T + torch.eye(n, dtype=torch.float64)
    history = CompactHistory(n, 5, torch.float64)
    for _ in range(7):
        s = torch.randn(n, generator=g, dtype=torch.float64)
        history.push(s, A @ s, float(s @ A @ s))
    torch.testing.assert_close(history.inverse_hessian_times(A @ s), s, rtol=1e-9, atol=1e-10)


def _rosenbrock(x):
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


def _objective(f, log):
    def objective(x):
        x = x.detach().requires_grad_(True)
        value = f(x)
        (grad,) = torch.autograd.grad(value, x)
        log.append(float(value.detach()))
        return float(value.detach()), grad

    return objective


def _torch_lbfgs(f, x0, max_iter, history_size):
    x = x0.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([x], lr=1.0, max_iter=max_iter, history_size=history_size, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-12, tolerance_change=1e-15)
    log = []

    def closure():
        optimizer.zero_grad()
        value = f(x)
        value.backward()
        log.append(float(value))
        return value

    optimizer.step(closure)
    return x.detach(), log


@pytest.mark.parametrize("history_size", [3, 50])
def test_minimize_follows_torch_lbfgs_evaluation_by_evaluation(history_size):
    """Same step rule, line search and history update as torch.optim.LBFGS: on a 6-D Rosenbrock function the
    two make the same function evaluations (to 1e-6 relative: rounding grows) for the first 40, with and without
    history wrap-around, and both reach the minimum at (1, ..., 1)."""
    x0 = torch.tensor([-1.2, 1.0, -0.5, 0.8, 1.3, -0.7], dtype=torch.float64)
    ours_log = []
    ours = minimize(_objective(_rosenbrock, ours_log), x0, 200, history_size=history_size)
    theirs, theirs_log = _torch_lbfgs(_rosenbrock, x0, 200, history_size)
    torch.testing.assert_close(torch.tensor(ours_log[:40]), torch.tensor(theirs_log[:40]), rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(ours, torch.ones(6, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(theirs, torch.ones(6, dtype=torch.float64), atol=1e-6, rtol=0)


def test_minimize_stops_at_max_iter_and_at_a_zero_gradient():
    quadratic = lambda x: ((x - 2.0) ** 2).sum()  # noqa: E731
    log = []
    x = minimize(_objective(quadratic, log), torch.zeros(3, dtype=torch.float64), 1)
    assert len(log) >= 2 and not torch.allclose(x, torch.zeros(3, dtype=torch.float64))
    log = []
    x = minimize(_objective(quadratic, log), torch.full((3,), 2.0, dtype=torch.float64), 10)
    assert log == [0.0] and torch.equal(x, torch.full((3,), 2.0, dtype=torch.float64))


@pytest.mark.parametrize("weighted", [False, True])
def test_a_fit_to_astronomical_labels_ends_finite(weighted):
    """Labels of up to 2e10 kT (an untrained flow's first labels) make a float32 ensemble loss ~1e19, whose changes
    along a step fall below float32's resolution: torch's strong-Wolfe line search then returns a NaN step. The fit
    must stop at its last finite point instead of carrying NaN parameters into the PMF (seed 5 did, before)."""
    import numpy as np

    from openmm_cgflow.pmf.ensemble import PMFEnsemble

    for seed in range(6):
        rng = np.random.default_rng(seed)
        s = rng.uniform(-np.pi, np.pi, (63, 2))
        F = 500 + np.exp(rng.uniform(0, np.log(2e10), 63))
        ensemble = PMFEnsemble(2, 10, (64, 64), periodic=True)
        history = ensemble.fit(s, F, 20, 256, 1.0, "fraction", "xavier", torch.Generator().manual_seed(seed), "lbfgs", "float32", 10,
                               weights=np.ones(63) if weighted else None)
        mean, std = ensemble.predict(s)
        assert np.isfinite(mean).all() and np.isfinite(std).all() and np.isfinite(history).all()
