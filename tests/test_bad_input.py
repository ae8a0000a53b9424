"""Bad input, by class: each gives one line that names the problem (exit status 2 on the command line, no
traceback), and nothing already computed is changed. Checkpoints never execute code."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import openmm.unit as unit
import pytest
import torch

from openmm_cgflow.active_learning import ActiveLearningRun
from openmm_cgflow.active_learning.checkpoint import CHECKPOINT_NAME
from openmm_cgflow.active_learning.loop import RUN_OUTPUTS
from openmm_cgflow.backmapping import Backmapper
from openmm_cgflow.config import ConfigError, load_config
from openmm_cgflow.export import ModelFileError, load_model
from openmm_cgflow.storage import CheckpointError, load_checkpoint, save_checkpoint
from openmm_cgflow.systems import create_system

TINY = [
    "pretraining.epochs=5",
    "energy_training.epochs_first_iteration=1",
    "ensemble.epochs=30",
    "loop.max_iterations=1",
]


def cgflow(*args, cwd=None):
    """Run the command line in a fresh interpreter; returns (exit status, stderr lines)."""
    result = subprocess.run([sys.executable, "-m", "openmm_cgflow.cli", *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd)
    return result.returncode, result.stderr.strip().splitlines()


def digest(folder: Path) -> dict:
    """Content hash of every file under ``folder`` (to show that nothing was changed)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    ActiveLearningRun(load_config("muller-brown", TINY, seed=1), out, progress=False).run()
    return out


# ---------------------------------------------------------------- config values and relations
@pytest.mark.parametrize(
    "override,message",
    [
        ("energy_training.lr=.inf", "'energy_training.lr' must be a finite number"),
        ("ensemble.lr=.nan", "'ensemble.lr' must be a finite number"),
        ("search.bounds=[1.1, -2.5]", "'search.bounds' must be [lower, upper] with lower < upper"),
        ("metrics.domain=[1.0, 1.0]", "'metrics.domain' must be [lower, upper] with lower < upper"),
        ("search.start=[5.0]", "'search.start' [5.0] lies outside 'search.bounds'"),
        ("search.start=[.inf]", "'search.start' must list finite numbers"),
        ("loop.max_iterations=2.0", "'loop.max_iterations' must be of type int"),
        ("dataset.copies=2.5", "'dataset.copies' must be of type int"),
        ("dataset.train_fraction=0", "'dataset.train_fraction' must be > 0"),
        ("labels.clip_k=31", "'labels.clip_k' (31) must not exceed 'dataset.copies' (30)"),
        ("energy_training.skip_top_k=32", "'energy_training.skip_top_k' (32) must be < 'energy_training.batch_size' (32)"),
        ("search.n_new_points=60", "must not exceed 'search.n_chains' (50)"),
        ("metrics.n_bins=100000000", "'metrics.n_bins' = 100000000 gives"),
        ("energy.n_workers=100000", "'energy.n_workers' = 100000 is more than 4x"),
        ("seed=-1", "'seed' must be >= 0"),
    ],
)
def test_bad_config_values_and_relations(override, message):
    with pytest.raises(ConfigError) as info:
        load_config("muller-brown", [override])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_search_start_in_degrees_is_refused():
    with pytest.raises(ConfigError, match=r"'search.start' \[-150.0, 155.0\] lies outside 'metrics.domain'.*radians"):
        load_config("aldp-small", ["search.start=[-150.0, 155.0]"])


