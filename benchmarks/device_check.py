"""Device check (issue 14): the flow trained on a GPU and TorchForce CG dynamics on a GPU, in one short script.

    python benchmarks/device_check.py [--device cuda] [--platform CUDA] [--out DIR] [--quick]

Three parts, each timed on alanine dipeptide:

1. flow training step (flow 8 x 128, the aldp-fast flow) on ``--device``: float64/float32, eager/compiled, batches
   64 / 256 / 1024, with a stand-in energy (benchmarks/flow_step.py): samples per second of the flow alone;
2. training by energy with the real OpenMM energies: :class:`EnergyTrainer` with the flow on ``--device`` and an
   :class:`EnergyOracle` of CPU-platform workers, one pinned worker per spare core: evaluations per second;
3. CG Langevin dynamics on the learned-PMF force (``openmmtorch.TorchForce``) on ``--platform``: replicas of the
   CG chain in one Context, copy-steps per second (replicas x steps / wall s) for 1, 64 and 1,024 replicas.

Writes ``device_check.json`` to ``--out`` (default: $OUT when set, else benchmarks/results/) and prints a table.
``--quick --device cpu --platform CPU`` runs the same code with a few steps, for checking the script on a CPU
machine (the CI does not run it). Budget on one GPU: ~5 min, most of it compiling.
"""
from __future__ import annotations

import argparse
import json
import os
import platform as host
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch  # noqa: F401  (before openmm)

sys.path.insert(0, str(Path(__file__).parent))
from flow_step import time_steps  # noqa: E402

from openmm_cgflow import EnergyOracle, create_system  # noqa: E402
from openmm_cgflow.export import save_model  # noqa: E402
from openmm_cgflow.flows import ConditionalSplineFlow  # noqa: E402
from openmm_cgflow.flows.training import EnergyTrainer  # noqa: E402
from openmm_cgflow.forces.cg_dynamics import cg_dynamics_system, replica_positions, run_langevin_frames  # noqa: E402
from openmm_cgflow.pmf import PMFEnsemble  # noqa: E402
from openmm_cgflow.scoring.grid import grid_centres, load_reference  # noqa: E402
from openmm_cgflow.systems.alanine_dipeptide import packaged_reference_path  # noqa: E402


def flow_rows(aldp, device: str, quick: bool) -> list:
    """Part 1: the flow alone."""
    steps = 3 if quick else 30
    configs = [("float64", False, 64), ("float32", False, 64), ("float32", False, 256), ("float32", False, 1024),
               ("float32", True, 64), ("float32", True, 1024)]
    if quick:
        configs = configs[:2]
    rows = []
    for precision, compile, batch in configs:
        row = time_steps(aldp, precision, compile, 128, 8, batch, steps, device)
        print(f"  flow  {precision} compile={compile!s:<5} batch {batch:>5}: {row['ms_per_step']:8.2f} ms/step "
              f"{row['samples_per_s']:>9,} samples/s", flush=True)
        rows.append(row)
    return rows


def energy_training_rows(aldp, device: str, n_workers: int, quick: bool) -> list:
    """Part 2: reverse-KL steps with OpenMM energies (CPU platform, ``n_workers`` pinned processes)."""
    steps = 2 if quick else 40
    rows = []
    with EnergyOracle(aldp, "CPU", n_workers=n_workers) as oracle:
        for precision, batch in ([("float32", 64)] if quick else [("float32", 64), ("float32", 256), ("float32", 1024)]):
            torch.manual_seed(0)
            flow = ConditionalSplineFlow(aldp.fg_dim, list(aldp.flow_circular_indices), aldp.cg_dim, 8, 8, 128, 1)
            flow = (flow.float() if precision == "float32" else flow).to(device)
            trainer = EnergyTrainer(flow, aldp, oracle, torch.optim.Adam(flow.parameters(), lr=5e-4), skip_top_k=5)
            generator = torch.Generator().manual_seed(0)
            s = torch.rand(batch, aldp.cg_dim, generator=generator, dtype=torch.float64) * 2 * np.pi - np.pi
            trainer.step(s, generator, 1000.0)  # warm-up
            before = oracle.n_evaluations
            start = time.perf_counter()
            for _ in range(steps):
                trainer.step(s, generator, 1000.0)
            wall = time.perf_counter() - start
            evaluations = oracle.n_evaluations - before
            row = {"device": device, "precision": precision, "batch": batch, "oracle_workers": n_workers,
                   "evaluations": evaluations, "wall_s": round(wall, 2), "evaluations_per_s": round(evaluations / wall)}
            print(f"  train {precision} batch {batch:>5}, {n_workers} oracle workers: {row['evaluations_per_s']:>9,} evaluations/s", flush=True)
            rows.append(row)
    return rows


