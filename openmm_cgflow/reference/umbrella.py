"""Umbrella sampling on a periodic grid of harmonic restraints on a system's 1-3 CG dihedrals.

Works for any :class:`~openmm_cgflow.systems.base.CGSystem` whose CG coordinates are one to three dihedrals
(alanine dipeptide's phi/psi, or any molecule's ``cg_dihedrals``). Window centres c_k lie on a grid of the IUPAC
dihedrals (theta_1, ..., theta_d) of the CG atom quadruples (``windows_per_dim`` ** d windows: mind the cost in
3-D); window k adds w_k = k_umb / 2 * sum_i d(theta_i - c_ik)^2 (d = periodic difference), applied as the CG
definition's own restraints (:meth:`~openmm_cgflow.systems.cg_definition.CGDefinition.restraint_forces`) on
s = wrap(sign * theta - offset), which with sign +-1 is the same harmonic. The reference file is written in the
system's CG frame (:mod:`.vfep`). The all-atom Hamiltonian is the system's OpenMM System
(for "alanine-dipeptide": ff96 + OBC1, no constraints), run with LangevinMiddle at 1 fs, the system's temperature,
friction 1/ps on one pinned CPU-platform core.

The run is organised in *passes*: one pass runs every window for ``steps_per_pass`` steps, continuing each
window's own trajectory, and stores its samples of the IUPAC CG dihedrals (``dihedrals``) and, at the same frames,
the unbiased generalized forces d(beta U - ln J)/d theta in kT/rad (``forces``, for the mean-force estimator of
:mod:`.mean_force`: the system's forces, with the window's restraint, known analytically, taken out) in
``seed<S>/pass_<NNN>.npz``. Every pass ends with an
atomic checkpoint (positions and velocities of every window), and within a pass every finished window is saved with
the simulation's random state (``pass_partial.npz``), so the run can stop anywhere and resume bitwise, and every
estimate can be recomputed from the first P passes (the convergence curve). Independent seeds are the
independent halves of the convergence check. Estimation: :mod:`.vfep`.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import openmm
from tqdm.auto import tqdm

from ..coordinates.geometry import frame_dihedrals, periodic_difference
from ..dynamics import LangevinDynamics
from ..errors import InterfaceError
from ..storage import load_arrays, save_arrays, write_json
from ..systems.base import CGSystem, kT_in_kJ_per_mol
from ..scoring.grid import grid_centres
from .mean_force import generalized_forces

@dataclass(frozen=True)
class UmbrellaProtocol:
    """Window layout and MD settings. ``force_constant`` in kT/rad^2 (converted to kJ/mol/rad^2 for OpenMM)."""

    windows_per_dim: int = 18
    force_constant: float = 40.0
    equilibration_steps: int = 2_000
    steps_per_pass: int = 4_000
    record_every: int = 10
    timestep_fs: float = 1.0
    friction_per_ps: float = 1.0
    platform: str = "CPU"

    def centres(self, dim: int = 2) -> np.ndarray:
        """Window centres (n^dim, dim), IUPAC dihedrals in rad, first-dihedral-major: the centres of n equal bins
        over [-pi, pi] per dihedral, -pi + (i + 1/2) 2 pi / n (the scoring grid's layout, at n bins)."""
        return grid_centres(self.windows_per_dim, dim)

    def snake_order(self, dim: int = 2) -> List[int]:
        """Window order in which each window starts from its neighbour's structure: a boustrophedon through the
        grid (each step moves one window along one dihedral; 2-D: rows alternate direction)."""
        n = self.windows_per_dim

        def snake(d: int) -> List[Tuple[int, ...]]:
            if d == 1:
                return [(i,) for i in range(n)]
            inner = snake(d - 1)
            return [(i,) + rest for i in range(n) for rest in (inner if i % 2 == 0 else inner[::-1])]

        return [int(np.ravel_multi_index(index, (n,) * dim)) for index in snake(dim)]


def umbrella_dihedrals(cg_system: CGSystem) -> List[Tuple[int, int, int, int]]:
    """The atom quadruples of a system's CG dihedrals, or a ValueError saying why umbrella sampling on a grid does
    not apply (it needs 1-3 dihedral CG coordinates)."""
    definition = cg_system.cg_definition
    if not 1 <= definition.dim <= 3 or definition.kind != "dihedral":
        raise ValueError(f"the umbrella-sampling reference needs 1-3 dihedral CG coordinates; {cg_system.name} has "
                         f"{definition.dim} {definition.kind} coordinate(s) ({', '.join(definition.names)})")
    return [tuple(cv.atoms) for cv in definition.coordinates]


class UmbrellaRun:
    """One independent umbrella-sampling run (one seed) of ``cg_system`` in ``out/seed<S>``; see the module docstring."""

    def __init__(self, out: Path, seed: int, protocol: UmbrellaProtocol, cg_system: CGSystem):
        self.out = Path(out) / f"seed{seed}"
        self.seed = seed
        self.protocol = protocol
        self.dihedrals = umbrella_dihedrals(cg_system)
        self.cg_system = cg_system
        self.definition = cg_system.cg_definition
        self.n_atoms = cg_system.n_atoms
        self.temperature = cg_system.temperature
        self.kT_kj = kT_in_kJ_per_mol(cg_system.temperature)
        system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(cg_system.system))  # a copy: the shared System stays unbiased
        for force in self.definition.restraint_forces(protocol.force_constant * self.kT_kj):
            system.addForce(force)
        self.dynamics = LangevinDynamics(system, cg_system.temperature, protocol.timestep_fs, protocol.friction_per_ps, protocol.platform,
                                         random_seed=seed + 1)  # 0 would mean "pick one at random"
        self.start_positions = cg_system.positions
        self.state_path = self.out / "state.npz"

    # -- state ----------------------------------------------------------------------------------------------
    def load_state(self) -> Dict[str, object]:
        data = load_arrays(self.state_path, ("positions", "velocities", "passes_done", "protocol_keys", "protocol_values"),
                           what="an umbrella run's state")
        protocol = dict(zip(data["protocol_keys"].tolist(), data["protocol_values"].tolist()))
        mine = {key: str(value) for key, value in asdict(self.protocol).items()}
        if protocol != mine:
            raise InterfaceError(f"{self.state_path} was written with another protocol ({protocol}); use a new {{out}}")
        if "cg_atoms" in data and data["cg_atoms"].tolist() != [list(a) for a in self.dihedrals]:
            raise InterfaceError(f"{self.state_path} restrains other CG dihedrals ({data['cg_atoms'].tolist()}) than this system's "
                                 f"({[list(a) for a in self.dihedrals]}); use a new {{out}}")
        if "openmm_checkpoint" in data:  # the random-number state too: a resumed pass is the uninterrupted one
            self.dynamics.restore(data["openmm_checkpoint"].tobytes())
        return {key: data[key] for key in ("positions", "velocities")} | {
            "passes_done": int(data["passes_done"]), "wall_s": float(data["wall_s"]), "md_steps": int(data["md_steps"])
        }

    def save_state(self, state: Dict[str, object]) -> None:
        keys = list(asdict(self.protocol))
        values = [str(v) for v in asdict(self.protocol).values()]
        save_arrays(
            self.state_path, compressed=False, positions=state["positions"], velocities=state["velocities"],
            passes_done=state["passes_done"], wall_s=state["wall_s"], md_steps=state["md_steps"], seed=self.seed,
            protocol_keys=np.array(keys), protocol_values=np.array(values), cg_atoms=np.array(self.dihedrals),
            openmm_checkpoint=np.frombuffer(self.dynamics.checkpoint(), dtype=np.uint8),
        )

    # -- simulation -----------------------------------------------------------------------------------------
    def _set_window(self, centre: np.ndarray) -> None:
        """Restrain to a window centre given as IUPAC dihedrals: the CG definition's restraints, on the same
        harmonic in its own frame (s = wrap(sign theta - offset), sign +-1)."""
        target = self.definition.from_dihedrals(np.asarray(centre)[None])[0]
        for parameter, value in zip(self.definition.target_parameters(), target):
            self.dynamics.context.setParameter(parameter, float(value))

    def unbiased_forces(self, frames: np.ndarray, forces: np.ndarray, centre: np.ndarray) -> np.ndarray:
        """Generalized forces d(beta U - ln J)/d theta (frames, d) in kT/rad on the IUPAC CG dihedrals, from the
        biased System's positions and forces (nm, kJ/mol/nm): the restraint 0.5 k d(s - target)^2 contributes
        k d(s - target) in the CG frame, taken out; d/d theta = sign d/ds."""
        s, g = generalized_forces(self.cg_system, frames, forces)
        target = self.definition.from_dihedrals(np.asarray(centre)[None])[0]
        g = g - self.protocol.force_constant * periodic_difference(s, target)
        return g * np.array([cv.sign for cv in self.definition.coordinates])

    def initialise(self) -> Dict[str, object]:
        """Minimise, then walk the windows in snake order, equilibrating each from its predecessor's end state."""
        p = self.protocol
        centres = p.centres(len(self.dihedrals))
        order = p.snake_order(len(self.dihedrals))
        n = len(centres)
        positions = np.zeros((n, self.n_atoms, 3))
        velocities = np.zeros((n, self.n_atoms, 3))
        self._set_window(centres[order[0]])
        self.dynamics.start(self.start_positions, velocity_seed=self.seed + 1, minimize=True)
        start = time.perf_counter()
        for k in order:
            self._set_window(centres[k])
            self.dynamics.step(p.equilibration_steps)
            positions[k], velocities[k] = self.dynamics.positions_and_velocities()
        return {"positions": positions, "velocities": velocities, "passes_done": 0,
                "wall_s": time.perf_counter() - start, "md_steps": n * p.equilibration_steps}

    @property
    def partial_path(self) -> Path:
        """The pass in progress: its finished windows, saved after each one (removed when the pass is written)."""
        return self.out / "pass_partial.npz"

    def _save_partial(self, index: int, windows_done: int, samples, generalized, positions, velocities, wall_s: float) -> None:
        save_arrays(self.partial_path, compressed=False, index=index, windows_done=windows_done, samples=samples,
                    generalized=generalized, positions=positions, velocities=velocities, wall_s=wall_s,
                    openmm_checkpoint=np.frombuffer(self.dynamics.checkpoint(), dtype=np.uint8))

    def run_pass(self, state: Dict[str, object], progress: bool = False) -> Dict[str, object]:
        """Run every window for one pass, write its samples, then checkpoint; returns the new state.

        After every window the pass so far is saved (:attr:`partial_path`, with the simulation's random state), so
        a pass that is interrupted resumes at its next window and ends bitwise as the uninterrupted one: a lost
        job loses at most the window it was running."""
        p = self.protocol
        centres = p.centres(len(self.dihedrals))
        n_frames = p.steps_per_pass // p.record_every
        samples = np.zeros((len(centres), n_frames, len(self.dihedrals)), dtype=np.float32)
        generalized = np.zeros_like(samples)
        positions, velocities = state["positions"].copy(), state["velocities"].copy()
        index = state["passes_done"] + 1
        first, earlier_s = 0, 0.0
        if self.partial_path.exists():
            partial = load_arrays(self.partial_path, ("index", "windows_done", "samples", "generalized", "positions", "velocities",
                                                      "openmm_checkpoint", "wall_s"), what="an umbrella pass in progress")
            if int(partial["index"]) == index and partial["samples"].shape == samples.shape:
                first, earlier_s = int(partial["windows_done"]), float(partial["wall_s"])
                samples, generalized = partial["samples"].copy(), partial["generalized"].copy()
                positions, velocities = partial["positions"].copy(), partial["velocities"].copy()
                self.dynamics.restore(partial["openmm_checkpoint"].tobytes())
        start = time.perf_counter()
        for k in tqdm(range(first, len(centres)), disable=not progress, leave=False, desc=f"seed {self.seed} pass {index}"):
            self._set_window(centres[k])
            self.dynamics.set_state(positions[k], velocities[k])
            frames = np.zeros((n_frames, self.n_atoms, 3))
            forces = np.zeros((n_frames, self.n_atoms, 3))
            for f in range(n_frames):
                self.dynamics.step(p.record_every)
                frames[f], forces[f] = self.dynamics.positions_and_forces()
            if not np.isfinite(frames).all():
                raise FloatingPointError(f"seed {self.seed}, window {k}: positions became NaN (integration blew up)")
            positions[k], velocities[k] = self.dynamics.positions_and_velocities()
            samples[k] = frame_dihedrals(frames, self.dihedrals)
            generalized[k] = self.unbiased_forces(frames, forces, centres[k])
            if k + 1 < len(centres):
                self._save_partial(index, k + 1, samples, generalized, positions, velocities, earlier_s + time.perf_counter() - start)
        save_arrays(self.out / f"pass_{index:03d}.npz", dihedrals=samples, forces=generalized, centres=centres)
        new = {"positions": positions, "velocities": velocities, "passes_done": index,
               "wall_s": state["wall_s"] + earlier_s + time.perf_counter() - start,
               "md_steps": state["md_steps"] + len(centres) * p.steps_per_pass}
        self.save_state(new)
        self.partial_path.unlink(missing_ok=True)
        return new