def test_config_file_problems_are_one_line(tmp_path):
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)))
    for path, message in [
        (tmp_path / "list.yaml", "must contain a mapping"),
        (tmp_path / "binary.yaml", "is not a text (YAML) file"),
        (tmp_path, "is a directory"),
        (tmp_path / "missing.yaml", "not found"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_config(str(path))


def test_cli_usage_errors_are_one_line(tmp_path):
    for args, message in [
        (("run", "muller-brown", "--out", tmp_path / "a", "--seed", "-2"), "argument --seed: must be >= 0, got -2"),
        (("run", "muller-brown"), "the following arguments are required: --out"),
        (("md-baseline", "aldp", "--steps", "0", "--out", tmp_path / "b"), "argument --steps: must be >= 1"),
        (("backmap", "m.pt", "c.txt", "--out", "x.pdb", "--n-per-frame", "x"), "expected an integer, got 'x'"),
        (("md-baseline", "aldp", "--steps", "10", "--out", tmp_path / "c", "--reference", tmp_path / "no.npz"), "reference file not found"),
    ]:
        status, lines = cgflow(*args)
        assert status == 2 and len(lines) == 1 and message in lines[0], (args, lines)
    assert not (tmp_path / "c").exists()  # refused before any MD ran


# ---------------------------------------------------------------- checkpoints: safe, complete, validated
def test_checkpoint_round_trip_keeps_arrays_and_plain_data(tmp_path):
    rng = np.random.default_rng(5)
    state = {
        "array": rng.normal(size=(3, 2)), "ints": np.arange(4, dtype=np.int64), "flags": np.array([True, False]),
        "tuple": (1.5, 2), "scalar": np.float64(0.25), "generator": rng.bit_generator.state, "blob": b"\x00openmm",
        "tensor": torch.arange(3.0), "nested": {"none": None, "list": [np.zeros(2), "text"]}, 7: "int key",
    }
    save_checkpoint(tmp_path / "c.pt", state)
    back = load_checkpoint(tmp_path / "c.pt")
    np.testing.assert_array_equal(back["array"], state["array"])
    assert back["ints"].dtype == np.int64 and back["flags"].dtype == np.bool_
    assert back["tuple"] == (1.5, 2) and back["scalar"] == 0.25 and back["blob"] == b"\x00openmm" and back[7] == "int key"
    assert back["generator"] == state["generator"] and isinstance(back["nested"]["list"][0], np.ndarray)
    torch.testing.assert_close(back["tensor"], state["tensor"])
    with pytest.raises(TypeError, match="cannot be checkpointed"):
        save_checkpoint(tmp_path / "d.pt", {"bad": object()})


def test_checkpoints_of_earlier_versions_still_load(tmp_path):
    """Version-1 checkpoints were plain torch.save pickles holding numpy arrays: numeric arrays pass the allow-list."""
    legacy = {"counts": np.arange(6.0).reshape(2, 3), "steps": np.int64(5), "generator": np.random.default_rng(1).bit_generator.state}
    torch.save(legacy, tmp_path / "old.pt")
    back = load_checkpoint(tmp_path / "old.pt", required=("counts",))
    np.testing.assert_array_equal(back["counts"], legacy["counts"])
    assert back["steps"] == 5 and back["generator"] == legacy["generator"]
    torch.save({"names": np.array(["a", "b"], dtype=object)}, tmp_path / "objects.pt")  # object arrays stay refused
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "objects.pt")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "code_ran"
    torch.save({"config": _RunsCode(marker), "state": {}}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused: it holds pickled Python objects"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    # through the command line, as a user's --resume would meet it
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / CHECKPOINT_NAME).write_bytes((tmp_path / "evil.pt").read_bytes())
    status, lines = cgflow("run", "muller-brown", "--out", run_dir, "--resume", "--quiet")
    assert status == 2 and len(lines) == 1 and "refused" in lines[0]
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["truncated", "garbage", "foreign", "empty"])
def test_corrupted_or_foreign_checkpoints(tmp_path, finished_run, kind):
    good = (finished_run / CHECKPOINT_NAME).read_bytes()
    path = tmp_path / CHECKPOINT_NAME
    if kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "garbage":
        path.write_bytes(b"\x80\x04not a checkpoint at all")
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError) as info:
        ActiveLearningRun(load_config("muller-brown", TINY, seed=1), tmp_path, progress=False).run(resume=True)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert ("not an openmm-cgflow checkpoint" in message) if kind == "foreign" else ("corrupted or not a checkpoint" in message)
    assert path.exists()  # a refused checkpoint is left as it was


def test_checkpoint_with_edited_config_or_mismatching_tensors(tmp_path, finished_run):
    state = load_checkpoint(finished_run / CHECKPOINT_NAME)
    edited = dict(state, config={**state["config"], "search": {**state["config"]["search"], "bounds": [1.0, -1.0]}})
    (tmp_path / "a").mkdir()
    save_checkpoint(tmp_path / "a" / CHECKPOINT_NAME, edited)
    status, lines = cgflow("run", "muller-brown", "--out", tmp_path / "a", "--resume", "--quiet")
    assert status == 2 and len(lines) == 1 and "holds an invalid config" in lines[0] and "search.bounds" in lines[0]
    flow = {key: value[:, :1] if value.ndim == 2 else value for key, value in state["flow"].items()}
    save_checkpoint(tmp_path / "b" / CHECKPOINT_NAME, dict(state, flow=flow))
    with pytest.raises(CheckpointError, match="does not match its own config or is damaged"):
        ActiveLearningRun(state["config"], tmp_path / "b", progress=False).run(resume=True)


