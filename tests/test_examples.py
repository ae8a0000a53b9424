"""Every script in examples/ runs (quick mode) against the shipped models, from any directory, and prints its
result; it imports nothing of the package but its top level."""
import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
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
    result = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)  # not the repository root
    assert result.returncode == 0, result.stderr[-2000:]
    assert expect in result.stdout


def test_shipped_models_load_with_metadata():
    from openmm_cgflow.export import load_model

    for system in ("muller-brown", "alanine-dipeptide"):
        for kind, name in (("pmf_ensemble", "pmf_ensemble.pt"), ("conditional_flow", "flow.pt")):
            _, metadata = load_model(ROOT / "torchscript_models" / system / name, expected_kind=kind, expected_system=system)
            assert metadata.package_version and metadata.temperature_K > 0


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "examples").glob("*.py")))
def test_examples_use_only_the_public_top_level(script):
    import openmm_cgflow

    tree = ast.parse((ROOT / "examples" / script).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("openmm_cgflow"):
            assert node.module == "openmm_cgflow" and all(a.name in openmm_cgflow.__all__ for a in node.names), ast.unparse(node)
        if isinstance(node, ast.Import):
            assert all(a.name == "openmm_cgflow" or not a.name.startswith("openmm_cgflow") for a in node.names), ast.unparse(node)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "cgflow":
            assert node.attr in openmm_cgflow.__all__, f"cgflow.{node.attr} is not public"


def test_the_public_api_is_small_and_complete():
    import openmm_cgflow

    assert len(openmm_cgflow.__all__) <= 15
    for name in openmm_cgflow.__all__:
        assert getattr(openmm_cgflow, name) is not None, name


@pytest.mark.parametrize("system, config, kld", [("alanine-dipeptide", "aldp-fast", 1.004e-3), ("muller-brown", "muller-brown", 2.28e-4)])
def test_shipped_pmfs_score_what_the_readme_says(system, config, kld):
    """The shipped PMFs against the references their systems are scored on (ALDP: the packaged umbrella reference,
    docs/openmm.md: KLD 1.0e-3; Müller-Brown: the exact PMF, 2.3e-4)."""
    import openmm_cgflow as cgflow
    from openmm_cgflow.active_learning.scoring import metric_grid_for_config

    model = cgflow.CGFlowModel.load(system)
    grid = metric_grid_for_config(cgflow.load_config(config))
    F, std = model.free_energy(grid.centres, frame="model")
    assert cgflow.forward_kld(grid.p_reference, F) == pytest.approx(kld, rel=0.01)
    assert np.isfinite(std).all()


def test_the_shipped_alanine_pmf_reads_in_iupac_dihedrals():
    """``free_energy`` takes plain IUPAC (phi, psi) by default: the same points given in the model's own frame give
    the same F, and the global minimum lies in the left half of the Ramachandran plot (phi < 0), where alanine
    dipeptide's C7eq/beta and alpha_R basins are."""
    import openmm_cgflow as cgflow
    from openmm_cgflow.active_learning.scoring import metric_grid_for_config

    model = cgflow.CGFlowModel.load("alanine-dipeptide")
    model_frame = metric_grid_for_config(cgflow.load_config("aldp-fast")).centres
    iupac = model.cg_definition.from_model_frame(model_frame, "iupac")
    F_model, _ = model.free_energy(model_frame, frame="model")
    F_iupac, _ = model.free_energy(iupac)
    np.testing.assert_allclose(F_iupac, F_model, rtol=1e-6, atol=1e-6)
    phi, psi = iupac[np.argmin(F_iupac)]
    assert -np.pi < phi < 0, (phi, psi)
    assert float(F_iupac.min()) == pytest.approx(0.0, abs=0.5)   # exported PMFs are zeroed at their minimum
