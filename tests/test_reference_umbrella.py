"""Umbrella sampling + vFEP (the alanine-dipeptide reference PMF): the estimator recovers a known PMF from
exactly sampled biased windows, the restraint force is the periodic harmonic it claims to be, and runs resume."""
import math

import numpy as np
import openmm
import pytest
from scipy.interpolate import BSpline

from openmm_cgflow.coordinates.geometry import periodic_difference
from openmm_cgflow.reference.grid import load_reference
from openmm_cgflow.reference.umbrella import UmbrellaProtocol, load_run, restraint_forces, run_umbrella
from openmm_cgflow.reference.vfep import VariationalPMF, basin_check, bspline_basis, build_reference, kld_between, sufficient_statistics
from openmm_cgflow.systems import create_system
from openmm_cgflow.systems.alanine_dipeptide import phi_psi


def true_free_energy(phi, psi):
    """A smooth periodic test surface (kT) with two basins."""
    return 2.0 * np.cos(phi) + 1.5 * np.sin(psi + 0.3) + np.cos(phi - psi) + 0.5 * np.cos(2 * psi)


def sample_windows(centres, k, n, rng, grid=360):
    """Exact samples of exp(-F - w_k) for each window, by inverse-CDF sampling on a fine grid plus jitter."""
    g = -math.pi + (np.arange(grid) + 0.5) * 2 * math.pi / grid
    P, Q = np.meshgrid(g, g, indexing="ij")
    F = true_free_energy(P, Q)
    out = np.zeros((len(centres), n, 2))
    for i, (c_phi, c_psi) in enumerate(centres):
        logp = -F - 0.5 * k * (periodic_difference(P, c_phi) ** 2 + periodic_difference(Q, c_psi) ** 2)
        p = np.exp(logp - logp.max()).ravel()
        idx = rng.choice(p.size, size=n, p=p / p.sum())
        jitter = (rng.random((n, 2)) - 0.5) * 2 * math.pi / grid
        out[i] = periodic_difference(np.stack([g[idx // grid], g[idx % grid]], -1) + jitter)
    return out


def test_bspline_basis_matches_scipy_and_is_a_partition_of_unity():
    m = 12
    x = np.linspace(-math.pi, math.pi, 301)
    B = bspline_basis(x, m)
    assert np.allclose(B.sum(1), 1.0, atol=1e-12) and (B >= 0).all()
    h = 2 * math.pi / m
    reference = BSpline.basis_element(np.array([-2, -1, 0, 1, 2]) * h, extrapolate=False)  # centred cubic B-spline
    j = 5
    centre = -math.pi + j * h
    expected = np.nan_to_num(reference(periodic_difference(x, centre)))
    assert np.allclose(B[:, j], expected, atol=1e-12)


def test_vfep_recovers_a_known_pmf_from_exact_umbrella_samples():
    rng = np.random.default_rng(0)
    protocol = UmbrellaProtocol(windows_per_dim=10, force_constant=8.0)
    centres = protocol.centres()
    samples = sample_windows(centres, protocol.force_constant, 1500, rng)
    model = VariationalPMF(centres, protocol.force_constant, "bspline16")
    c = model.fit(*sufficient_statistics(samples, "bspline16"))
    g = -math.pi + (np.arange(90) + 0.5) * 2 * math.pi / 90
    F = model.free_energy(c, g, g)
    F_true = true_free_energy(*np.meshgrid(g, g, indexing="ij"))
    F_true -= F_true.min()
    w = np.exp(-F_true) / np.exp(-F_true).sum()
    error = F - F_true
    rms = math.sqrt(np.sum(w * (error - np.sum(w * error)) ** 2))
    assert rms < 0.05, rms  # statistical limit ~ sqrt(basis size / samples) = sqrt(256 / 150,000) = 0.04
    p_fit, p_true = np.exp(-F) / np.exp(-F).sum(), w
    assert kld_between(p_true, p_fit) < 2e-3


def test_restraint_is_a_periodic_harmonic_on_the_iupac_dihedrals():
    aldp = create_system("alanine-dipeptide")
    k = 100.0
    system = openmm.System()
    for _ in range(aldp.system.getNumParticles()):
        system.addParticle(1.0)
    for force in restraint_forces(k):
        system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(aldp.positions)
    angles = phi_psi(aldp.positions[None])[0]
    for centre in ([0.0, 0.0], [math.pi - 0.1, -math.pi + 0.2], [angles[0] + 3.0, angles[1] - 3.0]):
        context.setParameter("umbrella_phi0", centre[0])
        context.setParameter("umbrella_psi0", centre[1])
        energy = context.getState(getEnergy=True).getPotentialEnergy()._value
        d = periodic_difference(angles, np.array(centre))
        assert energy == pytest.approx(0.5 * k * np.sum(d**2), rel=1e-9)


def test_umbrella_run_resumes_and_builds_a_valid_reference(tmp_path):
    protocol = UmbrellaProtocol(windows_per_dim=3, equilibration_steps=50, steps_per_pass=100)
    run_umbrella(tmp_path, [1, 2], 1, protocol, progress=False)
    with pytest.raises(ValueError, match="--resume"):
        run_umbrella(tmp_path, [1, 2], 2, protocol, progress=False)
    with pytest.raises(ValueError, match="another protocol"):
        run_umbrella(tmp_path, [1, 2], 2, UmbrellaProtocol(windows_per_dim=4), resume=True, progress=False)
    run_umbrella(tmp_path, [1, 2], 2, protocol, resume=True, progress=False)
    run = load_run(tmp_path, 1)
    assert len(run["samples"]) == 2 and run["samples"][0].shape == (9, 10, 2)
    assert np.isfinite(run["samples"][1]).all()
    report = build_reference(tmp_path, [1, 2], tmp_path / "ref.npz", command="test", bases=("bspline6", "fourier2"), curve_points=2)
    reference = load_reference(tmp_path / "ref.npz")
    assert reference.provenance["basis"] in ("bspline6", "fourier2")
    assert reference.provenance["md_steps"] == report["md_steps"] == 2 * (9 * 50 + 2 * 9 * 100)
    assert report["curve"][-1]["passes"] == 2 and report["kld_between_halves"] >= 0


def test_basin_check_finds_minima_of_a_surface():
    g = -math.pi + (np.arange(120) + 0.5) * 2 * math.pi / 120
    P, Q = np.meshgrid(g, g, indexing="ij")
    target = np.radians([-70.0, -40.0])
    F = 5 - 5 * np.exp(-(periodic_difference(P, target[0]) ** 2 + periodic_difference(Q, target[1]) ** 2) / 0.1)
    result = basin_check(F, g)
    assert result["alphaR"]["found"] and not result["C7ax"]["found"]
