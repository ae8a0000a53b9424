"""Energies on Ray (``executor="ray"``): one real local Ray for the whole test run (``ray.init(num_cpus=2)``; these
tests share one pytest-xdist worker), the same numbers as the local pool, bitwise; an actor killed mid-batch is
restarted and its chunk retried with an exact evaluation count; an actor gone for good and an address where nothing
answers give one line; a run whose actors are lost keeps its checkpoint and resumes to the uninterrupted numbers."""
import json
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from openmm_cgflow import EnergyOracle, create_system, load_config  # noqa: E402
from openmm_cgflow.active_learning import ActiveLearningRun, RunSettings  # noqa: E402
from openmm_cgflow.cluster import check_address_answers  # noqa: E402
from openmm_cgflow.energy.executors import WorkerLost  # noqa: E402

pytestmark = pytest.mark.xdist_group("ray")


@pytest.fixture(scope="module")
def aldp():
    return create_system("alanine-dipeptide")


def _batch(aldp, n, seed=0):
    rng = np.random.default_rng(seed)
    return aldp.positions[None] + 0.005 * rng.standard_normal((n, aldp.n_atoms, 3))


def test_ray_actors_give_the_local_pools_numbers_bitwise(local_ray, aldp):
    x = _batch(aldp, 300)
    with EnergyOracle(aldp, "CPU", n_workers=2) as local:
        u0, f0 = local.evaluate(x)
        xt = torch.tensor(x, requires_grad=True)
        local(xt).sum().backward()
        g0 = xt.grad.clone()
    with EnergyOracle(aldp, "CPU", n_workers=2, executor="ray") as remote:
        assert len(set(remote.worker_pids)) == 2 and os.getpid() not in remote.worker_pids
        u1, f1 = remote.evaluate(x)
        xt = torch.tensor(x, requires_grad=True)
        remote(xt).sum().backward()
        assert remote.n_evaluations == 600
    assert np.array_equal(u0, u1) and np.array_equal(f0, f1) and torch.equal(g0, xt.grad)


def test_an_actor_killed_mid_batch_is_restarted_and_its_chunk_retried(local_ray, aldp):
    x = _batch(aldp, 4000, seed=1)
    with EnergyOracle(aldp, "CPU", n_workers=2) as local:
        expected = local.evaluate(x)
    with EnergyOracle(aldp, "CPU", n_workers=2, executor="ray") as remote:
        victim = remote.worker_pids[0]
        killer = threading.Timer(0.3, os.kill, (victim, signal.SIGKILL))
        killer.start()
        u, f = remote.evaluate(x)
        killer.join()
        assert victim not in remote.worker_pids  # Ray restarted the actor: a new process
        assert remote.n_evaluations == 4000  # the retried chunk is counted once
    assert np.array_equal(u, expected[0]) and np.array_equal(f, expected[1])


def test_an_actor_gone_for_good_gives_one_line_and_closes_the_oracle(local_ray, aldp):
    remote = EnergyOracle(aldp, "CPU", n_workers=2, executor="ray")
    ray.kill(remote._executor.actors[1], no_restart=True)
    with pytest.raises(WorkerLost, match="gone after 3 restarts") as info:
        remote.evaluate(_batch(aldp, 10))
    assert "\n" not in str(info.value)
    with pytest.raises(RuntimeError, match="closed"):
        remote.evaluate(_batch(aldp, 2))


def test_an_address_where_nothing_answers_fails_at_once_in_one_line(tmp_path):
    with pytest.raises(ConnectionError, match="no Ray cluster answers at ray://127.0.0.1:9"):
        check_address_answers("ray://127.0.0.1:9", timeout_s=2)
    with pytest.raises(ValueError, match="Ray address must be"):
        check_address_answers("nowhere")
    result = subprocess.run([sys.executable, "-m", "openmm_cgflow.cli", "run", "muller-brown", "--out", str(tmp_path / "run"), "--quiet",
                             "--set", "energy.executor=ray", "--set", "energy.address=127.0.0.1:9"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "no Ray cluster answers at 127.0.0.1:9" in result.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_run_that_loses_its_actors_keeps_its_checkpoint_and_resumes_to_the_local_numbers(local_ray, tmp_path):
    """Müller-Brown, 3 iterations on Ray; after iteration 1 every actor is killed for good: the run stops with the
    actor error, its iteration-1 checkpoint resumes (locally) and ends with the numbers of the uninterrupted local run."""
    overrides = ["loop.max_iterations=3"]
    local = ActiveLearningRun(RunSettings.from_config(load_config("muller-brown", overrides)), tmp_path / "local", progress=False).run()

    on_ray = RunSettings.from_config(load_config("muller-brown", overrides + ["energy.executor=ray"]))
    run = ActiveLearningRun(on_ray, tmp_path / "ray", progress=False)

    def lose_the_node(timing):
        if timing.iteration == 1 and timing.stage == "spread":
            for actor in run.context.oracle._executor.actors:
                ray.kill(actor, no_restart=True)

    run.callbacks.append(lose_the_node)
    with pytest.raises(WorkerLost):
        run.run()
    stored = json.loads((tmp_path / "ray" / "metrics.json").read_text())
    assert [r["iteration"] for r in stored["iterations"]] == [1]
    resumed = ActiveLearningRun(RunSettings.from_config(load_config("muller-brown", overrides)), tmp_path / "ray", progress=False).run(resume=True)
    assert [r["forward_kld"] for r in resumed["iterations"]] == [r["forward_kld"] for r in local["iterations"]]
    assert resumed["totals"]["energy_evaluations"] == local["totals"]["energy_evaluations"]
