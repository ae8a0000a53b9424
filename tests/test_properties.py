"""Property-based bad input (hypothesis): random mutations of a valid config, and random damage to a valid
checkpoint, model file and reference file. Every outcome is either a valid result or one clear error of the
package's own kind (ConfigError, CheckpointError, ModelFileError, ValueError) in one line; never a traceback of
another kind, never a hang."""
import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openmm_cgflow.config import ConfigError, _flatten, load_config, validate_config
from openmm_cgflow.export import ModelFileError, load_model
from openmm_cgflow.scoring.grid import load_reference
from openmm_cgflow.storage import CheckpointError, load_checkpoint, save_checkpoint
from openmm_cgflow.systems.alanine_dipeptide import packaged_reference_path

ROOT = Path(__file__).resolve().parents[1]
BASE = load_config("muller-brown")
KEYS = sorted(k for k in _flatten(BASE) if k != "system")

values = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.lists(st.one_of(st.floats(allow_nan=True), st.integers(-5, 5), st.text(max_size=3)), max_size=4),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def one_line(error: BaseException) -> bool:
    return "\n" not in str(error) and len(str(error)) > 0


def set_key(config, key, value):
    node = config
    *parents, leaf = key.split(".")
    for parent in parents:
        node = node[parent]
    node[leaf] = value


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations=st.lists(st.tuples(st.sampled_from(KEYS), values), min_size=1, max_size=3),
       extra=st.one_of(st.none(), st.tuples(st.sampled_from(["loop", "search", "nonsense"]), st.text(min_size=1, max_size=8), values)))
def test_mutated_configs_are_valid_or_one_line_errors(mutations, extra):
    config = copy.deepcopy(BASE)
    for key, value in mutations:
        set_key(config, key, value)
    if extra is not None:
        section, key, value = extra
        config.setdefault(section, {}) if section != "nonsense" else None
        if section == "nonsense":
            config[key] = value
        else:
            config[section][key] = value
    try:
        checked = validate_config(config)
    except ConfigError as error:
        assert one_line(error), str(error)
        return
    for key, value in _flatten(checked).items():  # what passes is a config of finite numbers of the schema's types
        if isinstance(value, float):
            assert math.isfinite(value), key


def _mutate(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for position, value, kind in edits:
        k = position % max(len(out), 1)
        if kind == "flip" and out:
            out[k] = value
        elif kind == "cut":
            out = out[:k]
        elif kind == "insert":
            out[k:k] = bytes([value]) * 16
    return bytes(out)


edits = st.lists(st.tuples(st.integers(0, 10**7), st.integers(0, 255), st.sampled_from(["flip", "cut", "insert"])), min_size=1, max_size=4)


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("valid")
    save_checkpoint(folder / "checkpoint.pt", {"config": BASE, "state": {"x": np.arange(50.0), "n": 3}, "flow": {"w": torch.ones(4, 4)}})
    return {
        "checkpoint": (folder / "checkpoint.pt").read_bytes(),
        "model": (ROOT / "torchscript_models" / "muller-brown" / "pmf_ensemble.pt").read_bytes(),
        "reference": packaged_reference_path().read_bytes(),
    }


LOADERS = {
    "checkpoint": (lambda path: load_checkpoint(path, ("config",)), (CheckpointError, FileNotFoundError)),
    "model": (load_model, (ModelFileError,)),
    "reference": (load_reference, (ValueError,)),
}


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_damaged_files_load_or_are_refused_in_one_line(kind, valid_files, tmp_path_factory):
    folder = tmp_path_factory.mktemp(kind)
    load, errors = LOADERS[kind]

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(changes=edits)
    def check(changes):
        path = folder / f"file{'.npz' if kind == 'reference' else '.pt'}"
        damaged = _mutate(valid_files[kind], changes)
        path.write_bytes(damaged)
        try:
            load(path)
        except errors as error:
            assert one_line(error), str(error)

    check()


def test_a_key_with_a_line_break_is_named_on_one_line():
    """Found by the property test above: an unknown key holding a line break made a two-line error."""
    config = copy.deepcopy(BASE)
    config["loop"]["\n"] = 1
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    assert one_line(error.value) and "unknown config key 'loop.\\n'" in str(error.value)
