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
