"""The MD baseline: plain Langevin MD (1 fs, the system's temperature, friction 1/ps, minimised start) of any
system with 1-3 dihedral CG coordinates (e.g. the built-in alanine dipeptide), with the histogram of its CG
coordinates on the grid of :mod:`.grid` (100 x 100 in 2-D) over the prefix of N steps stored at log-spaced N. Against a reference, each snapshot
gives KLD(reference || MD prefix) with the pseudo-count rule of :mod:`.grid`; one MD step = one evaluation.

Long runs checkpoint atomically (OpenMM checkpoint + histograms) and resume exactly.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from tqdm.auto import tqdm

from ..storage import CheckpointError, load_arrays, load_checkpoint, save_arrays, save_checkpoint, write_json
from ..dynamics import LangevinDynamics
from ..errors import InterfaceError
from ..platforms import openmm_random_seed
from ..systems import CGSystem
from ..scoring.grid import MD_PSEUDOCOUNT, default_bins, histogram_counts, kld_of_histogram, load_reference


#: the MD baseline's checkpoint file in its output folder
MD_CHECKPOINT_NAME = "md_checkpoint.pt"
#: what an MD-baseline checkpoint must hold to be resumed
MD_CHECKPOINT_KEYS = ("steps_target", "seed", "record_every", "steps_done", "counts", "snapshots", "wall_s", "openmm_checkpoint")

CHUNK_STEPS = 100_000


def snapshot_steps(total: int, per_decade: int = 10, first: int = 10_000) -> List[int]:
    """Log-spaced step counts from ``first`` to ``total`` (inclusive), multiples of 1,000."""
    steps = np.unique(np.round(np.logspace(np.log10(first), np.log10(total), max(2, int(per_decade * np.log10(total / first)) + 1)) / 1000) * 1000)
    return [int(s) for s in steps if 0 < s <= total]


def run_md_baseline(
    cg_system: CGSystem, out: Path, steps: int, seed: int = 0, platform: str = "CPU", record_every: int = 10, resume: bool = False,
    progress: bool = True,
) -> Dict[str, object]:
    """Run (or resume) the MD baseline of ``cg_system`` (1-3 dihedral or linear CG coordinates, histogrammed on the grid
    of :func:`~openmm_cgflow.scoring.grid.default_bins` per coordinate, over [-pi, pi) or the coordinates' domain)
    into ``out``; returns the summary written to
    ``out/md_baseline.json``."""
    out = Path(out)
    if isinstance(record_every, bool) or not isinstance(record_every, int) or record_every < 1 or isinstance(steps, bool) or not isinstance(steps, int):
        raise ValueError(f"steps and record_every must be integers >= 1, got {steps!r} and {record_every!r}")
    if steps < record_every or steps % record_every:
        raise InterfaceError(f"{{steps}} ({steps}) must be a multiple of {{record_every}} ({record_every}): the histogram records every "
                             f"{record_every}th step")
    domain = histogram_domain(cg_system)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out / MD_CHECKPOINT_NAME
    dynamics = LangevinDynamics(cg_system.system, cg_system.temperature, 1.0, 1.0, platform, random_seed=openmm_random_seed(seed))
    if resume:
        state = load_checkpoint(checkpoint_path, MD_CHECKPOINT_KEYS)
        if state.get("system", "alanine-dipeptide") != cg_system.name:
            raise InterfaceError(f"{checkpoint_path} is an MD baseline of '{state.get('system', 'alanine-dipeptide')}', not of '{cg_system.name}'; use a new {{out}}")
        if (state["seed"], state["record_every"]) != (seed, record_every):
            raise InterfaceError(f"{checkpoint_path} belongs to a run with other {{seed}}/{{record_every}}; use a new {{out}}")
        if steps < state["steps_done"]:
            raise ValueError(f"{checkpoint_path} already holds {state['steps_done']} steps; --steps must be at least that to resume or extend it")
        state["steps_target"] = steps  # a larger --steps extends the run: MD accumulates across sessions
        try:
            dynamics.restore(state["openmm_checkpoint"])
        except Exception as error:  # OpenMM raises its own exception type for a foreign or damaged state
            raise CheckpointError(f"{checkpoint_path}: OpenMM cannot restore its simulation state ({' '.join(str(error).split())[:160]})") from None
    else:
        if checkpoint_path.exists():
            raise InterfaceError(f"{checkpoint_path} exists: use {{resume}} to continue it, or another {{out}}")
        dynamics.start(cg_system.positions, openmm_random_seed(seed), minimize=True)
        state = {
            "steps_target": steps, "seed": seed, "record_every": record_every, "platform": platform, "system": cg_system.name,
            "temperature_K": cg_system.temperature, "hamiltonian": cg_system.description.hamiltonian,
            "steps_done": 0, "counts": np.zeros((default_bins(cg_system.cg_dim),) * cg_system.cg_dim), "snapshots": {}, "wall_s": 0.0,
            "domain": domain,
        }
    wanted = [s for s in snapshot_steps(steps) if s % record_every == 0]
    bar = tqdm(total=steps, initial=state["steps_done"], unit="step", disable=not progress, desc="MD baseline")
    while state["steps_done"] < steps:
        start = time.perf_counter()
        chunk = min(CHUNK_STEPS, steps - state["steps_done"])
        frames = []
        for _ in range(chunk // record_every):
            dynamics.step(record_every)
            frames.append(dynamics.positions())
            state["steps_done"] += record_every
            if state["steps_done"] in wanted:
                state["counts"] += histogram_counts(cg_system.cg_values(np.asarray(frames)), domain=domain)
                frames = []
                state["snapshots"][state["steps_done"]] = state["counts"].copy()
        if frames:
            state["counts"] += histogram_counts(cg_system.cg_values(np.asarray(frames)), domain=domain)
        state["wall_s"] += time.perf_counter() - start
        state["openmm_checkpoint"] = dynamics.checkpoint()
        save_checkpoint(checkpoint_path, state)
        _write_outputs(out, state)
        bar.update(chunk)
    bar.close()
    return _write_outputs(out, state)


def histogram_domain(cg_system: CGSystem) -> Optional[Tuple[float, float]]:
    """The histogram's domain: None for 1-3 CG dihedrals (the grid over [-pi, pi)), the common domain (nm) of 1-3
    linear CG coordinates; a one-line ValueError for anything else."""
    definition = cg_system.cg_definition
    if cg_system.cg_dim > 3 or definition.kind not in ("dihedral", "linear"):
        raise ValueError(f"the MD baseline histograms 1-3 dihedral or linear CG coordinates; {cg_system.name} has {cg_system.cg_dim} "
                         f"{definition.kind} CG coordinate(s) ({', '.join(definition.names)})")
    if definition.kind == "dihedral":
        return None
    if len(set(definition.domain)) != 1:
        raise ValueError(f"the MD baseline histograms linear CG coordinates on one common domain; {cg_system.name} has {list(definition.domain)}")
    return tuple(float(v) for v in definition.domain[0])


def _write_outputs(out: Path, state: Dict[str, object]) -> Dict[str, object]:
    """Histogram snapshots so far (``md_histograms.npz``) and the summary (``md_baseline.json``)."""
    steps_list = sorted(state["snapshots"])
    counts = np.array([state["snapshots"][s] for s in steps_list], dtype=np.int64).reshape((-1,) + state["counts"].shape)
    domain = state.get("domain")
    save_arrays(out / "md_histograms.npz", steps=np.array(steps_list, dtype=np.int64), counts=counts,
                **({} if domain is None else {"domain": np.asarray(domain, dtype=np.float64)}))
    summary = {
        "system": state.get("system", "alanine-dipeptide"),
        "protocol": (f"minimise, Langevin (LangevinMiddle) 1 fs, {state.get('temperature_K', 300.0):g} K, friction 1/ps, "
                     f"{state.get('hamiltonian') or 'ff96 + OBC1'}, no constraints"),
        "record_every": state["record_every"],
        "empty_bin_rule": f"pseudo-count {MD_PSEUDOCOUNT} in every bin (Krichevsky-Trofimov): p = (c + 1/2) / (N + K/2)",
        "seed": state["seed"],
        "platform": state["platform"],
        "steps_target": state["steps_target"],
        "steps": state["steps_done"],
        "wall_s": state["wall_s"],
        "steps_per_s": state["steps_done"] / max(state["wall_s"], 1e-9),
        "snapshot_steps": steps_list,
    }
    write_json(out / "md_baseline.json", summary)
    return summary


def reference_for(reference_path: Path, cg_system: CGSystem):
    """The reference file an MD baseline of ``cg_system`` is scored against: its CG frame and the histogram grid of
    its number of CG dihedrals (:func:`~openmm_cgflow.scoring.grid.default_bins`), or a one-line ValueError."""
    dim = cg_system.cg_dim
    domain = histogram_domain(cg_system) if 1 <= dim <= 3 else None
    return load_reference(reference_path, default_bins(dim) if 1 <= dim <= 3 else None, frame=cg_system.cg_definition.frame, dim=dim,
                          domain=domain)


def score_md_baseline(out: Path, reference_path: Path, frame: str = "paper") -> List[Dict[str, float]]:
    """KLD(reference || MD prefix) at every stored snapshot (``frame``: the reference's CG frame, see
    :func:`~openmm_cgflow.scoring.grid.load_reference`); written to ``out/md_baseline_kld.json``."""
    data = load_arrays(Path(out) / "md_histograms.npz", ("steps", "counts"), what="MD-baseline histograms")
    grid = data["counts"].shape[1:]
    domain = tuple(float(v) for v in data["domain"]) if "domain" in data else None  # linear CG coordinates (nm)
    reference = load_reference(reference_path, grid[0], frame="linear" if domain is not None else frame, dim=len(grid), domain=domain)
    curve = [{"md_steps": int(s), "forward_kld": kld_of_histogram(reference.probabilities, c)} for s, c in zip(data["steps"], data["counts"])]
    write_json(Path(out) / "md_baseline_kld.json", {"reference": str(reference_path), "reference_provenance": reference.provenance, "curve": curve})
    return curve
