"""What a run leaves behind besides its checkpoint: ``metrics.json`` (per iteration and totals), the TorchScript
models with their metadata (``models/flow.pt``, ``models/pmf_ensemble.pt``) and the figures (``pmf.png``,
``pmf_iterations.png``, ``kld.png``). ``cgflow export`` writes the models of any checkpoint the same way."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from .._version import __version__
from ..export import ModelMetadata, save_model
from ..pmf import PMFEnsemble
from ..storage import CheckpointError, write_json
from ..systems import CGSystem, system_label
from .checkpoint import read_run_checkpoint
from .context import build_flow, damaged_checkpoint
from .scoring import MetricGrid, score_points
from .settings import RunSettings
from .state import IterationRecord, RunState

#: files and folders a run writes into its output directory besides its checkpoint (``overwrite=True`` removes them)
OUTPUT_FILES = ("metrics.json", "models", "pmf.png", "pmf_iterations.png", "kld.png")


def metrics(settings: RunSettings, state: RunState) -> Dict[str, Any]:
    """The run's ``metrics.json``: one row per iteration (:data:`IterationRecord.METRICS`), totals, the config."""
    last = state.history[-1] if state.history else None
    return {
        "system": system_label(settings.system),
        "package_version": __version__,
        "iterations": [record.metrics_row() for record in state.history],
        "totals": {
            "iterations": state.iteration,
            "energy_evaluations": state.energy_evaluations,
            "energy_evaluations_computed": state.energy_evaluations_computed,
            "starting_md_steps": state.md_steps,
            "final_forward_kld": last.forward_kld if last else None,
            "wall_s": state.wall_s,
            "skipped_batches": state.skipped_batches,
            "finished": state.finished,
            "stop_reason": state.stop_reason,
        },
        "config": settings.to_config(),
    }


def write_metrics(out_dir: Path, settings: RunSettings, state: RunState) -> None:
    write_json(Path(out_dir) / "metrics.json", metrics(settings, state))


def export_models(flow, ensemble: PMFEnsemble, cg_system: CGSystem, models_dir: Path) -> List[Path]:
    """Write a run's models as TorchScript with their metadata (:func:`~openmm_cgflow.export.save_model`):
    ``models_dir/flow.pt`` (the conditional flow, with the system's atoms) and ``models_dir/pmf_ensemble.pt``, the
    PMF shifted so that its minimum over a grid of the CG domain is 0 kT (a PMF is defined up to a constant, and a
    bias of ``scale`` x F should not carry hundreds of kT; the constant removed is in the metadata,
    ``pmf_offset_removed_kT``)."""
    models_dir = Path(models_dir)
    pmf = copy.deepcopy(ensemble)
    mean, _ = pmf.predict(domain_grid(cg_system))
    removed = float(mean.min())
    with torch.no_grad():
        pmf.output_offset -= removed
    metadata = ModelMetadata.for_system(cg_system, "pmf_ensemble")
    metadata = dataclasses.replace(metadata, extra={**metadata.extra, "pmf_offset_removed_kT": removed, "pmf_minimum": "0 kT on a grid of the CG domain"})
    return [
        save_model(flow, models_dir / "flow.pt", ModelMetadata.for_system(cg_system, "conditional_flow", include_system=True)),
        save_model(pmf, models_dir / "pmf_ensemble.pt", metadata),
    ]


def domain_grid(cg_system: CGSystem) -> np.ndarray:
    """Cell centres of a regular grid over the system's CG domain (1,000 cells in 1-D, 100^2, 40^3, 20^4, 10^d)."""
    dim = cg_system.cg_dim
    n = {1: 1000, 2: 100, 3: 40, 4: 20}.get(dim, 10)
    axes = [lo + (hi - lo) * (np.arange(n) + 0.5) / n for lo, hi in cg_system.cg_domain]
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=-1)


def export_checkpoint_models(checkpoint_path: Path, models_dir: Path) -> Dict[str, Any]:
    """Write the models of a run's checkpoint (the state after its latest finished iteration) to ``models_dir``, as
    a finished run writes its own: for a run that was interrupted, or one still running. Needs no OpenMM Context.
    Returns ``{"paths", "iteration", "energy_evaluations", "forward_kld"}`` of that iteration."""
    checkpoint = read_run_checkpoint(Path(checkpoint_path))
    settings = RunSettings.from_config(checkpoint["config"])
    cg_system = settings.create_system()
    try:
        flow = build_flow(settings.flow, cg_system, settings.seed, *checkpoint["flow_norm"])
        flow.load_state_dict(checkpoint["flow"])
        ensemble = settings.ensemble.build(cg_system.cg_dim, cg_system.cg_periodic)
        ensemble.load_state_dict(checkpoint["ensemble"])
        fits = settings.ensemble.fit_window()  # the run's PMF averages these fits (ensemble.average_fraction)
        fits.load_state_dict(checkpoint.get("fits", {"fits": []}))
        ensemble = fits.ensemble(ensemble)
        history = checkpoint["state"]["history"]
        last = history[-1] if history else None
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise damaged_checkpoint(checkpoint_path, error) from None
    if last is None:
        raise CheckpointError(f"{checkpoint_path} holds no finished iteration yet: nothing to export")
    paths = export_models(flow, ensemble, cg_system, models_dir)
    return {"paths": paths, "iteration": last["iteration"], "energy_evaluations": last["energy_evaluations"], "forward_kld": last.get("forward_kld")}


def plot_run(out_dir: Path, settings: RunSettings, cg_system: CGSystem, grid: Optional[MetricGrid], history: List[IterationRecord]) -> None:
    """``kld.png`` (with a reference), and ``pmf.png`` (1-2 CG coordinates; 1-D also ``pmf_iterations.png``)."""
    from ..plotting import plot_kld, plot_pmf_1d, plot_pmf_2d, plot_pmf_iterations

    if not history:
        return
    out_dir, last = Path(out_dir), history[-1]
    names = [f"{cv.name} ({cv.unit})" for cv in cg_system.cg_definition.coordinates]
    score = (f"forward KLD {last.forward_kld:.2e}" if last.forward_kld is not None else
             f"max std on visited points {last.signals.std_visited_max:.2f} kT")
    title = f"{cg_system.name}: iteration {last.iteration}, {score}"
    if grid is not None:
        plot_kld(out_dir / "kld.png", [h.energy_evaluations for h in history], [h.forward_kld for h in history], target=1e-3)
    reference = -np.log(grid.p_reference) if grid is not None else None
    domain = settings.metrics.domain
    n = int(round(np.sqrt(len(last.mean))))  # the scoring grid's own bins (a reference file may have other bins than metrics.n_bins)
    if cg_system.cg_dim == 2 and len(last.mean):
        plot_pmf_2d(out_dir / "pmf.png", np.linspace(domain[0], domain[1], n + 1), None if reference is None else reference.reshape(n, n),
                    last.mean.reshape(n, n), last.std.reshape(n, n), last.label_points, title=title, labels=names)
        return
    if cg_system.cg_dim != 1:
        return
    centres = score_points(settings.metrics, 1, grid)[:, 0]
    points, tags, values = last.label_points[:, 0], last.label_iteration, last.labels
    per_iteration = [(points[tags == i], values[tags == i]) for i in range(int(tags.max()) + 1)]
    plot_pmf_1d(out_dir / "pmf.png", centres, reference, last.mean, last.std, [p for p, _ in per_iteration], [v for _, v in per_iteration],
                title=title, xlabel=names[0])
    plot_pmf_iterations(out_dir / "pmf_iterations.png", centres, reference, [h.to_dict() for h in history])
