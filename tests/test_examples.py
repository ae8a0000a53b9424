"""Every script in examples/ runs (quick mode) against the shipped models and prints its result."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script, expect", [
    ("mb_cg_dynamics.py", "KLD(exp(-F) || CG histogram)"),
    ("aldp_backmap.py", "structures in"),
    ("aldp_bias.py", "phi sign changes"),
    ("aldp_cg_dynamics.py", "KLD(exp(-F) || CG histogram)"),
    ("aldp_flow_force.py", "force-field MD frames: ln w std"),
])
def test_example_runs(script, expect, tmp_path):
    args = [sys.executable, str(ROOT / "examples" / script), "--quick"]
    if script == "aldp_backmap.py":
        args += ["--out", str(tmp_path / "backmapped.pdb")]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert expect in result.stdout


def test_shipped_models_load_with_metadata():
    from openmm_cgflow.export import load_model

    for system in ("muller-brown", "alanine-dipeptide"):
        for kind, name in (("pmf_ensemble", "pmf_ensemble.pt"), ("conditional_flow", "flow.pt")):
            _, metadata = load_model(ROOT / "torchscript_models" / system / name, expected_kind=kind, expected_system=system)
            assert metadata["package_version"] and metadata["temperature_K"] > 0
