"""The ``cgflow`` command line.

    cgflow run CONFIG_OR_BUILTIN --out DIR [--seed N] [--set section.key=value ...] [--resume] [--quiet]
    cgflow run CONFIG_OR_BUILTIN --out DIR --seeds 0 1 2 [--executor local|ray] [--address A]   seeds in parallel,
                                        DIR/seed<S> each (on this machine's cores, or on a Ray cluster)
    cgflow data start SYSTEM [--seed N] [--platform CPU]   make and cache a system's starting MD ahead of a run
                                        (for aldp: SPEC 2.2's 50 ps of MD, 5,000 frames)
    cgflow md-baseline SYSTEM --steps N --out DIR [--reference FILE] [--resume]   MD baseline (1-3 CG dihedrals)
    cgflow baseline metad|opes|md SYSTEM --steps N --out DIR [--reference FILE] [--resume] [--bias-factor G ...]
                                        well-tempered metadynamics, OPES (or MD) on the CG coordinates, KLD vs steps
                                        (--seeds 0 1 2 [--executor ray]: seeds in parallel, DIR/seed<S> each)
    cgflow reference SYSTEM --out DIR --passes N [--seeds 1 2] [--resume] [--fit-only] [--output FILE]
                                        umbrella-sampling reference PMF of any system with 1-3 CG dihedrals
                                        (runs, then fits and writes FILE in the system's CG frame; --executor
                                        local|ray runs the seeds in parallel)
    cgflow backmap MODEL CG_FILE --out FILE.pdb|.dcd [--n-per-frame N] [--refine minimize]   backmapping
    cgflow configs                      list the built-in configs
    cgflow show-config CONFIG_OR_BUILTIN [--set ...]   print the resolved config as YAML

Errors in the input (config keys, values, files) are reported in one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

import yaml

from .config import ConfigError, builtin_configs, load_config
from .energy.executors import WorkerLost
from .errors import InterfaceError


def _count(minimum: int):
    """argparse type: an integer >= ``minimum`` (argparse then reports a bad value in one line, exit 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (exit 2) instead of the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _add_job_options(parser: argparse.ArgumentParser, cpus_help: str) -> None:
    """``--executor``/``--address``/``--cpus-per-job``: where independent seeds run (:mod:`openmm_cgflow.cluster`)."""
    parser.add_argument("--executor", choices=["local", "ray"], default=None,
                        help="run the seeds as parallel jobs: local (this machine's cores) or ray (a Ray cluster; pip install 'openmm-cgflow[ray]')")
    parser.add_argument("--address", default=None, help="ray: the cluster to join ('auto': the one `ray start` made here; "
                        "ray://HOST:PORT; default: a Ray started for this command). Output directories must be on storage every node sees")
    parser.add_argument("--cpus-per-job", type=_count(1), default=None, help=cpus_help)


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="cgflow", description="Coarse-grained free energies with conditional flows and OpenMM.",
                            epilog="Start with `cgflow run muller-brown --out runs/muller-brown`; the quickstart is "
                                   "docs/quickstart.md in the source tree (`mkdocs serve` builds the documentation site).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    run = sub.add_parser("run", help="run active learning on a built-in config or a YAML file")
    run.add_argument("config", help=f"built-in config ({', '.join(builtin_configs())}) or a YAML file")
    run.add_argument("--out", required=True, type=Path, help="output directory (metrics.json, figures, models/, checkpoint)")
    run.add_argument("--seed", type=_count(0), default=None, help="random seed (overrides the config's)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. loop.max_iterations=5")
    run.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt (with its stored config unless --set/--seed are given, which must then match)")
    run.add_argument("--overwrite", action="store_true", help="start afresh in a non-empty DIR, replacing the run outputs there (without it, a non-empty DIR is refused)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--seeds", type=_count(0), nargs="+", default=None, help="independent runs in parallel, one per seed, in OUT/seed<S>")
    _add_job_options(run, "cores per seed (default: the config's energy.n_workers)")
    data = sub.add_parser("data", help="make and cache input data")
    data.add_argument("what", choices=["start"], help="start: the starting MD of SYSTEM as its config describes it "
                      "(section starting_data), cached where `cgflow run` finds it")
    data.add_argument("system", nargs="?", default=None, help="a registered system (or alias), a built-in config or a YAML config")
    data.add_argument("--seed", type=_count(0), default=None, help="the run's seed (default: the config's)")
    data.add_argument("--platform", default=None, help="OpenMM platform (default: the config's energy.platform; CPU is pinned to one core)")
    md = sub.add_parser("md-baseline", help="plain MD and its KLD-vs-steps curve (the denominator of every speedup)")
    md.add_argument("system", help="a system with 1-3 dihedral CG coordinates: registered (aldp), a built-in config or a YAML molecule")
    md.add_argument("--steps", type=_count(1), required=True, help="number of 1 fs MD steps")
    md.add_argument("--out", type=Path, required=True)
    md.add_argument("--seed", type=_count(0), default=0)
    md.add_argument("--platform", default="CPU")
    md.add_argument("--record-every", type=_count(1), default=10, help="steps between histogrammed frames")
    md.add_argument("--reference", type=Path, default=None, help="reference file to score the curve against")
    md.add_argument("--resume", action="store_true")
    md.add_argument("--quiet", action="store_true")
    base = sub.add_parser("baseline", help="the baselines a user would run instead: well-tempered metadynamics, OPES or plain MD, scored by forward KLD against steps")
    base.add_argument("method", choices=["metad", "opes", "md"], help="metad: well-tempered metadynamics on the CG coordinates (app.Metadynamics); "
                      "opes: OPES (openmm-opes); md: plain MD (as md-baseline)")
    base.add_argument("system", help="a registered system (muller-brown, alanine-dipeptide; aldp for short) or a YAML config describing a molecule")
    base.add_argument("--steps", type=_count(1), required=True, help="MD steps (= energy evaluations)")
    base.add_argument("--out", type=Path, required=True)
    base.add_argument("--seed", type=_count(0), default=0)
    base.add_argument("--seeds", type=_count(0), nargs="+", default=None, help="independent runs in parallel, one per seed, in OUT/seed<S>")
    base.add_argument("--platform", default="CPU")
    base.add_argument("--reference", type=Path, default=None, help="reference file to score against (default: the system's packaged/exact reference)")
    base.add_argument("--bias-factor", type=_positive_float, default=None,
                      help="metad: gamma > 1, CG coordinates sampled as at gamma T (default 6); opes: the target's bias factor (default: barrier/kT)")
    base.add_argument("--height", type=_positive_float, default=0.5, help="metad: initial Gaussian height in kT")
    base.add_argument("--width", type=_positive_float, default=0.35, help="metad: Gaussian width (std) in the CG units (rad or nm)")
    base.add_argument("--deposit-every", type=_count(1), default=500, help="metad, opes: MD steps between Gaussians (kernels)")
    base.add_argument("--barrier", type=_positive_float, default=20.0, help="opes: the barrier to overcome, kT (sets the bias factor barrier/kT)")
    base.add_argument("--fixed-width", action="store_true", help="opes: kernels of the fixed --width instead of the adaptive variance")
    base.add_argument("--variance-every", type=_count(0), default=0, help="opes: steps between variance updates (0: --deposit-every)")
    base.add_argument("--explore", action="store_true", help="opes: OPES-explore")
    base.add_argument("--correct-smoothing", action="store_true", help="opes: F from the kernel density with its smoothing bias removed")
    base.add_argument("--friction", type=_positive_float, default=1.0, help="Langevin friction in 1/ps")
    base.add_argument("--resume", action="store_true")
    base.add_argument("--quiet", action="store_true")
    _add_job_options(base, "cores per seed (default 1)")
    ref = sub.add_parser("reference", help="reference PMF by umbrella sampling + a mean-force (or vFEP) fit, for any system with 1-3 CG dihedrals")
    ref.add_argument("system", help="a registered system (alanine-dipeptide; aldp for short), a built-in config or a YAML config describing a molecule")
    ref.add_argument("--out", type=Path, required=True, help="run directory (per-seed passes and checkpoints)")
    ref.add_argument("--passes", type=_count(1), required=True, help="passes over all windows per seed")
    ref.add_argument("--seeds", type=_count(0), nargs="+", default=[1, 2], help="independent runs (the convergence halves)")
    ref.add_argument("--windows", type=_count(2), default=None, help="windows per CG dihedral (n^d windows; default 36, 18, 12 for d = 1, 2, 3)")
    ref.add_argument("--force-constant", type=_positive_float, default=None,
                     help="restraint force constant in kT/rad^2 (default 40; 3-D: 15, for the wider window spacing)")
    ref.add_argument("--steps-per-pass", type=_count(10), default=4000, help="1 fs steps per window per pass")
    ref.add_argument("--platform", default="CPU")
    ref.add_argument("--resume", action="store_true")
    ref.add_argument("--fit-only", action="store_true", help="do not simulate; fit the passes already in --out")
    ref.add_argument("--bases", nargs="+", default=None, metavar="BASIS",
                     help="candidate bases for the cross-validated fit, bspline<m> or fourier<L> (default vfep: bspline18 ... bspline45, fourier8, fourier12; mean-force: bspline18, bspline24, fourier6 ... fourier12; 3-D: bspline8, bspline12, fourier4, fourier6)")
    ref.add_argument("--estimator", choices=["auto", "mean-force", "vfep"], default="auto",
                     help="mean-force: least squares on the unbiased generalized forces (default when the passes have them); vfep: "
                          "maximum likelihood of the sampled dihedrals")
    ref.add_argument("--output", type=Path, default=None, help="reference file to write (default: DIR/reference_<SYSTEM>.npz, e.g. reference_aldp.npz)")
    ref.add_argument("--quiet", action="store_true")
    _add_job_options(ref, "cores per seed (default 1)")
    bm = sub.add_parser("backmap", help="all-atom structures from CG frames with a trained flow")
    bm.add_argument("model", type=Path, help="flow model file (a run's models/flow.pt)")
    bm.add_argument("cg_file", type=Path, help=".npy or text file of CG frames (n, cg_dim), rad (nm for linear CG coordinates)")
    bm.add_argument("--frame", choices=["iupac", "model"], default="iupac",
                    help="the CG frames' frame: iupac (plain IUPAC dihedrals, default) or model (the model's own CG frame)")
    bm.add_argument("--out", type=Path, required=True, help="trajectory to write (.pdb or .dcd); weights go to OUT.weights.npz")
    bm.add_argument("--n-per-frame", type=_count(1), default=10)
    bm.add_argument("--seed", type=_count(0), default=0)
    bm.add_argument("--refine", choices=["minimize"], default=None, help="minimise each structure with its CG coordinates restrained")
    bm.add_argument("--platform", default="CPU")
    bm.add_argument("--overwrite", action="store_true", help="replace an existing --out trajectory (and its weights file)")
    ex = sub.add_parser("export", help="write the TorchScript models of a run's latest checkpoint (an interrupted or running run)")
    ex.add_argument("run_dir", type=Path, help="the run's --out directory (holding checkpoint.pt)")
    ex.add_argument("--out", type=Path, default=None, help="models directory to write (default: RUN_DIR/models, where a finished run writes them)")
    sub.add_parser("configs", help="list the built-in configs, each with what it runs")
    show = sub.add_parser("show-config", help="print a resolved config")
    show.add_argument("config")
    show.add_argument("--seed", type=_count(0), default=None)
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command in ("data", "md-baseline", "baseline", "reference", "backmap") and args.platform in ("CPU", None) \
                and getattr(args, "executor", None) is None \
                and not (args.command == "baseline" and args.seeds is not None):  # jobs pin themselves
            from .platforms import pin_to_core

            pin_to_core()
        handlers = {"data": _data, "md-baseline": _md_baseline, "reference": _reference, "baseline": _baseline,
                    "backmap": _backmap, "export": _export}
        if args.command in ("run", "baseline") and (args.seeds is not None or args.executor is not None):
            return _seed_jobs(args)
        if args.command in handlers:
            return handlers[args.command](args)
        if args.command == "configs":
            from .config import config_summary

            for name in builtin_configs():
                print(f"{name:14s} {config_summary(name)}")
            return 0
        from .active_learning.settings import RunSettings

        if args.command == "run" and args.resume and not args.overrides and args.seed is None and args.config in builtin_configs():
            # a plain --resume of a built-in config continues with the config stored in the checkpoint (a YAML file is
            # compared with it: its stopping limits may have changed, and the run applies and reports them)
            from .active_learning.checkpoint import CHECKPOINT_NAME, read_run_checkpoint

            settings = RunSettings.from_config(read_run_checkpoint(args.out / CHECKPOINT_NAME)["config"])
            if RunSettings.from_config(load_config(args.config)).system != settings.system:
                from .systems import system_label

                raise ConfigError(f"{args.out} holds a run of system '{system_label(settings.system)}', not '{args.config}'")
        else:
            config = load_config(args.config, args.overrides, args.seed)
            if args.command == "show-config":
                print(yaml.safe_dump(config, sort_keys=False), end="")
                return 0
            settings = RunSettings.from_config(config)
        from .active_learning import ActiveLearningRun

        if settings.torch_threads == 1:  # one core for the flow, the others for OpenMM workers (see pin_driver)
            from .platforms import pin_driver

            pin_driver()

        metrics = ActiveLearningRun(settings, args.out, progress=not args.quiet).run(resume=args.resume, overwrite=args.overwrite)
    except (ConfigError, OSError, ValueError) as error:  # OSError: missing, unreadable or misplaced files
        print(f"cgflow: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except ImportError as error:  # an optional engine that is not installed (Ray, tblite)
        print(f"cgflow: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except WorkerLost as error:  # the energy workers are gone for good (a Ray node that never came back)
        print(f"cgflow: error: {_one_line(error)}; what was checkpointed is kept (continue with --resume)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cgflow: interrupted; what was checkpointed is kept (continue with --resume)", file=sys.stderr)
        return 130
    totals = metrics["totals"]
    last = metrics["iterations"][-1] if metrics["iterations"] else {}
    quality = (f"forward KLD {totals['final_forward_kld']:.3e}" if totals["final_forward_kld"] is not None else
               f"no reference; ensemble std on visited points {last.get('std_visited_mean', float('nan')):.3f} kT (max {last.get('std_visited_max', float('nan')):.3f})")
    print(
        f"finished after {totals['iterations']} iterations ({totals['stop_reason']}): {quality}, "
        f"{totals['energy_evaluations']} energy evaluations, {totals['wall_s']:.1f} s; results in {args.out}"
    )
    return 0


def _one_line(error: BaseException) -> str:
    """An exception as one line (OSError's own text already names the file; usage errors name the flags)."""
    text = " ".join((error.for_cli() if isinstance(error, InterfaceError) else str(error)).split())
    return text if text else type(error).__name__


def _backmap(args) -> int:
    import numpy as np

    from .backmapping import Backmapper

    if args.out.suffix not in (".pdb", ".dcd"):
        raise ValueError(f"--out must end in .pdb or .dcd, got {args.out}")
    if not args.cg_file.is_file():
        raise FileNotFoundError(f"CG file not found: {args.cg_file}")
    if args.out.exists() and not args.overwrite:
        raise ValueError(f"{args.out} exists: use --overwrite to replace it, or another --out")
    cg = np.load(args.cg_file, allow_pickle=False) if args.cg_file.suffix == ".npy" else np.loadtxt(args.cg_file, ndmin=2)
    backmapper = Backmapper(args.model, args.platform)
    result = backmapper.backmap(cg, args.n_per_frame, args.seed, args.refine, frame=args.frame)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result.trajectory.save(str(args.out))
    np.savez_compressed(f"{args.out}.weights.npz", cg_index=result.cg_index, log_weights=result.log_weights, weights=result.weights,
                        ess=result.ess, reduced_energies=result.reduced_energies)
    used = args.frame if backmapper.cg_system.cg_definition.kind == "dihedral" else "nm"
    print(f"{result.trajectory.n_frames} structures for {len(result.ess)} CG frames ({used} frame) in {args.out}; ESS per frame: "
          f"median {np.median(result.ess):.2f} of {args.n_per_frame}; weights in {args.out}.weights.npz")
    return 0


def _export(args) -> int:
    """``cgflow export RUN_DIR``: the models of the run's latest checkpoint, written as a finished run writes them."""
    from .active_learning.checkpoint import CHECKPOINT_NAME
    from .active_learning.outputs import export_checkpoint_models

    checkpoint = args.run_dir / CHECKPOINT_NAME
    if not checkpoint.is_file():
        raise FileNotFoundError(f"no run checkpoint in {args.run_dir} (expected {checkpoint})")
    info = export_checkpoint_models(checkpoint, args.out if args.out is not None else args.run_dir / "models")
    quality = f"forward KLD {info['forward_kld']:.3e}" if info["forward_kld"] is not None else "no reference"
    print(f"models of iteration {info['iteration']} ({info['energy_evaluations']} energy evaluations, {quality}): "
          + ", ".join(str(p) for p in info["paths"]))
    return 0


def _data(args) -> int:
    """``cgflow data start SYSTEM``: any system's starting MD (its config's starting_data section), cached."""
    if args.system is None:
        raise ValueError("`cgflow data start` needs a SYSTEM (a registered system, a built-in config or a YAML config)")
    settings, cg_system = _resolve_system(args.system, None)
    sd = settings.starting_data
    seed = settings.seed if args.seed is None else args.seed
    platform = args.platform or settings.energy.platform
    frames, md_steps = cg_system.starting_frames(sd.n_frames, sd.save_every, sd.equilibration_steps, sd.timestep_fs, sd.friction_per_ps,
                                                 seed, platform, progress=True)
    print(f"{cg_system.name}: {len(frames)} starting frames from {md_steps} MD steps (seed {seed}, {platform}); "
          f"`cgflow run {args.system} --seed {seed}` starts from them")
    return 0


def _check_reference(path: Optional[Path]) -> None:
    """Refuse a missing --reference before any simulation runs."""
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"reference file not found: {path}")


def _md_baseline(args) -> int:
    """``cgflow md-baseline SYSTEM`` and ``cgflow baseline md SYSTEM`` (the latter records every 10 steps)."""
    from .baselines.md import run_md_baseline, score_md_baseline

    record_every = getattr(args, "record_every", 10)
    if args.steps < record_every or args.steps % record_every:
        raise ValueError(f"--steps ({args.steps}) must be a multiple of --record-every ({record_every})")
    _check_reference(args.reference)
    _, cg_system = _resolve_system(args.system, None)
    if args.reference is not None:  # a reference that does not fit the system is refused before the MD starts
        from .baselines.md import reference_for
        reference_for(args.reference, cg_system)
    summary = run_md_baseline(cg_system, args.out, args.steps, args.seed, args.platform, record_every, args.resume, not args.quiet)
    print(f"{summary['steps']} MD steps at {summary['steps_per_s']:.0f} steps/s; histograms in {args.out}")
    if args.reference is not None:
        for point in score_md_baseline(args.out, args.reference, frame=cg_system.cg_definition.frame):
            print(f"{point['md_steps']:>12d} steps  forward KLD {point['forward_kld']:.4e}")
    return 0


def _resolve_system(text: str, reference: Optional[Path]):
    """(RunSettings, CGSystem) of a registered system (or its alias), a built-in config, or a YAML config describing a
    molecule; ``reference`` becomes the config's ``metrics.reference``."""
    from .active_learning.settings import RunSettings
    from .config import schema_name
    from .systems import available_systems, registered_name, system_aliases

    overrides = [f"metrics.reference={reference}"] if reference else []
    name = registered_name(text)
    if name is not None:
        config = load_config(schema_name(name), overrides)
        config["system"] = name
    elif text in builtin_configs() or Path(text).suffix in (".yaml", ".yml") or Path(text).is_file():
        config = load_config(text, overrides)
    else:
        raise ValueError(f"unknown system '{text}'; available: {', '.join(available_systems())} (or {', '.join(system_aliases())}), "
                         f"a built-in config ({', '.join(builtin_configs())}) or a YAML config whose 'system' describes a molecule")
    settings = RunSettings.from_config(config)
    return settings, settings.create_system()


def _baseline(args) -> int:
    if args.method == "md":
        return _md_baseline(args)
    _check_reference(args.reference)
    settings, cg_system = _resolve_system(args.system, args.reference)
    from .active_learning.scoring import metric_grid, score_points
    from .baselines.metadynamics import MetadynamicsProtocol, run_metadynamics
    from .baselines.opes import OPESProtocol, run_opes

    metrics = settings.metrics
    grid = metric_grid(metrics, cg_system)
    # no reference: F is recorded on a regular grid over the domain (1-2 CG coordinates)
    p_reference, centres = (grid.p_reference if grid is not None else None), score_points(metrics, cg_system.cg_dim, grid)
    if args.method == "opes":
        protocol = OPESProtocol(barrier_kT=args.barrier, deposit_every=args.deposit_every, adaptive_variance=not args.fixed_width,
                                variance_every=args.variance_every, width=args.width, bias_factor=args.bias_factor or 0.0, explore=args.explore,
                                correct_smoothing=args.correct_smoothing, friction_per_ps=args.friction)
        run, name, summary_file = run_opes, "OPES", "opes_baseline.json"
    else:
        protocol = MetadynamicsProtocol(bias_factor=args.bias_factor or 6.0, height_kT=args.height, width=args.width, deposit_every=args.deposit_every,
                                        friction_per_ps=args.friction)
        run, name, summary_file = run_metadynamics, "metadynamics", "metad_baseline.json"
    summary = run(cg_system, args.out, args.steps, p_reference, centres, protocol, args.seed, args.platform, args.resume, not args.quiet)
    for point in summary["curve"]:
        if point["forward_kld"] is not None:
            print(f"{point['md_steps']:>12d} steps  forward KLD {point['forward_kld']:.4e}")
    final = summary["final_forward_kld"]
    print(f"{summary['steps']} {name} steps at {summary['steps_per_s']:.0f} steps/s; "
          + (f"final forward KLD {final:.4e}; " if final is not None else "no reference given (F on the grid is in the snapshots); ")
          + f"{args.out / summary_file}")
    return 0


#: windows per CG dihedral and restraint constant (kT/rad^2) by the number of CG dihedrals: 10-, 20- and 30-degree
#: spacing, restraint widths of 9, 9 and 15 degrees (3-D: 1,728 windows)
DEFAULT_UMBRELLA_LAYOUT = {1: (36, 40.0), 2: (18, 40.0), 3: (12, 15.0)}


def _reference(args) -> int:
    from .reference.umbrella import UmbrellaProtocol, run_umbrella, umbrella_dihedrals

    _, cg_system = _resolve_system(args.system, None)
    dim = len(umbrella_dihedrals(cg_system))  # refuse a system without 1-3 CG dihedrals before anything runs
    windows, force_constant = DEFAULT_UMBRELLA_LAYOUT[dim]
    protocol = UmbrellaProtocol(
        windows_per_dim=args.windows or windows, force_constant=args.force_constant or force_constant, steps_per_pass=args.steps_per_pass,
        platform=args.platform,
    )
    from .reference.umbrella_reference import build_reference
    from .reference.bases import basis

    bases = tuple(args.bases) if args.bases else None  # None: the estimator's candidates (bases.candidate_bases)
    for name in bases or ():
        try:
            basis(name, [0.0])
        except ValueError:
            raise ValueError(f"unknown basis '{name}' (use bspline<m> or fourier<L>, e.g. bspline24)") from None
    if not args.fit_only and args.executor is not None:  # one job per seed, in parallel; then the fit here
        for seed in args.seeds:
            state = args.out / f"seed{seed}" / "state.npz"
            if state.exists() and not args.resume:
                raise InterfaceError(f"{state} exists: use {{resume}} to continue it, or another {{out}}")
        jobs = [_job(args, "reference", f"seed {seed}", args.out / f"seed{seed}", args.out / f"seed{seed}" / "state.npz",
                     args.cpus_per_job or 1, {"seeds": [seed], "out": args.out}) for seed in args.seeds]
        if not _report_jobs(jobs, args):
            return 1
        run_umbrella(args.out, args.seeds, args.passes, protocol, cg_system, resume=True, progress=False)  # all passes there: the summary
    elif not args.fit_only:
        run_umbrella(args.out, args.seeds, args.passes, protocol, cg_system, resume=args.resume, progress=not args.quiet)
        if len(args.seeds) < 2 and args.executor is None:  # one seed per process (one core each): fit once all seeds are there
            print(f"seed {args.seeds[0]}: {args.passes} passes in {args.out}")
            print(f"fit with `cgflow reference {args.system} --out {args.out} --fit-only --seeds S1 S2 ...` (the convergence check "
                  "needs two or more seeds)")
            return 0
    output = args.output or args.out / f"reference_{Path(args.system).stem}.npz"
    result = build_reference(args.out, args.seeds, output, cg_system, command=" ".join(["cgflow"] + sys.argv[1:]), bases=bases,
                             estimator=args.estimator)
    print(
        f"reference written to {result['path']}: {result['estimator']}, basis {result['order']}, KLD between halves {result['kld_between_halves']:.3e}, "
        f"{result['md_steps']} MD steps"
    )
    return 0


# -- independent seeds as parallel jobs (openmm_cgflow.cluster) ---------------------------------------------------
#: options of the multi-seed command that its per-seed jobs do not take
_JOB_ONLY = {"help", "seeds", "executor", "address", "cpus_per_job", "resume", "quiet"}


def _subparser(command: str) -> argparse.ArgumentParser:
    action = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[command]


def _job_argv(args, command: str, replace: dict) -> List[str]:
    """The command line of one job: ``args`` as parsed, with ``replace`` (dest -> value) applied, without the
    multi-seed options, and quiet (a job's output goes to its log)."""
    argv = [command]
    for action in _subparser(command)._actions:
        if action.dest in _JOB_ONLY - set(replace):
            continue
        value = replace.get(action.dest, getattr(args, action.dest))
        if not action.option_strings:
            argv.append(str(value))
        elif isinstance(action, argparse._StoreTrueAction):
            argv += [action.option_strings[-1]] if value else []
        elif value is None:
            continue
        elif isinstance(value, list):
            if isinstance(action, argparse._AppendAction):
                for item in value:
                    argv += [action.option_strings[-1], str(item)]
            else:
                argv += [action.option_strings[-1], *map(str, value)]
        else:
            argv += [action.option_strings[-1], str(value)]
    return argv + ["--quiet"]


def _job(args, command: str, name: str, out: Path, resume_when: Path, cpus: int, replace: dict):
    from .cluster import Job

    return Job(name, tuple(_job_argv(args, command, replace)), out, resume_when, cpus)


def _report_jobs(jobs, args) -> bool:
    """Run the jobs on ``args.executor`` (default local) and print one line per job as it ends; True if all succeeded."""
    from .cluster import run_jobs

    executor = args.executor or "local"
    print(f"{len(jobs)} jobs on {executor}" + (f" ({args.address})" if args.address else "") + f", {jobs[0].cpus} core(s) each; "
          f"logs in {jobs[0].log} and alike", flush=True)

    def done(result) -> None:
        status = "ok" if result.returncode == 0 else f"exit {result.returncode}"
        print(f"{result.name}: {status} after {result.wall_s:.0f} s on {result.node} cores {result.cores}: {result.last_line}", flush=True)

    results = run_jobs(jobs, executor, args.address, on_done=done)
    return all(r.returncode == 0 for r in results)


def _seed_jobs(args) -> int:
    """``cgflow run|baseline ... --seeds S1 S2 ... [--executor local|ray]``: one job per seed in OUT/seed<S>."""
    if args.seeds is None:
        raise InterfaceError("--executor runs several seeds at once: give them with --seeds S1 S2 ...")
    if args.command == "run":
        if args.seed is not None:
            raise InterfaceError("give either --seed (one run) or --seeds (several), not both")
        if args.overwrite:
            raise InterfaceError("--overwrite cannot be combined with --seeds; give a new --out")
        config = load_config(args.config, args.overrides)  # a bad config is refused here, once, before any job starts
        from .active_learning.settings import RunSettings

        cpus = args.cpus_per_job or max(1, RunSettings.from_config(config).energy.n_workers)
        marker = "checkpoint.pt"
    else:
        _check_reference(args.reference)
        cpus = args.cpus_per_job or 1
        from .baselines.md import MD_CHECKPOINT_NAME
        from .baselines.metadynamics import _MetadynamicsSampler
        from .baselines.opes import OPESSampler

        marker = {"md": MD_CHECKPOINT_NAME, "metad": _MetadynamicsSampler.files[0], "opes": OPESSampler.files[0]}[args.method]
    if len(set(args.seeds)) != len(args.seeds):
        raise InterfaceError(f"--seeds repeats a seed: {' '.join(map(str, args.seeds))}")
    for seed in args.seeds:
        if (args.out / f"seed{seed}" / marker).exists() and not args.resume:
            raise InterfaceError(f"{args.out / f'seed{seed}' / marker} exists: use {{resume}} to continue it, or another {{out}}")
    jobs = [_job(args, args.command, f"seed {seed}", args.out / f"seed{seed}", args.out / f"seed{seed}" / marker, cpus,
                 {"seed": seed, "out": args.out / f"seed{seed}"}) for seed in args.seeds]
    return 0 if _report_jobs(jobs, args) else 1


if __name__ == "__main__":
    sys.exit(main())
