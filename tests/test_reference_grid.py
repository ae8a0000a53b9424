"""The 100x100 paper-frame grid: histogram, KLD of a PMF and of an MD histogram, reference files."""
import numpy as np
import pytest

from openmm_cgflow.scoring.grid import (
    grid_centres,
    histogram_counts,
    kld_of_histogram,
    load_reference,
    md_probabilities,
    save_reference,
)


def smooth_distribution(n=100):
    c = grid_centres(n)
    F = 2 * np.cos(c[:, 0]) + np.sin(c[:, 1]) + 0.5 * np.cos(c[:, 0] - c[:, 1])
    p = np.exp(-F)
    return (p / p.sum()).reshape(n, n), F


def test_histogram_bins_periodic_points():
    counts = histogram_counts(np.array([[-np.pi, -np.pi], [np.pi - 1e-9, 0.0], [np.pi, np.pi], [0.0, 0.0]]))
    assert counts.sum() == 4 and counts[0, 0] == 2 and counts[99, 50] == 1 and counts[50, 50] == 1


def test_reference_round_trip_and_kld_of_a_pmf(tmp_path):
    p, F = smooth_distribution()
    path = save_reference(tmp_path / "ref.npz", p, {"method": "analytic test"})
    ref = load_reference(path)
    assert ref.provenance["method"] == "analytic test"
    assert ref.kld(F) == pytest.approx(0.0, abs=1e-12)
    assert ref.kld(F.reshape(100, 100) + 3.0) == pytest.approx(0.0, abs=1e-12)
    assert ref.kld(F + 0.3 * np.random.default_rng(0).standard_normal(F.shape)) > 1e-2


def test_md_histogram_kld_falls_with_samples():
    p, _ = smooth_distribution()
    rng = np.random.default_rng(0)
    draws = rng.choice(p.size, size=2_000_000, p=p.ravel())
    klds = []
    for n in (10_000, 100_000, 2_000_000):
        counts = np.bincount(draws[:n], minlength=p.size).reshape(p.shape).astype(float)
        klds.append(kld_of_histogram(p, counts))
    assert klds[0] > klds[1] > klds[2]
    # for well-sampled histograms the KLD approaches (bins - 1) / (2 N)
    assert klds[2] == pytest.approx((p.size - 1) / (2 * 2_000_000), rel=0.3)
    assert (md_probabilities(np.zeros((100, 100))) > 0).all()


def test_reference_file_errors(tmp_path):
    p, _ = smooth_distribution(50)
    path = save_reference(tmp_path / "coarse.npz", p, {})
    with pytest.raises(ValueError, match="50x50 grid, expected 100x100"):
        load_reference(path)
    with pytest.raises(FileNotFoundError, match="reference file not found"):
        load_reference(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", something=np.zeros(3))
    with pytest.raises(ValueError, match="is not a reference file"):
        load_reference(tmp_path / "other.npz")


@pytest.mark.parametrize("dim", [1, 3])
def test_histograms_and_reference_files_of_one_and_three_dihedrals(tmp_path, dim):
    """1-D and 3-D grids (100 and 36 bins per dihedral): counts equal numpy's histogramdd, centres are in
    ravel order, and a reference file round-trips; a grid of another dimension is refused by name."""
    rng = np.random.default_rng(0)
    s = rng.uniform(-np.pi, np.pi, (5000, dim))
    counts = histogram_counts(s)
    n = {1: 100, 3: 36}[dim]
    expected, _ = np.histogramdd(s, bins=[np.linspace(-np.pi, np.pi, n + 1)] * dim)
    np.testing.assert_array_equal(counts, expected)
    centres = grid_centres(n, dim)
    assert centres.shape == (n**dim, dim)
    np.testing.assert_array_equal(histogram_counts(centres).ravel(), np.ones(n**dim))  # centre k lands in bin k
    p = md_probabilities(counts)
    save_reference(tmp_path / "ref.npz", p, {"method": "test"}, frame="iupac")
    ref = load_reference(tmp_path / "ref.npz", None, frame="iupac", dim=dim)
    np.testing.assert_array_equal(ref.probabilities, p)
    with pytest.raises(ValueError, match="expected 2 CG dihedral"):
        load_reference(tmp_path / "ref.npz", None, frame="iupac")
