"""Config loading and validation; the CLI reports bad input in one line with exit status 2."""
import subprocess
import sys

import pytest

from openmm_cgflow.config import ConfigError, builtin_configs, load_config


def test_builtin_muller_brown_has_paper_defaults():
    cfg = load_config("muller-brown")
    assert cfg["system"] == "muller-brown"
    assert cfg["pretraining"] == {"epochs": 80, "batch_size": 16, "lr": 5e-4}
    # training by energy: the paper's batch 8 at lr 5e-3 became batch 32 at lr 1e-2 (same evaluations, same accuracy)
    assert cfg["energy_training"]["batch_size"] == 32 and cfg["energy_training"]["lr"] == 1e-2
    assert cfg["energy_training"]["clip_norm"] == 20.0
    assert cfg["search"]["n_chains"] == 50 and cfg["search"]["std_threshold"] == 0.4
    assert cfg["dataset"]["copies"] == 30 and cfg["spreading"]["n_points"] == 65
    assert "muller-brown" in builtin_configs()


def test_overrides_seed_and_yaml_numbers():
    cfg = load_config("muller-brown", ["ensemble.lr=2e-3", "loop.max_iterations=3", "search.bounds=[-2.5, 1.1]"], seed=7)
    assert cfg["ensemble"]["lr"] == 2e-3 and cfg["loop"]["max_iterations"] == 3 and cfg["seed"] == 7
    assert cfg["search"]["bounds"] == [-2.5, 1.1]


