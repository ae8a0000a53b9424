"""The umbrella-sampling reference PMF of a system's 1-3 CG dihedrals: fit the runs of :mod:`.umbrella` with a
chosen estimator, check convergence on the independent seeds, and write the reference file.

Estimators (``estimator``):

- ``mean-force`` (:mod:`.mean_force`): least squares on the windows' unbiased generalized forces. The forces
  decorrelate in tens of femtoseconds where the dihedrals take a picosecond, so on the same alanine-dipeptide
  umbrella data (2 x 9.7e5 MD steps) its halves differ by KLD 1.2e-2 where vFEP's differ by 4.4e-2.
- ``vfep`` (:mod:`.vfep`): maximum likelihood of where the samples sit; the only choice for passes written
  before forces were recorded.
- ``auto``: mean-force when every pass has forces, else vfep.

Both fit F = sum c b(theta_1) x ... x b(theta_d) in a periodic tensor-product basis chosen by cross-validation
between the seeds (held-out likelihood for vFEP, held-out force residual for mean-force).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..storage import write_json
from ..systems.base import CGSystem
from ..systems.cg_definition import CGDefinition
from ..scoring.grid import grid_edges, save_reference
from .mean_force import fit_mean_force, force_statistics
from .bases import candidate_bases, tensor_bin_probabilities, tensor_free_energy
from .vfep import VariationalPMF, basin_check, kld_between, local_minima, sufficient_statistics

ESTIMATORS = ("auto", "mean-force", "vfep")


class _VFEP:
    """vFEP on one window layout: statistics (S, N) per pass add; score = held-out -ln L per sample."""

    description = "vFEP maximum-likelihood fit"
    score_name = "cross_validation_nll_per_sample"

    def __init__(self, centres: np.ndarray, force_constant_kT: float, basis_name: str):
        self.model = VariationalPMF(centres, force_constant_kT, basis_name)
        self.basis_name = basis_name

    def statistics(self, run: Dict[str, object], index: int):
        return sufficient_statistics(run["samples"][index], self.basis_name)

    def fit(self, stats):
        return self.model.fit(*stats).numpy()

    def score(self, c, stats) -> float:
        import torch

        return float(self.model.nll(torch.as_tensor(c), *stats))

    def probabilities(self, c, definition: CGDefinition) -> np.ndarray:
        return tensor_bin_probabilities(c, self.basis_name, definition=definition)


class _MeanForce:
    """Mean force: statistics (A^T A, A^T g, N) per pass add; score = held-out mean squared force residual per
    sample, up to the forces' own variance (the same for every basis)."""

    description = "mean-force (force-matching) least-squares fit of the unbiased generalized forces"
    score_name = "cross_validation_force_residual_per_sample"

    def __init__(self, centres: np.ndarray, force_constant_kT: float, basis_name: str):
        self.dim = centres.shape[1]
        self.basis_name = basis_name

    def statistics(self, run: Dict[str, object], index: int):
        samples, forces = run["samples"][index], run["forces"][index]
        return force_statistics(samples.reshape(-1, self.dim), forces.reshape(-1, self.dim), self.basis_name)

    def fit(self, stats):
        return fit_mean_force(*stats, dim=self.dim)

    def score(self, c, stats) -> float:
        AtA, Atg, n = stats
        flat = c.ravel()
        return float((flat @ AtA @ flat - 2 * flat @ Atg) / n)

    def probabilities(self, c, definition: CGDefinition) -> np.ndarray:
        return tensor_bin_probabilities(c, self.basis_name, definition=definition)


def _add(parts):
    return tuple(sum(values) for values in zip(*parts))


