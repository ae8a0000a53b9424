"""The scoring of benchmarks/aldp_efficiency.py (steps to a KLD, speedups, lower bounds, baselines' convergence
laws) on curves whose answers are known in closed form."""
import math

import numpy as np
import pytest


@pytest.fixture(scope="module")
def efficiency(benchmark_script):
    return benchmark_script("aldp_efficiency")


def law_curve(a, b, steps):
    return [{"md_steps": float(s), "forward_kld": a * s ** -b} for s in steps]


def test_steps_to_reach_interpolates_log_log_and_is_exact_on_a_power_law(efficiency):
    curve = law_curve(8e4, 1.0, [1e6, 1e7, 1e8])
    assert efficiency.steps_to_reach(curve, 8e-4) == pytest.approx(1e8 / 1.0, rel=1e-12)
    assert efficiency.steps_to_reach(curve, 2e-3) == pytest.approx(4e7, rel=1e-12)  # between snapshots 2 and 3
    assert efficiency.steps_to_reach(curve, 1.0) == 1e6  # already there at the first snapshot
    assert efficiency.steps_to_reach(curve, 1e-4) is None


def test_versus_baseline_gives_a_speedup_or_a_lower_bound(efficiency):
    curve = law_curve(8e4, 1.0, [1e6, 1e7, 1e8])
    reached = efficiency.versus_baseline(curve, 2e-3, 1e6)
    assert reached["speedup"] == pytest.approx(40.0) and reached["speedup_lower_bound"] is None
    missed = efficiency.versus_baseline(curve, 1e-4, 1e6)
    assert missed["speedup"] is None and missed["speedup_lower_bound"] == pytest.approx(100.0)


def test_convergence_law_recovers_a_power_law_and_its_scatter(efficiency):
    steps = np.geomspace(1e6, 1e8, 11)
    law = efficiency.convergence_law(law_curve(3e3, 0.93, steps), from_steps=5e6)
    assert law["b"] == pytest.approx(0.93, rel=1e-10) and law["a"] == pytest.approx(3e3, rel=1e-8)
    assert law["b_standard_error"] < 1e-10 and law["from_steps"] >= 5e6 and law["n_snapshots"] == sum(steps >= 5e6)
    assert efficiency.law_steps(law, 1e-3) == pytest.approx((3e3 / 1e-3) ** (1 / 0.93), rel=1e-8)
    noisy = [dict(r, forward_kld=r["forward_kld"] * math.exp(0.2 * (-1) ** i)) for i, r in enumerate(law_curve(3e3, 0.93, steps))]
    scattered = efficiency.convergence_law(noisy, from_steps=1e6)
    assert 0.7 < scattered["b"] < 1.2 and scattered["b_standard_error"] > 0.01
    assert efficiency.convergence_law(law_curve(3e3, 0.93, steps), from_steps=4e7) is None  # 2 snapshots: no law
    assert efficiency.convergence_law(law_curve(3e3, 0.93, steps), from_steps=2e7) is None  # 4 snapshots over 4x: no law
    assert efficiency.convergence_law(law_curve(3e3, 0.93, steps), from_steps=2e7, min_span=3.0)["b"] == pytest.approx(0.93)
    assert efficiency.law_steps({"a": 1.0, "b": -0.1}, 1e-3) is None  # a KLD that grows never gets there


def test_cost_to_target_extrapolates_only_a_baseline_that_has_not_reached_it(efficiency):
    baselines = {"short MD": law_curve(8e4, 1.0, np.geomspace(1e6, 5e7, 10)), "long MD": law_curve(8e4, 1.0, np.geomspace(1e6, 2e8, 12)),
                 "too short to extrapolate": law_curve(8e4, 1.0, np.geomspace(1e6, 3e7, 10))}
    run = {"curve": [{"iteration": 1, "energy_evaluations": 1e6, "forward_kld": 5e-3},
                     {"iteration": 2, "energy_evaluations": 2e6, "forward_kld": 1e-3},
                     {"iteration": 3, "energy_evaluations": 3e6, "forward_kld": 9e-4}]}
    summary = efficiency.cost_to_target({"AL": run}, baselines, 1e-3, law_from=3e6)
    assert summary["per_run"]["AL"]["evaluations"] == pytest.approx(2e6)
    short, long_ = summary["per_run"]["AL"]["versus"]["short MD"], summary["per_run"]["AL"]["versus"]["long MD"]
    assert short["speedup"] is None and short["speedup_lower_bound"] == pytest.approx(25.0, rel=1e-6)
    assert short["speedup_by_law"] == pytest.approx(40.0, rel=1e-6)  # 8e7 steps by the law
    assert long_["speedup"] == pytest.approx(40.0, rel=1e-6) and long_["speedup_by_law"] is None
    assert summary["baseline_steps_by_law"] == {"short MD": pytest.approx(8e7, rel=1e-6), "long MD": None, "too short to extrapolate": None}
    assert summary["per_run"]["AL"]["versus"]["too short to extrapolate"]["speedup_lower_bound"] == pytest.approx(15.0, rel=1e-6)
