"""Your own molecule through the generic path: CGSystem.from_openmm and a YAML ``system:`` mapping, the clear
errors for bad CG definitions, and a whole run -> model files -> PMF force and backmapping without the registry."""
import json
import subprocess
import sys

import numpy as np
import openmm
import openmm.app as app
import pytest
import torch
import yaml

from openmm_cgflow.config import ConfigError, load_config
from openmm_cgflow.systems import CGSystem, create_system, system_from_config
from openmm_cgflow.systems.alanine_dipeptide import amber_files, phi_psi


@pytest.fixture(scope="module")
def amber():
    prmtop, inpcrd = amber_files()
    return app.AmberPrmtopFile(prmtop), app.AmberInpcrdFile(inpcrd)


@pytest.fixture(scope="module")
def generic_aldp(tmp_path_factory):
    """The built-in alanine-dipeptide Hamiltonian (same prmtop, OBC1), described only by a YAML mapping."""
    prmtop, inpcrd = amber_files()
    config = {"prmtop": prmtop, "inpcrd": inpcrd, "implicit_solvent": "OBC1", "cg_dihedrals": [[4, 6, 8, 14], [6, 8, 14, 16]]}
    return system_from_config(config)


def test_generic_path_gives_the_builtin_hamiltonian_and_iupac_angles(generic_aldp):
    builtin = create_system("alanine-dipeptide")
    from openmm_cgflow.energy import EnergyOracle

    rng = np.random.default_rng(0)
    x = builtin.positions[None] + 0.01 * rng.standard_normal((4, 22, 3))
    with EnergyOracle(builtin, "Reference") as a, EnergyOracle(generic_aldp, "Reference") as b:
        np.testing.assert_allclose(a.evaluate(x)[0], b.evaluate(x)[0], rtol=1e-12)
    np.testing.assert_allclose(generic_aldp.cg_values(x), phi_psi(x), atol=1e-10)  # IUPAC (phi, psi)
    s, _ = generic_aldp.from_cartesian(torch.as_tensor(x))
    np.testing.assert_allclose(s.numpy(), phi_psi(x), atol=1e-10)
    assert generic_aldp.chirality_centres == builtin.chirality_centres
    assert generic_aldp.cg_definition.replica.atoms == (4, 6, 8, 14, 16)
    assert generic_aldp.fg_dim == builtin.fg_dim == 58


@pytest.mark.parametrize(
    "dihedrals, message",
    [
        ([[4, 6, 8, 40]], r"atom index 40 is out of range \(the system has 22 atoms"),
        ([[4, 6, 14, 16]], r"atoms 6 and 14 are not bonded"),
        ([[4, 6, 6, 8]], r"four different atom indices"),
        ([[4, 6, 8, 14], [4, 6, 8, 10]], r"turn about the same bond"),
        ([], r"at least one CG dihedral"),
    ],
)
def test_bad_cg_dihedrals_are_named(amber, dihedrals, message):
    prmtop, inpcrd = amber
    system = prmtop.createSystem(implicitSolvent=app.OBC1, nonbondedMethod=app.NoCutoff, constraints=None)
    with pytest.raises(ValueError, match=message):
        CGSystem.from_openmm(system, prmtop.topology, inpcrd.getPositions(asNumpy=True), 300.0, dihedrals)


def test_disconnected_molecule_and_constraints_are_refused(amber):
    prmtop, inpcrd = amber
    system = prmtop.createSystem(nonbondedMethod=app.NoCutoff, constraints=None)
    positions = inpcrd.getPositions(asNumpy=True)
    modeller = app.Modeller(prmtop.topology, positions)
    modeller.add(prmtop.topology, positions + 2.0 * openmm.unit.nanometer)  # a second, unbonded copy
    two = openmm.System()
    for _ in range(2):
        for i in range(22):
            two.addParticle(system.getParticleMass(i))
    with pytest.raises(ValueError, match="not connected"):
        CGSystem.from_openmm(two, modeller.topology, modeller.positions, 300.0, [[4, 6, 8, 14]])
    constrained = prmtop.createSystem(nonbondedMethod=app.NoCutoff, constraints=app.HBonds)
    with pytest.raises(ValueError, match="constraints=None"):
        CGSystem.from_openmm(constrained, prmtop.topology, positions, 300.0, [[4, 6, 8, 14]])


