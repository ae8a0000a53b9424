"""benchmarks/pmf_averaging.py: the KLD of a PMF averaged over a run's latest fits (the window of
``ensemble.average_fraction``), on PMFs whose average is known."""
import numpy as np
import pytest

from openmm_cgflow.scoring import forward_kld


def test_averaging_cancels_noise_that_alternates_and_keeps_the_early_iterations(benchmark_script):
    averaging = benchmark_script("pmf_averaging")
    p_reference = np.full(6, 1 / 6)
    noise = np.array([0.3, -0.3, 0.2, -0.2, 0.1, -0.1])
    evaluations = [100, 200, 300, 400, 500]
    history = [{"mean": noise * (-1) ** k, "energy_evaluations": e} for k, e in enumerate(evaluations)]  # the exact F is flat
    one = averaging.averaged_klds(history, p_reference, 0.0)
    assert one == pytest.approx([forward_kld(p_reference, noise), forward_kld(p_reference, -noise)] * 2 + [forward_kld(p_reference, noise)])
    # 0.5: the fits at >= half the latest's evaluations: at 200 and 300 two fits of opposite noise (it cancels),
    # at 400 the fits at 200, 300, 400 (-, +, -), at 500 those at 300, 400, 500 (+, -, +)
    half = averaging.averaged_klds(history, p_reference, 0.5)
    assert half[0] == pytest.approx(one[0]) and half[1:3] == pytest.approx([0.0, 0.0], abs=1e-15)
    assert half[3:] == pytest.approx([forward_kld(p_reference, -noise / 3), forward_kld(p_reference, noise / 3)])
    # a small fraction keeps only the latest fit once iterations are a larger share than it
    assert averaging.averaged_klds(history, p_reference, 0.1) == pytest.approx(one)