def run_umbrella(out: Path, seeds: Sequence[int], passes: int, protocol: UmbrellaProtocol, cg_system: CGSystem, resume: bool = False,
                 progress: bool = True) -> Dict[str, object]:
    """Run (or resume) independent umbrella runs of ``cg_system``, one per seed, pass by pass in turn, until each has
    ``passes``.

    Alternating the seeds keeps the halves equally long whenever the run stops. Returns the summary written to
    ``out/umbrella.json``.
    """
    out = Path(out)
    runs = [UmbrellaRun(out, seed, protocol, cg_system) for seed in seeds]
    states = []
    for run in runs:
        if run.state_path.exists():
            if not resume:
                raise InterfaceError(f"{run.state_path} exists: use {{resume}} to continue it, or another {{out}}")
            states.append(run.load_state())
        else:
            state = run.initialise()
            run.save_state(state)
            states.append(state)
    bar = tqdm(total=passes * len(runs), initial=sum(min(s["passes_done"], passes) for s in states), disable=not progress, desc="umbrella passes")
    while min(s["passes_done"] for s in states) < passes:
        for i, run in enumerate(runs):
            if states[i]["passes_done"] < passes:
                states[i] = run.run_pass(states[i], progress)
                bar.update(1)
                _write_summary(out, runs, states)
    bar.close()
    return _write_summary(out, runs, states)