def pmf_model(aldp, folder: Path) -> Path:
    """A 3-member PMF ensemble fitted to the packaged reference on a 25 x 25 subgrid (a realistic surface), saved
    with the export metadata TorchForce needs."""
    F = load_reference(packaged_reference_path()).free_energy().ravel()
    sub = np.arange(0, 100, 4)
    pick = (sub[:, None] * 100 + sub[None, :]).ravel()
    ensemble = PMFEnsemble(2, 3, (32, 32), periodic=True).double()
    ensemble.fit(grid_centres(100)[pick], np.minimum(F[pick], 20.0), 200, 64, 1.0, "fraction", "xavier",
                 torch.Generator().manual_seed(0), "lbfgs")
    return save_model(ensemble, folder / "aldp_pmf.pt", kind="pmf_ensemble", system="alanine-dipeptide",
                      temperature_K=aldp.temperature, cg_dim=2, cg_metadata=aldp.description.to_dict())


def cg_dynamics_rows(aldp, platform: str, quick: bool) -> list:
    """Part 3: TorchForce CG dynamics, copy-steps per second."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        model = pmf_model(aldp, Path(folder))
        for n_replicas, steps in ([(1, 20), (64, 20)] if quick else [(1, 2000), (64, 2000), (1024, 1000)]):
            system = cg_dynamics_system(aldp, model, n_replicas)
            rng = np.random.default_rng(0)
            positions = replica_positions(aldp.cg_definition, rng.uniform(-np.pi, np.pi, (n_replicas, 2)))
            run_langevin_frames(system, positions, 10, 10, aldp.temperature, platform=platform)  # warm-up (Context, model load)
            start = time.perf_counter()
            run_langevin_frames(system, positions, steps, steps, aldp.temperature, platform=platform)
            wall = time.perf_counter() - start
            row = {"platform": platform, "replicas": n_replicas, "steps": steps, "wall_s": round(wall, 2),
                   "steps_per_s": round(steps / wall, 1), "copy_steps_per_s": round(n_replicas * steps / wall)}
            print(f"  CG dynamics on {platform}, {n_replicas:>5} replicas: {row['steps_per_s']:>9,} steps/s "
                  f"{row['copy_steps_per_s']:>11,} copy-steps/s", flush=True)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="torch device of the flow (cuda, cpu)")
    parser.add_argument("--platform", default="CUDA", help="OpenMM platform of the CG dynamics (CUDA, CPU, Reference)")
    parser.add_argument("--workers", type=int, default=None, help="oracle workers (default: the cores but one)")
    parser.add_argument("--quick", action="store_true", help="a few steps of everything (checking the script on a CPU)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or Path(__file__).parent / "results"))
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here (use --device cpu --platform CPU --quick to check the script)")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = args.workers or max(1, cores - 1)
    torch.set_num_threads(1)
    aldp = create_system("alanine-dipeptide")
    record = {"benchmark": "device_check", "device": args.device, "platform": args.platform, "quick": args.quick,
              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "cores": cores,
              "machine": host.platform(), "torch": torch.__version__}
    start = time.perf_counter()
    print("1. flow training step, stand-in energy", flush=True)
    record["flow"] = flow_rows(aldp, args.device, args.quick)
    print("2. training by energy with OpenMM energies", flush=True)
    record["energy_training"] = energy_training_rows(aldp, args.device, workers, args.quick)
    print("3. TorchForce CG dynamics", flush=True)
    record["cg_dynamics"] = cg_dynamics_rows(aldp, args.platform, args.quick)
    record["wall_s"] = round(time.perf_counter() - start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "device_check.json"
    path.write_text(json.dumps(record, indent=2))
    print(f"done in {record['wall_s']} s; written to {path}")


if __name__ == "__main__":
    main()
