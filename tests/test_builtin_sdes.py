"""Every built-in SDE against its closed forms from the literature, in float64, across the whole window."""

import math

import numpy as np
import pytest
import torch

import ei_toolkit as ei


def vp_alpha(t, b0=0.1, b1=20.0):
    return np.exp(-0.25 * t**2 * (b1 - b0) - 0.5 * t * b0)  # Song et al. 2021, eq. (33)


def cosine_alpha(t, s=0.008):
    f = lambda x: np.cos((x + s) / (1 + s) * np.pi / 2)  # noqa: E731  (Nichol & Dhariwal 2021, eq. 17)
    return f(t) / f(0.0)


def ddpm_alphas_cumprod(n=1000):
    return np.cumprod(1 - np.linspace(1e-4, 0.02, n))  # Ho et al. 2020


CASES = {
    "vp": (ei.VPSDE, lambda t: vp_alpha(t), lambda t: np.sqrt(-np.expm1(2 * np.log(vp_alpha(t))))),
    "subvp": (ei.SubVPSDE, lambda t: vp_alpha(t), lambda t: -np.expm1(2 * np.log(vp_alpha(t)))),
    "cosine": (ei.CosineVPSDE, cosine_alpha, lambda t: np.sqrt(1 - cosine_alpha(t) ** 2)),
    "ve": (ei.VESDE, lambda t: np.ones_like(t), lambda t: 0.01 * (50.0 / 0.01) ** t),
    "edm": (ei.EDM, lambda t: np.ones_like(t), lambda t: t),
}


def window(sde, n=501):
    t = np.linspace(sde.t_min, sde.t_max, n)
    t = np.concatenate([t, sde.t_min + np.geomspace(1e-9, 1e-2, 20) * (sde.t_max - sde.t_min)])
    return np.unique(np.clip(t, sde.t_min, sde.t_max))