def _write_summary(out: Path, runs: List[UmbrellaRun], states: List[Dict[str, object]]) -> Dict[str, object]:
    summary = {
        "method": f"umbrella sampling on a periodic grid of harmonic restraints on the {len(runs[0].dihedrals)} CG dihedral(s)",
        "cg_dihedrals": [list(a) for a in runs[0].dihedrals],
        "protocol": asdict(runs[0].protocol),
        "runs": [{"seed": r.seed, "passes": s["passes_done"], "md_steps": s["md_steps"], "wall_s": s["wall_s"]} for r, s in zip(runs, states)],
    }
    write_json(Path(out) / "umbrella.json", summary)
    return summary


def load_run(out: Path, seed: int) -> Dict[str, object]:
    """The completed passes of one seed (as recorded in its checkpoint): ``samples`` (list over passes of
    (windows, frames, d) IUPAC rad of the d CG dihedrals), ``forces`` (the same shape, kT/rad; None for passes
    written before forces were recorded), ``centres`` (windows, d), the protocol, and its MD-step
    and time accounting. Passes written before runs were generic name their samples ``phi_psi``."""
    state_path = Path(out) / f"seed{seed}" / "state.npz"
    if not state_path.is_file():
        raise FileNotFoundError(f"no umbrella run for seed {seed} in {out} (missing {state_path})")
    state = load_arrays(state_path, ("protocol_keys", "protocol_values", "passes_done"), what="an umbrella run's state")
    protocol = dict(zip(state["protocol_keys"].tolist(), state["protocol_values"].tolist()))
    passes = int(state["passes_done"])
    samples, forces = [], []
    centres = None
    for index in range(1, passes + 1):
        data = load_arrays(Path(out) / f"seed{seed}" / f"pass_{index:03d}.npz", ("centres",), what="an umbrella pass")
        samples.append(data["dihedrals" if "dihedrals" in data else "phi_psi"].astype(np.float64))
        forces.append(data["forces"].astype(np.float64) if "forces" in data else None)
        centres = data["centres"]
    dim = len(state["cg_atoms"]) if "cg_atoms" in state else 2  # runs written before the atoms were stored are 2-D
    n_windows = int(protocol["windows_per_dim"]) ** dim
    return {
        "samples": samples,
        "forces": forces,
        "dim": dim,
        "centres": centres if centres is not None else UmbrellaProtocol(windows_per_dim=int(protocol["windows_per_dim"])).centres(dim),
        "protocol": protocol,
        "force_constant_kT": float(protocol["force_constant"]),
        "equilibration_md_steps": n_windows * int(protocol["equilibration_steps"]),
        "md_steps_per_pass": n_windows * int(protocol["steps_per_pass"]),
        "wall_s": float(state["wall_s"]),
    }
