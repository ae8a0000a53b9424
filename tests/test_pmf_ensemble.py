"""The PMF ensemble fits a known function; its std grows away from the data; it scripts."""
import numpy as np
import pytest
import torch

from openmm_cgflow.pmf import PMFEnsemble


@pytest.mark.parametrize("strategy,init", [("bagging", "gaussian_uniform"), ("fraction", "xavier")])
def test_fits_known_function(strategy, init):
    s = np.linspace(-2.0, 1.0, 120)[:, None]
    F = 3 * np.sin(2 * s[:, 0]) + s[:, 0] ** 2
    ens = PMFEnsemble(1, n_members=5, hidden=(32, 32)).double()
    history = ens.fit(s, F, epochs=400, batch_size=32, lr=3e-3, strategy=strategy, init=init, generator=torch.Generator().manual_seed(0))
    assert history[-1] < history[0]
    grid = np.linspace(-1.9, 0.9, 50)[:, None]
    mean, std = ens.predict(grid)
    exact = 3 * np.sin(2 * grid[:, 0]) + grid[:, 0] ** 2
    assert np.sqrt(np.mean((mean - exact) ** 2)) < 0.15
    # uncertainty far outside the data is larger than inside
    _, std_out = ens.predict(np.array([[4.0]]))
    assert std_out[0] > 3 * np.median(std)


def test_periodic_inputs_are_periodic():
    ens = PMFEnsemble(2, n_members=3, hidden=(8,), periodic=True).double()
    ens.reset_parameters("xavier", torch.Generator().manual_seed(0))
    s = torch.tensor([[0.3, -1.0]], dtype=torch.float64)
    torch.testing.assert_close(ens(s), ens(s + 2 * np.pi))


def test_scripted_ensemble_matches(tmp_path):
    ens = PMFEnsemble(1, n_members=4, hidden=(8, 8)).double()
    ens.reset_parameters("gaussian_uniform", torch.Generator().manual_seed(1))
    scripted = torch.jit.script(ens)
    s = torch.linspace(-1, 1, 5, dtype=torch.float64)[:, None]
    torch.testing.assert_close(scripted.mean_std(s), ens.mean_std(s), rtol=0, atol=0)


def test_rejects_bad_labels():
    ens = PMFEnsemble(1, n_members=2, hidden=(4,)).double()
    with pytest.raises(ValueError, match="finite"):
        ens.fit(np.zeros((5, 1)), [0, 1, np.nan, 2, 3], 1, 2, 1e-3, "bagging", "xavier", torch.Generator())
    with pytest.raises(ValueError, match="strategy"):
        ens.fit(np.zeros((5, 1)), np.arange(5.0), 1, 2, 1e-3, "boost", "xavier", torch.Generator())


def _known_function_data():
    """150 CG points s (150, 1) on [-2, 1] and F(s) = 3 sin 2s + s^2 + 7 (kT) at them."""
    s = np.linspace(-2.0, 1.0, 150)[:, None]
    return s, 3 * np.sin(2 * s[:, 0]) + s[:, 0] ** 2 + 7.0


def _fit_lbfgs(precision, members=6, seed=0, groups=2):
    s, F = _known_function_data()
    ens = PMFEnsemble(1, n_members=members, hidden=(32, 32)).double()
    history = ens.fit(s, F, 150, 5, 1.0, "bagging", "gaussian_uniform", torch.Generator().manual_seed(seed), "lbfgs", precision,
                      groups)
    return ens, history


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_lbfgs_fits_a_known_function_in_either_precision(precision):
    ens, history = _fit_lbfgs(precision)
    assert history[-1] < 1e-2 * history[0]
    assert all(p.dtype == torch.float64 for p in ens.parameters()) and ens.input_mean.dtype == torch.float64
    grid = np.linspace(-1.9, 0.9, 60)[:, None]
    mean, _ = ens.predict(grid)
    exact = 3 * np.sin(2 * grid[:, 0]) + grid[:, 0] ** 2 + 7.0
    assert np.sqrt(np.mean((mean - exact) ** 2)) < 0.05


