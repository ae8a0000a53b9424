"""Systems of one's own, as a user brings them: a factory named in YAML, a system registered in Python, and an
installed package's entry point. Each keeps its own CG domain and references (never those of the built-in config
lending it a recipe), and the command line finds it, also when a finished run is reopened."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from openmm_cgflow.config import load_config, schema_name

DATA = Path(__file__).parent / "data"
#: a short run: small starting MD, one iteration
QUICK = ["--set", "starting_data.n_frames=200", "--set", "loop.max_iterations=1"]


def cgflow(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "openmm_cgflow.cli", *map(str, args)], capture_output=True, text=True, timeout=600,
                          cwd=cwd, env=env)


@pytest.fixture
def registry(monkeypatch):
    """The registry's tables, restored after the test."""
    import openmm_cgflow.systems as systems

    for table in ("_REGISTRY", "_CONFIGS", "_ALIASES", "_FACTS"):
        monkeypatch.setattr(systems, table, dict(getattr(systems, table)))
    return systems


def test_a_factory_in_yaml_brings_its_own_domain_and_reference(tmp_path):
    shutil.copy(DATA / "tilted_well.py", tmp_path / "well.py")
    (tmp_path / "well.yaml").write_text("system:\n  factory: well.py:create\n  arguments: {tilt: 0.5}\n")
    cfg = load_config(str(tmp_path / "well.yaml"))
    assert cfg["system"]["factory"] == f"{(tmp_path / 'well.py').resolve()}:create"  # a path relative to the config file
    assert cfg["metrics"]["domain"] == [-1.6, 1.6] and cfg["search"]["bounds"] == [-1.6, 1.6] and cfg["search"]["start"] is None
    assert cfg["metrics"]["reference"] == "exact"
    assert cfg["dataset"]["copies"] == load_config("muller-brown")["dataset"]["copies"]  # linear CG: the linear recipe,
    assert schema_name(cfg["system"]) == "linear" and cfg["flow"]["kind"] == "spline"  # Müller-Brown's with a spline flow
    # lengths of the recipe in proportion to the domain: Müller-Brown's 0.1 nm step and 0.5 nm spreading on 3.6 nm
    recipe = load_config("linear")
    assert cfg["search"]["step_size"] == pytest.approx(recipe["search"]["step_size"] * 3.2 / 3.6)
    assert cfg["spreading"]["width"] == pytest.approx(recipe["spreading"]["width"] * 3.2 / 3.6)
    (tmp_path / "wide.yaml").write_text("system:\n  factory: well.py:create\n  arguments: {domain: [-16.0, 16.0]}\n")
    assert load_config(str(tmp_path / "wide.yaml"))["search"]["step_size"] == pytest.approx(recipe["search"]["step_size"] * 32 / 3.6)
    # what the user sets stays
    cfg = load_config(str(tmp_path / "well.yaml"), ["metrics.domain=[-1.2, 1.2]", "search.bounds=null", "metrics.reference=none",
                                                    "search.step_size=0.2"])
    assert cfg["metrics"]["domain"] == [-1.2, 1.2] and cfg["search"]["bounds"] is None and cfg["metrics"]["reference"] == "none"
    assert cfg["search"]["step_size"] == 0.2


@pytest.mark.parametrize("system, message", [
    ("  factory: nowhere.py:create\n", "system factory file not found"),
    ("  factory: well.py:absent\n", "has no function 'absent'"),
    ("  factory: no_such_module_here:create\n", "module 'no_such_module_here' cannot be imported"),
    ("  factory: well.py:create\n  arguments: {tilt: 0.3, colour: red}\n", "unexpected keyword argument 'colour'"),
    ("  factory: well.py:create\n  colour: red\n", "unknown key(s) colour"),
    ("  factory: well.py:create\n  config: nothing\n", "'system.config' must name a built-in config"),
])
def test_a_bad_factory_is_one_line_with_exit_status_2(tmp_path, system, message):
    shutil.copy(DATA / "tilted_well.py", tmp_path / "well.py")
    (tmp_path / "bad.yaml").write_text("system:\n" + system)
    result = cgflow("run", tmp_path / "bad.yaml", "--out", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "out").exists()


def test_a_system_registered_with_another_systems_config_keeps_its_own_domain(registry, tmp_path):
    """Registered with the Müller-Brown recipe, the tilted well still scores and searches on its own domain
    [-1.6, 1.6] nm and against its own exact PMF, not Müller-Brown's [-2.5, 1.1] (the run would otherwise report
    the KLD of half the surface)."""
    registry.register_system("tilted-well", f"{DATA / 'tilted_well.py'}:create", config="muller-brown")
    (tmp_path / "mine.yaml").write_text("system: tilted-well\n")
    cfg = load_config(str(tmp_path / "mine.yaml"))
    assert cfg["metrics"]["domain"] == [-1.6, 1.6] and cfg["search"]["bounds"] == [-1.6, 1.6] and cfg["search"]["start"] is None
    assert cfg["metrics"]["reference"] == "exact" and cfg["search"]["n_chains"] == load_config("muller-brown")["search"]["n_chains"]
    # the built-in systems keep their configs as they are
    assert load_config("muller-brown")["metrics"]["domain"] == [-2.5, 1.1] and load_config("muller-brown")["search"]["start"] == [-2.0]


