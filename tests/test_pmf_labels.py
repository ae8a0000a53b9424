"""Free-energy labels by log-mean-exp on cases with a known answer."""
import numpy as np
import pytest

from openmm_cgflow.pmf import free_energy_labels


def test_gaussian_importance_sampling_recovers_log_partition_function():
    # proposal q = N(0, 1); target p~(x) = Z * N(x; mu, sigma^2) -> F = -ln Z exactly
    rng = np.random.default_rng(0)
    n, mus, sigma = 200_000, np.array([0.0, 0.3, -0.2]), 1.1
    log_Z = np.array([0.0, 2.5, -1.0])
    x = rng.standard_normal((3, n))
    log_q = -0.5 * x**2 - 0.5 * np.log(2 * np.pi)
    log_p = log_Z[:, None] - 0.5 * ((x - mus[:, None]) / sigma) ** 2 - 0.5 * np.log(2 * np.pi * sigma**2)
    groups, F = free_energy_labels((log_p - log_q).ravel(), np.repeat(np.arange(3), n))
    np.testing.assert_array_equal(groups, [0, 1, 2])
    np.testing.assert_allclose(F, -log_Z, atol=0.01)


def test_mean_not_sum_and_nan_ignored():
    # two groups with identical weights but different sizes (one lost samples to NaN) get equal labels
    log_w = np.array([1.0, 2.0, 3.0, 1.0, 2.0, 3.0, np.nan, np.nan])
    group = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    groups, F = free_energy_labels(log_w, group)
    expected = -np.log(np.mean(np.exp([1.0, 2.0, 3.0])))
    np.testing.assert_allclose(F, [expected, expected], rtol=1e-12)


def test_weight_clipping_sets_top_k_to_kth_largest():
    log_w = np.log(np.array([1.0, 2.0, 3.0, 4.0, 100.0]))
    _, F = free_energy_labels(log_w, np.zeros(5, dtype=int), clip_k=3)
    np.testing.assert_allclose(F, [-np.log(np.mean([1.0, 2.0, 3.0, 3.0, 3.0]))], rtol=1e-12)
    # groups smaller than k are not clipped
    _, F2 = free_energy_labels(np.log([1.0, 5.0]), np.zeros(2, dtype=int), clip_k=3)
    np.testing.assert_allclose(F2, [-np.log(3.0)], rtol=1e-12)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        free_energy_labels(np.zeros(3), np.zeros(4))


def test_accumulated_labels_equal_labels_of_all_samples():
    # every sample a point ever received, merged batch by batch into (count, top-k, rest), gives exactly the
    # log-mean-exp labels (with the same clipping) of the concatenated samples
    from openmm_cgflow.active_learning.dataset import ActiveLearningDataset

    rng = np.random.default_rng(0)
    for clip_k in (0, 3):
        dataset = ActiveLearningDataset(2, top_k=clip_k)
        dataset.add_points(rng.normal(size=(7, 2)), 0, rng, 0.8, 5)
        points, values = [], []
        for _ in range(6):
            entries = rng.choice(dataset.n_entries, size=17, replace=False)
            log_w = 3 * rng.normal(size=17)
            log_w[rng.random(17) < 0.1] = np.nan
            dataset.record(entries, log_w)
            points.append(dataset.entry_point[entries])
            values.append(log_w)
        points, values = np.concatenate(points), np.concatenate(values)
        train = dataset.point_train[points]
        expected_groups, expected = free_energy_labels(values[train], points[train], clip_k)
        groups, labels, counts = dataset.accumulated_labels(clip_k)
        np.testing.assert_array_equal(groups, expected_groups)
        np.testing.assert_allclose(labels, expected, atol=1e-12)
        assert counts.sum() == np.isfinite(values[train]).sum()
        restored = ActiveLearningDataset.from_state_dict(dataset.state_dict())
        np.testing.assert_allclose(restored.accumulated_labels(clip_k)[1], labels, atol=0)
        restored.record(np.arange(10), np.full(10, 50.0), accumulate=False)  # stored per entry, not accumulated
        np.testing.assert_allclose(restored.accumulated_labels(clip_k)[1], labels, atol=0)
        # Kish's ESS of the accumulated (clipped) weights equals that of the concatenated samples, clipped alike
        ess_points, ess = dataset.accumulated_effective_samples(clip_k)
        np.testing.assert_array_equal(ess_points, expected_groups)
        for point, value in zip(ess_points, ess):
            w = np.sort(values[train & (points == point) & np.isfinite(values)])[::-1]
            if clip_k > 1 and len(w) >= clip_k:
                w[:clip_k] = w[clip_k - 1]
            w = np.exp(w - w[0])
            np.testing.assert_allclose(value, w.sum() ** 2 / (w**2).sum(), rtol=1e-12)
        assert np.all((ess >= 1 - 1e-12) & (ess <= counts + 1e-9))
        np.testing.assert_allclose(restored.accumulated_effective_samples(clip_k)[1], ess, rtol=0)
        # a checkpoint from before squared weights were kept: its points' ESS is unknown (NaN), labels unchanged
        old = dataset.state_dict()
        del old["point_rest_log_w2"]
        legacy = ActiveLearningDataset.from_state_dict(old)
        assert np.isnan(legacy.accumulated_effective_samples(clip_k)[1]).all()
        np.testing.assert_allclose(legacy.accumulated_labels(clip_k)[1], labels, atol=0)


def test_labels_merged_in_cells():
    """merge_in_cells: every label lands in exactly one row, rows sit at their points' mean position with their mean
    label and count as weight; a weighted fit of a smooth F to the rows has the pointwise one's minimum up to the
    variation of F inside a cell; periodic cells tile [-pi, pi) and never straddle the boundary."""
    from openmm_cgflow.pmf import merge_in_cells

    rng = np.random.default_rng(0)
    s = rng.uniform(-np.pi, np.pi, (5000, 2))
    F = np.cos(s[:, 0]) + 0.5 * np.sin(2 * s[:, 1])
    rows, labels, weights = merge_in_cells(s, F, 2 * np.pi / 16, periodic=True)
    assert weights.sum() == len(F) and len(rows) <= 16 * 16 and (weights >= 1).all()
    assert abs((weights * labels).sum() - F.sum()) < 1e-9  # the labels' sum is kept
    # the row label is the mean of its points' labels, so it differs from F at the mean position by O(width^2)
    assert np.abs(labels - (np.cos(rows[:, 0]) + 0.5 * np.sin(2 * rows[:, 1]))).max() < 0.05
    edge = np.array([[-np.pi, 0.0], [np.pi - 1e-9, 0.0]])
    r, _, w = merge_in_cells(edge, np.zeros(2), 2 * np.pi / 16, periodic=True)
    assert len(r) == 2  # the two ends of the circle are different cells (no cell wraps around)
    linear, _, w = merge_in_cells(np.array([[0.01], [0.09], [0.11]]), np.array([1.0, 2.0, 3.0]), 0.1, periodic=False)
    np.testing.assert_allclose(linear[:, 0], [0.05, 0.11]) and np.testing.assert_allclose(w, [2, 1])
    with pytest.raises(ValueError, match="> 0"):
        merge_in_cells(s, F, 0.0, periodic=True)