def test_yaml_system_mapping_is_checked_and_resolved(tmp_path):
    prmtop, inpcrd = amber_files()
    good = {"system": {"prmtop": prmtop, "inpcrd": inpcrd, "implicit_solvent": "OBC1", "cg_dihedrals": [[4, 6, 8, 14], [6, 8, 14, 16]]}}
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(good))
    config = load_config(str(path))
    assert config["system"]["cg_dihedrals"] == [[4, 6, 8, 14], [6, 8, 14, 16]] and config["search"]["start"] is None
    for change, message in (
        ({"implicit_solvent": "OBC9"}, "implicit_solvent"),
        ({"cg_dihedrals": [[4, 6, 8]]}, "cg_dihedrals"),
        ({"colour": "red"}, "unknown key"),
        ({"openmmtools": "AlanineDipeptideVacuum"}, "exactly one of"),
    ):
        bad = {"system": {**good["system"], **change}}
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(ConfigError, match=message):
            load_config(str(path))
    missing = {"system": {**good["system"], "prmtop": "nowhere.prmtop"}}
    path.write_text(yaml.safe_dump(missing))
    with pytest.raises(FileNotFoundError, match="nowhere.prmtop"):
        system_from_config(load_config(str(path))["system"])


def test_a_users_molecule_runs_end_to_end_and_its_models_stand_alone(tmp_path):
    """cgflow run on a YAML molecule (one tiny iteration), then the PMF force and backmapping from the model
    files alone: the molecule is not in the registry, so they must rebuild it from the files."""
    prmtop, inpcrd = amber_files()
    config = {
        "system": {"prmtop": prmtop, "inpcrd": inpcrd, "implicit_solvent": "OBC1", "cg_dihedrals": [[4, 6, 8, 14], [6, 8, 14, 16]],
                   "name": "my-dipeptide"},
        "energy": {"platform": "Reference", "n_workers": 1},
        "starting_data": {"n_frames": 40, "save_every": 10, "equilibration_steps": 100},
        "flow": {"hidden": [16], "n_layers": 2, "n_bins": 4, "compile": False},
        "pretraining": {"epochs": 2, "batch_size": 20},
        "energy_training": {"epochs_first_iteration": 1, "epochs": 1, "batch_size": 32, "skip_top_k": 0, "warmup_epochs_first": 0,
                            "warmup_epochs": 0, "clip_warmup_epochs": 0},
        "dataset": {"grid_points": 4, "copies": 4, "start_entries": None},
        "labels": {"accumulate_from_epoch": 0},
        "ensemble": {"n_members": 2, "hidden": [8], "epochs": 20},
        "search": {"n_chains": 20, "weighted_steps": 20},
        "spreading": {"n_points": 4},
        "metrics": {"n_bins": 10},
        "loop": {"max_iterations": 1},
    }
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "openmm_cgflow.cli", "run", str(path), "--out", str(out), "--quiet"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "no reference; ensemble std on visited points" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    row = metrics["iterations"][-1]
    assert metrics["system"] == "my-dipeptide" and row["forward_kld"] is None
    assert row["std_visited_max"] >= row["std_visited_mean"] >= 0 and 0 < row["label_ess_fraction_median"] <= 1
    assert (out / "pmf.png").is_file()

    from openmm_cgflow.backmapping import Backmapper
    from openmm_cgflow.forces import create_pmf_force
    from openmm_cgflow.systems import available_systems

    assert "my-dipeptide" not in available_systems()
    mapper = Backmapper(out / "models" / "flow.pt", platform="Reference")
    assert mapper.cg_system.name == "my-dipeptide" and mapper.cg_system.n_atoms == 22
    frames = np.array([[-1.4, 1.2], [-1.3, -0.6]])
    backmapped = mapper.backmap(frames, n_per_frame=3, seed=1, refine="minimize")
    np.testing.assert_allclose(phi_psi(backmapped.trajectory.xyz.astype(np.float64)), np.repeat(frames, 3, axis=0), atol=0.05)
    system = mapper.cg_system.system
    force = create_pmf_force(out / "models" / "pmf_ensemble.pt", system=system)
    system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(mapper.cg_system.positions)
    assert np.isfinite(context.getState(getEnergy=True).getPotentialEnergy()._value)