def test_user_file_inherits_defaults(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("system: muller-brown\nloop:\n  max_iterations: 2\n")
    cfg = load_config(str(path))
    assert cfg["loop"]["max_iterations"] == 2 and cfg["ensemble"]["n_members"] == 10


@pytest.mark.parametrize(
    "override,message",
    [
        ("ensemble.lrr=1", "unknown config key 'ensemble.lrr'"),
        ("bogus.key=1", "unknown config key 'bogus.key'"),
        ("ensemble.lr=-1", "'ensemble.lr' must be > 0"),
        ("ensemble.n_members=ten", "'ensemble.n_members' must be of type int"),
        ("ensemble.strategy=boost", "'ensemble.strategy' must be one of"),
        ("dataset.train_fraction=1.5", "'dataset.train_fraction' must lie in [0, 1]"),
        ("energy.platform=Metal", "'energy.platform' must be one of"),
        ("search.bounds=[1]", "'search.bounds' must be null or [lower, upper]"),
        ("ensemble.n_members=1", "'ensemble.n_members' must be >= 2"),
        ("noequals", "must look like section.key=value"),
    ],
)
def test_bad_overrides_raise_clear_errors(override, message):
    with pytest.raises(ConfigError) as info:
        load_config("muller-brown", [override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_and_unknown_builtin(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="neither a built-in config"):
        load_config("no-such-system")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "openmm_cgflow.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_reports_unknown_key_in_one_line(tmp_path):
    result = run_cli("run", "muller-brown", "--out", str(tmp_path / "x"), "--set", "loop.max_iteration=3")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cgflow: error: unknown config key 'loop.max_iteration'")
    assert not (tmp_path / "x").exists()


def test_cli_reports_bad_value_in_one_line(tmp_path):
    result = run_cli("run", "muller-brown", "--out", str(tmp_path / "x"), "--set", "search.step_size=0")
    assert result.returncode == 2
    assert result.stderr.strip() == "cgflow: error: config key 'search.step_size' must be > 0, got 0.0"


def test_cli_resume_without_checkpoint(tmp_path):
    result = run_cli("run", "muller-brown", "--out", str(tmp_path / "empty"), "--resume", "--quiet")
    assert result.returncode == 2 and "no checkpoint to resume from" in result.stderr


def test_a_stored_config_older_than_a_key_keeps_the_value_it_ran_with():
    """Checkpoints written before ``ensemble.precision`` existed ran their fits in float64; they resume so, while a
    new run of the main job fits in float32 (its config's default)."""
    from openmm_cgflow.config import validate_config

    config = load_config("muller-brown")
    assert config["ensemble"]["precision"] == "float32" and config["ensemble"]["lbfgs_groups"] == 2
    del config["ensemble"]["precision"], config["ensemble"]["lbfgs_groups"]
    legacy = validate_config(config)["ensemble"]
    assert legacy["precision"] == "float64" and legacy["lbfgs_groups"] == 1
    with pytest.raises(ConfigError, match="ensemble.precision"):
        load_config("muller-brown", ["ensemble.precision=float16"])


def test_the_registry_names_each_systems_config_and_aliases(tmp_path, monkeypatch):
    """A system's config schema and its short names come from its registry entry (no table elsewhere): a user
    system registered with the Müller-Brown config gets MB's defaults, its alias resolves, a taken alias is refused,
    and a system registered without one uses the molecule schema for CG angles."""
    import openmm_cgflow.systems as systems
    from openmm_cgflow.config import MOLECULE_DEFAULTS, schema_name

    for table in ("_REGISTRY", "_CONFIGS", "_ALIASES", "_FACTS"):
        monkeypatch.setattr(systems, table, dict(getattr(systems, table)))
    assert schema_name("alanine-dipeptide") == "aldp-fast" and schema_name("aldp") == "aldp-fast" and schema_name("mb") == "muller-brown"
    assert schema_name("ace-ala2-nme") == MOLECULE_DEFAULTS and schema_name({"openmmtools": "AlanineDipeptideVacuum"}) == MOLECULE_DEFAULTS

    systems.register_system("my-mb", "openmm_cgflow.systems.muller_brown:create_muller_brown_system", config="muller-brown", aliases=("mymb",))
    assert systems.registered_name("mymb") == "my-mb" and systems.create_system("mymb").cg_dim == 1
    path = tmp_path / "mine.yaml"
    path.write_text("system: my-mb\nloop:\n  max_iterations: 2\n")
    cfg = load_config(str(path))
    assert cfg["search"]["n_chains"] == 50 and cfg["dataset"]["copies"] == 30  # MB's defaults
    with pytest.raises(ValueError, match="alias 'aldp' already names another system"):
        systems.register_system("other", "openmm_cgflow.systems.muller_brown:create_muller_brown_system", aliases=("aldp",))
    systems.register_system("plain", "openmm_cgflow.systems.alanine_dipeptide:create_alanine_dipeptide_system")
    assert schema_name("plain") == MOLECULE_DEFAULTS and systems.registered_name("nothing") is None  # CG angles: the molecule recipe


def test_cgflow_configs_says_what_each_config_runs():
    result = subprocess.run([sys.executable, "-m", "openmm_cgflow.cli", "configs"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert set(lines) == set(builtin_configs())
    assert "paper's recipe" in lines["aldp"] and "this project's recipe" in lines["aldp-fast"]
    assert all(len(text) > 10 for text in lines.values())


def test_the_starting_md_shows_its_progress(capsys):
    """A user waits for minimisation and 1e4-1e5 MD steps before iteration 1: the steps are shown as they run."""
    from openmm_cgflow.systems import create_system
    from openmm_cgflow.systems.starting_data import run_langevin

    md = run_langevin(create_system("muller-brown"), n_steps=2000, save_every=100, seed=3, progress=True)
    err = capsys.readouterr().err
    assert "starting MD of muller-brown: minimising" in err and "/2000" in err and md.frames.shape == (20, 1, 3)
    run_langevin(create_system("muller-brown"), n_steps=2000, save_every=100, seed=3)
    assert "starting MD" not in capsys.readouterr().err


def test_molecule_configs_are_the_molecule_recipe_plus_their_system(tmp_path, monkeypatch):
    """One recipe for every molecule: aldp-fast, ace-ala2-nme and aldp-gbn2 extend the molecule recipe (aldp-vacuum), set only
    their own system's keys, and a change of the recipe reaches them; a built-in config's 'extends' that names no
    built-in config or closes a cycle is refused in one line."""
    import shutil

    import openmm_cgflow.config as config
    from openmm_cgflow.config import MOLECULE_DEFAULTS, _flatten

    recipe = _flatten(load_config(MOLECULE_DEFAULTS))
    own = {"aldp-fast": {"system", "flow.hidden", "energy_training.chirality_filter", "dataset.max_start_points", "dataset.start_entries", "labels.cell_width",
                         "search.start", "search.coverage_check", "loop.max_iterations", "metrics.reference"},
           "ace-ala2-nme": {"system", "loop.max_iterations"}, "aldp-gbn2": {"system"}}
    for name, keys in own.items():
        values = _flatten(load_config(name))
        assert list(values) == list(recipe)  # the same keys, in the schema's order
        assert {key for key in values if values[key] != recipe[key]} == keys, name

    folder = tmp_path / "configs"
    shutil.copytree(config.CONFIG_DIR, folder)
    text = (folder / f"{MOLECULE_DEFAULTS}.yaml").read_text()
    assert "  lr: 5.0e-4\n" in text
    (folder / f"{MOLECULE_DEFAULTS}.yaml").write_text(text.replace("  lr: 5.0e-4\n", "  lr: 2.5e-4\n", 1))
    monkeypatch.setattr(config, "CONFIG_DIR", folder)
    assert load_config("aldp-fast")["energy_training"]["lr"] == 2.5e-4 == load_config("ace-ala2-nme")["energy_training"]["lr"]
    assert load_config("aldp")["energy_training"]["lr"] != 2.5e-4  # the paper's recipe stands alone

    (folder / "loop-a.yaml").write_text("extends: loop-b\nsystem: muller-brown\n")
    (folder / "loop-b.yaml").write_text("extends: loop-a\nsystem: muller-brown\n")
    (folder / "orphan.yaml").write_text("extends: no-such-config\nsystem: muller-brown\n")
    for name, base in (("loop-a", "loop-a"), ("orphan", "no-such-config")):
        with pytest.raises(ConfigError, match=f"'extends' must name another built-in config without a cycle, got '{base}'") as info:
            load_config(name)
        assert "\n" not in str(info.value)
