"""The mean-force (force-matching) PMF estimator: exact answer on a 2-D CG space of a 7-D system whose forces are
noisy and whose PMF has an entropic part; generalized forces of alanine dipeptide equal finite differences of
OpenMM energies along the CG coordinates."""
import math

import numpy as np
import openmm
import pytest
import torch

from openmm_cgflow.scoring.grid import grid_centres
from openmm_cgflow.reference.mean_force import fit_mean_force, force_statistics, generalized_forces
from openmm_cgflow.reference.bases import basis, basis_derivative, tensor_bin_probabilities
from openmm_cgflow.reference.vfep import kld_between
from openmm_cgflow.systems import create_system

A = 15.0  # coupling of y to s_1: force noise ~A kT/rad, like alanine dipeptide's phi (17 kT/rad)


def potential(s):
    return 2.0 * np.cos(s[:, 0]) + 1.2 * np.sin(s[:, 1] + 0.3) + 0.8 * np.cos(s[:, 0] - s[:, 1])


def log_stiffness(s):
    return 0.6 * np.cos(s[:, 0]) + 0.4 * np.sin(s[:, 1])


def exact_free_energy(s):
    """U = V(s) + kappa(s)/2 |z|^2 (z in R^3) + (y - A sin s_1)^2 / 2: F = V + 3/2 ln kappa (+ const)."""
    return potential(s) + 1.5 * log_stiffness(s)


def sample(s, rng, entropic=True):
    """Exact conditional samples of (z, y) given s, and the generalized force dU/ds (kT/rad) of each."""
    kappa = np.exp(log_stiffness(s))
    z2 = (rng.standard_normal((len(s), 3)) ** 2).sum(1) / kappa
    y_minus = rng.standard_normal(len(s))  # y - A sin s_1
    h = 1e-6
    dV = np.stack([(potential(s + h * e) - potential(s - h * e)) / (2 * h) for e in np.eye(2)], -1)
    dlog_kappa = np.stack([-0.6 * np.sin(s[:, 0]), 0.4 * np.cos(s[:, 1])], -1)
    g = dV - np.stack([y_minus * A * np.cos(s[:, 0]), np.zeros(len(s))], -1)
    if entropic:
        g = g + 0.5 * kappa[:, None] * dlog_kappa * z2[:, None]
    return g


def exact_probabilities(n_bins=100):
    F = exact_free_energy(grid_centres(n_bins))
    p = np.exp(-(F - F.min()))
    return p / p.sum()


@pytest.mark.parametrize("coverage", ["uniform", "boltzmann"])
def test_mean_force_fit_recovers_an_exact_pmf_with_an_entropic_part(coverage):
    """From noisy forces (std ~10 kT/rad) at 240,000 independent points, uniform (umbrella-like) or
    Boltzmann-distributed (MD-like), the fit matches the exact F to KLD < 1.5e-3 (the error is statistical: 2.9e-3
    at 60,000 points, 1.4e-5 without the noise); forces without the entropic term give a PMF that is far off."""
    rng = np.random.default_rng(0)
    n = 240_000
    if coverage == "uniform":
        s = rng.uniform(-math.pi, math.pi, (n, 2))
    else:
        fine = grid_centres(200)
        p = np.exp(-exact_free_energy(fine))
        s = fine[rng.choice(len(fine), size=n, p=p / p.sum())] + rng.uniform(-math.pi / 200, math.pi / 200, (n, 2))
    g = sample(s, rng)
    assert g[:, 0].std() > 8.0
    c = fit_mean_force(*force_statistics(s, g, "fourier3"), dim=2)
    p_fit = tensor_bin_probabilities(c, "fourier3")
    p_exact = exact_probabilities()
    kld = kld_between(p_exact, p_fit.ravel())
    assert kld < 1.5e-3, kld
    g_energetic = sample(s, rng, entropic=False)
    c_wrong = fit_mean_force(*force_statistics(s, g_energetic, "fourier3"), dim=2)
    assert kld_between(p_exact, tensor_bin_probabilities(c_wrong, "fourier3").ravel()) > 1e-2


def test_force_statistics_add_over_runs_and_solve_the_least_squares_problem():
    """Statistics of parts add up to those of the whole, and the fit is the least-squares solution of
    grad F(s_n) = g_n built independently here (per-sample Kronecker products of basis values and slopes)."""
    rng = np.random.default_rng(1)
    s = rng.uniform(-math.pi, math.pi, (3000, 2))
    g = sample(s, rng)
    AtA, Atg, n = force_statistics(s, g, "bspline6", chunk=700)
    first, second = force_statistics(s[:1000], g[:1000], "bspline6"), force_statistics(s[1000:], g[1000:], "bspline6")
    np.testing.assert_allclose(first[0] + second[0], AtA, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(first[1] + second[1], Atg, rtol=1e-10, atol=1e-9)
    assert n == 3000
    c = fit_mean_force(AtA, Atg, n, dim=2, ridge=1e-12)
    b0, b1 = basis("bspline6", s[:, 0]), basis("bspline6", s[:, 1])
    d0, d1 = basis_derivative("bspline6", s[:, 0]), basis_derivative("bspline6", s[:, 1])
    rows = np.concatenate([np.einsum("na,nb->nab", d0, b1).reshape(len(s), -1), np.einsum("na,nb->nab", b0, d1).reshape(len(s), -1)])
    target = np.concatenate([g[:, 0], g[:, 1]])
    direct = np.linalg.lstsq(rows, target, rcond=None)[0]
    np.testing.assert_allclose(rows @ c.ravel(), rows @ direct, rtol=1e-6, atol=1e-6)  # same gradients (c up to a constant)


def test_generalized_forces_of_alanine_dipeptide_equal_finite_differences_of_openmm_energies():
    """g = d(beta U - ln J)/ds at fixed x_fg, from OpenMM forces rotated into the internal-coordinate frame, equals
    central differences of beta U along s of structures rebuilt from (s +- h, x_fg) (the Z-matrix Jacobian does
    not depend on the torsions s, which the log-det part checks)."""
    aldp = create_system("alanine-dipeptide")
    context = openmm.Context(aldp.system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    rng = np.random.default_rng(0)
    positions = aldp.positions[None] + 0.01 * rng.standard_normal((3, aldp.n_atoms, 3))
    positions = positions @ np.linalg.qr(rng.standard_normal((3, 3)))[0].T  # a rotated lab frame
    forces = []
    for x in positions:
        context.setPositions(x)
        forces.append(context.getState(getForces=True).getForces(asNumpy=True)._value)
    s, g = generalized_forces(aldp, positions, np.array(forces))
    assert s.shape == g.shape == (3, 2)

    def beta_energy(s_values, x_fg):
        rebuilt, log_det = aldp.to_cartesian(torch.as_tensor(s_values), x_fg)
        energies = []
        for x in rebuilt.detach().numpy():
            context.setPositions(x)
            energies.append(context.getState(getEnergy=True).getPotentialEnergy()._value / aldp.kT)
        return np.array(energies) - log_det.detach().numpy()

    x_fg = aldp.from_cartesian(torch.as_tensor(positions))[1]
    h = 1e-4
    for i in range(2):
        step = np.zeros(2)
        step[i] = h
        fd = (beta_energy(s + step, x_fg) - beta_energy(s - step, x_fg)) / (2 * h)
        np.testing.assert_allclose(g[:, i], fd, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match=r"must be \(B, 22, 3\)"):
        generalized_forces(aldp, positions[:, :5], np.array(forces)[:, :5])