# ---------------------------------------------------------------- no silent overwrite
def test_finished_run_without_checkpoint_is_not_overwritten(tmp_path, finished_run):
    run_dir = tmp_path / "done"
    run_dir.mkdir()
    for name in ("metrics.json", "pmf.png", "kld.png"):
        (run_dir / name).write_bytes((finished_run / name).read_bytes())
    before = digest(run_dir)
    status, lines = cgflow("run", "muller-brown", "--out", run_dir, "--quiet", *sum((["--set", o] for o in TINY), []))
    assert status == 2 and len(lines) == 1 and "is not empty" in lines[0] and "--overwrite" in lines[0]
    assert digest(run_dir) == before


def test_overwrite_removes_only_run_outputs(tmp_path, finished_run):
    run_dir = tmp_path / "again"
    run_dir.mkdir()
    for name in ("metrics.json", CHECKPOINT_NAME):
        (run_dir / name).write_bytes((finished_run / name).read_bytes())
    (run_dir / "models").mkdir()
    (run_dir / "my_notes.txt").write_text("keep me")
    ActiveLearningRun(load_config("muller-brown", TINY, seed=1), run_dir, progress=False).check_output_dir(overwrite=True)
    assert sorted(p.name for p in run_dir.iterdir()) == ["my_notes.txt"]
    assert set(RUN_OUTPUTS) >= {"metrics.json", CHECKPOINT_NAME, "models"}
    with pytest.raises(ConfigError, match="exclude each other"):
        ActiveLearningRun(load_config("muller-brown"), run_dir).check_output_dir(resume=True, overwrite=True)


# ---------------------------------------------------------------- model files, shapes, units, NaN
def test_bad_model_files(tmp_path, finished_run):
    (tmp_path / "garbage.pt").write_bytes(b"PK\x03\x04 broken")
    torch.jit.save(torch.jit.script(torch.nn.Linear(1, 1)), str(tmp_path / "plain.pt"))
    for path, message in [
        (tmp_path / "missing.pt", "model file not found"),
        (tmp_path / "garbage.pt", "is not a readable TorchScript model file"),
        (tmp_path / "plain.pt", "has no metadata.json"),
    ]:
        with pytest.raises(ModelFileError, match=message):
            load_model(path)
    with pytest.raises(ModelFileError, match="holds a 'pmf_ensemble' model, expected 'conditional_flow'"):
        Backmapper(finished_run / "models" / "pmf_ensemble.pt")


def test_backmap_refuses_bad_cg_frames(tmp_path, finished_run):
    backmapper = Backmapper(finished_run / "models" / "flow.pt", platform="Reference")
    for frames, message in [
        (np.zeros((2, 2)), r"must have shape \(n_frames, 1\)"),
        (np.zeros((0, 1)), r"must have shape \(n_frames, 1\)"),
        (np.array([[0.1], [np.nan]]), r"NaN or inf \(frame 1\)"),
        ([["a"]], "must be numbers"),
    ]:
        with pytest.raises(ValueError, match=message):
            backmapper.backmap(frames)
    with pytest.raises(ValueError, match="n_per_frame must be a positive integer"):
        backmapper.backmap(np.zeros((1, 1)), n_per_frame=0)
    # on the command line: a wrong-width file is refused and an existing output is kept
    (tmp_path / "cg.txt").write_text("1 2\n3 4\n")
    (tmp_path / "out.pdb").write_text("mine")
    status, lines = cgflow("backmap", finished_run / "models" / "flow.pt", tmp_path / "cg.txt", "--out", tmp_path / "new.pdb", "--platform", "Reference")
    assert status == 2 and len(lines) == 1 and "must have shape (n_frames, 1)" in lines[0]
    (tmp_path / "cg1.txt").write_text("-1.5\n")
    status, lines = cgflow("backmap", finished_run / "models" / "flow.pt", tmp_path / "cg1.txt", "--out", tmp_path / "out.pdb", "--platform", "Reference")
    assert status == 2 and "exists: use --overwrite" in lines[0] and (tmp_path / "out.pdb").read_text() == "mine"


def test_angles_in_degrees_are_refused():
    backmapper = Backmapper(Path(__file__).parents[1] / "torchscript_models" / "alanine-dipeptide" / "flow.pt", platform="Reference")
    with pytest.raises(ValueError, match="radians within \\[-pi, pi\\].*were degrees given"):
        backmapper.check_cg_frames(np.array([[-150.0, 155.0]]))