@pytest.mark.parametrize("groups", [2, 5])
def test_member_groups_on_a_spare_core_equal_groups_run_here(monkeypatch, groups):
    """The L-BFGS groups give bitwise the same ensemble whether the first half of them runs in the spare-core worker
    or all run here (2 groups of 3 members; 5 groups, 3 of them in the worker, of 2, 1, 1 / 1, 1 members)."""
    from openmm_cgflow.pmf import member_groups

    assert [list(g) for g in member_groups.split_members(10)] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert [list(g) for g in member_groups.split_members(3)] == [[0, 1], [2]]
    assert [len(g) for g in member_groups.split_members(6, 5)] == [1, 1, 2, 1, 1]
    sent = []
    monkeypatch.setattr(member_groups, "_spare_core", lambda: 0)
    worker = member_groups._spare_core_worker()
    monkeypatch.setattr(member_groups, "_spare_core_worker", lambda: (worker[0], _Recording(worker[1], sent)))
    worker_fit, _ = _fit_lbfgs("float64", groups=groups)
    assert [len(jobs) for _, jobs in sent] == [(groups + 1) // 2]  # the first half really went to the worker
    monkeypatch.setattr(member_groups, "_spare_core_worker", lambda: None)
    local_fit, _ = _fit_lbfgs("float64", groups=groups)
    for a, b in zip(worker_fit.state_dict().values(), local_fit.state_dict().values()):
        assert torch.equal(a, b)


class _Recording:
    """A worker connection that records what is sent through it."""

    def __init__(self, conn, sent):
        self.conn, self.sent = conn, sent

    def send(self, message):
        self.sent.append(message)
        self.conn.send(message)

    def __getattr__(self, name):
        return getattr(self.conn, name)


def test_one_lbfgs_per_member_fits_better_than_one_joint_lbfgs():
    """Members never interact, but one L-BFGS over all of them shares a line search and a curvature history: with
    the same iterations, one L-BFGS per member (groups = members) reaches a lower loss for every member."""
    joint, _ = _fit_lbfgs("float64", groups=1)
    separate, _ = _fit_lbfgs("float64", groups=6)
    s, F = (torch.from_numpy(a) for a in _known_function_data())
    with torch.no_grad():
        mse_joint = ((joint(s) - F[None]) ** 2).mean(1)
        mse_separate = ((separate(s) - F[None]) ** 2).mean(1)
    assert mse_separate.max() < mse_joint.min()  # 4e-5 against 1.8e-4 kT^2 here


def test_a_failed_worker_is_replaced_by_a_local_fit(monkeypatch):
    from openmm_cgflow.pmf import member_groups

    monkeypatch.setattr(member_groups, "_spare_core", lambda: None)
    expected, _ = _fit_lbfgs("float32")
    monkeypatch.setattr(member_groups, "_spare_core", lambda: 0)
    process, _ = member_groups._spare_core_worker()
    process.kill()
    process.wait()
    monkeypatch.setattr(member_groups, "_spare_core_worker", lambda: (process, member_groups._WORKER[1]))
    got, _ = _fit_lbfgs("float32")
    for a, b in zip(got.state_dict().values(), expected.state_dict().values()):
        assert torch.equal(a, b)


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        _fit_lbfgs("float16")


def test_warm_start_continues_the_previous_fit():
    """ensemble.warm_start: a later fit starts from the members it has (its first loss is the earlier fit's last, not
    a fresh initialisation's), keeps the first fit's standardisation and offset, and two short warm fits accumulate
    into a better fit than one short fit from scratch."""
    s = np.linspace(-2.0, 1.0, 200)[:, None]
    F = 3 * np.sin(4 * s[:, 0]) + s[:, 0] ** 2 + 7.0
    grid = np.linspace(-1.9, 0.9, 60)[:, None]
    exact = 3 * np.sin(4 * grid[:, 0]) + grid[:, 0] ** 2 + 7.0

    def rms(ens):
        return float(np.sqrt(np.mean((ens.predict(grid)[0] - exact) ** 2)))

    args = (5, 1.0, "fraction", "xavier")
    cold = PMFEnsemble(1, n_members=4, hidden=(32, 32)).double()
    cold_history = cold.fit(s, F, 40, *args, torch.Generator().manual_seed(0), "lbfgs")
    warm = PMFEnsemble(1, n_members=4, hidden=(32, 32)).double()
    warm.fit(s, F, 40, *args, torch.Generator().manual_seed(0), "lbfgs")
    np.testing.assert_array_equal(warm.predict(grid)[0], cold.predict(grid)[0])  # the first fit is the cold one
    mean, std, offset = warm.input_mean.clone(), warm.input_std.clone(), warm.output_offset.clone()
    # the second fit sees 40 more points (a cold fit would restandardise and re-centre on them)
    extra = np.linspace(-2.0, -0.5, 40)[:, None] + 0.004
    s2, F2 = np.concatenate([s, extra]), np.concatenate([F, 3 * np.sin(4 * extra[:, 0]) + extra[:, 0] ** 2 + 7.0])
    warm_history = warm.fit(s2, F2, 40, *args, torch.Generator().manual_seed(1), "lbfgs", warm_start=True)
    assert torch.equal(warm.input_mean, mean) and torch.equal(warm.input_std, std) and torch.equal(warm.output_offset, offset)
    assert warm_history[0] < 1.5 * cold_history[-1] < 0.5 * cold_history[0]  # started where the first fit ended
    assert rms(warm) < 0.7 * rms(cold)  # 40 + 40 accumulated iterations beat 40 from scratch


def test_a_row_of_weight_k_is_k_identical_rows():
    """Weighted fit rows (labels merged in cells): one member group's L-BFGS on 40 rows, every 4th of weight 3,
    follows the same path as on the 50 rows with those repeated (the same objective up to rounding); the ensemble's
    fit takes the weights for either optimizer and refuses weights that are not positive."""
    from openmm_cgflow.pmf import member_groups

    s = np.linspace(-2.0, 1.0, 40)[:, None]
    F = np.sin(2 * s[:, 0])
    weights = np.ones(40)
    weights[::4] = 3.0
    repeated = np.repeat(np.arange(40), weights.astype(int))
    ens = PMFEnsemble(1, n_members=2, hidden=(8,)).double()
    ens.reset_parameters("xavier", torch.Generator().manual_seed(0))
    params = {}
    for i, layer in enumerate(ens.layers):
        params[f"w{i}"], params[f"b{i}"] = layer.weight.detach().clone(), layer.bias.detach().clone()
    X = ens.features(torch.as_tensor(s))[None].expand(2, -1, -1)
    Y = torch.as_tensor(F)[None].expand(2, -1)
    offset = torch.tensor(0.0, dtype=torch.float64)
    W = torch.as_tensor(weights)[None].expand(2, -1)
    weighted, _ = member_groups.lbfgs_group(params, X, Y, offset, 2, 40, 1.0, W)
    plain, _ = member_groups.lbfgs_group(params, X[:, repeated], Y[:, repeated], offset, 2, 40, 1.0)
    for key in params:
        torch.testing.assert_close(weighted[key], plain[key], rtol=1e-6, atol=1e-8)
    assert not torch.equal(weighted["w0"], member_groups.lbfgs_group(params, X, Y, offset, 2, 40, 1.0)[0]["w0"])  # weights matter
    for optimizer in ("lbfgs", "adam"):
        fitted = PMFEnsemble(1, n_members=2, hidden=(8,)).double()
        fitted.fit(s, F, 30, 8, 1e-2 if optimizer == "adam" else 1.0, "bagging", "xavier", torch.Generator().manual_seed(0), optimizer,
                   lbfgs_groups=1, weights=weights)
        assert np.isfinite(fitted.predict(s)[0]).all()
    with pytest.raises(ValueError, match="finite positive"):
        fitted.fit(s, F, 30, 8, 1.0, "bagging", "xavier", torch.Generator().manual_seed(0), "lbfgs", weights=np.zeros(40))
