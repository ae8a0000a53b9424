"""Umbrella sampling + vFEP (the reference PMF of any system with two CG dihedrals): the estimator recovers a known
PMF from exactly sampled biased windows, in any CG frame (sign, offset); the restraint force is the periodic
harmonic it claims to be; runs resume; a molecule from YAML gets its own reference through the CLI."""
import json
import math

import numpy as np
import openmm
import pytest
from scipy.interpolate import BSpline

from openmm_cgflow.coordinates.geometry import periodic_difference
from openmm_cgflow.scoring.grid import grid_centres, load_reference
from openmm_cgflow.reference.umbrella import UmbrellaProtocol, load_run, run_umbrella
from openmm_cgflow.reference.umbrella_reference import build_reference
from openmm_cgflow.reference.bases import bspline_basis
from openmm_cgflow.reference.vfep import VariationalPMF, basin_check, kld_between, sufficient_statistics
from openmm_cgflow.systems import create_system
from openmm_cgflow.systems.alanine_dipeptide import LITERATURE_BASINS_DEG, from_paper_frame, phi_psi, to_paper_frame
from openmm_cgflow.systems.cg_definition import CGDefinition, DihedralCV


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

    # the reference in a CG frame s_k = wrap(sign_k theta_k - offset_k): its bins hold exp(-F(theta(s)))
    frame = CGDefinition((DihedralCV("a", (0, 1, 2, 3), -1.0, 0.5), DihedralCV("b", (1, 2, 3, 4), 1.0, -1.0)), {"kind": "none"}, 5)
    p_frame = model.bin_probabilities(c, frame, n_bins=40)
    s = grid_centres(40)
    theta = periodic_difference(np.array([-1.0, 1.0]) * (s + np.array([0.5, -1.0])))
    F_frame = true_free_energy(theta[:, 0], theta[:, 1])
    p_exact = np.exp(-(F_frame - F_frame.min()))
    assert kld_between(p_exact / p_exact.sum(), p_frame) < 2e-3
    # ... and a frame that is not the system's is far off
    assert kld_between(p_exact / p_exact.sum(), model.bin_probabilities(c, CGDefinition(tuple(DihedralCV(n, a) for n, a in (("a", (0, 1, 2, 3)), ("b", (1, 2, 3, 4)))), {"kind": "none"}, 5), n_bins=40)) > 0.1


def true_free_energy_nd(theta):
    """Smooth periodic test surfaces (kT) in 1-D and 3-D, within order 2 of a Fourier basis."""
    if theta.shape[-1] == 1:
        return 2.0 * np.cos(theta[..., 0]) + 0.7 * np.sin(2 * theta[..., 0] + 0.4)
    a, b, c = theta[..., 0], theta[..., 1], theta[..., 2]
    return 1.5 * np.cos(a) + np.sin(b + 0.3) + 0.8 * np.cos(a - c) + 0.5 * np.cos(b) * np.cos(c) + 0.4 * np.sin(2 * c)


def sample_windows_nd(centres, k, n, rng, grid):
    """Exact samples of exp(-F - w_k) of :func:`true_free_energy_nd` per window (inverse CDF on a grid + jitter)."""
    dim = centres.shape[1]
    g = -math.pi + (np.arange(grid) + 0.5) * 2 * math.pi / grid
    points = np.stack([a.ravel() for a in np.meshgrid(*([g] * dim), indexing="ij")], axis=-1)
    F = true_free_energy_nd(points)
    out = np.zeros((len(centres), n, dim))
    for i, centre in enumerate(centres):
        logp = -F - 0.5 * k * np.sum(periodic_difference(points, centre) ** 2, axis=-1)
        p = np.exp(logp - logp.max())
        idx = rng.choice(len(p), size=n, p=p / p.sum())
        out[i] = periodic_difference(points[idx] + (rng.random((n, dim)) - 0.5) * 2 * math.pi / grid)
    return out


