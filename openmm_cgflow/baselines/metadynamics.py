"""Well-tempered metadynamics on the CG coordinates: the enhanced-sampling baseline a user would pick.

OpenMM's ``app.Metadynamics`` (Barducci et al. 2008) biases the CG coordinates s (the system's
``cg_variable_forces``, in the model's frame) with Gaussians whose height decays as exp(-V(s) / (k ΔT)),
ΔT = (γ - 1) T for bias factor γ. Its free-energy estimate is the bias itself, F(s) = -(γ / (γ - 1)) V(s)
(OpenMM's ``getFreeEnergy``), read off the bias grid, interpolated to the centres of the scoring grid and scored
by forward KLD against the system's reference, at log-spaced step counts. Every MD step is one energy
evaluation, so the curve is KLD against evaluations, like the MD baseline's.

The run is resumable: the bias grid, the OpenMM state and the curve so far are checkpointed atomically (tensors
and plain data, see :mod:`openmm_cgflow.storage`) after every chunk. :func:`run_biased` is the runner OPES shares
(:mod:`.opes`); every point of a curve records the wall time of the run up to it.
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
from ..errors import InterfaceError
from ..platforms import openmm_random_seed
from ..scoring.kld import forward_kld
from ..storage import load_checkpoint, save_arrays, save_checkpoint, write_json
from ..systems.base import CGSystem, kT_in_kJ_per_mol
from .md import snapshot_steps

CHECKPOINT_NAME = "metad_checkpoint.pt"
#: F (kT, float32) on the scoring grid at every snapshot, so the curve can be rescored against another reference
SNAPSHOTS_NAME = "metad_snapshots.npz"


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


class _MetadynamicsSampler:
    """What the biased runner needs of well-tempered metadynamics: build it, step it, save and restore its bias."""

    name = "metadynamics"
    files = ("metad_checkpoint.pt", "metad_snapshots.npz", "metad_baseline.json")
    state_key = "bias"
    method = "well-tempered metadynamics (openmm.app.Metadynamics), F = -(gamma/(gamma-1)) V"

    def __init__(self, protocol: MetadynamicsProtocol):
        self.protocol = protocol

    def build(self, system: openmm.System, cg_system: CGSystem):
        protocol, kT = self.protocol, kT_in_kJ_per_mol(cg_system.temperature)
        self.variables = bias_variables(cg_system, protocol)
        self.meta = app.Metadynamics(system, self.variables, cg_system.temperature * unit.kelvin, protocol.bias_factor,
                                     protocol.height_kT * kT * unit.kilojoule_per_mole, protocol.deposit_every)

    def step(self, simulation: app.Simulation, steps: int) -> None:
        self.meta.step(simulation, steps)

    def state(self) -> np.ndarray:
        return np.array(self.meta._selfBias)

    def restore(self, state, context: openmm.Context) -> None:
        _restore_bias(self.meta, np.asarray(state), context)

    def free_energy(self, points: np.ndarray, kT: float) -> np.ndarray:
        return free_energy_at(self.meta, self.variables, points, kT)


def run_biased(
    sampler,
    cg_system: CGSystem,
    out: Path,
    steps: int,
    p_reference: Optional[np.ndarray],
    centres: np.ndarray,
    seed: int = 0,
    platform: str = "CPU",
    resume: bool = False,
    progress: bool = True,
    chunk_steps: int = 100_000,
) -> Dict[str, Any]:
    """Run (or resume) a biased simulation of ``cg_system`` on its CG coordinates for ``steps`` MD steps into ``out``
    (the sampler: :class:`_MetadynamicsSampler`, or :class:`~openmm_cgflow.baselines.opes.OPESSampler`). Resuming with
    a larger ``steps`` (same protocol and seed) extends the run, so sampling accumulates across sessions.

    ``p_reference`` (bin probabilities, or None: no scoring) and ``centres`` ((n_bins, cg_dim), model frame) define
    the scoring grid, where the sampler's free-energy estimate is recorded at log-spaced step counts. Writes the
    sampler's checkpoint (atomically, after every chunk), its snapshots (F on the grid at every snapshot, .npz) and
    summary (.json), and returns the summary.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    out = Path(out)
    checkpoint_name, snapshots_name, summary_name = sampler.files
    path = out / checkpoint_name
    if not resume and path.exists():
        raise InterfaceError(f"{path} exists: use {{resume}} to continue it, or another {{out}}")
    system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(cg_system.system))
    sampler.build(system, cg_system)
    kT = kT_in_kJ_per_mol(cg_system.temperature)
    protocol = sampler.protocol
    dynamics = LangevinDynamics(system, cg_system.temperature, protocol.timestep_fs, protocol.friction_per_ps, platform,
                                random_seed=openmm_random_seed(seed), topology=cg_system.topology)
    simulation = dynamics.simulation
    if resume:
        state = load_checkpoint(path, ("protocol", "steps_target", "seed", "steps_done", sampler.state_key, "openmm_checkpoint", "curve", "wall_s"))
        if state["protocol"] != asdict(protocol) or state["seed"] != seed:
            raise InterfaceError(f"{path} belongs to a run with another protocol or {{seed}}; use a new {{out}}")
        if steps < state["steps_done"]:
            raise InterfaceError(f"{path} already holds {state['steps_done']} steps; {{steps}} must be at least that to resume or extend it")
        state["steps_target"] = steps  # a larger --steps extends a finished or running run
        dynamics.restore(state["openmm_checkpoint"])
        sampler.restore(state[sampler.state_key], simulation.context)
        simulation.currentStep = state["steps_done"]
    else:
        dynamics.start(cg_system.positions, openmm_random_seed(seed), minimize=True)
        state = {"protocol": asdict(protocol), "steps_target": steps, "seed": seed, "steps_done": 0, "curve": [], "wall_s": 0.0}
    wanted = [s for s in snapshot_steps(steps, first=min(10_000, steps)) if s > state["steps_done"]]
    bar = tqdm(total=steps, initial=state["steps_done"], unit="step", disable=not progress, desc=sampler.name)
    while state["steps_done"] < steps:
        start = time.perf_counter()
        target = min(steps, state["steps_done"] + chunk_steps, *(wanted[:1] or [steps]))
        sampler.step(simulation, target - state["steps_done"])
        state["wall_s"] += time.perf_counter() - start
        bar.update(target - state["steps_done"])
        state["steps_done"] = target
        if wanted and target == wanted[0]:
            wanted.pop(0)
            F = sampler.free_energy(centres, kT)
            state["curve"].append({"md_steps": target, "forward_kld": forward_kld(p_reference, F) if p_reference is not None and np.isfinite(F).all() else None,
                                   "wall_s": state["wall_s"]})
            state["snapshots"] = np.vstack([state.get("snapshots", np.empty((0, len(F)), np.float32)), F.astype(np.float32)[None]])
        state[sampler.state_key] = sampler.state()
        state["openmm_checkpoint"] = dynamics.checkpoint()
        save_checkpoint(path, state)
    bar.close()
    F = sampler.free_energy(centres, kT)
    summary = {
        "system": cg_system.name, "method": sampler.method, "protocol": asdict(protocol), "seed": seed, "platform": platform,
        "steps": state["steps_done"], "wall_s": state["wall_s"], "steps_per_s": state["steps_done"] / max(state["wall_s"], 1e-9),
        "curve": state["curve"], "final_forward_kld": forward_kld(p_reference, F) if p_reference is not None and np.isfinite(F).all() else None,
        "free_energy_kT": F.tolist(),
    }
    write_json(out / summary_name, summary)
    snapshots = state.get("snapshots", np.empty((0, len(F)), np.float32))
    steps_at = np.array([point["md_steps"] for point in state["curve"]], dtype=np.int64)
    save_arrays(out / snapshots_name, steps=steps_at, free_energy_kT=snapshots, centres=centres)
    return summary


def run_metadynamics(cg_system: CGSystem, out: Path, steps: int, p_reference: Optional[np.ndarray], centres: np.ndarray,
                     protocol: MetadynamicsProtocol = MetadynamicsProtocol(), seed: int = 0, platform: str = "CPU", resume: bool = False,
                     progress: bool = True, chunk_steps: int = 100_000) -> Dict[str, Any]:
    """Well-tempered metadynamics of ``cg_system`` for ``steps`` MD steps into ``out`` (:func:`run_biased`): writes
    ``metad_checkpoint.pt``, ``metad_snapshots.npz`` and ``metad_baseline.json`` (protocol, steps/s, the curve of
    forward KLD against steps, the final F on the grid) and returns the summary."""
    return run_biased(_MetadynamicsSampler(protocol), cg_system, out, steps, p_reference, centres, seed, platform, resume, progress, chunk_steps)