def test_metadynamics_baseline_runs_on_a_molecule_without_a_reference(tmp_path):
    """`cgflow baseline metad` on the generic vacuum dipeptide: F is recorded on the grid, no KLD is claimed."""
    from openmm_cgflow.cli import main

    out = tmp_path / "metad"
    assert main(["baseline", "metad", "aldp-vacuum", "--steps", "1000", "--deposit-every", "100", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "metad_baseline.json").read_text())
    assert summary["final_forward_kld"] is None and summary["steps"] == 1000
    snapshots = np.load(out / "metad_snapshots.npz")
    assert snapshots["free_energy_kT"].shape[-1] == snapshots["centres"].shape[0] and np.isfinite(snapshots["free_energy_kT"]).all()
    assert np.ptp(snapshots["free_energy_kT"][-1]) > 0  # ten Gaussians have been deposited


def test_capped_alanine_peptide_is_built_l_and_trans_with_four_cg_dihedrals():
    from openmm_cgflow.coordinates.geometry import dihedral_angles
    from openmm_cgflow.systems.peptides import backbone_dihedrals, capped_alanine_openmm

    system, topology, positions = capped_alanine_openmm(2)
    assert system.getNumParticles() == topology.getNumAtoms() == 32 and system.getNumConstraints() == 0
    x = torch.as_tensor(positions)
    dihedrals = backbone_dihedrals(topology)
    assert list(dihedrals) == ["phi1", "psi1", "phi2", "psi2"]
    built = {name: float(torch.rad2deg(dihedral_angles(*(x[i] for i in atoms)))) for name, atoms in dihedrals.items()}
    assert built == pytest.approx({"phi1": -75.0, "psi1": 145.0, "phi2": -75.0, "psi2": 145.0}, abs=0.05)  # PDB precision
    for residue in [r for r in topology.residues() if r.name == "ALA"]:
        a = {atom.name: atom.index for atom in residue.atoms()}
        n, c, cb, ha = (x[a[name]] - x[a["CA"]] for name in ("N", "C", "CB", "HA"))
        assert float(torch.linalg.cross(c - n, cb - n).dot(ha - n)) < 0  # L (the alanine-dipeptide rule)
    cg = create_system("ace-ala2-nme")
    assert cg.cg_definition.names == ["phi1", "psi1", "phi2", "psi2"] and len(cg.chirality_centres) == 2
    assert cg.sample_filter("geometric")(torch.as_tensor(cg.positions)[None]).all()
    with pytest.raises(ValueError, match="at least one alanine"):
        capped_alanine_openmm(0)
    with pytest.raises(ValueError, match="implicit_solvent must be one of"):
        capped_alanine_openmm(1, "water")


def test_the_panel_dipeptide_has_its_own_force_field_and_solvent_model():
    """aldp-gbn2: alanine dipeptide in amber ff14SB + GBn2 (not the paper's ff96 + OBC1), same CG dihedrals, L form."""
    import openmm

    cg = create_system("aldp-gbn2")
    assert cg.system.getNumParticles() == 22 and cg.system.getNumConstraints() == 0 and cg.cg_definition.names == ["phi1", "psi1"]
    assert "GBn2" in cg.description.hamiltonian and len(cg.chirality_centres) == 1
    assert cg.sample_filter("geometric")(torch.as_tensor(cg.positions)[None]).all()
    def gb_parameters(system):
        forces = [f for f in system.getForces() if isinstance(f, openmm.CustomGBForce)]
        assert len(forces) == 1
        return {forces[0].getPerParticleParameterName(k) for k in range(forces[0].getNumPerParticleParameters())}

    assert {"alpha", "beta", "gamma", "radindex"} <= gb_parameters(cg.system)  # GBn2's per-atom rescaling and neck table
    assert "radindex" not in gb_parameters(create_system("ace-ala2-nme").system)   # OBC1 has neither


