"""The exact MB PMF by quadrature against brute-force 2-D integration, and the forward KLD."""
import numpy as np
import pytest

from openmm_cgflow.scoring import forward_kld
from openmm_cgflow.systems.muller_brown import bin_centres, exact_pmf, reference_probabilities
from openmm_cgflow.systems.muller_brown import muller_brown_energy


def test_exact_pmf_matches_grid_integration():
    s = np.array([-2.0, -1.0, 0.0, 0.6])
    y = np.linspace(-1.0, 3.0, 40001)
    brute = np.array([-np.log(np.trapezoid(np.exp(-0.1 * muller_brown_energy(si + y, y)), y)) for si in s])
    np.testing.assert_allclose(exact_pmf(s), brute - brute.min(), atol=1e-6)


def test_global_minimum_is_the_upper_left_basin():
    centres = bin_centres()
    assert len(centres) == 100 and centres[0] == pytest.approx(-2.482) and centres[-1] == pytest.approx(1.082)
    assert abs(centres[np.argmin(exact_pmf(centres))] - (-2.0)) < 0.05


def test_forward_kld_properties():
    p = reference_probabilities()
    F = -np.log(p)
    assert forward_kld(p, F) == pytest.approx(0.0, abs=1e-14)
    assert forward_kld(p, F + 7.0) == pytest.approx(0.0, abs=1e-14)  # invariant to the PMF's offset
    assert forward_kld(p, F + 0.5 * np.sin(np.arange(100))) > 1e-3
    with pytest.raises(ValueError, match="bins"):
        forward_kld(p, F[:50])


def test_forward_kld_agrees_with_scipy_and_stays_finite_far_uphill():
    """The divergence is scipy's relative entropy of the two normalised distributions; a PMF that puts reference
    bins 2000 kT uphill (exp underflows to 0) gives a large finite number, not inf."""
    from scipy.stats import entropy

    p = reference_probabilities()
    F = -np.log(p) + 0.8 * np.cos(np.arange(100))
    q = np.exp(-(F - F.min()))
    assert forward_kld(p, F) == pytest.approx(entropy(p, q / q.sum()), rel=1e-12)
    steep = np.where(np.arange(100) < 50, 0.0, 2000.0)
    expected = np.sum(p * np.log(p)) + np.sum(p * steep) + np.log(50.0)   # ln q = -steep - ln 50 in closed form
    assert forward_kld(p, steep) == pytest.approx(expected, rel=1e-12)