def test_a_registered_system_without_a_config_gets_the_recipe_of_its_coordinates(registry):
    from openmm_cgflow.config import LINEAR_DEFAULTS, MOLECULE_DEFAULTS
    from openmm_cgflow.systems import load_factory

    well = load_factory(f"{DATA / 'tilted_well.py'}:create")
    registry.register_system("well", lambda: well())  # without the factory's own `config` attribute (muller-brown)
    assert schema_name("well") == LINEAR_DEFAULTS == "linear" and load_config(LINEAR_DEFAULTS)["flow"]["kind"] == "spline"
    registry.register_system("named", f"{DATA / 'tilted_well.py'}:create")
    assert schema_name("named") == "muller-brown"  # the attribute wins
    registry.register_system("dipeptide", "openmm_cgflow.systems.alanine_dipeptide:create_alanine_dipeptide_system")
    assert schema_name("dipeptide") == MOLECULE_DEFAULTS


def _install_entry_point(site: Path) -> None:
    """A package installed the way pip leaves one: the module and a dist-info folder declaring the entry point."""
    (site / "tilted_pkg").mkdir(parents=True)
    shutil.copy(DATA / "tilted_well.py", site / "tilted_pkg" / "__init__.py")
    info = site / "tilted_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tilted-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[openmm_cgflow.systems]\ntilted-well = tilted_pkg:create\n")


