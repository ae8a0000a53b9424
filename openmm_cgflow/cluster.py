"""Independent jobs (AL seeds, baseline seeds, umbrella-sampling seeds) on this machine's cores or on a Ray cluster.

A :class:`Job` is one ``cgflow`` command line that writes into its own directory and checkpoints there. It runs as
a child process (``python -m openmm_cgflow.cli ...``) pinned to ``cpus`` cores of its node that no other job holds
(each core is claimed with an advisory file lock, so jobs on one node never share a core, whichever engine started
them, and a job that dies frees its cores at once). A job whose checkpoint is already there is resumed, so a job
that is retried (its Ray node lost, or the whole command run again) loses no finished iteration, pass or chunk.

* ``executor="local"``: as many jobs at a time as this process's cores allow, ``cores // cpus``;
* ``executor="ray"``: one Ray task per job (``num_cpus=cpus``), placed by Ray on any node of the cluster at
  ``address``; a task whose worker or node dies is retried up to ``max_retries`` times. The output directories must
  be on storage every node sees (as for any cluster job).

The Ray helpers the energy executors share (:func:`import_ray`, :func:`connect_ray`,
:func:`check_address_answers`) live here too.
"""
from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple
from urllib.parse import urlparse

EXECUTORS = ("local", "ray")


# -- Ray ----------------------------------------------------------------------------------------------------------
def import_ray():
    """The ``ray`` module, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ImportError("executor 'ray' needs Ray: pip install 'openmm-cgflow[ray]' (or pip install ray)") from None
    return ray


def check_address_answers(address: str, timeout_s: float = 5.0) -> None:
    """Refuse, in one line, a ``ray://host:port`` or ``host:port`` address where nothing listens (Ray itself would
    retry for minutes)."""
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if parsed.hostname is None or parsed.port is None:
        raise ValueError(f"Ray address must be 'auto', 'ray://HOST:PORT' or 'HOST:PORT', got {address!r}")
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=timeout_s):
            pass
    except OSError as error:
        raise ConnectionError(f"no Ray cluster answers at {address} ({error.strerror or error}); start one with "
                              "`ray start --head` or check the address") from None


def connect_ray(address: Optional[str]):
    """Connect this process to Ray (once): ``None`` starts a local Ray on this machine unless one is connected
    already, ``"auto"`` joins the cluster started on this machine with ``ray start``, otherwise a cluster address."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    if address not in (None, "auto"):
        check_address_answers(address)
    try:
        ray.init(address="local" if address is None else address, include_dashboard=False, log_to_driver=False, logging_level="WARNING",
                 configure_logging=True)
    except ConnectionError as error:
        raise ConnectionError(f"could not join the Ray cluster at {address}: {' '.join(str(error).split())[:300]}") from None
    return ray


def first_line(error: BaseException) -> str:
    """The first line of an error's text (Ray's errors carry whole remote tracebacks), at most 300 characters."""
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


# -- cores of a node ----------------------------------------------------------------------------------------------
def _lock_dir() -> Path:
    path = Path(tempfile.gettempdir()) / f"openmm-cgflow-cores-{os.getuid()}"
    path.mkdir(exist_ok=True)
    return path