def test_positions_with_wrong_units_shape_or_atom_count():
    system = create_system("muller-brown")
    with pytest.raises(ValueError, match="must be a length"):
        system.check_positions(unit.Quantity(np.zeros((1, 3)), unit.kelvin))
    with pytest.raises(ValueError, match="wrong atom count"):
        system.check_positions(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="must have shape"):
        system.check_positions(np.zeros((4, 1, 2)))
    np.testing.assert_allclose(system.check_positions(unit.Quantity(np.full((1, 3), 10.0), unit.angstrom)), np.ones((1, 1, 3)))


# ---------------------------------------------------------------- round 3: damage, wrong molecule, boundaries, fail fast
def _damage(path: Path, n_bytes: int = 4096, seed: int = 0) -> None:
    """4 KiB of random bytes written into the middle of a file (the zip container usually still opens)."""
    data = bytearray(path.read_bytes())
    start = len(data) // 2 - n_bytes // 2
    data[start:start + n_bytes] = np.random.default_rng(seed).integers(0, 256, n_bytes, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def test_damaged_checkpoint_is_refused_and_nothing_is_written(tmp_path, finished_run):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("checkpoint.pt", "metrics.json"):
        (run_dir / name).write_bytes((finished_run / name).read_bytes())
    _damage(run_dir / CHECKPOINT_NAME)
    before = digest(run_dir)
    status, lines = cgflow("run", "muller-brown", "--out", run_dir, "--resume", "--quiet", "--set", "loop.max_iterations=2", "--seed", "1")
    assert status == 2 and len(lines) == 1 and str(run_dir / CHECKPOINT_NAME) in lines[0]
    assert "damaged" in lines[0] or "corrupted" in lines[0]
    assert digest(run_dir) == before


def test_damaged_model_and_reference_files_are_refused(tmp_path, finished_run):
    from openmm_cgflow.scoring.grid import load_reference
    from openmm_cgflow.systems.alanine_dipeptide import packaged_reference_path

    model = tmp_path / "pmf.pt"
    model.write_bytes((finished_run / "models" / "pmf_ensemble.pt").read_bytes())
    _damage(model, 512)
    with pytest.raises(ModelFileError) as info:
        load_model(model)
    assert "\n" not in str(info.value) and str(model) in str(info.value)
    reference = tmp_path / "reference.npz"
    data = bytearray(packaged_reference_path().read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit pattern in the compressed probabilities
    reference.write_bytes(bytes(data))
    with pytest.raises(ValueError) as info:
        load_reference(reference)
    assert "\n" not in str(info.value) and str(reference) in str(info.value)


def test_files_written_before_checksums_load_with_a_one_line_notice(tmp_path, caplog):
    from openmm_cgflow.scoring.grid import load_reference
    from openmm_cgflow.systems.alanine_dipeptide import packaged_reference_path

    legacy = tmp_path / "legacy.npz"
    with np.load(packaged_reference_path()) as data:
        np.savez_compressed(legacy, **{k: data[k] for k in data.files if k != "sha256"})
    with caplog.at_level("WARNING", logger="openmm_cgflow"):
        reference = load_reference(legacy)
    assert reference.n_bins == 100
    notes = [r.getMessage() for r in caplog.records if "checksum" in r.getMessage()]
    assert len(notes) == 1 and "\n" not in notes[0] and str(legacy) in notes[0]


def test_a_model_is_refused_on_a_system_it_was_not_made_for():
    from openmm_cgflow.forces import create_pmf_force

    root = Path(__file__).parents[1] / "torchscript_models"
    aldp, mb = create_system("alanine-dipeptide"), create_system("muller-brown")
    with pytest.raises(ValueError, match=r"PMF model of 'muller-brown' does not fit this System: its CG atom 0 has mass 1 Da"):
        create_pmf_force(root / "muller-brown" / "pmf_ensemble.pt", system=aldp.system)
    with pytest.raises(ValueError, match=r"PMF model of 'alanine-dipeptide' needs 22 particles .* the System has 1"):
        create_pmf_force(root / "alanine-dipeptide" / "pmf_ensemble.pt", system=mb.system)
    with pytest.raises(ValueError, match="atom 99 is out of range for the model's molecule of 22 atoms"):
        create_pmf_force(root / "alanine-dipeptide" / "pmf_ensemble.pt", replica_atoms=(99, -1))
    with pytest.raises(ValueError, match="must be distinct"):
        create_pmf_force(root / "alanine-dipeptide" / "pmf_ensemble.pt", replica_atoms=(4, 4, 6, 8, 14, 16))
    create_pmf_force(root / "alanine-dipeptide" / "pmf_ensemble.pt", system=aldp.system)  # its own molecule fits


@pytest.mark.parametrize("temperature, message", [(-300.0, "finite positive number of kelvin"), ("300 K", "finite positive number of kelvin"),
                                                  (float("nan"), "finite positive number of kelvin")])
def test_model_metadata_values_are_validated(tmp_path, temperature, message):
    from openmm_cgflow.export import ModelMetadata

    record = {"format_version": 1, "kind": "pmf_ensemble", "system": "x", "temperature_K": temperature, "energy_unit": "kT",
              "length_unit": "nm", "package_version": "0"}
    with pytest.raises(ValueError, match=message):
        ModelMetadata.from_dict(record)
    with pytest.raises(ValueError, match="energy_unit must be 'kT'"):
        ModelMetadata.from_dict(dict(record, temperature_K=300.0, energy_unit="kJ/mol"))


def test_reference_files_with_bad_values_are_refused(tmp_path):
    from openmm_cgflow.scoring.grid import load_reference, save_reference
    from openmm_cgflow.storage import save_arrays

    p = np.full((10, 10), 0.01)
    for name, bad in (("nan", np.where(np.arange(100).reshape(10, 10) == 3, np.nan, p)), ("negative", p - 0.02 * (np.arange(100).reshape(10, 10) == 5))):
        save_arrays(tmp_path / f"{name}.npz", probabilities=bad, edges=np.linspace(-np.pi, np.pi, 11), frame="paper", provenance="{}")
        with pytest.raises(ValueError, match="finite and non-negative"):
            load_reference(tmp_path / f"{name}.npz", None)
        with pytest.raises(ValueError, match="finite non-negative"):
            save_reference(tmp_path / "x.npz", bad, {})
    np.save(tmp_path / "plain.npy", p)
    with pytest.raises(ValueError, match="not a reference file .* a single array"):
        load_reference(tmp_path / "plain.npy", None)


def test_commands_with_bad_input_fail_at_once(tmp_path):
    """Inputs are checked before any minimisation, MD or training: each command below fails within seconds."""
    import time

    (tmp_path / "dup.yaml").write_text("system: muller-brown\nloop:\n  max_iterations: 3\nloop:\n  stop_kld: 0.1\n")
    cases = [
        (["md-baseline", "aldp", "--steps", "25", "--record-every", "10", "--out", tmp_path / "md"], "must be a multiple of --record-every"),
        (["md-baseline", "aldp", "--steps", "100", "--out", tmp_path / "md2", "--reference",
          Path(__file__).parents[1] / "benchmarks" / "results" / "reference_aldp-vacuum.npz"], "expected the paper frame"),
        (["run", tmp_path / "dup.yaml", "--out", tmp_path / "dup"], "key 'loop' appears twice"),
    ]
    for args, message in cases:
        start = time.monotonic()
        status, lines = cgflow(*args)
        assert status == 2 and len(lines) == 1 and message in lines[0], lines
        assert time.monotonic() - start < 60
    assert not (tmp_path / "md").exists() and not (tmp_path / "dup").exists()


def test_resume_with_an_edited_yaml_file_applies_and_reports_stopping_limits(tmp_path):
    config = tmp_path / "mine.yaml"
    text = "system: muller-brown\nseed: 1\npretraining:\n  epochs: 5\nenergy_training:\n  epochs_first_iteration: 1\nensemble:\n  epochs: 30\n"
    config.write_text(text + "loop:\n  max_iterations: 1\n")
    assert cgflow("run", config, "--out", tmp_path / "run", "--quiet")[0] == 0
    config.write_text(text + "loop:\n  max_iterations: 2\n")
    result = subprocess.run([sys.executable, "-m", "openmm_cgflow.cli", "run", str(config), "--out", str(tmp_path / "run"), "--quiet", "--resume"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "resuming" in result.stderr and "loop.max_iterations 1 -> 2" in result.stderr
    assert "finished after 2 iterations" in result.stdout
    config.write_text(text.replace("seed: 1", "seed: 2") + "loop:\n  max_iterations: 3\n")
    status, lines = cgflow("run", config, "--out", tmp_path / "run", "--quiet", "--resume")
    assert status == 2 and len(lines) == 1 and "different config (keys: seed)" in lines[0]
