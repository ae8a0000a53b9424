"""An EnergyOracle worker process: ``python -m openmm_cgflow.energy.worker FD CORE``.

FD is this end of a socket pair to the parent; CORE is the CPU core to pin to (-1: no pinning).
The parent first sends (system_xml, platform_name, properties); the worker answers ("ready", None) or
("error", message), then serves ("eval", positions) requests until ("stop", None) or until the
parent goes away (EOF), so a killed parent never leaves workers behind.
"""
import sys


def main(fd: int, core: int) -> None:
    from ..platforms import pin_to_core

    if core >= 0:
        pin_to_core(core)
    from ..processes import serve, worker_connection

    conn = worker_connection(fd)
    try:
        system_xml, platform_name, properties = conn.recv()
    except (EOFError, OSError):
        return
    try:
        from .context_evaluator import ContextEvaluator

        evaluator = ContextEvaluator(system_xml, platform_name, properties)
        conn.send(("ready", None))
    except Exception as error:  # report start-up failures (bad platform, bad XML) to the parent
        conn.send(("error", f"{type(error).__name__}: {error}"))
        return
    serve(conn, evaluator.evaluate)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
