"""How the benchmark scripts start ``cgflow`` commands: one process each, optionally pinned to one core, and waited
for with the failing command named."""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Optional


def cgflow(*args, core: Optional[int] = None) -> subprocess.Popen:
    """Start ``python -m openmm_cgflow.cli ARGS`` (pinned to ``core`` if given) and print its command line."""
    command = [sys.executable, "-m", "openmm_cgflow.cli", *map(str, args)]
    print("running:", " ".join(command[1:]), flush=True)
    return subprocess.Popen(command, preexec_fn=(lambda: os.sched_setaffinity(0, {core})) if core is not None else None)


def wait(*processes: subprocess.Popen) -> None:
    """Wait for every process; exit naming the first that failed."""
    for p in processes:
        if p.wait():
            raise SystemExit(f"failed (exit {p.returncode}): {' '.join(map(str, p.args))}")
