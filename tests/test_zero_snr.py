"""The start at infinite noise (zero terminal SNR, rectified flow) and its inverse, the encoding into it: a per-step
``callback=`` sees the same grid indices, times and states as on any other run (1 .. steps, sol.times[i], the
trajectory), the step from infinite noise included."""

import pytest
import torch

import ei_toolkit as ei


def gaussian_v_model(sde, m, s):
    """The exact v-prediction of data N(m, s^2 I) under a DiscreteVP, t_terminal included (x0 = m there)."""

    def model(x, t):
        a, sg = (u.to(x).view(-1, *[1] * (x.ndim - 1)) for u in sde.alpha_sigma(t.double()))
        x0 = m + a * s * s * (x - a * m) / (a * a * s * s + sg * sg)
        return a * (x - a * x0) / sg - sg * x0

    return model


def seen_steps(**kw):
    seen: list = []
    sol = ei.solve(**kw, trajectory=True, callback=lambda i, t, s: seen.append((i, t, s.clone())))
    return sol, seen


def check(sol, seen):
    assert [i for i, _, _ in seen] == list(range(1, len(sol.times)))
    assert [t for _, t, _ in seen] == sol.times[1:].tolist()
    for i, _, s in seen:
        torch.testing.assert_close(s, sol.trajectory[i].to(s.dtype), rtol=0, atol=0)


@pytest.mark.parametrize("method", ["ddim", "logrhoab2", "x0-logrhoab1-mid-pc", "rhork-heun", "sddim"])
@pytest.mark.parametrize("nfe", [1, 2, 8])
def test_callback_sees_every_grid_point_when_sampling_from_zero_terminal_snr(method, nfe):
    sde = ei.DiscreteVP.linear(rescale_zero_snr=True)
    if method == "rhork-heun" and nfe in (2, 8):
        nfe += 1  # one evaluation at infinite noise, then whole Heun steps of 2
    x = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    kw = {"generator": torch.Generator().manual_seed(1)} if method == "sddim" else {}
    sol, seen = seen_steps(model=gaussian_v_model(sde, 0.5, 0.3), x=x, sde=sde, method=method, nfe=nfe,
                           prediction="v", **kw)
    assert float(sol.times[0]) == sde.t_terminal and sol.stats["start"] == "infinite noise"
    check(sol, seen)
    assert seen[0][0] == 1  # the step from infinite noise is reported, as grid point 1


def test_callback_on_a_rectified_flow_from_pure_noise():
    sde = ei.RectifiedFlow()
    x = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sol, seen = seen_steps(model=lambda x, t: x - 0.25, x=x, sde=sde, nfe=6, prediction="flow", t_end=0.0)
    assert float(sol.times[0]) == 1.0
    check(sol, seen)


@pytest.mark.parametrize("nfe", [1, 6])
def test_callback_sees_the_last_step_of_an_encoding_into_infinite_noise(nfe):
    sde = ei.DiscreteVP.linear(rescale_zero_snr=True)
    x0 = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sol, seen = seen_steps(model=gaussian_v_model(sde, 0.5, 0.3), x=x0, sde=sde, method="ddim", nfe=nfe,
                           prediction="v", t_start=0.0, t_end=sde.t_terminal)
    assert float(sol.times[-1]) == sde.t_terminal
    check(sol, seen)
    assert seen[-1][1] == sde.t_terminal


def test_the_core_solves_from_infinite_noise_without_the_diffusion_client():
    from ei_toolkit import zero_snr

    assert ei.sampling.solve_from_infinite_noise is zero_snr.solve_from_infinite_noise