@pytest.mark.parametrize("dim, windows, k, n, basis_name, grid", [(1, 12, 8.0, 2000, "fourier3", 720), (3, 5, 3.0, 400, "fourier2", 40)])
def test_vfep_recovers_known_1d_and_3d_pmfs_from_exact_umbrella_samples(dim, windows, k, n, basis_name, grid):
    """The same estimator in one and three CG dihedrals: bin probabilities of the fit, on the default grid of
    each dimension (100 bins; 36^3), match the exact surface in a sign/offset CG frame; the unshifted frame does
    not."""
    rng = np.random.default_rng(1)
    protocol = UmbrellaProtocol(windows_per_dim=windows, force_constant=k)
    centres = protocol.centres(dim)
    samples = sample_windows_nd(centres, k, n, rng, grid)
    model = VariationalPMF(centres, k, basis_name)
    c = model.fit(*sufficient_statistics(samples, basis_name))
    assert tuple(c.shape) == ((7,) if dim == 1 else (5,) * dim)
    signs, offsets = np.array([-1.0, 1.0, 1.0])[:dim], np.array([0.5, -1.0, 2.0])[:dim]
    frame = CGDefinition(tuple(DihedralCV(f"d{i}", (i, i + 1, i + 2, i + 3), signs[i], offsets[i]) for i in range(dim)), {"kind": "none"}, dim + 3)
    p_fit = model.bin_probabilities(c, frame)
    n_bins = {1: 100, 3: 36}[dim]
    assert p_fit.shape == (n_bins,) * dim
    s = grid_centres(n_bins, dim)
    F_exact = true_free_energy_nd(periodic_difference(signs * (s + offsets)))
    p_exact = np.exp(-(F_exact - F_exact.min()))
    p_exact /= p_exact.sum()
    kld = kld_between(p_exact, p_fit.ravel())
    assert kld < 3e-3, kld
    plain = CGDefinition(tuple(DihedralCV(f"d{i}", (i, i + 1, i + 2, i + 3)) for i in range(dim)), {"kind": "none"}, dim + 3)
    assert kld_between(p_exact, model.bin_probabilities(c, plain).ravel()) > 0.1


def test_restraint_is_a_periodic_harmonic_on_the_iupac_dihedrals():
    """A window at IUPAC centre c is the CG definition's restraint at s = from_dihedrals(c) (the paper frame here:
    sign -1, offsets): its energy is 0.5 k sum d(theta - c)^2 on the IUPAC dihedrals."""
    aldp = create_system("alanine-dipeptide")
    definition = aldp.cg_definition
    k = 100.0
    system = openmm.System()
    for _ in range(aldp.system.getNumParticles()):
        system.addParticle(1.0)
    for force in definition.restraint_forces(k):
        system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(aldp.positions)
    angles = phi_psi(aldp.positions[None])[0]
    for centre in ([0.0, 0.0], [math.pi - 0.1, -math.pi + 0.2], [angles[0] + 3.0, angles[1] - 3.0]):
        for parameter, value in zip(definition.target_parameters(), definition.from_dihedrals(np.array([centre]))[0]):
            context.setParameter(parameter, value)
        energy = context.getState(getEnergy=True).getPotentialEnergy()._value
        d = periodic_difference(angles, np.array(centre))
        assert energy == pytest.approx(0.5 * k * np.sum(d**2), rel=1e-9)


def test_cg_frame_maps_are_inverse_and_match_the_paper_frame():
    definition = create_system("alanine-dipeptide").cg_definition
    theta = np.random.default_rng(0).uniform(-math.pi, math.pi, (1000, 2))
    np.testing.assert_allclose(periodic_difference(definition.to_dihedrals(definition.from_dihedrals(theta)), theta), 0.0, atol=1e-12)
    s = np.random.default_rng(1).uniform(-math.pi, math.pi, (1000, 2))
    np.testing.assert_array_equal(definition.to_dihedrals(s), from_paper_frame(s))  # the map the shipped reference used
    np.testing.assert_allclose(periodic_difference(definition.from_dihedrals(theta), to_paper_frame(theta)), 0.0, atol=1e-12)


