"""Typed run settings: every built-in config (and every strategy variant a key can choose) round-trips exactly through
RunSettings, each choice is its own class, and nothing in the package reads a config dict by key after settings are
built."""
import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from openmm_cgflow.active_learning import settings as s
from openmm_cgflow.config import builtin_configs, load_config

PACKAGE = Path(__file__).resolve().parent.parent / "openmm_cgflow"


@pytest.mark.parametrize("name", builtin_configs())
def test_every_builtin_config_round_trips(name):
    config = load_config(name)
    settings = s.RunSettings.from_config(config)
    again = settings.to_config()
    assert again == config
    assert list(again) == list(config) and all(list(again[k]) == list(config[k]) for k in config if isinstance(config[k], dict) and k != "system")
    assert s.RunSettings.from_config(again) == settings


VARIANTS = [
    (["flow.kind=affine", "flow.precision=float64", "flow.compile=false"], "flow", s.AffineFlowSettings),
    (["flow.kind=spline"], "flow", s.SplineFlowSettings),
    (["energy_training.schedule=per_iteration"], "energy_training.schedule", s.PerIterationSchedule),
    (["energy_training.schedule=per_iteration_cosine"], "energy_training.schedule", s.PerIterationCosineSchedule),
    (["energy_training.schedule=global_cosine"], "energy_training.schedule", s.GlobalCosineSchedule),
    (["dataset.kind=active"], "dataset.design", s.ActiveDesign),
    (["dataset.kind=grid"], "dataset.design", s.GridDesign),
    (["dataset.kind=grid_then_active"], "dataset.design", s.GridThenActiveDesign),
    (["labels.samples=last"], "labels", s.LatestSampleLabels),
    (["labels.samples=all"], "labels", s.AccumulatedLabels),
    (["search.acquisition=stop_at_uncertainty"], "search.acquisition", s.StopAtUncertainty),
    (["search.acquisition=uncertainty_weighted"], "search.acquisition", s.UncertaintyWeighted),
    (["search.backend=mc"], "search.backend", s.MonteCarloBackend),
    (["search.backend=cg_dynamics"], "search.backend", s.CGDynamicsBackend),
    (["spreading.kind=interval"], "spreading", s.IntervalSpreading),
    (["spreading.kind=disc"], "spreading", s.DiscSpreading),
]


@pytest.mark.parametrize("overrides, where, kind", VARIANTS, ids=[v[0][0] for v in VARIANTS])
@pytest.mark.parametrize("name", ["muller-brown", "aldp-fast"])
def test_each_strategy_is_its_own_class_and_round_trips(name, overrides, where, kind):
    config = load_config(name, overrides)
    settings = s.RunSettings.from_config(config)
    value = settings
    for attribute in where.split("."):
        value = getattr(value, attribute)
    assert type(value) is kind
    assert settings.to_config() == config


def test_inactive_keys_are_kept_but_unused():
    """An affine flow keeps the spline keys only to give its config back; changing one changes the config (a resumed
    run compares it), not the flow."""
    a = s.RunSettings.from_config(load_config("muller-brown"))
    b = s.RunSettings.from_config(load_config("muller-brown", ["flow.n_bins=4"]))
    assert a.flow.widths(1) == b.flow.widths(1) == (64, 64) and not hasattr(a.flow, "n_bins")
    assert a.to_config() != b.to_config() and b.to_config()["flow"]["n_bins"] == 4


def test_settings_are_frozen():
    settings = s.RunSettings.from_config(load_config("muller-brown"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.seed = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.search.std_threshold = 1.0
    with pytest.raises(TypeError):
        settings.flow.inactive["n_bins"] = 3


def test_loop_limits_and_failure_reason():
    loop = s.LoopSettings(max_iterations=5, stop_kld=1e-3)
    assert loop.limit_reached(2, 5e-4) == "forward KLD 0.0005 < 0.001"
    assert loop.limit_reached(5, None) == "reached loop.max_iterations = 5"
    assert loop.limit_reached(4, 2e-3) is None
    budget = s.LoopSettings(max_iterations=100, stop_kld=None, max_evaluations=3_000_000)
    assert budget.limit_reached(4, None, evaluations=2_999_999) is None
    assert budget.limit_reached(4, None, evaluations=3_041_600) == "the run's 3,041,600 energy evaluations passed loop.max_evaluations = 3,000,000"
    search = s.RunSettings.from_config(load_config("muller-brown")).search
    assert search.failure_reason() == "the uncertainty search (mc) found no uncertain point within 10000 steps"
    assert search.n_candidates == 1


def test_no_package_code_reads_a_config_dict_by_key():
    """Only the config loader and the settings read ``config[...]`` / ``cfg[...]``; the CLI only assembles a config."""
    allowed = {"config.py", "active_learning/settings.py"}
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        name = path.relative_to(PACKAGE).as_posix()
        if name in allowed:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\b(config|cfg)\[", line) and not re.search(r"\bconfig\[\"system\"\] = ", line):
                offenders.append(f"{name}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_first_epoch_has_the_same_size_whatever_the_number_of_cg_coordinates():
    """The molecule recipe's start_entries (12,800) spreads over the starting points: ALDP's 40 x 40 grid keeps its
    8 copies (bitwise the old recipe), a 1-D molecule's 40 points get 320 each, and no point gets fewer than
    ``copies``; null keeps ``copies`` per point (every other built-in config)."""
    molecule = s.RunSettings.from_config(load_config("aldp-vacuum")).dataset
    assert molecule.start_entries == 12_800
    assert molecule.start_copies(40 * 40) == 8 and molecule.start_copies(40) == 320 and molecule.start_copies(100_000) == 8
    assert 40 * molecule.start_copies(40) == 40 * 40 * molecule.start_copies(40 * 40)
    paper = s.RunSettings.from_config(load_config("aldp")).dataset
    assert paper.start_entries is None and paper.start_copies(40) == paper.copies == 30


def test_the_molecule_start_design_is_a_grid_up_to_two_coordinates_and_sobol_beyond():
    """The molecule recipe starts on the 40^d grid while it has at most 2,048 points (1-2 CG dihedrals: the old
    design, point for point) and on a scrambled Sobol design of 2,048 points over the domain beyond; the design is
    the run seed's, and each point gets the copies of start_entries."""
    from scipy.stats import qmc

    dataset = s.RunSettings.from_config(load_config("aldp-vacuum")).dataset
    design, domain = dataset.design, (-np.pi, np.pi)
    for dim in (1, 2):
        assert np.array_equal(design.first_points(None, domain, dim, seed=3), s.grid_points(domain, 40, dim, cell_centres=True))
    for dim in (3, 4):
        points = design.first_points(None, domain, dim, seed=3)
        assert points.shape == (2048, dim) and (points >= -np.pi).all() and (points < np.pi).all()
        assert np.array_equal(points, design.first_points(None, domain, dim, seed=3))
        assert not np.array_equal(points, design.first_points(None, domain, dim, seed=4))
        assert qmc.discrepancy((points + np.pi) / (2 * np.pi)) < qmc.discrepancy(np.random.default_rng(0).random((2048, dim)))
        assert dataset.start_copies(len(points)) == 8
    assert s.RunSettings.from_config(load_config("aldp")).dataset.design.kind == "active"
