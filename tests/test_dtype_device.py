"""dtype, device, shape and autograd behaviour of the compiled SDE functions."""

import pytest
import torch

import ei_toolkit as ei

SDES = {
    "vp": ei.VPSDE,
    "cosine": ei.CosineVPSDE,  # numerical t(rho)
    "ve": ei.VESDE,
    "edm": ei.EDM,
    "discrete": ei.DiscreteVP.linear,  # tabulated log-alpha
    "numeric": lambda: ei.LinearSDE(drift="-a/sqrt(1 + t**3)", diffusion="exp(t)", t_max=1.0, a=2.0),
}
FUNCS = ("alpha", "sigma", "rho", "log_alpha", "drho_dt", "drift", "diffusion")


def times(sde, dtype, shape=(3, 4)):
    u = torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return (sde.t_min + u * (sde.t_max - sde.t_min)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", SDES)
def test_dtype_and_shape_follow_the_input(name, dtype):
    sde = SDES[name]()
    t = times(sde, dtype)
    for f in FUNCS:
        out = getattr(sde, f)(t)
        assert out.dtype == dtype and out.shape == t.shape, f
        assert torch.isfinite(out).all(), f
    r = sde.rho(t)
    assert sde.t_of_rho(r).dtype == dtype
    assert sde.psi(t, t[:1]).shape == t.shape


@pytest.mark.parametrize("name", SDES)
def test_float32_agrees_with_float64(name):
    sde = SDES[name]()
    t = times(sde, torch.float64, (64,))
    for f in ("alpha", "sigma", "rho"):
        lo, hi = getattr(sde, f)(t.float()), getattr(sde, f)(t)
        torch.testing.assert_close(lo.double(), hi, rtol=2e-5, atol=1e-6)
    back = sde.t_of_rho(sde.rho(t.float()))
    torch.testing.assert_close(back.double(), t, rtol=1e-4, atol=1e-4 * sde.t_max)


def test_integer_and_python_times():
    sde = ei.DiscreteVP.linear()
    n = torch.arange(0, 1000, 100)
    assert sde.alpha(n).dtype == torch.get_default_dtype()
    assert sde.alpha(3).dtype == torch.float64
    torch.testing.assert_close(sde.alpha(n).double(), sde.alpha(n.double()), rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", SDES)
def test_functions_are_differentiable(name):
    sde = SDES[name]()
    t = times(sde, torch.float64, (5,)).requires_grad_()
    assert torch.autograd.gradcheck(sde.alpha, (t,))
    if name != "discrete":  # piecewise-linear log alpha has kinks at the integers; gradcheck needs smoothness
        assert torch.autograd.gradcheck(sde.rho, (t,))
        r = sde.rho(t).detach().requires_grad_()
        assert torch.autograd.gradcheck(sde.t_of_rho, (r,), atol=1e-6, rtol=1e-5)
        # d t / d rho = 1 / (d rho / dt)
        (g,) = torch.autograd.grad(sde.rho(t).sum(), t)
        torch.testing.assert_close(g, sde.drho_dt(t.detach()), rtol=1e-8, atol=0)
    else:
        t = torch.tensor([3.25, 500.5], dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(sde.rho, (t,))


@pytest.mark.cuda
@pytest.mark.parametrize("name", SDES)
def test_cuda_results_match_cpu(name):
    sde = SDES[name]()
    t = times(sde, torch.float64, (256,))
    for dtype in (torch.float32, torch.float64):
        for f in ("alpha", "sigma", "rho"):
            out = getattr(sde, f)(t.to("cuda", dtype))
            assert out.device.type == "cuda" and out.dtype == dtype
            torch.testing.assert_close(out.cpu(), getattr(sde, f)(t.to(dtype)), rtol=1e-5, atol=1e-6)
        r = sde.rho(t.to("cuda", dtype))
        assert sde.t_of_rho(r).device.type == "cuda"
