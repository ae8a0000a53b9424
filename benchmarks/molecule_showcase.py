"""Score an active-learning run on a user molecule (2 CG dihedrals) against well-tempered metadynamics of the same
system, and write the metadynamics reference file it was scored against.

    cgflow run aldp-vacuum --out runs/aldp-vacuum
    cgflow baseline metad aldp-vacuum --steps 5000000 --seed 0 --out runs/metad-vacuum-s0   # and --seed 1
    python benchmarks/molecule_showcase.py --run runs/aldp-vacuum --metad runs/metad-vacuum-s0 --metad runs/metad-vacuum-s1 \\
        --name aldp-vacuum

The reference is exp(-F) of the metadynamics estimates averaged over seeds (F = -(gamma/(gamma-1)) V on the
100 x 100 grid of bin centres); its precision is stated by the forward KLD between the seeds. Writes
``benchmarks/results/molecule_<name>.json`` and ``benchmarks/results/reference_<name>.npz`` (usable as
``metrics.reference``), and prints a table.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from openmm_cgflow.scoring.grid import grid_centres, save_reference
from openmm_cgflow.scoring.kld import forward_kld

RESULTS = Path(__file__).parent / "results"


def probabilities(free_energy: np.ndarray) -> np.ndarray:
    p = np.exp(-(free_energy - free_energy.min()))
    return p / p.sum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="an active-learning run directory (metrics.json, checkpoint.pt)")
    parser.add_argument("--metad", type=Path, action="append", required=True, help="metadynamics run directories (>= 2 seeds)")
    parser.add_argument("--name", required=True)
    args = parser.parse_args()
    from openmm_cgflow.storage import load_checkpoint

    checkpoint = load_checkpoint(args.run / "checkpoint.pt")
    history = checkpoint["state"]["history"]
    n_bins = checkpoint["config"]["metrics"]["n_bins"]
    centres = grid_centres(n_bins)
    estimates, steps = [], []
    for folder in args.metad:
        snapshots = np.load(folder / "metad_snapshots.npz")
        if not np.allclose(snapshots["centres"], centres):
            raise SystemExit(f"{folder}: F is not on the run's {n_bins} x {n_bins} grid")
        estimates.append(snapshots["free_energy_kT"][-1].astype(np.float64))
        steps.append(int(snapshots["steps"][-1]))
    seeds_kld = [forward_kld(probabilities(a), b) for a in estimates for b in estimates if a is not b]
    F_ref = -np.log(np.mean([probabilities(F) for F in estimates], axis=0))
    p_ref = probabilities(F_ref)
    metrics = json.loads((args.run / "metrics.json").read_text())
    rows = []
    for record in history:
        mean = np.asarray(record["mean"])
        rows.append({
            "iteration": record["iteration"],
            "energy_evaluations": record["energy_evaluations"],
            "forward_kld_vs_metad_reference": forward_kld(p_ref, mean),
            "std_visited_mean": record.get("std_visited_mean"),
            "std_visited_max": record.get("std_visited_max"),
            "label_ess_fraction_median": record.get("label_ess_fraction_median"),
            "pmf_change_rms": record.get("pmf_change_rms"),
        })
    frame = "iupac"  # the CG frame of CGSystem.from_openmm (and so of the metadynamics F)
    reference_path = save_reference(RESULTS / f"reference_{args.name}.npz", p_ref.reshape(n_bins, n_bins), {
        "method": "well-tempered metadynamics (openmm.app.Metadynamics), exp(-F) averaged over seeds",
        "runs": [str(f) for f in args.metad], "steps_per_run": steps, "forward_kld_between_seeds": seeds_kld,
    }, frame=frame)
    result = {
        "name": args.name, "run": str(args.run), "metad": [str(f) for f in args.metad], "metad_steps": steps,
        "metad_kld_between_seeds": seeds_kld, "reference_file": str(reference_path), "iterations": rows,
        "run_totals": metrics["totals"],
        "command": "python benchmarks/molecule_showcase.py --run " + str(args.run) + "".join(f" --metad {f}" for f in args.metad) + f" --name {args.name}",
    }
    out = RESULTS / f"molecule_{args.name}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"metadynamics: {len(estimates)} runs of {steps} steps; forward KLD between seeds {', '.join(f'{k:.2e}' for k in seeds_kld)}")
    print(f"{'iteration':>9} {'evaluations':>12} {'KLD vs metad':>13} {'std mean':>9} {'std max':>8} {'ESS frac':>9} {'dPMF rms':>9}")
    for r in rows:
        fmt = lambda v, spec: format(v, spec) if v is not None else "-"  # noqa: E731
        print(f"{r['iteration']:>9} {r['energy_evaluations']:>12} {r['forward_kld_vs_metad_reference']:>13.3e} {fmt(r['std_visited_mean'], '9.3f')} "
              f"{fmt(r['std_visited_max'], '8.3f')} {fmt(r['label_ess_fraction_median'], '9.3f')} {fmt(r['pmf_change_rms'], '9.3f')}")
    print(f"written {out} and {reference_path}")


if __name__ == "__main__":
    main()
