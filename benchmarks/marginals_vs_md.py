"""Compare a run's PMF on a CG space of any dimension with plain MD of the same system, through 2-D marginals.

    cgflow run ace-ala2-nme --out runs/ace-ala2-nme
    python benchmarks/marginals_vs_md.py --system ace-ala2-nme --run runs/ace-ala2-nme --md-steps 3000000

MD (LangevinMiddle, 1 fs, friction 1/ps, the system's temperature, CPU platform pinned to one core, CG values
every 10 steps) is cached in ``benchmarks/results/md_<system>_seed<S>.npz`` and resumed when more steps are
asked for. For every pair of CG coordinates the run's exp(-F) is marginalised on a ``--bins``^d grid and
compared with the MD histogram (forward KLD with MD as the reference, pseudo-count 0.5 per bin); MD's own
noise is the KLD between its two halves. Also lists the basins: the local minima of the MD 2-D marginals and
of the run's. Writes ``benchmarks/results/marginals_<system>.json`` and prints a table.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def md_cg_values(system_name: str, steps: int, seed: int, record_every: int = 10) -> np.ndarray:
    """CG values (n, d) of MD of ``system_name``, cached and extended across calls."""
    import openmm
    import openmm.unit as unit

    from openmm_cgflow.platforms import default_properties, openmm_random_seed, pin_to_core, resolve_platform
    from openmm_cgflow.systems import create_system

    pin_to_core()
    cg = create_system(system_name)
    path = RESULTS / f"md_{system_name}_seed{seed}.npz"
    integrator = openmm.LangevinMiddleIntegrator(cg.temperature * unit.kelvin, 1.0 / unit.picosecond, 1.0 * unit.femtosecond)
    integrator.setRandomNumberSeed(openmm_random_seed(seed))
    context = openmm.Context(cg.system, integrator, resolve_platform("CPU"), default_properties("CPU"))
    values, done = [], 0
    if path.is_file():
        data = np.load(path)
        values, done = [data["cg"]], int(data["steps"])
        context.setPositions(data["positions"])
        context.setVelocities(data["velocities"])
    else:
        context.setPositions(cg.positions)
        openmm.LocalEnergyMinimizer.minimize(context)
        context.setVelocitiesToTemperature(cg.temperature * unit.kelvin, openmm_random_seed(seed))
    start = time.perf_counter()
    chunk = []
    while done < steps:
        integrator.step(record_every)
        done += record_every
        chunk.append(context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer))
        if len(chunk) == 10_000 or done >= steps:
            values.append(cg.cg_values(np.asarray(chunk)))
            chunk = []
    state = context.getState(getPositions=True, getVelocities=True)
    cg_all = np.concatenate(values) if values else np.zeros((0, cg.cg_dim))
    np.savez_compressed(path, cg=cg_all.astype(np.float32), steps=done,
                        positions=state.getPositions(asNumpy=True).value_in_unit(unit.nanometer),
                        velocities=state.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond))
    print(f"MD: {done} steps ({time.perf_counter() - start:.0f} s this call) in {path}")
    return cg_all.astype(np.float64)


def histogram_2d(values: np.ndarray, bins: int) -> np.ndarray:
    edges = np.linspace(-np.pi, np.pi, bins + 1)
    counts, _, _ = np.histogram2d(values[:, 0], values[:, 1], bins=[edges, edges])
    return counts


def probabilities(counts: np.ndarray, pseudocount: float = 0.5) -> np.ndarray:
    return (counts + pseudocount) / (counts.sum() + pseudocount * counts.size)


def forward_kld(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(p * np.log(p / q)))


def model_marginals(run: Path, bins: int):
    """exp(-F) of the run's final PMF on a bins^d grid, marginalised onto every pair of coordinates."""
    import torch

    from openmm_cgflow.export import load_model

    pmf, metadata = load_model(run / "models" / "pmf_ensemble.pt", expected_kind="pmf_ensemble")
    d = metadata.cg_dim
    axis = -np.pi + (np.arange(bins) + 0.5) * 2 * np.pi / bins
    grid = np.stack(np.meshgrid(*([axis] * d), indexing="ij"), axis=-1).reshape(-1, d)
    F = np.concatenate([pmf.mean_std(torch.as_tensor(grid[k : k + 200_000]))[0].detach().numpy() for k in range(0, len(grid), 200_000)])
    p = np.exp(-(F - F.min())).reshape([bins] * d)
    p /= p.sum()
    names = metadata.definition().names
    return {pair: p.sum(axis=tuple(k for k in range(d) if k not in pair)) for pair in itertools.combinations(range(d), 2)}, names


