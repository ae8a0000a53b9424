"""Helper processes: fresh interpreters running ``python -m MODULE FD CORE`` over a socket pair.

Unlike multiprocessing's spawn they never re-import the caller's ``__main__`` (so user scripts without an
``if __name__ == "__main__"`` guard work), and no fork of a threaded process happens. A worker reads requests
from its end of the pair and exits on EOF, so a killed parent never leaves workers behind. Messages are pickled
by :class:`multiprocessing.connection.Connection`; send numpy arrays, not torch tensors (torch registers
shared-memory reductions for multiprocessing's pickler, which need a multiprocessing-managed child).
"""
from __future__ import annotations

import socket
import subprocess
import sys
from multiprocessing.connection import Connection
from typing import Tuple


def launch_worker(module: str, core: int) -> Tuple[subprocess.Popen, Connection]:
    """Start ``python -m module FD core`` (core -1: unpinned) and return (process, this end of the connection)."""
    parent_sock, child_sock = socket.socketpair()
    process = subprocess.Popen(
        [sys.executable, "-m", module, str(child_sock.fileno()), str(core)],
        pass_fds=(child_sock.fileno(),),
        stdin=subprocess.DEVNULL,
    )
    child_sock.close()
    return process, Connection(parent_sock.detach())


def worker_connection(fd: int) -> Connection:
    """The worker's end of the pair (``fd`` from its command line)."""
    return Connection(fd)
