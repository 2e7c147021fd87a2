"""Identities of the derived quantities on a seeded sweep of user SDEs, closed-form and numerical."""

import contextlib
import signal
import threading
import time

import numpy as np
import pytest
import sympy as sp
import torch
import torchdiffeq
from scipy.integrate import solve_ivp

import ei_toolkit as ei
from ei_toolkit.sde import derive

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
    x_t = torchdiffeq.odeint(ei.FlowODE(eps, sde, frame="t"), x1, t_span, rtol=1e-11, atol=1e-11, method="dopri5",
                             options={"step_t": t_span, "first_step": 1e-4})[-1]
    rho_span = sde.rho(t_span)
    y = torchdiffeq.odeint(ei.FlowODE(eps, sde, frame="rho"), x1 / sde.alpha(t_span[0]), rho_span, rtol=1e-11,
                           atol=1e-11, method="dopri5", options={"step_t": rho_span, "first_step": 1e-4})[-1]
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


# --- no process-wide side effects from the sympy time limit ------------------------------------------------


def fresh_custom_sde(k):
    """A custom SDE whose symbolic steps no cache has seen (the constant k makes each expression new)."""
    return ei.LinearSDE(drift=f"-a*t - {k}/1000", diffusion="sqrt(1 + t**2)", t_max=1.0, a=1.5)


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs POSIX interval timers")
def test_building_an_sde_leaves_the_users_sigalrm_handler_and_timer_alone():
    fired = []

    def handler(signum, frame):
        fired.append(signum)

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 100.0)
        fresh_custom_sde(int(time.time() * 1000) % 100000)
        assert signal.getsignal(signal.SIGALRM) is handler
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0 < remaining <= 100.0  # the user's timer is still running
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert not fired


HARD = ("-a*t", "sqrt(1 + t**3)*exp(t*sin(t))*{k}")  # sympy's integrate runs for minutes on its rho^2


def build_hard(k):
    start = time.perf_counter()
    sde = ei.LinearSDE(drift=HARD[0], diffusion=HARD[1].format(k=k), t_max=1.0, a=1.2)
    return time.perf_counter() - start, sde


def test_the_sympy_time_limit_holds_in_a_thread():
    k = 2 + int(time.time() * 1000) % 100000  # new expressions: no cached sympy result
    main_seconds, sde = build_hard(k)
    assert sde.how["rho"].startswith("numeric")
    out = {}
    thread = threading.Thread(target=lambda: out.update(result=build_hard(k + 1)), daemon=True)
    thread.start()
    thread.join(timeout=max(60.0, 5 * main_seconds))
    assert not thread.is_alive(), "the derivation in a thread ran without a time limit"
    thread_seconds, _ = out["result"]
    assert thread_seconds < 3 * main_seconds + 5


def test_call_with_time_limit_interrupts_pure_python_and_leaves_nothing_pending():
    def spin():
        while True:
            with contextlib.suppress(Exception):  # a broad except (as in sympy) must not swallow the interrupt
                sum(range(1000))

    for run_in_thread in (False, True):
        result = {}

        def run(result=result):
            start = time.perf_counter()
            with pytest.raises(derive._Timeout):
                derive.call_with_time_limit(0.2, spin)
            result["seconds"] = time.perf_counter() - start

        if run_in_thread:
            th = threading.Thread(target=run, daemon=True)
            th.start()
            th.join(timeout=30)
            assert not th.is_alive()
        else:
            run()
        assert 0.2 <= result["seconds"] < 2.0
    # calls that end around their deadline, in several threads at once (the interrupt can even come while the
    # watchdog starts): none may arrive after the call returned
    def calls(seed, leaks):
        rnd = np.random.default_rng(seed)
        for i in range(150):
            try:
                with contextlib.suppress(derive._Timeout):
                    if i % 2:
                        derive.call_with_time_limit(0.001 + 0.002 * rnd.random(), time.sleep, 0.004 * rnd.random())
                    else:
                        with derive.time_limit(0.001 + 0.002 * rnd.random()):
                            sum(range(int(rnd.integers(1000, 20000))))
                for _ in range(3000):  # plain Python: a stray asynchronous exception would surface here
                    pass
                time.sleep(0.002)
            except BaseException as exc:
                leaks.append(exc)

    leaks = []
    threads = [threading.Thread(target=calls, args=(seed, leaks)) for seed in range(3)]
    for th in threads:
        th.start()
    calls(3, leaks)
    for th in threads:
        th.join()
    assert not leaks