@pytest.mark.parametrize("name", CASES)
def test_builtin_marginals_match_literature(name):
    cls, alpha, sigma = CASES[name]
    sde = cls()
    t = window(sde)
    tt = torch.tensor(t, dtype=torch.float64)
    np.testing.assert_allclose(sde.alpha(tt).numpy(), alpha(t), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sde.sigma(tt).numpy(), sigma(t), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sde.rho(tt).numpy(), sigma(t) / alpha(t), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", [*CASES, "discrete"])
def test_t_of_rho_inverts_rho_on_the_whole_window(name):
    sde = ei.DiscreteVP.linear() if name == "discrete" else CASES[name][0]()
    t = torch.tensor(window(sde), dtype=torch.float64)
    back = sde.t_of_rho(sde.rho(t))
    assert back.dtype == torch.float64
    torch.testing.assert_close(back, t, rtol=1e-10, atol=1e-10 * max(1.0, sde.t_max))
    # both ends exactly
    ends = torch.tensor([sde.t_min, sde.t_max], dtype=torch.float64)
    torch.testing.assert_close(sde.t_of_rho(sde.rho(ends)), ends, rtol=1e-10, atol=1e-10 * max(1.0, sde.t_max))


def test_discrete_vp_matches_alphas_cumprod_and_interpolates_log_alpha():
    ac = ddpm_alphas_cumprod()
    sde = ei.DiscreteVP.linear()
    n = torch.arange(1000, dtype=torch.float64)
    np.testing.assert_allclose(sde.alpha(n).numpy() ** 2, ac, rtol=1e-12)
    np.testing.assert_allclose(sde.sigma(n).numpy() ** 2, 1 - ac, rtol=1e-10)
    # between integers log alpha is linear; the data time t0 = -1 has alpha = 1
    t = torch.tensor([-1.0, -0.5, 10.25, 998.5], dtype=torch.float64)
    la = np.log(np.concatenate([[1.0], ac])) / 2
    np.testing.assert_allclose(sde.log_alpha(t).numpy(), np.interp(t.numpy(), np.arange(-1, 1000), la), rtol=1e-12)
    assert sde.t_min == 0 and sde.t_max == 999 and sde.t0 == -1
    same = ei.DiscreteVP.from_alphas_cumprod(torch.tensor(ac))
    torch.testing.assert_close(same.rho(n), sde.rho(n), rtol=1e-12, atol=0)


def test_discrete_vp_refuses_t_max_beyond_its_table():
    betas = np.linspace(1e-4, 0.02, 1000)
    assert ei.DiscreteVP(betas, t_max=500).t_max == 500
    with pytest.raises(ValueError, match=r"t_max = 1000 lies beyond the table \(the table ends at t = 999\); "
                                         "DiscreteVP does not extrapolate"):
        ei.DiscreteVP(betas, t_max=1000)
    with pytest.raises(ValueError, match=r"t_max must be a finite real number"):
        ei.DiscreteVP(betas, t_max=float("nan"))


# -- zero terminal SNR (Lin et al. 2024) ---------------------------------------------------------------------------


def test_zero_terminal_snr_schedule_ends_at_infinite_noise():
    plain = ei.DiscreteVP.linear()
    sde = ei.DiscreteVP.linear(rescale_zero_snr=True)
    ac = sde.alphas_cumprod.numpy()
    assert ac[-1] == 0 and ac[-2] > 0 and sde.betas[-1] == 1
    # Lin et al. algorithm 1: sqrt(alphas_cumprod) shifted to end at 0 and scaled to keep its first value
    root = np.sqrt(ddpm_alphas_cumprod())
    np.testing.assert_allclose(np.sqrt(ac), (root - root[-1]) * root[0] / (root[0] - root[-1]), rtol=1e-12,
                               atol=1e-15)
    assert sde.zero_terminal_snr and not plain.zero_terminal_snr and plain.t_terminal is None
    assert (sde.t_max, sde.t_terminal) == (998.0, 999.0)  # the domain ends at the last time with alpha > 0
    a, s = sde.alpha_sigma(torch.tensor([0.0, 998.0, 999.0], dtype=torch.float64))
    np.testing.assert_allclose(a.numpy() ** 2, ac[[0, 998, 999]], rtol=1e-12)
    assert float(s[-1]) == 1.0 and float(a[-1]) == 0.0
    assert sde.key != ei.DiscreteVP(sde.betas[:-1].numpy()).key  # same finite part, not the same SDE
    # the same schedule from its table, or from betas ending in 1
    for other in (ei.DiscreteVP.from_alphas_cumprod(torch.tensor(ac)), ei.DiscreteVP(sde.betas)):
        assert other.t_terminal == 999.0 and other.t_max == 998.0
        n = torch.arange(999, dtype=torch.float64)
        torch.testing.assert_close(other.rho(n), sde.rho(n), rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match=r"t_max = 999 lies beyond the table \(alpha > 0 up to t = 998; t = 999 is "
                                         "the zero-SNR time t_terminal"):
        ei.DiscreteVP(sde.betas, t_max=999)
    with pytest.raises(ValueError, match=r"betas must lie in \(0, 1\) \(the last may be 1"):
        ei.DiscreteVP([0.1, 1.0, 0.2])
    assert ei.DiscreteVP(sde.betas, t_max=500).t_terminal is None  # a window cut short is an ordinary schedule


def gaussian_v_model(sde, m, s):
    """The exact v-prediction of data N(m, s^2 I) under a DiscreteVP, t_terminal included (x0 = m there)."""

    def model(x, t):
        a, sg = (u.to(x).view(-1, *[1] * (x.ndim - 1)) for u in sde.alpha_sigma(t.double()))
        x0 = m + a * s * s * (x - a * m) / (a * a * s * s + sg * sg)
        return a * (x - a * x0) / sg - sg * x0

    return model


@pytest.mark.parametrize("method", ["ddim", None, "x0-logrhoab2"])
def test_sampling_from_zero_terminal_snr_starts_at_infinite_noise_and_converges(method):
    """The probability-flow ODE of N(m, s^2) data maps x at infinite noise to m + s x exactly; the first step,
    from rho = inf, is x_1 = alpha_1 x0 + sigma_1 x with x0 = -v there."""
    sde = ei.DiscreteVP.linear(rescale_zero_snr=True)
    m, s = 0.7, 0.3
    model = gaussian_v_model(sde, m, s)
    x = torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    kw = {} if method is None else {"method": method}
    errors = []
    for nfe in (10, 40):
        sol = ei.solve(model, x, sde, prediction="v", nfe=nfe, t_end=-1.0, **kw)
        assert sol.nfe == nfe and float(sol.times[0]) == 999.0 and float(sol.eval_times[0]) == 999.0
        assert len(sol.times) == nfe + 1 and sol.stats["start"] == "infinite noise"
        errors.append(float((sol.x - (m + s * x)).abs().max()))
    assert errors[1] < 0.3 * errors[0] and errors[1] < 0.06, errors
    # one step from infinite noise straight to the data returns x0 = -v at t_terminal: the data mean
    one = ei.sample(model, x, sde, prediction="v", nfe=1, t_end=-1.0, **kw)
    torch.testing.assert_close(one, torch.full_like(x, m), rtol=0, atol=1e-12)
    # the trajectory's second state is the exact step from rho = inf (a data-prediction plan that keeps the
    # evaluation takes it to t_max and then its own one-point step, the same state; a corrector then moves it)
    sol = ei.solve(model, x, sde, prediction="v", nfe=5, t_end=-1.0, trajectory=True, **kw)
    t1 = sol.times[1:2]
    a1, s1 = sde.alpha(t1).item(), sde.sigma(t1).item()
    if not getattr(ei.INTEGRATORS[sol.stats["method"]], "corrector", False):
        torch.testing.assert_close(sol.trajectory[1], a1 * m + s1 * x, rtol=1e-12, atol=1e-12)
    assert sol.trajectory.shape[0] == 6


def test_zero_terminal_snr_refuses_what_is_undefined_at_infinite_noise():
    sde = ei.DiscreteVP.linear(rescale_zero_snr=True)
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"needs a model that predicts x0 or v: prediction='eps'"):
        ei.sample(lambda x, t: x, x, sde, nfe=5)
    # float32 v-models (the usual case) start at infinite noise like float64 ones
    v32 = ei.sample(gaussian_v_model(sde, 0.5, 0.2), x, sde, prediction="v", nfe=8, t_end=-1.0)
    assert v32.dtype == torch.float32 and float((v32 - (0.5 + 0.2 * x)).abs().max()) < 0.1
    # an eps-model can still start below t_terminal, inside the domain
    out = ei.sample(lambda x, t: torch.zeros_like(x), x, sde, nfe=5, t_start=sde.t_max, t_end=-1.0)
    assert torch.isfinite(out).all()
    # stochastic DDIM from infinite noise: lam = 1 forgets x (x_1 = alpha_1 x0 + sigma_1 z)
    model = gaussian_v_model(sde, 0.0, 1.0)
    a = ei.sample(model, x, sde, prediction="v", method="sddim", nfe=3, generator=torch.Generator().manual_seed(1))
    b = ei.sample(model, 2 * x, sde, prediction="v", method="sddim", nfe=3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)


