"""Contract test for every conditional flow: invertibility, log-det vs the autograd Jacobian,
TorchScript save/load, and log_prob consistent with sampling."""
import math

import pytest
import torch

from openmm_cgflow.flows import ConditionalAffineFlow, ConditionalSplineFlow, sample
from openmm_cgflow.flows.splines import rq_spline, spline_knots


def make_affine():
    torch.manual_seed(0)
    flow = ConditionalAffineFlow(cg_dim=1, fg_dim=1, hidden=(16, 16), s_mean=-2.0, s_std=0.1).double()
    with torch.no_grad():  # move away from the default init so the test is not trivial
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return flow


def _perturbed(flow, scale=0.3):
    with torch.no_grad():  # move away from the identity init so the test is not trivial
        for p in flow.parameters():
            p.add_(scale * torch.randn_like(p))
    return flow


def make_spline(context="periodic"):
    torch.manual_seed(0)
    flow = ConditionalSplineFlow(fg_dim=7, circular_indices=(1, 4, 5), cg_dim=2, n_layers=4, n_bins=5, hidden=16, context=context)
    return _perturbed(flow, 0.2)


FLOWS = {"affine": make_affine, "spline-periodic": make_spline, "spline-periodic2": lambda: make_spline("periodic2"),
         "spline-periodic3": lambda: make_spline("periodic3"),
         "spline-raw": lambda: make_spline("raw")}


@pytest.fixture(params=sorted(FLOWS))
def flow(request):
    return FLOWS[request.param]()


def conditions(flow, n=7):
    return torch.linspace(-2.4, 1.0, n, dtype=torch.float64)[:, None].expand(n, flow.cg_dim).contiguous()


def base(flow, s):
    return flow.sample_base(s.shape[0], torch.Generator().manual_seed(3))


def test_invertible(flow):
    s = conditions(flow)
    z = base(flow, s)
    x, ld_fwd = flow(z, s)
    z_back, ld_inv = flow.inverse(x, s)
    torch.testing.assert_close(z_back, z, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ld_fwd, -ld_inv, rtol=1e-10, atol=1e-10)


def test_logdet_matches_autograd_jacobian(flow):
    s = conditions(flow)
    z = base(flow, s)
    _, logdet = flow(z, s)
    for i in range(s.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda zi: flow(zi[None], s[i : i + 1])[0][0], z[i])
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(jac.reshape(flow.fg_dim, flow.fg_dim))[1], rtol=1e-8, atol=1e-10)


def test_torchscript_roundtrip(flow, tmp_path):
    s = conditions(flow)
    z = base(flow, s)
    path = tmp_path / "flow.pt"
    torch.jit.save(torch.jit.script(flow), str(path))
    loaded = torch.jit.load(str(path))
    for a, b in zip(flow(z, s), loaded(z, s)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    x = flow(z, s)[0]
    torch.testing.assert_close(flow.log_prob(x, s), loaded.log_prob(x, s), rtol=0, atol=0)


def test_sample_log_prob_consistent(flow):
    s = conditions(flow)
    x, log_q = sample(flow, s, torch.Generator().manual_seed(1))
    torch.testing.assert_close(log_q, flow.log_prob(x, s), rtol=1e-10, atol=1e-10)


def test_spline_agrees_with_zuko_on_the_same_knots():
    zuko = pytest.importorskip("zuko")
    torch.manual_seed(1)
    K, n = 8, 400
    widths, heights, derivatives = (torch.randn(n, k, dtype=torch.float64) * 2 for k in (K, K, K - 1))
    reference = zuko.transforms.MonotonicRQSTransform(widths, heights, derivatives, bound=5.0)
    x = torch.randn(n, dtype=torch.float64) * 4  # about a third outside [-5, 5]: the identity there
    y_ref, ladj_ref = reference.call_and_ladj(x)
    y, ladj = rq_spline(x, reference.horizontal, reference.vertical, reference.derivatives)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ladj, ladj_ref, rtol=1e-12, atol=1e-12)
    x_back, ladj_inv = rq_spline(y_ref, reference.horizontal, reference.vertical, reference.derivatives, inverse=True)
    torch.testing.assert_close(x_back, reference.inv(y_ref), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ladj_inv, -ladj, rtol=1e-9, atol=1e-9)


def test_spline_knots_boundaries():
    torch.manual_seed(2)
    K = 6
    w, h, d = torch.randn(2, K, dtype=torch.float64), torch.randn(2, K, dtype=torch.float64), torch.randn(2, K + 1, dtype=torch.float64)
    xs, ys, ds = spline_knots(w, h, d, torch.tensor([5.0, 3.141592653589793], dtype=torch.float64), torch.tensor([False, True]))
    assert torch.allclose(xs[:, 0], -xs[:, -1]) and xs[0, -1] == 5.0 and ys[1, -1] == 3.141592653589793
    assert (xs.diff(dim=-1) > 0).all() and (ys.diff(dim=-1) > 0).all()
    assert ds[0, 0] == 1.0 and ds[0, -1] == 1.0  # linear tails: slope 1 at both ends
    assert ds[1, 0] == ds[1, -1] and ds[1, 0] != 1.0  # circular: periodic derivative


