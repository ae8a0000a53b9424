"""EnergyOracle on Müller-Brown: values and gradients against an independent torch implementation,
gradcheck, the worker pool, and bad input."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from openmm_cgflow import EnergyOracle, create_system

KT = 10.0  # kJ/mol: beta = 0.1 in the paper's units


def muller_brown_torch(x, y):
    """Independent implementation of the standard Müller-Brown potential (kJ/mol)."""
    A = torch.tensor([-200.0, -100.0, -170.0, 15.0], dtype=torch.float64)
    a = torch.tensor([-1.0, -1.0, -6.5, 0.7], dtype=torch.float64)
    b = torch.tensor([0.0, 0.0, 11.0, 0.6], dtype=torch.float64)
    c = torch.tensor([-10.0, -10.0, -6.5, 0.7], dtype=torch.float64)
    X = torch.tensor([1.0, 0.0, -0.5, -1.0], dtype=torch.float64)
    Y = torch.tensor([0.0, 0.5, 1.5, 1.0], dtype=torch.float64)
    dx, dy = x[:, None] - X, y[:, None] - Y
    return (A * torch.exp(a * dx**2 + b * dx * dy + c * dy**2)).sum(-1)


@pytest.fixture(scope="module")
def mb():
    return create_system("muller-brown")


def random_positions(n, seed=0):
    rng = np.random.default_rng(seed)
    pos = np.zeros((n, 1, 3))
    pos[:, 0, 0] = rng.uniform(-1.5, 1.2, n)
    pos[:, 0, 1] = rng.uniform(-0.5, 2.0, n)
    return pos


def test_temperature_gives_beta_point_one(mb):
    assert mb.kT == pytest.approx(KT, rel=1e-12)


@pytest.mark.parametrize("n_workers", [1, 2])
def test_energies_and_gradients_match_analytic(mb, n_workers):
    pos = torch.tensor(random_positions(64), requires_grad=True)
    with EnergyOracle(mb, "Reference", n_workers=n_workers) as oracle:
        u = oracle(pos)
        u.sum().backward()
        assert oracle.n_evaluations == 64
    ref_pos = pos.detach().clone().requires_grad_(True)
    u_ref = muller_brown_torch(ref_pos[:, 0, 0], ref_pos[:, 0, 1]) / KT
    u_ref.sum().backward()
    np.testing.assert_allclose(u.detach().numpy(), u_ref.detach().numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(pos.grad.numpy()[:, 0, :2], ref_pos.grad.numpy()[:, 0, :2], rtol=1e-8, atol=1e-8)
    # z is held at 0 by a harmonic restraint: no force along z in the plane
    np.testing.assert_allclose(pos.grad.numpy()[:, 0, 2], 0.0, atol=1e-12)


def test_gradcheck(mb):
    pos = torch.tensor(random_positions(4, seed=3), requires_grad=True)
    with EnergyOracle(mb, "Reference") as oracle:
        assert torch.autograd.gradcheck(lambda p: oracle(p), (pos,), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_cpu_platform_agrees_with_reference(mb):
    pos = random_positions(16)
    with EnergyOracle(mb, "Reference") as ref, EnergyOracle(mb, "CPU") as cpu:
        u_ref, f_ref = ref.evaluate(pos)
        u_cpu, f_cpu = cpu.evaluate(pos)
    np.testing.assert_allclose(u_cpu, u_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f_cpu, f_ref, rtol=1e-4, atol=1e-3)


def test_non_finite_positions_give_nan_and_are_not_counted(mb):
    """With nonfinite='nan' (training, backmapping) a NaN configuration gets u = NaN, zero forces, and is neither
    sent to OpenMM nor counted; by default (users) it is refused, as is a configuration OpenMM cannot evaluate."""
    pos = random_positions(3)
    pos[1, 0, 0] = np.nan
    with EnergyOracle(mb, "Reference", nonfinite="nan") as oracle:
        u, f = oracle.evaluate(pos)
        assert oracle.n_evaluations == 2
    assert np.isnan(u[1]) and np.isfinite(u[[0, 2]]).all()
    assert np.all(f[1] == 0.0)
    with EnergyOracle(mb, "Reference") as oracle:
        with pytest.raises(ValueError, match=r"positions contain NaN or inf \(configuration 1 of 3\)"):
            oracle.evaluate(pos)
        with pytest.raises(ValueError, match="could not compute the energy of configuration 0"):
            oracle.evaluate(random_positions(2) * 1e20)
        with pytest.raises(ValueError, match="positions must be numbers"):
            oracle.evaluate([[["a", "b", "c"]]])
    for bad in ("2", 1.5, True, 0):
        with pytest.raises(ValueError, match="n_workers must be an integer >= 1"):
            EnergyOracle(mb, "Reference", n_workers=bad)


def test_bad_input_gives_clear_errors(mb):
    with EnergyOracle(mb, "Reference") as oracle:
        with pytest.raises(ValueError, match="wrong atom count"):
            oracle.evaluate(np.zeros((2, 5, 3)))
        with pytest.raises(ValueError, match="shape"):
            oracle.evaluate(np.zeros((2, 1, 2)))
    with pytest.raises(ValueError, match="unknown or unavailable OpenMM platform 'Bogus'"):
        EnergyOracle(mb, "Bogus")
    with pytest.raises(ValueError, match="n_workers"):
        EnergyOracle(mb, "Reference", n_workers=0)


def test_pool_shuts_down_when_a_worker_dies(mb):
    oracle = EnergyOracle(mb, "Reference", n_workers=2)
    pids = oracle.worker_pids
    os.kill(pids[0], signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="died|unreachable|lost"):
        oracle.evaluate(random_positions(8))
    assert time.monotonic() - start < 20
    # the whole pool is gone, the surviving worker included, and the oracle refuses more work
    for pid in pids:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        assert not _alive(pid)
    with pytest.raises(RuntimeError, match="closed"):
        oracle.evaluate(random_positions(2))


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped) counts as gone
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_pool_exits_cleanly_at_interpreter_exit(tmp_path):
    script = tmp_path / "leave_pool_open.py"
    script.write_text(
        textwrap.dedent(
            """
            import numpy as np
            from openmm_cgflow import EnergyOracle, create_system
            oracle = EnergyOracle(create_system("muller-brown"), "Reference", n_workers=2)
            print(*oracle.worker_pids)
            oracle.evaluate(np.zeros((4, 1, 3)))
            """
        )
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for pid in map(int, result.stdout.split()):
        assert not _alive(pid)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs two usable cores")
def test_pinned_driver_leaves_other_cores_to_the_workers():
    """`cgflow run` pins itself (pin_driver); the oracle's CPU worker must then run on another core, not share its."""
    code = (
        "import os, torch\n"
        "from openmm_cgflow.energy import EnergyOracle\nfrom openmm_cgflow.platforms import pin_driver\n"
        "from openmm_cgflow.systems import create_system\n"
        "driver = pin_driver()\n"
        "with EnergyOracle(create_system('muller-brown'), 'CPU', n_workers=1) as oracle:\n"
        "    print(driver, sorted(os.sched_getaffinity(0)), sorted(os.sched_getaffinity(oracle.worker_pids[0])))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout.split("\n")[-2]
    driver, rest = out.split(" ", 1)
    own, worker = rest.split("] [")
    assert own.strip("[]") == driver and worker.strip("[]") != driver and len(worker.strip("[]").split(",")) == 1
