"""Shared fixtures: the OpenMM platforms to test on with their tolerance table; a small PMF ensemble fitted to the
packaged alanine-dipeptide reference; the benchmark scripts as modules; every test gets back the CPU affinity it
started with."""
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import openmm
import pytest
import torch

from openmm_cgflow.export import save_model
from openmm_cgflow.pmf import PMFEnsemble
from openmm_cgflow.scoring.grid import grid_centres, load_reference
from openmm_cgflow.systems.alanine_dipeptide import packaged_reference_path
from openmm_cgflow.systems import create_system


AVAILABLE_PLATFORMS = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
#: every platform this machine has (Reference and CPU always; GPUs where present)
PLATFORMS = ["Reference", "CPU"] + [p for p in ("OpenCL", "CUDA") if p in AVAILABLE_PLATFORMS]
#: relative tolerance of an energy from OpenMM against the same model in float64 torch: the CPU platform computes
#: in mixed precision (single-precision forces); GPUs run in double precision here (PLATFORM_PROPERTIES)
TOLERANCE = {"Reference": 1e-9, "CPU": 1e-5, "OpenCL": 1e-9, "CUDA": 1e-9}
PLATFORM_PROPERTIES = {"CPU": {"Threads": "1"}, "OpenCL": {"Precision": "double"}, "CUDA": {"Precision": "double"}}


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="session")
def benchmark_script():
    """``load(name)``: ``benchmarks/<name>.py`` as a module, imported as when it runs as a script (its folder on
    sys.path while it loads, for its sibling helpers such as ``curves.py``) and registered under its name, so its
    dataclasses resolve their annotations through it."""
    loaded = {}

    def load(name: str):
        if name not in loaded:
            spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            sys.path.insert(0, str(BENCHMARKS))
            try:
                spec.loader.exec_module(module)
            finally:
                sys.path.remove(str(BENCHMARKS))
            loaded[name] = module
        return loaded[name]

    yield load
    for name in loaded:
        sys.modules.pop(name, None)


@pytest.fixture(params=PLATFORMS)
def platform(request):
    """Each OpenMM platform available here, by name."""
    return request.param


@pytest.fixture
def tolerance(platform):
    """The relative energy tolerance of ``platform`` (:data:`TOLERANCE`)."""
    return TOLERANCE[platform]


def pytest_configure(config):
    """Under pytest-xdist (``-n N``) every worker process gets its share of the cores for torch's threads, so N
    workers do not each start a thread per core. torch.compile's on-disk cache (inductor) goes to a fresh folder
    per test process, removed at the end: the tests neither reuse a user's compiled kernels nor leave theirs for
    later runs (a stale entry in this machine's default cache once made every compile of the 8 x 128 flow fail
    with C++ errors; a run then trains eagerly after its fallback warning, but a test must not depend on that)."""
    config._cgflow_inductor_cache = tempfile.mkdtemp(prefix="cgflow-tests-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = config._cgflow_inductor_cache
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers and hasattr(os, "sched_getaffinity"):
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // int(workers)))


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "_cgflow_inductor_cache", ""), ignore_errors=True)


@pytest.fixture(autouse=True)
def restore_cpu_affinity():
    """The command line pins its own process (pin_to_core, pin_driver); a test calling ``cli.main`` in-process
    would otherwise leave the whole rest of the session on one core."""
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    yield
    if cores is not None:
        os.sched_setaffinity(0, cores)


@pytest.fixture(scope="session")
def reference_pmf_model(tmp_path_factory):
    """(model file, ensemble): 3 members fitted to the reference PMF on a 25 x 25 subgrid (a realistic surface
    with the beta, alphaR and alphaL basins), saved with the ALDP export metadata."""
    aldp = create_system("alanine-dipeptide")
    F = load_reference(packaged_reference_path()).free_energy().ravel()
    centres = grid_centres(100)
    sub = np.arange(0, 100, 4)
    pick = (sub[:, None] * 100 + sub[None, :]).ravel()
    ensemble = PMFEnsemble(2, 3, (32, 32), periodic=True).double()
    ensemble.fit(centres[pick], np.minimum(F[pick], 20.0), 300, 64, 1.0, "fraction", "xavier", torch.Generator().manual_seed(0), "lbfgs")
    path = save_model(ensemble, tmp_path_factory.mktemp("reference_pmf") / "aldp_pmf.pt", kind="pmf_ensemble", system="alanine-dipeptide",
                      temperature_K=aldp.temperature, cg_dim=2, cg_metadata=aldp.description.to_dict())
    return path, ensemble


@pytest.fixture(scope="session")
def local_ray():
    """One real local Ray for the whole test run (``ray.init(num_cpus=2)``); tests that use it carry
    ``pytest.mark.xdist_group("ray")`` so they share one pytest-xdist worker, and so this one Ray."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()