def test_an_installed_entry_point_system_runs_from_the_command_line_and_its_run_reopens(tmp_path):
    site = tmp_path / "site"
    _install_entry_point(site)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    work = tmp_path / "work"
    work.mkdir()
    (work / "well.yaml").write_text("system: tilted-well\nloop:\n  stop_kld: null\n")
    result = cgflow("run", "well.yaml", "--out", "run", "--quiet", *QUICK, cwd=work, env=env)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((work / "run" / "metrics.json").read_text())
    assert metrics["config"]["metrics"]["domain"] == [-1.6, 1.6] and metrics["config"]["metrics"]["reference"] == "exact"
    # every verb that reopens the run finds the system again
    result = cgflow("run", "well.yaml", "--out", "run", "--quiet", "--resume", *QUICK[:2], "--set", "loop.max_iterations=2", cwd=work, env=env)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((work / "run" / "metrics.json").read_text())
    assert len(metrics["iterations"]) == 2
    result = cgflow("export", "run", "--out", "models", cwd=work, env=env)
    assert result.returncode == 0 and (work / "models" / "pmf_ensemble.pt").is_file(), result.stderr
    # the run was scored against the system's own exact PMF on its own domain: the exported PMF, scored here
    # against the closed form over [-1.6, 1.6] nm, gives the KLD the run reported
    sys.path.insert(0, str(DATA))
    try:
        from tilted_well import exact_reference
    finally:
        sys.path.remove(str(DATA))
    from openmm_cgflow.model import CGFlowModel
    from openmm_cgflow.scoring.kld import forward_kld

    centres, p_exact = exact_reference(100, (-1.6, 1.6))
    free_energy, _ = CGFlowModel.load(work / "models").free_energy(centres, frame="iupac")
    kld = metrics["iterations"][-1]["forward_kld"]
    assert np.isfinite(kld) and forward_kld(p_exact, free_energy) == pytest.approx(kld, rel=1e-4)
    # without the package the name is unknown, in one line that says how to bring a system
    result = cgflow("run", "well.yaml", "--out", "other", cwd=work)
    assert result.returncode == 2 and "entry point in the group openmm_cgflow.systems" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_entry_points_are_listed_with_the_built_in_systems(tmp_path):
    site = tmp_path / "site"
    _install_entry_point(site)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    code = ("from openmm_cgflow.systems import available_systems, create_system; from openmm_cgflow.config import schema_name; "
            "print(available_systems(), create_system('tilted-well').cg_dim, schema_name('tilted-well'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "'tilted-well'" in result.stdout and "'muller-brown'" in result.stdout and result.stdout.split()[-2:] == ["1", "muller-brown"]


def test_reference_files_work_for_linear_cg_coordinates(tmp_path):
    """A reference on a linear CG coordinate (frame "linear", bins over its domain in nm) scores an AL run exactly as
    the system's own closed form does, and scores the MD and metadynamics baselines; a file on another domain or
    of dihedrals is refused in one line."""
    from openmm_cgflow.active_learning.scoring import metric_grid
    from openmm_cgflow.active_learning.settings import RunSettings
    from openmm_cgflow.scoring.grid import load_reference, save_reference

    shutil.copy(DATA / "tilted_well.py", tmp_path / "well.py")
    (tmp_path / "well.yaml").write_text("system:\n  factory: well.py:create\n")
    settings = RunSettings.from_config(load_config(str(tmp_path / "well.yaml")))
    system = settings.create_system()
    exact = metric_grid(settings.metrics, system)
    save_reference(tmp_path / "ref.npz", exact.p_reference, {"method": "closed form"}, frame="linear", domain=(-1.6, 1.6))
    from_file = metric_grid(RunSettings.from_config(load_config(str(tmp_path / "well.yaml"), [f"metrics.reference={tmp_path / 'ref.npz'}"])).metrics,
                            system)
    assert np.allclose(from_file.centres, exact.centres) and np.allclose(from_file.p_reference, exact.p_reference)
    with pytest.raises(ValueError, match=r"covers \[-1.6, 1.6\] nm; expected the domain \[-1, 1\] nm"):
        load_reference(tmp_path / "ref.npz", None, frame="linear", dim=1, domain=(-1.0, 1.0))
    with pytest.raises(ValueError, match="expected the iupac frame"):
        load_reference(tmp_path / "ref.npz", None, frame="iupac", dim=1)

    curves = {}
    for method in ("md", "metad"):
        result = cgflow("baseline", method, "well.yaml", "--steps", "30000", "--out", method, "--reference", "ref.npz", "--quiet", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        curves[method] = [float(line.split()[-1]) for line in result.stdout.splitlines() if "steps  forward KLD" in line]
        assert len(curves[method]) >= 3 and all(np.isfinite(curves[method]))
    assert curves["metad"][-1] < curves["metad"][0]  # the bias flattens the double well
    # MD's histogram is over the coordinate's own domain, and its KLD is the file's against it
    from openmm_cgflow.scoring.grid import kld_of_histogram
    from openmm_cgflow.storage import load_arrays

    histograms = load_arrays(tmp_path / "md" / "md_histograms.npz")
    assert np.allclose(histograms["domain"], (-1.6, 1.6)) and histograms["counts"].shape[1:] == (100,)
    assert 0.9 * 3000 < histograms["counts"][-1].sum() <= 3000  # every 10th of 30,000 steps, the few outside the domain left out
    assert kld_of_histogram(exact.p_reference, histograms["counts"][-1]) == pytest.approx(curves["md"][-1], rel=1e-3)
    # a dihedral reference does not fit a linear coordinate: one line, before anything runs
    save_reference(tmp_path / "angles.npz", np.full(100, 0.01), {}, frame="iupac")
    result = cgflow("baseline", "md", "well.yaml", "--steps", "1000", "--out", "bad", "--reference", "angles.npz", cwd=tmp_path)
    assert result.returncode == 2 and "expected linear CG coordinates" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_the_coupled_four_well_has_the_pmf_of_its_energy():
    """The tilted well with a coupling c q p (benchmarks/flow_multimodal_ab.py): OpenMM's energy is the formula, and
    its exact PMF (quadrature over p) is the Boltzmann sum over the plane."""
    import openmm
    import openmm.unit as unit

    sys.path.insert(0, str(DATA))
    try:
        import tilted_well
    finally:
        sys.path.remove(str(DATA))
    cg = tilted_well.create(perp_barrier=10.0, coupling=3.0)
    context = openmm.Context(cg.system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    c, s = np.cos(0.3), np.sin(0.3)
    for q, p in [(1.0, -1.0), (-0.7, 0.4), (0.2, 1.3)]:
        context.setPositions([[c * q - s * p, s * q + c * p, 0.0]])
        energy = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        assert energy == pytest.approx(5 * (q * q - 1) ** 2 + 10 * (p * p - 1) ** 2 + 3 * q * p, rel=1e-10)
    kT = tilted_well.kT_in_kJ_per_mol(tilted_well.TEMPERATURE)
    q = np.linspace(-1.6, 1.6, 161)
    p = np.linspace(-4.0, 4.0, 4001)
    F = -np.log(np.exp(-(5 * (q[:, None] ** 2 - 1) ** 2 + 10 * (p[None, :] ** 2 - 1) ** 2 + 3 * q[:, None] * p[None, :]) / kT).sum(1))
    np.testing.assert_allclose(tilted_well.exact_pmf_kT(q, 10.0, 3.0), F - F.min(), atol=1e-9)
    centres, probabilities = cg.references["exact"](100, (-1.6, 1.6))
    assert probabilities.sum() == pytest.approx(1.0) and abs(centres[np.argmax(probabilities), 0]) > 0.9  # minima near s = +-1
