"""Independent jobs (seeds of a run, a baseline or a reference) in parallel, on this machine's cores or on Ray
(:mod:`openmm_cgflow.cluster`): the same numbers as one job at a time, no two jobs on one core, a job whose Ray
worker dies is retried and resumes from its checkpoint to the uninterrupted numbers, and bad usage is one line."""
import json
import os
import signal
import threading
import time

import numpy as np
import pytest

from openmm_cgflow.active_learning import ActiveLearningRun, RunSettings
from openmm_cgflow.cli import main
from openmm_cgflow.cluster import Job, claim_cores, run_jobs
from openmm_cgflow.config import load_config

MB = ["--set", "loop.max_iterations=3"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Müller-Brown seed 0, three iterations, run in this process: the numbers every job must reproduce."""
    out = tmp_path_factory.mktemp("alone")
    return ActiveLearningRun(RunSettings.from_config(load_config("muller-brown", ["loop.max_iterations=3"], seed=0)), out, progress=False).run()


def _klds(metrics):
    return [r["forward_kld"] for r in metrics["iterations"]], metrics["totals"]["energy_evaluations"]


def test_seeds_in_parallel_give_the_numbers_of_one_run_at_a_time(tmp_path, capsys, uninterrupted):
    assert main(["run", "muller-brown", "--out", str(tmp_path), "--seeds", "0", "1", *MB]) == 0
    out = capsys.readouterr().out
    assert out.count(": ok after ") == 2 and "2 jobs on local" in out
    seed0 = json.loads((tmp_path / "seed0" / "metrics.json").read_text())
    seed1 = json.loads((tmp_path / "seed1" / "metrics.json").read_text())
    assert _klds(seed0) == _klds(uninterrupted)
    assert _klds(seed1) != _klds(seed0)  # another seed, another run
    # the jobs never shared a core (each claimed its own), and each log names its command
    cores = [line.split("cores ")[1] for line in out.splitlines() if ": ok after " in line]
    assert len(set(cores)) == 2 or len(os.sched_getaffinity(0)) == 1
    assert "--seed 0" in (tmp_path / "seed0.log").read_text().splitlines()[0]
    # an existing seed without --resume is refused before anything runs; with --resume the finished runs stay finished
    assert main(["run", "muller-brown", "--out", str(tmp_path), "--seeds", "0", "1", *MB]) == 2
    assert "seed0/checkpoint.pt exists: use --resume" in capsys.readouterr().err
    assert main(["run", "muller-brown", "--out", str(tmp_path), "--seeds", "0", "1", "--resume", *MB]) == 0
    assert _klds(json.loads((tmp_path / "seed0" / "metrics.json").read_text())) == _klds(uninterrupted)


def test_baseline_seeds_run_at_once_on_their_own_cores(tmp_path, capsys):
    """`cgflow baseline METHOD SYSTEM --seeds 0 1` (no --executor) runs the seeds side by side, one core each: the
    command itself is not pinned to one core first (it was, and the seeds then ran one after another)."""
    before = os.sched_getaffinity(0)
    assert main(["baseline", "md", "muller-brown", "--seeds", "0", "1", "--steps", "2000", "--out", str(tmp_path), "--quiet"]) == 0
    assert os.sched_getaffinity(0) == before
    out = capsys.readouterr().out
    assert out.count(": ok after ") == 2
    cores = [line.split("cores ")[1] for line in out.splitlines() if ": ok after " in line]
    assert len(set(cores)) == 2 or len(before) == 1
    assert all((tmp_path / f"seed{s}" / "md_baseline.json").is_file() for s in (0, 1))


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0", "--seed", "1"], "either --seed (one run) or --seeds (several), not both"),
    (["--seeds", "0", "0"], "--seeds repeats a seed: 0 0"),
    (["--executor", "local"], "--executor runs several seeds at once: give them with --seeds"),
    (["--seeds", "0", "--overwrite"], "--overwrite cannot be combined with --seeds"),
    (["--seeds", "0", "--set", "loop.max_iterations=-1"], "loop.max_iterations"),
])
def test_bad_job_options_are_one_line_before_anything_runs(tmp_path, capsys, argv, message):
    assert main(["run", "muller-brown", "--out", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cores_are_claimed_by_one_job_at_a_time(tmp_path):
    # a private lock folder: jobs of other tests running beside this one must not hold cores here
    cores, locks = claim_cores(1, lock_dir=tmp_path)
    got = {}

    def second():
        got["cores"], got["locks"] = claim_cores(1, poll_s=0.05, lock_dir=tmp_path)

    thread = threading.Thread(target=second, daemon=True)
    thread.start()
    thread.join(2.0)
    n = len(os.sched_getaffinity(0))
    if n == 1:  # the only core is held: the second claim waits until the first is given up
        assert thread.is_alive()
    else:  # another core is free: the second claim takes it at once
        assert not thread.is_alive() and got["cores"] != cores
    for handle in locks:
        handle.close()
    thread.join(5.0)
    assert not thread.is_alive()
    for handle in got["locks"]:
        handle.close()


def test_umbrella_seeds_as_jobs_write_the_passes_of_one_process(tmp_path, capsys):
    """`cgflow reference --executor local` runs each seed as its own job; every pass file is bitwise the one a
    process running that seed alone writes, and the fit runs once all are there. (One process running both seeds
    would interleave them on the Reference platform's one global random generator.)"""
    config = tmp_path / "molecule.yaml"
    config.write_text("system:\n  openmmtools: AlanineDipeptideVacuum\n  cg_dihedrals: [[4, 6, 8, 14]]\n  cg_names: [phi]\n  name: vacuum-1d\n")
    common = ["--passes", "2", "--windows", "4", "--steps-per-pass", "100", "--platform", "Reference", "--bases", "fourier1", "--quiet"]
    for seed in ("1", "2"):
        assert main(["reference", str(config), "--out", str(tmp_path / "one"), *common, "--seeds", seed]) == 0
    assert main(["reference", str(config), "--out", str(tmp_path / "jobs"), "--executor", "local", *common, "--seeds", "1", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count(": ok after ") == 2 and "reference written to" in out
    for seed in (1, 2):
        for index in (1, 2):
            a = np.load(tmp_path / "one" / f"seed{seed}" / f"pass_{index:03d}.npz")
            b = np.load(tmp_path / "jobs" / f"seed{seed}" / f"pass_{index:03d}.npz")
            assert all(np.array_equal(a[key], b[key]) for key in a.files)
    summary = json.loads((tmp_path / "jobs" / "umbrella.json").read_text())
    assert [r["passes"] for r in summary["runs"]] == [2, 2]


@pytest.mark.xdist_group("ray")
def test_a_job_whose_ray_worker_dies_is_retried_and_resumes_to_the_uninterrupted_numbers(local_ray, tmp_path, uninterrupted):
    """A Müller-Brown run as a Ray task; after its first checkpoint the Ray worker running it is killed (its child,
    the run, dies with it): Ray retries the task, the job resumes from the checkpoint and ends with the numbers of
    the run that was never interrupted."""
    out = tmp_path / "seed0"
    job = Job("seed 0", ("run", "muller-brown", "--out", str(out), "--seed", "0", "--quiet", *MB), out, out / "checkpoint.pt")
    results = {}
    thread = threading.Thread(target=lambda: results.update(done=run_jobs([job], "ray")), daemon=True)
    thread.start()
    deadline = time.time() + 300
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert (out / "checkpoint.pt").exists()
    child = next(pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
                 if _cmdline(pid).count(str(out)) and "openmm_cgflow.cli" in _cmdline(pid))
    ray_worker = int(open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()[1])
    os.kill(ray_worker, signal.SIGKILL)
    thread.join(600)
    (result,) = results["done"]
    assert result.returncode == 0, result.last_line
    headers = [line for line in job.log.read_text().splitlines() if line.startswith("# ")]
    assert len(headers) == 2 and "--resume" not in headers[0] and "--resume" in headers[1]
    assert _klds(json.loads((out / "metrics.json").read_text())) == _klds(uninterrupted)


def _cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline").read().replace("\0", " ")
    except OSError:
        return ""