def test_psi_is_the_alpha_ratio_for_builtins():
    for cls in (ei.VPSDE, ei.CosineVPSDE, ei.SubVPSDE):
        sde = cls()
        t = torch.tensor([0.3, 0.9], dtype=torch.float64)
        s = torch.tensor([0.1, 0.5], dtype=torch.float64)
        torch.testing.assert_close(sde.psi(t, s), sde.alpha(t) / sde.alpha(s), rtol=1e-12, atol=0)


def test_drho_dt_matches_finite_difference():
    for sde in (ei.VPSDE(), ei.CosineVPSDE(), ei.VESDE(), ei.EDM(), ei.SubVPSDE()):
        t = torch.linspace(sde.t_min + 0.01 * (sde.t_max - sde.t_min), sde.t_max * 0.99, 7, dtype=torch.float64)
        h = 1e-6 * (sde.t_max - sde.t_min)
        fd = (sde.rho(t + h) - sde.rho(t - h)) / (2 * h)
        torch.testing.assert_close(sde.drho_dt(t), fd, rtol=1e-6, atol=0)


def test_builtins_are_closed_form_where_the_literature_is():
    assert "symbolic" in ei.VPSDE().how["t_of_rho"]
    assert "symbolic" in ei.VESDE().how["rho"]
    assert ei.EDM().symbolic.rho.free_symbols == {ei.EDM().symbolic.t}
    assert all(v.startswith("symbolic") for v in ei.SubVPSDE().how.values())


def test_building_twice_reuses_the_derivation():
    a, b = ei.VPSDE(beta_min=0.2), ei.VPSDE(beta_min=0.2)
    assert a._b is b._b
    c = ei.VPSDE(beta_min=0.3)  # other values: new tables and functions, same symbolic derivation
    assert c._b is not a._b
    assert c.symbolic.rho == a.symbolic.rho


def test_defaults_and_repr():
    sde = ei.VPSDE()
    assert (sde.t_min, sde.t_max) == (1e-3, 1.0)
    assert repr(sde) == "VPSDE(beta_min=0.1, beta_max=20.0)"
    assert (ei.EDM().t_min, ei.EDM().t_max) == (0.002, 80.0)
    assert ei.CosineVPSDE().t_max < 1
    assert math.isclose(ei.VESDE().rho_max, 50.0, rel_tol=1e-12)
    assert "t_of_rho" in sde.describe()


def mp_reference(name, t):
    """sigma and rho in 40-digit arithmetic (mpmath), for relative accuracy near t_min."""
    import mpmath as mp

    mp.mp.dps = 40
    t = mp.mpf(t)
    if name in ("vp", "subvp"):
        a2 = mp.exp(-(mp.mpf("0.1") * t + (mp.mpf(20) - mp.mpf("0.1")) * t**2 / 2))
        sig = mp.sqrt(1 - a2) if name == "vp" else 1 - a2
        return sig, sig / mp.sqrt(a2)
    if name == "cosine":
        s = mp.mpf("0.008")
        a = mp.cos((t + s) / (1 + s) * mp.pi / 2) / mp.cos(s / (1 + s) * mp.pi / 2)
        return mp.sqrt(1 - a**2), mp.sqrt(1 - a**2) / a
    if name == "ve":
        v = mp.mpf("0.01") * (mp.mpf(50) / mp.mpf("0.01")) ** t
        return v, v
    return t, t


@pytest.mark.parametrize("name", CASES)
def test_sigma_and_rho_keep_relative_accuracy_near_t_min(name):
    sde = CASES[name][0]()
    ts = np.linspace(sde.t_min, sde.t_min * 10, 7)
    ref = np.array([[float(v) for v in mp_reference(name, x)] for x in ts])
    for dtype, rtol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        tt = torch.tensor(ts, dtype=dtype)
        np.testing.assert_allclose(sde.sigma(tt).double().numpy(), ref[:, 0], rtol=rtol, atol=0)
        np.testing.assert_allclose(sde.rho(tt).double().numpy(), ref[:, 1], rtol=rtol, atol=0)