def test_umbrella_run_resumes_and_builds_a_valid_reference(tmp_path):
    aldp = create_system("alanine-dipeptide")
    protocol = UmbrellaProtocol(windows_per_dim=3, equilibration_steps=50, steps_per_pass=100)
    run_umbrella(tmp_path, [1, 2], 1, protocol, aldp, progress=False)
    with pytest.raises(ValueError, match="resume=True"):
        run_umbrella(tmp_path, [1, 2], 2, protocol, aldp, progress=False)
    with pytest.raises(ValueError, match="another protocol"):
        run_umbrella(tmp_path, [1, 2], 2, UmbrellaProtocol(windows_per_dim=4), aldp, resume=True, progress=False)
    run_umbrella(tmp_path, [1, 2], 2, protocol, aldp, resume=True, progress=False)
    run = load_run(tmp_path, 1)
    uninterrupted = tmp_path / "uninterrupted"
    run_umbrella(uninterrupted, [1, 2], 2, protocol, aldp, progress=False)
    for seed in (1, 2):  # the resumed second pass is the uninterrupted one, bit for bit (positions, velocities, noise)
        a, b = load_run(tmp_path, seed), load_run(uninterrupted, seed)
        for k in range(2):
            np.testing.assert_array_equal(a["samples"][k], b["samples"][k])
            np.testing.assert_array_equal(a["forces"][k], b["forces"][k])
    assert len(run["samples"]) == 2 and run["samples"][0].shape == (9, 10, 2)
    assert np.isfinite(run["samples"][1]).all()
    assert run["forces"][1].shape == (9, 10, 2) and np.isfinite(run["forces"][1]).all()
    report = build_reference(tmp_path, [1, 2], tmp_path / "ref.npz", aldp, command="test", bases=("bspline6", "fourier2"), curve_points=2)
    assert report["estimator"] == "mean-force"  # auto: every pass has forces
    vfep = build_reference(tmp_path, [1, 2], tmp_path / "ref_vfep.npz", aldp, bases=("fourier2",), curve_points=2, estimator="vfep")
    assert vfep["provenance"]["estimator"] == "vfep" and "cross_validation_nll_per_sample" in vfep["provenance"]
    reference = load_reference(tmp_path / "ref.npz")  # the paper frame, the built-in dipeptide's
    assert reference.provenance["basis"] in ("bspline6", "fourier2") and set(reference.provenance["basins"]) == set(LITERATURE_BASINS_DEG)
    assert reference.provenance["md_steps"] == report["md_steps"] == 2 * (9 * 50 + 2 * 9 * 100)
    assert report["curve"][-1]["passes"] == 2 and report["kld_between_halves"] >= 0


def test_a_pass_interrupted_mid_way_resumes_at_its_next_window_bitwise(tmp_path, monkeypatch):
    """A job lost in the middle of a pass loses only the window it was running: the pass resumes from its saved
    windows (and random state) and is bitwise the uninterrupted pass."""
    from openmm_cgflow.reference.umbrella import UmbrellaRun

    aldp = create_system("alanine-dipeptide")
    protocol = UmbrellaProtocol(windows_per_dim=3, equilibration_steps=50, steps_per_pass=100)
    run_umbrella(tmp_path / "whole", [1], 1, protocol, aldp, progress=False)
    original, calls = UmbrellaRun.unbiased_forces, []

    def lost_after_four_windows(self, *args):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt("node lost")
        return original(self, *args)

    monkeypatch.setattr(UmbrellaRun, "unbiased_forces", lost_after_four_windows)
    with pytest.raises(KeyboardInterrupt):
        run_umbrella(tmp_path / "cut", [1], 1, protocol, aldp, progress=False)
    monkeypatch.setattr(UmbrellaRun, "unbiased_forces", original)
    partial = np.load(tmp_path / "cut" / "seed1" / "pass_partial.npz")
    assert int(partial["windows_done"]) == 4 and not (tmp_path / "cut" / "seed1" / "pass_001.npz").exists()
    run_umbrella(tmp_path / "cut", [1], 1, protocol, aldp, resume=True, progress=False)
    a, b = load_run(tmp_path / "whole", 1), load_run(tmp_path / "cut", 1)
    np.testing.assert_array_equal(a["samples"][0], b["samples"][0])
    np.testing.assert_array_equal(a["forces"][0], b["forces"][0])
    assert not (tmp_path / "cut" / "seed1" / "pass_partial.npz").exists()
    summaries = [json.loads((tmp_path / d / "umbrella.json").read_text())["runs"][0]["md_steps"] for d in ("whole", "cut")]
    assert summaries[0] == summaries[1]


