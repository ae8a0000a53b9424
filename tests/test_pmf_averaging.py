"""benchmarks/pmf_averaging.py: the KLD of a PMF averaged over a run's last iterations, on PMFs whose average is known."""
import numpy as np
import pytest

from openmm_cgflow.scoring import forward_kld


def test_averaging_cancels_noise_that_alternates_and_keeps_the_first_iterations(benchmark_script):
    averaging = benchmark_script("pmf_averaging")
    p_reference = np.full(6, 1 / 6)
    noise = np.array([0.3, -0.3, 0.2, -0.2, 0.1, -0.1])
    history = [{"mean": noise}, {"mean": -noise}, {"mean": noise}, {"mean": -noise}]  # the exact F is flat
    one = averaging.averaged_klds(history, p_reference, 1)
    assert one == pytest.approx([forward_kld(p_reference, noise), forward_kld(p_reference, -noise)] * 2)
    two = averaging.averaged_klds(history, p_reference, 2)
    assert two[0] == pytest.approx(one[0]) and two[1:] == pytest.approx([0.0, 0.0, 0.0], abs=1e-15)
    three = averaging.averaged_klds(history, p_reference, 3)
    assert three[2] == pytest.approx(forward_kld(p_reference, noise / 3))