def build_reference(
    out: Path, seeds: Sequence[int], output: Path, cg_system: CGSystem, command: str = "", bases: Optional[Sequence[str]] = None,
    curve_points: int = 8, estimator: str = "auto",
) -> Dict[str, object]:
    """Choose the basis by cross-validation, fit each seed and all seeds together, and write the reference file of
    ``cg_system`` (in its CG frame, on the grid of :func:`~openmm_cgflow.scoring.grid.default_bins` per CG
    dihedral), ``out/reference_report.json`` (with the convergence curve: KLD between the halves and against the
    final estimate vs MD steps; in 2-D the local minima and, where the system names some, its literature basins)
    and ``out/reference_convergence.png``. ``bases``: default :func:`~.bases.candidate_bases`; ``estimator``: see
    the module docstring."""
    from .umbrella import load_run

    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator '{estimator}' (use {', '.join(ESTIMATORS)})")
    out = Path(out)
    start = time.perf_counter()
    runs = [load_run(out, seed) for seed in seeds]
    if len(runs) < 2:
        raise ValueError("the convergence check needs at least two independent seeds")
    passes = min(len(r["samples"]) for r in runs)
    if passes < 1:
        raise ValueError(f"no complete umbrella pass in {out} yet")
    with_forces = all(f is not None for r in runs for f in r["forces"][:passes])
    if estimator == "auto":
        estimator = "mean-force" if with_forces else "vfep"
    if estimator == "mean-force" and not with_forces:
        raise ValueError(f"the umbrella passes in {out} were written without forces; use --estimator vfep")
    kind = _MeanForce if estimator == "mean-force" else _VFEP
    centres, k_kT = runs[0]["centres"], runs[0]["force_constant_kT"]
    dim = centres.shape[1]
    if dim != cg_system.cg_dim:
        raise ValueError(f"the umbrella runs in {out} have {dim} CG dihedral(s), {cg_system.name} has {cg_system.cg_dim}")
    bases = tuple(bases or candidate_bases(dim, estimator))
    models = {name: kind(centres, k_kT, name) for name in bases}
    cache: Dict[Tuple[int, str, int], tuple] = {}

    def stats(i: int, name: str, n_passes: int):
        for p in range(n_passes):
            if (i, name, p) not in cache:
                cache[(i, name, p)] = models[name].statistics(runs[i], p)
        return _add([cache[(i, name, p)] for p in range(n_passes)])

    cv = {}
    for name in bases:
        per_seed = [stats(i, name, passes) for i in range(len(runs))]
        fits = [models[name].fit(s) for s in per_seed]
        cv[name] = float(np.mean([models[name].score(fits[i], per_seed[j]) for i in range(len(runs)) for j in range(len(runs)) if i != j]))
    best = min(cv, key=cv.get)
    model = models[best]
    final_c = model.fit(_add([stats(i, best, passes) for i in range(len(runs))]))
    definition = cg_system.cg_definition
    p_final = model.probabilities(final_c, definition)

    curve = []
    for n in np.unique(np.round(np.geomspace(1, passes, curve_points)).astype(int)).tolist():
        halves = [model.probabilities(model.fit(stats(i, best, n)), definition) for i in range(len(runs))]
        curve.append({
            "passes": n,
            "md_steps_all_seeds": int(sum(r["equilibration_md_steps"] + n * r["md_steps_per_pass"] for r in runs)),
            "kld_between_halves": kld_between(halves[0], halves[1]),
            "kld_final_vs_half": [kld_between(p_final, h) for h in halves],
        })
    between = curve[-1]["kld_between_halves"]
    minima, basins = None, None
    if dim == 2:
        fine = -math.pi + (np.arange(360) + 0.5) * 2 * math.pi / 360
        F_fine = tensor_free_energy(final_c, best, fine, fine)
        minima = local_minima(F_fine, fine)[:8]
        if cg_system.description.literature_basins_deg:
            basins = basin_check(F_fine, fine, cg_system.description.literature_basins_deg)
    md_steps = int(sum(r["equilibration_md_steps"] + passes * r["md_steps_per_pass"] for r in runs))
    provenance = {
        "method": f"umbrella sampling on a periodic grid of harmonic restraints on the {dim} CG dihedral(s) + {model.description}",
        "estimator": estimator,
        "system": cg_system.name,
        "cg_coordinates": definition.to_dict(),
        "hamiltonian": f"{cg_system.description.hamiltonian or 'the OpenMM System of ' + cg_system.name}, {cg_system.temperature:g} K, "
                       "LangevinMiddle 1 fs, friction 1/ps",
        "protocol": runs[0]["protocol"],
        "seeds": list(seeds),
        "passes_per_seed": passes,
        "md_steps": md_steps,
        "md_wall_s": float(sum(r["wall_s"] for r in runs)),
        "basis": best,
        model.score_name: cv,
        "kld_between_halves": between,
        "local_minima_iupac_deg": minima,
        "basins": basins,
        "bin_probabilities": f"integral of exp(-F) over each bin ({' x '.join(['4'] * dim)} sub-points), {definition.frame} frame",
        "command": command,
        "fit_wall_s": time.perf_counter() - start,
    }
    save_reference(output, p_final, provenance, frame=definition.frame)
    report = {"path": str(output), "estimator": estimator, "order": best, "kld_between_halves": between, "md_steps": md_steps, "curve": curve,
              "provenance": provenance}
    write_json(out / "reference_report.json", report)
    _plot(out / "reference_convergence.png", curve, p_final, definition)
    return report


def _plot(path: Path, curve: List[Dict[str, object]], p_final: np.ndarray, definition: CGDefinition) -> None:
    """Convergence curve, and F: a profile in 1-D, a map in 2-D, the map of the first two dihedrals' marginal in 3-D."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.3))
    steps = [c["md_steps_all_seeds"] for c in curve]
    a.loglog(steps, [c["kld_between_halves"] for c in curve], "o-", label="half 1 vs half 2")
    for i in range(len(curve[0]["kld_final_vs_half"])):
        a.loglog(steps, [c["kld_final_vs_half"][i] for c in curve], "s--", label=f"final vs half {i + 1}")
    a.axhline(2e-4, color="k", lw=0.8, ls=":", label="target 2e-4")
    a.set_xlabel("MD steps (all seeds)")
    a.set_ylabel("forward KLD")
    a.legend()
    p = p_final if p_final.ndim < 3 else p_final.sum(axis=2)
    F = -np.log(p)
    if p.ndim == 1:
        centres = grid_edges(len(p))[:-1] + math.pi / len(p)
        b.plot(centres, F - F.min())
        b.set_xlabel(f"{definition.names[0]} ({definition.frame} frame, rad)")
        b.set_ylabel("F (kT)")
    else:
        im = b.imshow(np.minimum(F - F.min(), 15).T, origin="lower", extent=[-math.pi, math.pi, -math.pi, math.pi], cmap="viridis")
        b.set_xlabel(f"{definition.names[0]} ({definition.frame} frame, rad)")
        b.set_ylabel(f"{definition.names[1]} ({definition.frame} frame, rad)")
        fig.colorbar(im, ax=b, label="F (kT)" + (" of the marginal" if p_final.ndim == 3 else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
