"""A two-node Ray cluster on one machine, and the package's cluster paths run on it.

    python benchmarks/ray_two_nodes.py [--out runs/ray_two_nodes] [--port 6390]

Starts a head node (``ray start --head --num-cpus 1``) and a second node that joins it (``ray start --address``,
``--num-cpus 1``): two raylets, one CPU each, as two machines of a cluster would be. Then, against that address:

1. ``cgflow run muller-brown --seeds 0 1 --executor ray --address HOST:PORT`` (2 iterations each): one job per
   node, each in its own seed directory;
2. ``cgflow reference`` of a one-dihedral vacuum dipeptide (openmmtools) with ``--seeds 1 2 --executor ray``: the
   umbrella seeds as jobs on the two nodes, then the fit;
3. one Müller-Brown run whose *energies* go to Ray actors on the cluster (``energy.executor=ray``,
   ``energy.address=HOST:PORT``, two workers), compared with the same run on the local pool: identical numbers.

Writes ``benchmarks/results/ray_two_nodes.json`` (nodes seen, per job: node, cores, wall time, last line; the
energies-on-Ray comparison) and prints a table. Stops the cluster (``ray stop``) at the end, also on failure.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MOLECULE = ("system:\n  openmmtools: AlanineDipeptideVacuum\n  cg_dihedrals: [[4, 6, 8, 14]]\n  cg_names: [phi]\n"
            "  name: vacuum-phi\n")


def ray_cli(*args: str) -> subprocess.CompletedProcess:
    command = [shutil.which("ray") or "ray", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=dict(os.environ, RAY_AUTH_MODE="disabled"))


def cgflow(*args: str) -> dict:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "openmm_cgflow.cli", *args], capture_output=True, text=True,
                            env=dict(os.environ, RAY_AUTH_MODE="disabled"))
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    print("\n".join(lines[-4:]), flush=True)
    if result.returncode:
        print(result.stderr[-2000:], file=sys.stderr)
    return {"argv": ["cgflow", *args], "returncode": result.returncode, "wall_s": time.perf_counter() - start, "stdout": lines}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "ray_two_nodes")
    parser.add_argument("--port", type=int, default=6390)
    parser.add_argument("--result", type=Path, default=ROOT / "benchmarks" / "results" / "ray_two_nodes.json")
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    address = f"127.0.0.1:{args.port}"
    report = {"address": address, "cores": len(os.sched_getaffinity(0))}
    try:
        head = ray_cli("start", "--head", "--port", str(args.port), "--num-cpus", "1", "--include-dashboard", "false", "--disable-usage-stats")
        worker = ray_cli("start", "--address", address, "--num-cpus", "1", "--disable-usage-stats")
        if head.returncode or worker.returncode:
            print(head.stderr[-1500:], worker.stderr[-1500:], file=sys.stderr)
            return 1
        import ray

        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        nodes = [n for n in ray.nodes() if n["Alive"]]
        report["nodes"] = [{"node_id": n["NodeID"][:12], "cpus": n["Resources"].get("CPU", 0)} for n in nodes]
        ray.shutdown()
        print(f"cluster at {address}: {len(nodes)} nodes, {sum(n['Resources'].get('CPU', 0) for n in nodes):.0f} CPUs", flush=True)

        report["al_seeds"] = cgflow("run", "muller-brown", "--out", str(args.out / "al"), "--seeds", "0", "1", "--executor", "ray",
                                    "--address", address, "--set", "loop.max_iterations=2")
        molecule = args.out / "vacuum-phi.yaml"
        molecule.write_text(MOLECULE)
        report["reference"] = cgflow("reference", str(molecule), "--out", str(args.out / "reference"), "--seeds", "1", "2", "--passes", "2",
                                     "--windows", "12", "--steps-per-pass", "1000", "--executor", "ray", "--address", address)
        common = ["--set", "loop.max_iterations=2", "--set", "energy.n_workers=2", "--quiet"]
        report["energies_on_ray"] = cgflow("run", "muller-brown", "--out", str(args.out / "energies_ray"), "--set", "energy.executor=ray",
                                           "--set", f"energy.address={address}", *common)
        report["energies_local"] = cgflow("run", "muller-brown", "--out", str(args.out / "energies_local"), *common)
        on_ray = json.loads((args.out / "energies_ray" / "metrics.json").read_text())["iterations"]
        local = json.loads((args.out / "energies_local" / "metrics.json").read_text())["iterations"]
        report["energies_identical"] = [(r["forward_kld"], r["energy_evaluations"]) for r in on_ray] == \
                                       [(r["forward_kld"], r["energy_evaluations"]) for r in local]
    finally:
        ray_cli("stop", "--force")
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\n{'what':28s} {'exit':>4s} {'wall s':>8s}")
    for key in ("al_seeds", "reference", "energies_on_ray", "energies_local"):
        print(f"{key:28s} {report[key]['returncode']:>4d} {report[key]['wall_s']:>8.1f}")
    print(f"energies on Ray == local pool: {report['energies_identical']}; written {args.result}")
    ok = all(report[key]["returncode"] == 0 for key in ("al_seeds", "reference", "energies_on_ray", "energies_local"))
    return 0 if ok and report["energies_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