def basins(p: np.ndarray, threshold_kT: float = 4.0):
    """Local minima (periodic 3x3 neighbourhood) of F = -ln p within threshold_kT of the global minimum, in degrees."""
    F = -np.log(p)
    F -= F.min()
    bins = p.shape[0]
    centres = np.degrees(-np.pi + (np.arange(bins) + 0.5) * 2 * np.pi / bins)
    found = []
    for i, j in itertools.product(range(bins), range(bins)):
        neighbours = [F[(i + a) % bins, (j + b) % bins] for a in (-1, 0, 1) for b in (-1, 0, 1) if a or b]
        if F[i, j] <= min(neighbours) and F[i, j] < threshold_kT:
            found.append((round(float(centres[i]), 1), round(float(centres[j]), 1), round(float(F[i, j]), 2)))
    return sorted(found, key=lambda t: t[2])


def compare_marginals(md: np.ndarray, run: Path, bins: int) -> list:
    """Per pair of CG coordinates: KLD(MD || run) of the 2-D marginals of the run's final PMF (``run/models``),
    MD's own noise (KLD between its halves), and the basins of both, on ``bins`` x ``bins`` periodic bins."""
    marginals, names = model_marginals(run, bins)
    half = len(md) // 2
    rows = []
    for (a, b), p_model in marginals.items():
        p_md = probabilities(histogram_2d(md[:, [a, b]], bins))
        halves = forward_kld(probabilities(histogram_2d(md[:half, [a, b]], bins)), probabilities(histogram_2d(md[half:, [a, b]], bins)))
        rows.append({"pair": f"{names[a]}/{names[b]}", "kld_md_to_run": forward_kld(p_md, np.maximum(p_model, 1e-300)),
                     "kld_md_halves": halves, "basins_md": basins(p_md), "basins_run": basins(p_model)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", required=True, help="a registered system")
    parser.add_argument("--run", type=Path, required=True, help="an active-learning run directory of that system")
    parser.add_argument("--md-steps", type=int, default=3_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bins", type=int, default=24)
    args = parser.parse_args()
    md = md_cg_values(args.system, args.md_steps, args.seed)
    metrics = json.loads((args.run / "metrics.json").read_text())
    rows = compare_marginals(md, args.run, args.bins)
    result = {"system": args.system, "run": str(args.run), "md_steps": int(len(md) * 10), "bins": args.bins, "pairs": rows,
              "run_totals": metrics["totals"],
              "command": f"python benchmarks/marginals_vs_md.py --system {args.system} --run {args.run} --md-steps {args.md_steps} --seed {args.seed} --bins {args.bins}"}
    out = RESULTS / f"marginals_{args.system}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"run: {metrics['totals']['energy_evaluations']} evaluations, {metrics['totals']['wall_s']:.0f} s, {metrics['totals']['iterations']} iterations; "
          f"MD: {len(md) * 10} steps")
    print(f"{'pair':>12} {'KLD(MD || run)':>15} {'KLD MD halves':>14}  basins (deg, kT) MD | run")
    for r in rows:
        print(f"{r['pair']:>12} {r['kld_md_to_run']:>15.3e} {r['kld_md_halves']:>14.3e}  {r['basins_md'][:3]} | {r['basins_run'][:3]}")
    print(f"written {out}")


if __name__ == "__main__":
    main()
