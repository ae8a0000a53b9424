"""Helper processes: fresh interpreters running ``python -m MODULE FD CORE`` over a socket pair.

Unlike multiprocessing's spawn they never re-import the caller's ``__main__`` (so user scripts without an
``if __name__ == "__main__"`` guard work), and no fork of a threaded process happens. A worker reads requests
from its end of the pair and exits on EOF, so a killed parent never leaves workers behind. Messages are pickled
by :class:`multiprocessing.connection.Connection`; send numpy arrays, not torch tensors (torch registers
shared-memory reductions for multiprocessing's pickler, which need a multiprocessing-managed child).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from multiprocessing.connection import Connection
from typing import Any, Callable, Sequence, Tuple


def launch_worker(module: str, core: int) -> Tuple[subprocess.Popen, Connection]:
    """Start ``python -m module FD core`` (core -1: unpinned) and return (process, this end of the connection).

    A pinned worker is pinned from its first instruction: libraries that size their thread pools when they load
    (torch's and tblite's OpenMP runtimes) then see one core, instead of spinning several threads on it."""
    parent_sock, child_sock = socket.socketpair()
    pin = (lambda: os.sched_setaffinity(0, {core})) if core >= 0 and hasattr(os, "sched_setaffinity") else None
    process = subprocess.Popen(
        [sys.executable, "-m", module, str(child_sock.fileno()), str(core)],
        pass_fds=(child_sock.fileno(),),
        stdin=subprocess.DEVNULL,
        preexec_fn=pin,
    )
    child_sock.close()
    return process, Connection(parent_sock.detach())


def worker_connection(fd: int) -> Connection:
    """The worker's end of the pair (``fd`` from its command line)."""
    return Connection(fd)


def serve(conn: Connection, handle: Callable[[Any], Any]) -> None:
    """The worker's loop: answer each request (message, payload) with ("ok", handle(payload)) or ("error", text),
    until ("stop", None) or until the parent goes away (EOF)."""
    while True:
        try:
            message, payload = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if message == "stop":
            return
        try:
            conn.send(("ok", handle(payload)))
        except Exception as error:  # report, keep serving
            conn.send(("error", f"{type(error).__name__}: {error}"))


def stop_workers(workers: Sequence[Tuple[subprocess.Popen, Connection]]) -> None:
    """Ask every worker to stop, then wait for it (kill it after 2 s, and wait until it is gone: on a loaded machine
    a killed process can take longer than any fixed time to exit) and close its connection."""
    for _, conn in workers:
        try:
            conn.send(("stop", None))
        except (OSError, ValueError):
            pass
    for process, conn in workers:
        try:
            process.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        conn.close()
