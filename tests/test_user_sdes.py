"""Identities of the derived quantities on a seeded sweep of user SDEs, closed-form and numerical."""

import numpy as np
import pytest
import sympy as sp
import torch
import torchdiffeq
from scipy.integrate import solve_ivp

import ei_toolkit as ei

# (drift, diffusion, parameter ranges, sigma_init). The last two have no elementary antiderivative
# (elliptic / Fresnel-type integrals) and exercise the numerical fallback.
FAMILIES = {
    "polynomial-vp": ("-(a + b*t + c*t**2)/2", "sqrt(a + b*t + c*t**2)",
                      {"a": (0.05, 1), "b": (1, 20), "c": (0, 5)}, 0.0),
    "ou-ramp": ("-a", "b*(1 + t)", {"a": (0.1, 3), "b": (0.5, 5)}, 0.0),
    "ve-wiggle": ("0", "sqrt(a + b*sin(3*t)**2)", {"a": (0.5, 2), "b": (0.5, 4)}, 0.1),
    "elliptic": ("-a/sqrt(1 + t**3)", "sqrt(b)*exp(t/4)", {"a": (0.5, 4), "b": (0.5, 4)}, 0.0),
    "fresnel": ("-a*(1 + cos(t**2))", "b", {"a": (0.2, 2), "b": (0.5, 2)}, 0.05),
}
SEEDS = (0, 1, 2)


def make(family, seed):
    drift, diffusion, ranges, s0 = FAMILIES[family]
    rng = np.random.default_rng(seed)
    params = {k: float(rng.uniform(*r)) for k, r in ranges.items()}
    return ei.LinearSDE(drift=drift, diffusion=diffusion, t_max=1.0, sigma_init=s0, **params), params


def plain_numpy(expr, params):
    """The user's coefficient compiled independently of the package (sympy lambdify, NumPy)."""
    syms = {k: sp.Symbol(k) for k in params}
    e = sp.sympify(expr, locals={**syms, "t": sp.Symbol("t")}).subs({syms[k]: v for k, v in params.items()})
    return sp.lambdify(sp.Symbol("t"), e, "numpy")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_psi_composes_and_alpha_is_psi_from_t0(family, seed):
    sde, _ = make(family, seed)
    g = torch.Generator().manual_seed(seed)
    t, s, r = torch.rand(3, 200, generator=g, dtype=torch.float64).sort(dim=0).values.flip(0)
    torch.testing.assert_close(sde.psi(t, s) * sde.psi(s, r), sde.psi(t, r), rtol=1e-12, atol=0)
    torch.testing.assert_close(sde.alpha(t), sde.psi(t, torch.zeros_like(t)), rtol=1e-12, atol=0)
    torch.testing.assert_close(sde.psi(t, t), torch.ones_like(t), rtol=1e-14, atol=0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_sigma_squared_solves_its_ode(family, seed):
    """d sigma^2/dt = 2 F sigma^2 + G^2, sigma(0) = sigma_init, solved by DOP853 at tight tolerance."""
    sde, params = make(family, seed)
    drift, diffusion, _, s0 = FAMILIES[family]
    F, G = plain_numpy(drift, params), plain_numpy(diffusion, params)
    ts = np.linspace(0, 1, 21)
    sol = solve_ivp(lambda t, v: 2 * F(t) * v + G(t) ** 2, (0, 1), [s0**2], method="DOP853", t_eval=ts,
                    rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sde.sigma(torch.tensor(ts)).numpy() ** 2, sol.y[0], rtol=1e-8, atol=1e-12)
    log_alpha = solve_ivp(lambda t, v: [F(t)], (0, 1), [0.0], method="DOP853", t_eval=ts, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sde.log_alpha(torch.tensor(ts)).numpy(), log_alpha.y[0], rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_t_of_rho_inverts_rho(family, seed):
    sde, _ = make(family, seed)
    t = torch.linspace(sde.t_min, sde.t_max, 301, dtype=torch.float64)
    torch.testing.assert_close(sde.t_of_rho(sde.rho(t)), t, rtol=1e-10, atol=1e-10)


def gaussian_eps(sde, mean, std):
    """Exact eps of data N(mean, std^2): x_t ~ N(alpha mean, alpha^2 std^2 + sigma^2), eps = -sigma score."""

    def eps(x, t):
        a, s = sde.alpha(t).view(-1, 1), sde.sigma(t).view(-1, 1)
        return s * (x - a * mean) / (a**2 * std**2 + s**2)

    return eps


def gaussian_flow_exact(sde, mean, std, x_start, t_start, t_end):
    """The probability-flow map of Gaussian data is affine: standardised x is conserved."""
    def scale(t):
        t = torch.tensor(t, dtype=torch.float64)
        return sde.alpha(t), torch.sqrt(sde.alpha(t) ** 2 * std**2 + sde.sigma(t) ** 2)

    (a0, s0), (a1, s1) = scale(t_start), scale(t_end)
    return a1 * mean + s1 / s0 * (x_start - a0 * mean)


@pytest.mark.parametrize("family", FAMILIES)
def test_rho_ode_and_original_ode_reach_the_same_x(family):
    sde, _ = make(family, 0)
    mean, std = 0.7, 0.3
    eps = gaussian_eps(sde, mean, std)
    x1 = torch.linspace(-2, 2, 9, dtype=torch.float64).view(-1, 1)
    t_span = torch.tensor([sde.t_max, sde.t_min], dtype=torch.float64)
    # step_t makes dopri5 land on the end time instead of stepping past it (and out of the domain)
    x_t = torchdiffeq.odeint(sde.probability_flow(eps), x1, t_span, rtol=1e-11, atol=1e-11, method="dopri5",
                             options={"step_t": t_span, "first_step": 1e-4})[-1]
    rho_span = sde.rho(t_span)
    y = torchdiffeq.odeint(sde.rho_flow(eps), x1 / sde.alpha(t_span[0]), rho_span, rtol=1e-11, atol=1e-11,
                           method="dopri5", options={"step_t": rho_span, "first_step": 1e-4})[-1]
    x_rho = sde.alpha(t_span[1]) * y
    exact = gaussian_flow_exact(sde, mean, std, x1, sde.t_max, sde.t_min)
    torch.testing.assert_close(x_rho, x_t, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(x_rho, exact, rtol=1e-7, atol=1e-8)


def test_numerical_fallback_is_reported_and_closed_forms_are_used_where_found():
    elliptic, _ = make("elliptic", 0)
    assert elliptic.how["log_alpha"].startswith("numeric")
    assert elliptic.how["t_of_rho"].startswith("numeric")
    poly, _ = make("polynomial-vp", 0)
    assert poly.how["log_alpha"].startswith("symbolic") and poly.how["rho"].startswith("symbolic")
    assert isinstance(poly.symbolic.rho, sp.Expr) and poly.symbolic.t in poly.symbolic.rho.free_symbols