def claim_cores(n: int, poll_s: float = 0.2, lock_dir: Optional[Path] = None) -> Tuple[List[int], list]:
    """Claim ``n`` cores of this node that no other job holds (waiting until they are free); returns the cores and
    the open lock files, which hold the claim until they are closed or the process ends. ``lock_dir``: where the
    per-core lock files live (default: one folder per user in the system's temporary directory, shared by every
    job of that user on the node)."""
    lock_dir = _lock_dir() if lock_dir is None else Path(lock_dir)
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if n > len(allowed):
        raise ValueError(f"a job needs {n} cores; this node lets this process use {len(allowed)}")
    while True:
        held = []
        for core in allowed:
            handle = open(lock_dir / f"core{core}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            held.append((core, handle))
            if len(held) == n:
                return [c for c, _ in held], [h for _, h in held]
        for _, handle in held:
            handle.close()
        time.sleep(poll_s)


def _child_setup(cores: List[int]) -> None:
    """In a job's child process before it starts: pin it to its cores, and have it killed when the process that
    started it dies (a lost Ray worker must not leave a run writing on beside its retry)."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cores))
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# -- jobs -----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """One ``cgflow`` command (``argv`` without the program name) writing into ``out``, its output going to
    ``out.parent / (out.name + ".log")`` (appended, so a retried job's log keeps the first try). ``resume_when``: the
    file whose presence means the job has started before; ``--resume`` is then added so it continues where it
    stopped."""

    name: str
    argv: Tuple[str, ...]
    out: Path
    resume_when: Path
    cpus: int = 1

    @property
    def log(self) -> Path:
        return self.out.parent / f"{self.out.name}.log"

    def command(self) -> List[str]:
        resume = ["--resume"] if self.resume_when.exists() and "--resume" not in self.argv else []
        return [sys.executable, "-m", "openmm_cgflow.cli", *self.argv, *resume]


@dataclass
class JobResult:
    """What a finished job left: its exit status, the last line it printed (its one-line summary or error), the
    node and cores it ran on and its wall time (s)."""

    name: str
    returncode: int
    last_line: str
    node: str
    cores: List[int] = field(default_factory=list)
    wall_s: float = 0.0


def run_job(job: Job) -> JobResult:
    """Run one job to its end in a child process on ``job.cpus`` claimed cores of this node (output: ``job.log``)."""
    cores, locks = claim_cores(job.cpus)
    job.out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        with open(job.log, "a") as log:
            command = job.command()
            log.write(f"# {' '.join(command[1:])}  (node {socket.gethostname()}, cores {cores})\n")
            log.flush()
            process = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=lambda: _child_setup(cores),
                                     pass_fds=[h.fileno() for h in locks], env=dict(os.environ, PYTHONUNBUFFERED="1"))
        lines = [line for line in job.log.read_text(errors="replace").splitlines() if line.strip()]
        tail = next((line for line in reversed(lines) if line.startswith(("cgflow", "finished", "reference", "seed")) or " steps at " in line),
                    lines[-1] if lines else "")
        return JobResult(job.name, process.returncode, tail.strip(), _node_name(), cores, time.perf_counter() - start)
    finally:
        for handle in locks:
            handle.close()


def _node_name() -> str:
    """This machine's name, and in a Ray worker the Ray node too (several nodes may share a machine)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return f"{socket.gethostname()}/ray-node-{ray.get_runtime_context().get_node_id()[:8]}"
    return socket.gethostname()


def run_jobs(jobs: Sequence[Job], executor: str = "local", address: Optional[str] = None, max_retries: int = 3,
             on_done=None) -> List[JobResult]:
    """Run independent jobs in parallel (see the module docstring) and return their results in order.
    ``on_done(result)`` is called as each one finishes."""
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if executor == "local":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        slots = max(1, cores // max(job.cpus for job in jobs)) if jobs else 1

        def one(job: Job) -> JobResult:
            result = run_job(job)
            if on_done is not None:
                on_done(result)
            return result

        with ThreadPoolExecutor(max_workers=min(slots, max(1, len(jobs)))) as pool:
            return list(pool.map(one, jobs))
    ray = connect_ray(address)
    remote = ray.remote(run_job)
    refs = {remote.options(num_cpus=job.cpus, max_retries=max_retries, retry_exceptions=False).remote(job): k
            for k, job in enumerate(jobs)}
    results: List[Optional[JobResult]] = [None] * len(jobs)
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        k = refs[done[0]]
        try:
            results[k] = ray.get(done[0])
        except ray.exceptions.RayError as error:  # retries used up: a node that never came back
            results[k] = JobResult(jobs[k].name, 1, f"lost after {max_retries} retries: {first_line(error)}", "?")
        if on_done is not None:
            on_done(results[k])
    return results