def test_md_baseline_runs_on_a_molecule_and_refuses_other_cg_spaces(tmp_path, capsys):
    """`cgflow baseline md` histograms any system with 1-3 CG dihedrals or linear CG coordinates; its histogram is of
    the system's own CG coordinates (IUPAC here; Müller-Brown's s over its own domain [-2.5, 1.1] nm); Ace-Ala2-Nme
    (4 dihedrals) is refused by name."""
    from openmm_cgflow.cli import main

    out = tmp_path / "md"
    assert main(["baseline", "md", "aldp-vacuum", "--steps", "2000", "--out", str(out), "--platform", "Reference", "--quiet"]) == 0
    summary = json.loads((out / "md_baseline.json").read_text())
    assert summary["system"] == "AlanineDipeptideVacuum" and summary["steps"] == 2000
    counts = np.load(out / "md_histograms.npz")["counts"][-1]
    assert counts.sum() == 200
    phi_bin = np.argmax(counts.sum(axis=1))
    assert -np.pi + 2 * np.pi * phi_bin / 100 < 0  # IUPAC phi of the L dipeptide is negative
    assert main(["baseline", "md", "mb", "--steps", "1000", "--out", str(tmp_path / "mb"), "--quiet"]) == 0
    mb = np.load(tmp_path / "mb" / "md_histograms.npz")
    assert np.allclose(mb["domain"], (-2.5, 1.1)) and mb["counts"][-1].shape == (100,) and 0 < mb["counts"][-1].sum() <= 100
    # the particle starts in the upper-left minimum, at s = x - y = -2.0 nm
    assert abs(-2.5 + 3.6 * (np.argmax(mb["counts"][-1]) + 0.5) / 100 - (-2.0)) < 0.3
    assert main(["baseline", "md", "ace-ala2-nme", "--steps", "100", "--out", str(tmp_path / "4d"), "--quiet"]) == 2
    assert "1-3 dihedral or linear CG coordinates; ace-ala2-nme has 4 dihedral" in capsys.readouterr().err


def test_starting_data_is_made_once_cached_and_keyed_by_what_makes_it(tmp_path, monkeypatch, capsys):
    """`cgflow data start SYSTEM` makes the starting MD a run of that config uses, in the cache; the run then reads
    it (bitwise the frames it would simulate); another seed or molecule gets its own file."""
    from openmm_cgflow.cli import main
    from openmm_cgflow.config import load_config
    from openmm_cgflow.systems.starting_data import run_langevin

    monkeypatch.setenv("CGFLOW_CACHE", str(tmp_path / "cache"))
    assert main(["data", "start", "muller-brown", "--platform", "Reference"]) == 0  # (CPU would pin this process)
    assert "100 starting frames from 11000 MD steps (seed 0, Reference)" in capsys.readouterr().out
    files = sorted((tmp_path / "cache").glob("start_muller-brown_*.npz"))
    assert len(files) == 1
    cg_system = create_system("muller-brown")
    sd = load_config("muller-brown")["starting_data"]
    args = (sd["n_frames"], sd["save_every"], sd["equilibration_steps"], sd["timestep_fs"], sd["friction_per_ps"], 0, "Reference")
    frames, md_steps = cg_system.starting_frames(*args)
    direct = run_langevin(cg_system, n_steps=11000, save_every=100, seed=0, timestep_fs=1.0, friction_per_ps=10.0, platform="Reference")
    np.testing.assert_array_equal(frames, direct.frames[-100:])
    assert md_steps == 11000 and sorted((tmp_path / "cache").glob("*.npz")) == files  # read, not made again
    cg_system.starting_frames(*args[:-2], 1, "Reference")
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    assert main(["data", "start", "--platform", "Reference"]) == 2
    assert "needs a SYSTEM" in capsys.readouterr().err
    assert main(["data", "start", "no-such-system", "--platform", "Reference"]) == 2
    assert "unknown system 'no-such-system'" in capsys.readouterr().err


def test_flow_width_defaults_scale_with_the_molecule():
    """A molecule's config that leaves flow.hidden null gets a spline flow of 128 units per started 64 fine-grained
    coordinates (the dipeptides get aldp-fast's width, the tetrapeptide doubles it) and affine layers of 64 per
    started 64; an explicit list is kept."""
    from openmm_cgflow.active_learning.settings import AffineFlowSettings, SplineFlowSettings

    def scaled_flow_hidden(kind, fg_dim):
        settings = AffineFlowSettings(None) if kind == "affine" else SplineFlowSettings(None, 2, 8, 1, "periodic", "float64", False)
        return list(settings.widths(fg_dim))

    assert load_config("aldp-vacuum")["flow"]["hidden"] is None
    assert scaled_flow_hidden("spline", create_system("alanine-dipeptide").fg_dim) == [128] == load_config("aldp-fast")["flow"]["hidden"]
    assert scaled_flow_hidden("spline", create_system("ace-ala2-nme").fg_dim) == [256]
    assert scaled_flow_hidden("affine", 1) == [64, 64]
    assert load_config("aldp-vacuum", ["flow.hidden=[96]"])["flow"]["hidden"] == [96]