def test_spline_flow_starts_as_the_identity_and_is_periodic_in_circular_inputs():
    torch.manual_seed(0)
    flow = ConditionalSplineFlow(fg_dim=6, circular_indices=(0, 3), n_layers=2, n_bins=4, hidden=8)  # no shift layer
    s = torch.rand(5, 2, dtype=torch.float64)
    z = flow.sample_base(5, torch.Generator().manual_seed(0))
    z[0, 1] = 7.5  # a linear coordinate beyond the tail bound stays put
    x, logdet = flow(z, s)
    torch.testing.assert_close(x, z, rtol=0, atol=1e-13)
    torch.testing.assert_close(logdet, torch.zeros(5, dtype=torch.float64), rtol=0, atol=1e-13)
    trained = make_spline()
    x = trained(base(trained, conditions(trained)), conditions(trained))[0]
    shifted = x.clone()
    shifted[:, [1, 4, 5]] += 2 * 3.141592653589793
    torch.testing.assert_close(trained.log_prob(shifted, conditions(trained)), trained.log_prob(x, conditions(trained)), rtol=1e-9, atol=1e-9)


def test_periodic_contexts_are_periodic_in_s_and_feed_their_harmonics():
    for context in ("periodic", "periodic2", "periodic3"):
        flow = make_spline(context)
        s = conditions(flow)
        z = base(flow, s)
        x, logdet = flow(z, s)
        x_shifted, logdet_shifted = flow(z, s + 2 * math.pi * torch.tensor([1.0, -2.0], dtype=s.dtype))
        torch.testing.assert_close(x_shifted, x, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(logdet_shifted, logdet, rtol=1e-9, atol=1e-9)
    flow = make_spline("periodic3")
    s = conditions(flow)
    context = flow._context(s)
    assert context.shape == (len(s), 12)
    torch.testing.assert_close(context[:, 8:10], torch.cos(3 * s), rtol=0, atol=1e-15)  # k = 3: cos then sin
    torch.testing.assert_close(context[:, 10:12], torch.sin(3 * s), rtol=0, atol=1e-15)
    flow = make_spline("periodic2")
    context = flow._context(s)
    assert context.shape == (len(s), 8)
    torch.testing.assert_close(context[:, 4:6], torch.cos(2 * s), rtol=0, atol=1e-15)  # k = 2: cos then sin
    torch.testing.assert_close(context[:, 6:8], torch.sin(2 * s), rtol=0, atol=1e-15)


def test_aldp_spline_flow_has_the_paper_size():
    from openmm_cgflow.systems.alanine_dipeptide import FLOW_CIRCULAR_INDICES

    flow = ConditionalSplineFlow(58, FLOW_CIRCULAR_INDICES)
    assert sum(p.numel() for p in flow.parameters()) == pytest.approx(3.96e6, rel=0.01)
    assert flow.circular.sum() == 10 and flow.shifts.count_nonzero() == 5


def test_float32_spline_flow_computes_in_float32_and_answers_in_the_callers_dtype():
    """flow.precision=float32: the same parameters give the float64 numbers to float32 accuracy; inputs and outputs
    stay float64 (positions and importance weights are built from them), and gradients reach the float32 weights."""
    exact = make_spline()
    fast = make_spline().float()
    s = conditions(exact)
    z = base(exact, s)
    x64, ld64 = exact(z, s)
    x32, ld32 = fast(z, s)
    assert x32.dtype == ld32.dtype == torch.float64
    assert next(fast.parameters()).dtype == torch.float32
    torch.testing.assert_close(x32, x64, rtol=0, atol=1e-4)
    torch.testing.assert_close(ld32, ld64, rtol=0, atol=1e-4)
    z_back, ld_inv = fast.inverse(x32, s)
    torch.testing.assert_close(z_back, z, rtol=0, atol=1e-4)
    assert fast.log_prob(x32, s).dtype == torch.float64
    (x32.sum() + ld32.sum()).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in fast.parameters() if p.requires_grad)


def test_spline_flow_state_dict_holds_no_derived_buffers():
    """Checkpoints written before the merged sampling pass (no ``order`` buffers) still load."""
    flow = make_spline()
    state = flow.state_dict()
    assert not any(key.endswith(".order") for key in state)
    fresh = ConditionalSplineFlow(fg_dim=7, circular_indices=(1, 4, 5), cg_dim=2, n_layers=4, n_bins=5, hidden=16)
    fresh.load_state_dict(state)
    s = conditions(flow)
    z = base(flow, s)
    torch.testing.assert_close(fresh(z, s)[0], flow(z, s)[0])
    # ... and so do those written while ``order`` was persistent (it is derived: dropped, not refused)
    with_order = dict(state, **{f"layers.{i}.order": layer.order.clone() for i, layer in enumerate(flow.layers)})
    other = ConditionalSplineFlow(fg_dim=7, circular_indices=(1, 4, 5), cg_dim=2, n_layers=4, n_bins=5, hidden=16)
    other.load_state_dict(with_order)
    torch.testing.assert_close(other(z, s)[0], flow(z, s)[0])
    with pytest.raises(RuntimeError, match="Unexpected key"):
        other.load_state_dict(dict(state, **{"layers.0.not_a_buffer": torch.zeros(1)}))
