"""A run's checkpoint: written atomically after every iteration (tensors and plain data only, see
:mod:`openmm_cgflow.storage`), read back with its stored config validated, and compared with the config of a run
that resumes it."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

from .._version import __version__
from ..config import ConfigError, config_differences, validate_config
from ..errors import InterfaceError
from ..storage import CheckpointError, load_checkpoint, save_checkpoint
from .context import RunContext
from .settings import GlobalCosineSchedule, RunSettings

CHECKPOINT_NAME = "checkpoint.pt"
#: what a checkpoint must hold to be resumed
CHECKPOINT_KEYS = ("config", "state", "flow", "flow_norm", "optimizer", "dataset", "ensemble", "torch_generator", "numpy_generator")
#: config keys a resumed run may change: its stopping limits (a finished run is then extended), where its
#: energies are computed (the same numbers on any executor: a run started on this machine may go on on a cluster),
#: and how many of its latest fits its PMF averages (what it reports, not what it does)
EXTENDABLE_KEYS = ("loop.max_iterations", "loop.stop_kld", "loop.stable_ratio", "loop.stable_iterations", "loop.max_wall_s", "loop.max_evaluations",
                   "energy.executor", "energy.address", "ensemble.average_fraction")


def read_run_checkpoint(path: Path) -> Dict[str, Any]:
    """A run's checkpoint with its config validated (a damaged or hand-edited config is refused, one line)."""
    checkpoint = load_checkpoint(path, CHECKPOINT_KEYS)
    try:
        checkpoint["config"] = validate_config(checkpoint["config"])
    except ConfigError as error:
        raise CheckpointError(f"{path} holds an invalid config: {error}") from None
    return checkpoint


def write_run_checkpoint(path: Path, run: RunContext) -> None:
    """Everything a run needs to continue exactly: config, state, flow (+ its normalisation and optimizer),
    dataset, ensemble (and the fits the PMF averages) and both random generators."""
    save_checkpoint(path, {
        "package_version": __version__,
        "config": run.settings.to_config(),
        "state": run.state.to_dict(),
        "flow": run.flow.state_dict(),
        "flow_norm": run.flow_norm,
        "optimizer": run.optimizer.state_dict(),
        "dataset": run.dataset.state_dict(),
        "ensemble": run.ensemble.state_dict(),
        "fits": run.fits.state_dict(),
        "torch_generator": run.torch_gen.get_state(),
        "numpy_generator": run.rng.bit_generator.state,
    })


def changed_keys(path: Path, stored: Dict[str, Any], settings: RunSettings) -> List[str]:
    """The config keys in which ``settings`` differ from the checkpoint's ``stored`` config; a ConfigError if any of
    them may not change on resume (only the stopping limits may; not ``loop.max_iterations`` under a global cosine
    schedule, whose decay spans the planned epochs)."""
    differences = config_differences(stored, settings.to_config())
    extendable = set(EXTENDABLE_KEYS)
    if isinstance(settings.energy_training.schedule, GlobalCosineSchedule):
        extendable.discard("loop.max_iterations")
    fixed = [key for key in differences if key not in extendable]
    if fixed:
        raise InterfaceError(
            f"{path} was written with a different config (keys: {', '.join(fixed)}); "
            "resume with the same config (only " + ", ".join(sorted(extendable)) + " may change) or start a new {out} directory"
        )
    return differences
