"""A PMF-ensemble worker process: ``python -m openmm_cgflow.pmf.group_worker FD CORE``.

Serves ("fit", jobs) requests, each job being the arguments of :func:`~openmm_cgflow.pmf.member_groups.lbfgs_group`
with numpy arrays for tensors, run in order, and answers ("ok", [(parameters, history), ...]) or ("error", message), until
("stop", None) or until the parent goes away (EOF).
"""
import sys


def main(fd: int, core: int) -> None:
    import os

    import torch

    from ..processes import serve, worker_connection
    from .member_groups import lbfgs_group_numpy

    if core >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    conn = worker_connection(fd)
    serve(conn, lambda jobs: [lbfgs_group_numpy(*job) for job in jobs])


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
