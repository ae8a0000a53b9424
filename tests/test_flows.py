"""Contract test for every conditional flow: invertibility, log-det vs the autograd Jacobian,
TorchScript save/load, and log_prob consistent with sampling."""
import pytest
import torch

from openmm_cgflow.flows import ConditionalAffineFlow, sample


def make_affine():
    torch.manual_seed(0)
    flow = ConditionalAffineFlow(cg_dim=1, fg_dim=1, hidden=(16, 16), s_mean=-2.0, s_std=0.1).double()
    with torch.no_grad():  # move away from the default init so the test is not trivial
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return flow


FLOWS = {"affine": make_affine}


@pytest.fixture(params=sorted(FLOWS))
def flow(request):
    return FLOWS[request.param]()


def conditions(flow, n=7):
    return torch.linspace(-2.4, 1.0, n, dtype=torch.float64)[:, None].expand(n, flow.cg_dim).contiguous()


def test_invertible(flow):
    s = conditions(flow)
    z = torch.randn(s.shape[0], flow.fg_dim, dtype=torch.float64)
    x, ld_fwd = flow(z, s)
    z_back, ld_inv = flow.inverse(x, s)
    torch.testing.assert_close(z_back, z, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ld_fwd, -ld_inv, rtol=1e-10, atol=1e-10)


def test_logdet_matches_autograd_jacobian(flow):
    s = conditions(flow)
    z = torch.randn(s.shape[0], flow.fg_dim, dtype=torch.float64)
    _, logdet = flow(z, s)
    for i in range(s.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda zi: flow(zi[None], s[i : i + 1])[0][0], z[i])
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(jac.reshape(flow.fg_dim, flow.fg_dim))[1], rtol=1e-8, atol=1e-10)


def test_torchscript_roundtrip(flow, tmp_path):
    s = conditions(flow)
    z = torch.randn(s.shape[0], flow.fg_dim, dtype=torch.float64)
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
