"""mkdocs hook: the pages generated from the code and the committed results (never committed themselves).

* ``configuration.md``: every config key with its values and what it does (``docs/reference_pages.py``);
* ``results.md`` and its figures: from ``benchmarks/results/`` (``benchmarks/report.py``).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]


def _module(path: Path):
    """The script at ``path`` as a module, loaded with its folder on sys.path (as when it runs as a script: a
    benchmark imports its sibling helpers, e.g. ``curves.py``)."""
    name = f"_cgflow_docs_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def on_files(files, config):
    reference = _module(ROOT / "docs" / "reference_pages.py")
    report = _module(ROOT / "benchmarks" / "report.py")
    files.append(File.generated(config, "configuration.md", content=reference.configuration_page()))
    files.append(File.generated(config, "results.md", content=report.results_page()))
    for name, data in report.figures().items():
        files.append(File.generated(config, name, content=data))
    return files
