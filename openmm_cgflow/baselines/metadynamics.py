"""Well-tempered metadynamics on the CG coordinates: the enhanced-sampling baseline a user would pick.

OpenMM's ``app.Metadynamics`` (Barducci et al. 2008) biases the CG coordinates s (the system's
``cg_variable_forces``, in the model's frame) with Gaussians whose height decays as exp(-V(s) / (k ΔT)),
ΔT = (γ - 1) T for bias factor γ. Its free-energy estimate is the bias itself, F(s) = -(γ / (γ - 1)) V(s)
(OpenMM's ``getFreeEnergy``), read off the bias grid, interpolated to the centres of the scoring grid and scored
by forward KLD against the system's reference, at log-spaced step counts. Every MD step is one energy
evaluation, so the curve is KLD against evaluations, like the MD baseline's.

The run is resumable: the bias grid, the OpenMM state and the curve so far are checkpointed atomically (tensors
and plain data, see :mod:`openmm_cgflow.storage`) after every chunk.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
from tqdm.auto import tqdm

from ..dynamics import LangevinDynamics
from ..platforms import openmm_random_seed
from ..scoring.kld import forward_kld
from ..storage import load_checkpoint, save_arrays, save_checkpoint, write_json
from ..systems.base import CGSystem, kT_in_kJ_per_mol
from .md import snapshot_steps

CHECKPOINT_NAME = "metad_checkpoint.pt"
#: F (kT, float32) on the scoring grid at every snapshot, so the curve can be rescored against another reference
SNAPSHOTS_NAME = "metad_snapshots.npz"
CHECKPOINT_KEYS = ("protocol", "steps_target", "seed", "steps_done", "bias", "openmm_checkpoint", "curve", "wall_s")


@dataclass(frozen=True)
class MetadynamicsProtocol:
    """Well-tempered metadynamics settings. Widths are in the CG coordinates' units (rad or nm).

    bias_factor: γ > 1 (CG coordinates sampled as at γ T); height_kT: initial Gaussian height in kT;
    width: Gaussian standard deviation; deposit_every: MD steps between Gaussians; grid_points: bias grid points
    per CG coordinate (0: OpenMM's default, 5 per width over the range); timestep_fs, friction_per_ps: Langevin.
    """

    bias_factor: float = 6.0
    height_kT: float = 0.5
    width: float = 0.35
    deposit_every: int = 500
    grid_points: int = 0
    timestep_fs: float = 1.0
    friction_per_ps: float = 1.0

    def __post_init__(self):
        if not self.bias_factor > 1.0:
            raise ValueError(f"metadynamics bias factor must be > 1, got {self.bias_factor}")
        for name in ("height_kT", "width", "timestep_fs", "friction_per_ps"):
            if not 0 < getattr(self, name) < float("inf"):
                raise ValueError(f"metadynamics {name} must be a finite number > 0, got {getattr(self, name)}")
        if self.deposit_every < 1 or self.grid_points < 0 or self.grid_points == 1:
            raise ValueError("metadynamics deposit_every must be >= 1 and grid_points 0 (default) or >= 2")


def bias_variables(cg_system: CGSystem, protocol: MetadynamicsProtocol, ranges: Optional[List[tuple]] = None) -> List[app.BiasVariable]:
    """One ``app.BiasVariable`` per CG coordinate over ``ranges`` (default: the system's CG domain)."""
    if cg_system.cg_dim > 3:
        raise ValueError(f"app.Metadynamics biases 1 to 3 collective variables; {cg_system.name} has {cg_system.cg_dim}")
    forces = cg_system.cg_variable_forces()
    ranges = ranges or list(cg_system.cg_domain)
    grid = protocol.grid_points or None
    periodic = cg_system.cg_definition.periodic
    return [app.BiasVariable(f, lo, hi, protocol.width, p, grid) for f, (lo, hi), p in zip(forces, ranges, periodic)]


def free_energy_at(meta: app.Metadynamics, variables: List[app.BiasVariable], points: np.ndarray, kT: float) -> np.ndarray:
    """The well-tempered estimate F(s) = -(γ/(γ-1)) V(s) in kT at ``points`` (n, cg_dim), linearly interpolated on
    the bias grid (OpenMM's grid runs from min to max inclusive; it is stored with the last variable first)."""
    from scipy.interpolate import RegularGridInterpolator

    F = np.asarray(meta.getFreeEnergy().value_in_unit(unit.kilojoule_per_mole)) / kT
    F = np.transpose(F.reshape([v.gridWidth for v in reversed(variables)]))  # -> first variable first
    axes = [np.linspace(v.minValue, v.maxValue, v.gridWidth) for v in variables]
    query = np.array(points, dtype=np.float64).reshape(-1, len(variables))
    for k, v in enumerate(variables):
        if v.periodic:
            query[:, k] = v.minValue + np.mod(query[:, k] - v.minValue, v.maxValue - v.minValue)
        else:
            query[:, k] = np.clip(query[:, k], v.minValue, v.maxValue)
    return RegularGridInterpolator(axes, F, method="linear")(query)


def _restore_bias(meta: app.Metadynamics, bias: np.ndarray, context: openmm.Context) -> None:
    """Load a checkpointed bias grid into ``meta`` and the Context (the state ``_addGaussian`` leaves behind)."""
    if bias.shape != meta._totalBias.shape:
        raise ValueError(f"checkpointed bias grid has shape {bias.shape}, this protocol's grid {meta._totalBias.shape}")
    meta._selfBias[...] = bias
    meta._totalBias[...] = bias
    if len(meta.variables) == 1:
        meta._table.setFunctionParameters(meta._totalBias.flatten(), *meta._limits)
    else:
        meta._table.setFunctionParameters(*meta._widths, meta._totalBias.flatten(), *meta._limits)
    meta._force.updateParametersInContext(context)


def run_metadynamics(
    cg_system: CGSystem,
    out: Path,
    steps: int,
    p_reference: np.ndarray,
    centres: np.ndarray,
    protocol: MetadynamicsProtocol = MetadynamicsProtocol(),
    seed: int = 0,
    platform: str = "CPU",
    resume: bool = False,
    progress: bool = True,
    chunk_steps: int = 100_000,
) -> Dict[str, Any]:
    """Run (or resume) well-tempered metadynamics for ``steps`` MD steps into ``out``. Resuming with a larger
    ``steps`` (same protocol and seed) extends the run, so sampling accumulates across sessions.

    ``p_reference`` (bin probabilities, or None: no scoring) and ``centres`` ((n_bins, cg_dim), model frame) define
    the scoring grid, where F is recorded at every snapshot.
    Writes ``out/metad_baseline.json`` (protocol, steps/s, the curve of forward KLD against steps, the final F on
    the grid) and returns it, and ``out/metad_snapshots.npz`` (F on the grid at every snapshot).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    out = Path(out)
    path = out / CHECKPOINT_NAME
    if not resume and path.exists():
        raise ValueError(f"{path} exists: use --resume to continue it, or another --out")
    system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(cg_system.system))
    variables = bias_variables(cg_system, protocol)
    kT = kT_in_kJ_per_mol(cg_system.temperature)
    meta = app.Metadynamics(system, variables, cg_system.temperature * unit.kelvin, protocol.bias_factor,
                            protocol.height_kT * kT * unit.kilojoule_per_mole, protocol.deposit_every)
    dynamics = LangevinDynamics(system, cg_system.temperature, protocol.timestep_fs, protocol.friction_per_ps, platform,
                                random_seed=openmm_random_seed(seed), topology=cg_system.topology)
    simulation = dynamics.simulation
    if resume:
        state = load_checkpoint(path, CHECKPOINT_KEYS)
        if state["protocol"] != asdict(protocol) or state["seed"] != seed:
            raise ValueError(f"{path} belongs to a run with another protocol or --seed; use a new --out")
        if steps < state["steps_done"]:
            raise ValueError(f"{path} already holds {state['steps_done']} steps; --steps must be at least that to resume or extend it")
        state["steps_target"] = steps  # a larger --steps extends a finished or running run
        dynamics.restore(state["openmm_checkpoint"])
        _restore_bias(meta, np.asarray(state["bias"]), simulation.context)
        simulation.currentStep = state["steps_done"]
    else:
        dynamics.start(cg_system.positions, openmm_random_seed(seed), minimize=True)
        state = {"protocol": asdict(protocol), "steps_target": steps, "seed": seed, "steps_done": 0, "curve": [], "wall_s": 0.0}
    wanted = [s for s in snapshot_steps(steps, first=min(10_000, steps)) if s > state["steps_done"]]
    bar = tqdm(total=steps, initial=state["steps_done"], unit="step", disable=not progress, desc="metadynamics")
    while state["steps_done"] < steps:
        start = time.perf_counter()
        target = min(steps, state["steps_done"] + chunk_steps, *(wanted[:1] or [steps]))
        meta.step(simulation, target - state["steps_done"])
        state["wall_s"] += time.perf_counter() - start
        bar.update(target - state["steps_done"])
        state["steps_done"] = target
        if wanted and target == wanted[0]:
            wanted.pop(0)
            F = free_energy_at(meta, variables, centres, kT)
            state["curve"].append({"md_steps": target, "forward_kld": forward_kld(p_reference, F) if p_reference is not None else None})
            state["snapshots"] = np.vstack([state.get("snapshots", np.empty((0, len(F)), np.float32)), F.astype(np.float32)[None]])
        state["bias"] = np.array(meta._selfBias)
        state["openmm_checkpoint"] = dynamics.checkpoint()
        save_checkpoint(path, state)
    bar.close()
    F = free_energy_at(meta, variables, centres, kT)
    summary = {
        "system": cg_system.name, "method": "well-tempered metadynamics (openmm.app.Metadynamics), F = -(gamma/(gamma-1)) V",
        "protocol": asdict(protocol), "seed": seed, "platform": platform, "steps": state["steps_done"],
        "wall_s": state["wall_s"], "steps_per_s": state["steps_done"] / max(state["wall_s"], 1e-9),
        "curve": state["curve"], "final_forward_kld": forward_kld(p_reference, F) if p_reference is not None else None, "free_energy_kT": F.tolist(),
    }
    write_json(out / "metad_baseline.json", summary)
    snapshots = state.get("snapshots", np.empty((0, len(F)), np.float32))
    steps_at = np.array([point["md_steps"] for point in state["curve"]], dtype=np.int64)
    save_arrays(out / SNAPSHOTS_NAME, steps=steps_at, free_energy_kT=snapshots, centres=centres)
    return summary