def test_umbrella_forces_are_the_unbiased_generalized_forces_on_the_iupac_dihedrals(tmp_path):
    """What a window stores as its force equals d(beta U - ln J)/d theta of the unbiased System at the same
    frame: the restraint's part (known analytically in the CG frame) is taken out, and the paper frame's sign is
    turned into the IUPAC dihedrals' (theta = -s - offset)."""
    from openmm_cgflow.reference.mean_force import generalized_forces
    from openmm_cgflow.reference.umbrella import UmbrellaRun

    aldp = create_system("alanine-dipeptide")
    run = UmbrellaRun(tmp_path, 1, UmbrellaProtocol(windows_per_dim=3, platform="Reference"), aldp)
    centre = np.array([-1.2, 2.2])
    run._set_window(centre)
    run.dynamics.context.setPositions(aldp.positions)
    run.dynamics.step(20)
    positions, forces = run.dynamics.positions_and_forces()
    x = positions[None]
    stored = run.unbiased_forces(x, forces[None], centre)
    plain = openmm.Context(aldp.system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    plain.setPositions(x[0])
    _, g = generalized_forces(aldp, x, plain.getState(getForces=True).getForces(asNumpy=True)._value[None])
    np.testing.assert_allclose(stored, -g, rtol=1e-6, atol=1e-6)
    _, biased = generalized_forces(aldp, x, forces[None])
    assert np.abs(biased - g).max() > 1.0  # the restraint was there, and is gone


def test_basin_check_finds_minima_of_a_surface():
    g = -math.pi + (np.arange(120) + 0.5) * 2 * math.pi / 120
    P, Q = np.meshgrid(g, g, indexing="ij")
    target = np.radians([-70.0, -40.0])
    F = 5 - 5 * np.exp(-(periodic_difference(P, target[0]) ** 2 + periodic_difference(Q, target[1]) ** 2) / 0.1)
    result = basin_check(F, g, LITERATURE_BASINS_DEG)
    assert result["alphaR"]["found"] and not result["C7ax"]["found"]


def test_a_molecule_from_yaml_gets_its_own_reference_through_the_cli(tmp_path, capsys):
    """`cgflow reference` on a YAML molecule (openmmtools' vacuum dipeptide, CG dihedrals psi then phi): the run
    restrains the molecule's own dihedrals, the file is in its IUPAC frame and a run can score against it; a resume
    with other CG dihedrals and a system without two CG dihedrals are refused with the reason."""
    from openmm_cgflow.cli import main

    config = tmp_path / "molecule.yaml"
    config.write_text("system:\n  openmmtools: AlanineDipeptideVacuum\n  cg_dihedrals: [[6, 8, 14, 16], [4, 6, 8, 14]]\n"
                      "  cg_names: [psi, phi]\n  name: vacuum-dipeptide\n")
    common = ["--windows", "3", "--steps-per-pass", "100", "--platform", "Reference", "--bases", "bspline6", "fourier2", "--quiet"]
    assert main(["reference", str(config), "--out", str(tmp_path / "ref"), "--passes", "1"] + common) == 0
    out = capsys.readouterr().out
    assert "reference written to" in out
    reference = load_reference(tmp_path / "ref" / "reference_molecule.npz", frame="iupac")
    assert reference.provenance["system"] == "vacuum-dipeptide" and reference.provenance["basins"] is None
    run = load_run(tmp_path / "ref", 1)
    centres = run["centres"]
    # every window's samples sit near its centre: the restraint acts on (psi, phi) in that order
    for k in range(len(centres)):
        d = periodic_difference(run["samples"][0][k], centres[k])
        assert np.sqrt(np.mean(d**2)) < 0.6
    yaml_swapped = tmp_path / "swapped.yaml"
    yaml_swapped.write_text(config.read_text().replace("[[6, 8, 14, 16], [4, 6, 8, 14]]", "[[4, 6, 8, 14], [6, 8, 14, 16]]"))
    assert main(["reference", str(yaml_swapped), "--out", str(tmp_path / "ref"), "--passes", "2", "--resume"] + common) == 2
    assert "restrains other CG dihedrals" in capsys.readouterr().err
    assert main(["reference", "mb", "--out", str(tmp_path / "mb"), "--passes", "1", "--quiet"]) == 2
    assert "1-3 dihedral CG coordinates; muller-brown has 1 linear" in capsys.readouterr().err
    from openmm_cgflow.active_learning.scoring import metric_grid_for_config
    from openmm_cgflow.config import load_config

    scored = load_config(str(config), [f"metrics.reference={tmp_path / 'ref' / 'reference_molecule.npz'}"])
    grid = metric_grid_for_config(scored)
    assert grid is not None and grid.p_reference.shape == (10000,)


@pytest.mark.parametrize("dihedrals, names, windows", [([[4, 6, 8, 14]], ["phi"], 4), ([[4, 6, 8, 14], [6, 8, 14, 16], [6, 8, 10, 11]], ["phi", "psi", "chi"], 2)])
def test_one_and_three_cg_dihedrals_get_a_reference_an_md_curve_and_a_scoring_grid(tmp_path, capsys, dihedrals, names, windows):
    """Every baseline verb works for 1-D and 3-D dihedral CG spaces of a YAML molecule: `cgflow reference` (umbrella
    on n^d windows restraining the molecule's own dihedrals + vFEP), `cgflow md-baseline` scored against that file,
    and a run's metrics grid read from it (100 bins; 36^3 in 3-D)."""
    from openmm_cgflow.active_learning.scoring import metric_grid_for_config
    from openmm_cgflow.cli import main
    from openmm_cgflow.config import load_config

    dim = len(dihedrals)
    config = tmp_path / "molecule.yaml"
    config.write_text(f"system:\n  openmmtools: AlanineDipeptideVacuum\n  cg_dihedrals: {dihedrals}\n  cg_names: {names}\n  name: vacuum-{dim}d\n")
    assert main(["reference", str(config), "--out", str(tmp_path / "ref"), "--passes", "1", "--windows", str(windows), "--steps-per-pass", "100",
                 "--platform", "Reference", "--bases", "fourier1", "bspline4", "--quiet"]) == 0, capsys.readouterr().err
    run = load_run(tmp_path / "ref", 1)
    assert run["dim"] == dim and run["samples"][0].shape == (windows**dim, 10, dim)
    for k, centre in enumerate(run["centres"]):  # the restraints act on the molecule's dihedrals, in this order
        assert np.sqrt(np.mean(periodic_difference(run["samples"][0][k], centre) ** 2)) < 0.6
    n_bins = {1: 100, 3: 36}[dim]
    path = tmp_path / "ref" / "reference_molecule.npz"
    reference = load_reference(path, n_bins, frame="iupac", dim=dim)
    assert reference.probabilities.shape == (n_bins,) * dim and reference.provenance["basins"] is None
    with pytest.raises(ValueError, match="expected 2 CG dihedral"):
        load_reference(path, frame="iupac")
    capsys.readouterr()

    assert main(["md-baseline", str(config), "--steps", "2000", "--out", str(tmp_path / "md"), "--platform", "Reference",
                 "--reference", str(path), "--quiet"]) == 0
    assert "forward KLD" in capsys.readouterr().out
    histograms = np.load(tmp_path / "md" / "md_histograms.npz")
    assert histograms["counts"].shape[1:] == (n_bins,) * dim and histograms["counts"][-1].sum() == 200

    grid = metric_grid_for_config(load_config(str(config), [f"metrics.reference={path}"]))
    assert grid.centres.shape == (n_bins**dim, dim) and grid.p_reference.shape == (n_bins**dim,)
