"""openmm-cgflow: coarse-grained free-energy surfaces from conditional normalizing flows, with OpenMM energies and
OpenMM forces.

The story in four lines::

    import openmm_cgflow as cgflow
    metrics = cgflow.run("muller-brown", "runs/muller-brown")         # learn a PMF (a built-in config or your YAML)
    model = cgflow.CGFlowModel.load("runs/muller-brown")               # its models, for OpenMM
    force = model.pmf_force(scale=-0.5)                                 # an openmm.Force on your System

Your own molecule: ``cgflow.CGSystem.from_openmm(system, topology, positions, temperature, cg_dihedrals)``, then
``cgflow.register_system("my-molecule", factory)`` and ``system: my-molecule`` in a config. Units at the public API
are OpenMM's (nm, kJ/mol, K); inside the math energies are reduced (kT). ``cgflow --help`` lists the command line.

Start with the quickstart, ``docs/quickstart.md`` in the source tree (``mkdocs serve`` there builds the whole site:
your own molecule, the models in OpenMM, the configuration reference, the API).

torch is imported before openmm on purpose: openmm-torch's TorchForce kernels only register when torch's libraries
are loaded first.
"""
import torch  # noqa: F401  (must precede openmm; see module docstring)

from ._version import __version__  # noqa: E402
from .systems import CGSystem, available_systems, create_system, register_system  # noqa: E402
from .energy import EnergyOracle  # noqa: E402
from .config import ConfigError, load_config  # noqa: E402
from .scoring import forward_kld  # noqa: E402

__all__ = ["__version__", "CGSystem", "create_system", "register_system", "available_systems", "EnergyOracle", "load_config",
           "ConfigError", "RunSettings", "ActiveLearningRun", "run", "CGFlowModel", "forward_kld"]

#: names imported on first use (the run and the model facade pull in the flows, the ensemble and mdtraj; worker
#: processes that import this package for its OpenMM bridge never need them)
_LAZY = {"ActiveLearningRun": ".active_learning", "RunSettings": ".active_learning", "CGFlowModel": ".model"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'openmm_cgflow' has no attribute {name!r}")


def run(config, out_dir, seed=None, overrides=(), resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
    """Run active learning: ``config`` is a built-in config's name (:func:`load_config`), a YAML file, a validated
    config dict or :class:`RunSettings`; ``overrides`` are ``"section.key=value"`` strings. Writes checkpoint, metrics,
    models and figures to ``out_dir`` and returns the metrics (as ``metrics.json``)."""
    from .active_learning import ActiveLearningRun, RunSettings

    if isinstance(config, RunSettings):
        settings = config
    elif isinstance(config, dict):
        settings = RunSettings.from_config(config)
    else:
        settings = RunSettings.from_config(load_config(str(config), overrides, seed))
    return ActiveLearningRun(settings, out_dir, progress=progress).run(resume=resume, overwrite=overwrite)


def __dir__():
    return sorted(set(globals()) | set(__all__))
