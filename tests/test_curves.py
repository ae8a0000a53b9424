"""benchmarks/curves.py, which every results table reads its curves with, on curves whose answers are known."""
import pytest


@pytest.fixture(scope="module")
def curves(benchmark_script):
    return benchmark_script("curves")


def test_kld_at_is_exact_on_a_power_law_and_none_outside(curves):
    costs = [1e3, 1e4, 1e5]
    klds = [2.0 * c ** -0.5 for c in costs]  # a power law is a straight line in log-log
    assert curves.kld_at(costs, klds, 3e4) == pytest.approx(2.0 * 3e4 ** -0.5, rel=1e-12)
    assert curves.kld_at(costs, klds, 1e3) == pytest.approx(klds[0]) and curves.kld_at(costs, klds, 1e5) == pytest.approx(klds[-1])
    assert curves.kld_at(costs, klds, 999.0) is None and curves.kld_at(costs, klds, 1.1e5) is None and curves.kld_at([], [], 1.0) is None


def test_first_reach_and_stays_below_differ_on_a_curve_that_dips(curves):
    costs = [100.0, 200.0, 400.0, 800.0, 1600.0]
    klds = [4e-3, 1e-3, 3e-3, 1.5e-3, 1e-3]  # below 2e-3 at 200, back above at 400, below for good from 800
    first = curves.first_reach(costs, klds, 2e-3)
    assert 100.0 < first < 200.0 and first == pytest.approx(100.0 * 2.0 ** 0.5, rel=1e-12)  # half way in log KLD
    assert curves.stays_below(costs, klds, 2e-3) == 800.0
    assert curves.first_reach(costs, klds, 5e-3) == 100.0 and curves.stays_below(costs, klds, 5e-3) == 100.0
    assert curves.first_reach(costs, klds, 5e-4) is None and curves.stays_below(costs, klds, 5e-4) is None
    assert curves.stays_below(costs, klds[:3], 2e-3) is None  # its last point is above
