"""The documentation cannot drift from the code: the site builds with warnings as errors, every Python snippet of
the README and the docs runs, YAML snippets are valid configs, every config key is documented, and the README's
results tables are what the committed results say.

A snippet runs as written, in a fresh process in an empty folder, except where an HTML comment right above it,
``<!-- test: replace OLD => NEW -->``, shrinks a long run (NEW may name ``{quick_molecule}``, the overrides below).
"""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
#: a molecule run small enough for a test (one tiny iteration on the Reference platform)
QUICK_MOLECULE = [
    "energy.platform=Reference", "energy.n_workers=1", "starting_data.n_frames=40", "starting_data.save_every=10",
    "starting_data.equilibration_steps=100", "flow.hidden=[16]", "flow.compile=false", "flow.n_layers=2", "flow.n_bins=4", "pretraining.epochs=2",
    "pretraining.batch_size=20", "energy_training.epochs_first_iteration=1", "energy_training.epochs=1",
    "energy_training.batch_size=32", "energy_training.warmup_epochs_first=0", "energy_training.warmup_epochs=0",
    "energy_training.clip_warmup_epochs=0", "dataset.grid_points=4", "dataset.copies=4", "dataset.start_entries=null", "labels.accumulate_from_epoch=0",
    "ensemble.n_members=2", "ensemble.hidden=[8]", "ensemble.epochs=20", "search.n_chains=20", "search.weighted_steps=20",
    "spreading.n_points=4", "metrics.n_bins=10", "loop.max_iterations=1",
]
_BLOCK = re.compile(r"((?:<!-- test: .*? -->\n)*)```(?P<lang>\w+)\n(?P<code>.*?)```", re.S)
_DIRECTIVE = re.compile(r"<!-- test: replace (?P<old>.*?) => (?P<new>.*?) -->")


def snippets(lang):
    """(page, index, code with its test replacements applied) of every ``lang`` block."""
    found = []
    for page in PAGES:
        for k, match in enumerate(m for m in _BLOCK.finditer(page.read_text()) if m["lang"] == lang):
            code = match["code"]
            for directive in _DIRECTIVE.finditer(match.group(1)):
                assert directive["old"] in code, f"{page.name}: a test directive replaces text its snippet lacks: {directive['old']}"
                code = code.replace(directive["old"], directive["new"].format(quick_molecule=repr(QUICK_MOLECULE)))
            found.append(pytest.param(page, code, id=f"{page.name}-{k}"))
    return found


def _load(path: Path):
    name = f"_docs_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("page, code", snippets("python"))
def test_every_python_snippet_runs(page, code, tmp_path):
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "CGFLOW_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, f"{page.name} snippet failed:\n{code}\n{result.stderr[-3000:]}"


@pytest.mark.parametrize("page, code", snippets("yaml"))
def test_yaml_snippets_are_valid_configs(page, code):
    from openmm_cgflow.config import _check_system, _flatten, load_config

    config = yaml.safe_load(code)
    if "system" in config:  # a whole config (a molecule or a factory mapping, checked without building it)
        _check_system(config["system"])
    known = set(_flatten(load_config("aldp-vacuum")))
    assert {k for k in _flatten(config) if k != "system"} <= known


def test_every_config_key_says_what_it_does():
    reference = _load(ROOT / "docs" / "reference_pages.py")
    assert reference.undocumented_keys() == []
    page = reference.configuration_page()
    assert "| `labels.cell_width` |" in page and "| `system.cg_dihedrals` |" in page


def test_the_readme_tables_are_what_the_results_say(benchmark_script):
    report = benchmark_script("report")
    text = (ROOT / "README.md").read_text()
    assert len(report.MARKER.findall(text)) == 2
    assert report.readme_with_tables(text) == text, "run: python benchmarks/report.py --readme"


def test_the_readme_is_short_and_names_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert "pip install -e . && cgflow run muller-brown --out runs/muller-brown" in text
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"pip install -e \"\.\[test\]\" && python -m pytest[^\n`]*", text).group(0)
    assert command in ci


def test_help_leads_to_the_quickstart():
    import openmm_cgflow

    assert "docs/quickstart.md" in openmm_cgflow.__doc__
    result = subprocess.run([sys.executable, "-m", "openmm_cgflow.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "docs/quickstart.md" in result.stdout


def test_the_site_builds_with_warnings_as_errors(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                            capture_output=True, text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    site = tmp_path / "site"
    for page in ("quickstart", "your-molecule", "openmm", "configuration", "method", "results", "api", "architecture"):
        assert (site / page / "index.html").is_file(), page
    assert (site / "aldp_kld.png").stat().st_size > 10_000
    api = (site / "api" / "index.html").read_text()
    assert "CGFlowModel" in api and "free_energy" in api  # docstrings were rendered