# --- closed forms that cancel near t0 -----------------------------------------------------------------------


def mp_rho(integrand, ts):
    import mpmath as mp

    mp.mp.dps = 40
    return np.array([float(mp.sqrt(mp.quad(integrand, [0, mp.mpf(x)]))) for x in ts])


@pytest.mark.parametrize(("diffusion", "power", "smallest"), [("t", 2, 1e-9), ("t**2", 4, 1e-7)])
def test_diffusion_vanishing_at_t0_is_derived_with_relative_accuracy(diffusion, power, smallest):
    # rho^2 = int_0^t s^p e^{2s} ds; its closed form e^{2t} poly(t) - poly(0) cancels as t -> 0
    import mpmath as mp

    sde = ei.LinearSDE(drift="-1", diffusion=diffusion, t_max=1.0)
    assert "cancels near t0" in sde.how["rho"] and sde.how["rho"].startswith("numeric")
    ts = np.array([smallest, 1e-6, 1e-4, 1e-3, 1e-2, 0.1, 0.5, 1.0])
    ref = mp_rho(lambda s: s**power * mp.exp(2 * s), ts)
    np.testing.assert_allclose(sde.rho(torch.tensor(ts)).numpy(), ref, rtol=1e-12, atol=0)
    np.testing.assert_allclose(sde.sigma(torch.tensor(ts)).numpy(), ref * np.exp(-ts), rtol=1e-12, atol=0)
    t = torch.linspace(sde.t_min, sde.t_max, 301, dtype=torch.float64)
    torch.testing.assert_close(sde.t_of_rho(sde.rho(t)), t, rtol=1e-10, atol=1e-12)
    # differentiable, with d rho/dt = G^2 / (2 alpha sigma), also where the quadrature is read directly
    t = torch.tensor([1e-4, 1e-3, 0.3], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(sde.rho(t).sum(), t)
    torch.testing.assert_close(grad, sde.drho_dt(t.detach()), rtol=1e-8, atol=0)


def test_first_order_cancellation_keeps_its_closed_form():
    # rho^2 = t e^{2t}/2 - (e^{2t} - 1)/4 ~ t^2/2: cancels only to first order, accurate on the window
    sde = ei.LinearSDE(drift="-1", diffusion="sqrt(t)", t_max=1.0)
    assert sde.how["rho"].startswith("symbolic")
    import mpmath as mp

    ts = np.array([1e-3, 1e-2, 0.5])
    np.testing.assert_allclose(sde.rho(torch.tensor(ts)).numpy(), mp_rho(lambda s: s * mp.exp(2 * s), ts),
                               rtol=1e-12, atol=0)


def test_direct_quadrature_near_t0_matches_under_torch_compile(monkeypatch):
    sde = ei.LinearSDE(drift="-1", diffusion="t", t_max=1.0)
    t = torch.tensor([1e-8, 1e-4, 0.2, 0.9], dtype=torch.float64)
    eager = sde.rho(t)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # the branch-free path torch.compile takes
    torch.testing.assert_close(sde.rho(t), eager, rtol=1e-14, atol=0)


def test_describe_says_the_cancelling_closed_form_was_replaced_by_quadrature():
    text = ei.LinearSDE(drift="-1", diffusion="t**2", t_max=1.0).describe()
    assert "rho        numeric (Gauss-Legendre quadrature" in text and "rejected: it cancels near t0" in text


def test_the_expm1_rewrite_is_time_limited_and_falls_back(monkeypatch):
    """sympy's factoring inside the expm1/log1p rewrite ran for minutes on a drift with a large rational constant
    (it hung this suite once); past its limit the expression is compiled as it is, still correct."""
    from ei_toolkit.sde import compile as sde_compile

    t = sp.Symbol("t")
    expr = sp.exp(t / 3) - 1
    assert sde_compile.prepare(expr).has(sp.Function("expm1")) or "expm1" in str(sde_compile.prepare(expr))
    monkeypatch.setattr(sde_compile, "PREPARE_SECONDS", 0.0)
    plain = sde_compile.prepare(expr)
    assert "expm1" not in str(plain)
    assert float(plain.subs(t, 0.3)) == pytest.approx(float(sp.exp(sp.Rational(1, 10)) - 1), rel=1e-15)
