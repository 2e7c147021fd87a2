"""ei.log_likelihood (issue 23): numerical proofs against exact Gaussian-mixture log-densities, the convergence
order of the divergence integral, the pure-Gaussian structure, Hutchinson's unbiasedness and batch independence,
the torchdiffeq path, matrix SDEs (CLD), and the errors for bad input (docs/math.md section 4.13)."""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import pytest
import torch

import ei_toolkit as ei
from ei_toolkit.integrators.base import plan_for
from ei_toolkit.likelihood import LogLikelihood, default_prior, lagrange_weights
from ei_toolkit.testing.problems import GaussianMixture, get_problem

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64
SDES = {"ddpm": ei.DiscreteVP.linear, "edm": ei.EDM, "ve": ei.VESDE}


def gaussian(d: int, c: float) -> GaussianMixture:
    return GaussianMixture(means=torch.zeros(1, d, dtype=F64), stds=torch.tensor([c], dtype=F64),
                           weights=torch.ones(1, dtype=F64), name="gauss")


def gaussian_delta(sde, d: int, c: float) -> float:
    """delta_logp of data N(0, c^2 I) in closed form: d log(alpha_T / alpha_0) + (d / 2) log((c^2 + rho_T^2) /
    (c^2 + rho_0^2)), the integral of div_y eps = d rho / (c^2 + rho^2) over rho (docs/math.md 4.13)."""
    tt = torch.tensor([sde.t_min, sde.t_max], dtype=F64)
    (r0, r1), (la0, la1) = sde.rho(tt).tolist(), sde.log_alpha(tt).tolist()
    return d * (la1 - la0) + 0.5 * d * math.log((c * c + r1 * r1) / (c * c + r0 * r0))


@pytest.mark.parametrize("name", SDES)
def test_high_nfe_equals_the_exact_log_density_up_to_the_prior_mismatch(name):
    """log p_{t_min}(x0) exactly = log p_T^exact(x_T) + delta_logp, so logp + (log p_T^exact(x_T) - prior(x_T)) must
    equal the exact log-density at x0. Error budget: the method (order 4) at 512 evaluations; its a-posteriori
    estimate |L_512 - L_256| / (2^4 - 1) is < 1e-5 nats here (d = 16), bounded with a factor 10 for the pre-asymptotic
    regime, plus float64 round-off (1e-9)."""
    sde = SDES[name]()
    p = get_problem("gmm16")
    model = p.eps_model(sde)
    x0 = p.sample_marginal(sde, sde.t_min, 6, torch.Generator().manual_seed(1))
    exact = p.log_prob(x0, sde, sde.t_min)
    runs = [ei.log_likelihood(model, x0, sde, method="x0-logrhoab2-pc", nfe=n) for n in (256, 512)]
    r = runs[1]
    assert torch.allclose(r.logp, r.prior_logp + r.delta_logp, rtol=0, atol=1e-12)
    mismatch = p.log_prob(r.x_T, sde, sde.t_max) - r.prior_logp
    estimate = float((runs[1].logp - runs[0].logp).abs().max()) / 15
    err = float((r.logp + mismatch - exact).abs().max())
    assert estimate < 1e-5
    assert err <= 10 * estimate + 1e-9, (err, estimate)
    assert r.nfe == 512 and r.stats["vjps"] == 512 * 16 and r.logp.dtype == F64


@pytest.mark.parametrize("name", ["ddpm", "edm"])
def test_dopri5_agrees_with_the_exact_value(name):
    """The augmented [y, D] system with torchdiffeq's dopri5 at rtol = atol = 1e-9: its local errors are held to
    ~1e-9 relative of |D| ~ 1e2 over ~100 steps, so 1e-5 nats is a bound with a wide margin (measured ~1e-6 at 1e-8)."""
    sde = SDES[name]()
    p = get_problem("gmm16")
    x0 = p.sample_marginal(sde, sde.t_min, 4, torch.Generator().manual_seed(2))
    r = ei.log_likelihood(p.eps_model(sde), x0, sde, method="torchdiffeq:dopri5", options={"rtol": 1e-9, "atol": 1e-9})
    mismatch = p.log_prob(r.x_T, sde, sde.t_max) - r.prior_logp
    assert float((r.logp + mismatch - p.log_prob(x0, sde, sde.t_min)).abs().max()) < 1e-5
    assert r.stats["grid"] == "adaptive" and r.stats["frame"] == "logrho"


@pytest.mark.parametrize("method", ["ddim", "logrhoab1", "logrhoab2", "logrhoab3", "rhork-rk4"])
@pytest.mark.parametrize("name", ["ddpm", "edm"])
def test_the_plans_divergence_channel_converges_at_the_methods_order(method, name):
    """quadrature='plan': on data N(0, c^2 I) (smooth; delta_logp in closed form) the error over NFE 64..256 falls
    with the slope of the method's order: a least-squares fit of log error on log NFE, within 0.3 of the declared
    order."""
    sde, d, c = SDES[name](), 4, 0.5
    model = gaussian(d, c).eps_model(sde)
    x0 = 0.5 * torch.randn(2, d, dtype=F64, generator=torch.Generator().manual_seed(0))
    exact = gaussian_delta(sde, d, c)
    nfes = [64, 128, 256]
    errs = [float((ei.log_likelihood(model, x0, sde, method=method, nfe=n, quadrature="plan").delta_logp
                   - exact).abs().max()) for n in nfes]
    slope = fitted_order(nfes, errs)
    assert abs(slope - ei.INTEGRATORS[method].order) < 0.3, (errs, slope)


def fitted_order(nfes: list[int], errs: list[float]) -> float:
    """Minus the least-squares slope of log error on log NFE."""
    xs, ys = [math.log(n) for n in nfes], [math.log(e) for e in errs]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return -sum((a - mx) * (b - my) for a, b in zip(xs, ys, strict=True)) / sum((a - mx) ** 2 for a in xs)


@pytest.mark.parametrize("method", ["ddim", "logrhoab1", "logrhoab2", "logrhoab3", "rhork-rk4"])
@pytest.mark.parametrize("name", ["ddpm", "edm"])
def test_the_lagrange_quadrature_converges_at_its_own_order_and_never_caps_the_method(method, name):
    """quadrature='lagrange' (default). On data N(0, c^2 I) every evaluation's divergence is exact whatever the
    state, so the error is the cubic quadrature's alone: order >= 4 for every method (fitted slope above 3.7; measured
    4.5-5.8). On a two-component mixture the state's error enters the divergence: delta_logp's error must fall at
    least as fast as the encoding x_T's own error (fitted slopes over NFE 64..512, delta's no more than 0.3 below
    x_T's), so the quadrature never caps the method. Runge-Kutta stages see states of lower order; the quadrature
    uses the step starts only (with every stage, rk4's delta fell at slope 2 while its x_T fell at 4)."""
    sde, d, c = SDES[name](), 4, 0.5
    model = gaussian(d, c).eps_model(sde)
    x0 = 0.5 * torch.randn(2, d, dtype=F64, generator=torch.Generator().manual_seed(0))
    exact = gaussian_delta(sde, d, c)
    nfes = [64, 128, 256] if method != "rhork-rk4" else [128, 256, 512]
    errs = [float((ei.log_likelihood(model, x0, sde, method=method, nfe=n).delta_logp - exact).abs().max())
            for n in nfes]
    assert fitted_order(nfes, errs) > 3.7, errs
    p = GaussianMixture(means=0.7 * torch.tensor([[1.0] * d, [-1.0] * d], dtype=F64),
                        stds=torch.tensor([0.6, 0.8], dtype=F64), weights=torch.tensor([0.4, 0.6], dtype=F64),
                        name="m2")
    model = p.eps_model(sde)
    x0 = p.sample_marginal(sde, sde.t_min, 3, torch.Generator().manual_seed(1))
    ref = ei.log_likelihood(model, x0, sde, method="torchdiffeq:dopri5", options={"rtol": 1e-12, "atol": 1e-12})
    nfes = [64, 128, 256, 512]
    runs = [ei.log_likelihood(model, x0, sde, method=method, nfe=n) for n in nfes]
    state = [float((r.x_T - ref.x_T).abs().max()) for r in runs]
    delta = [float((r.delta_logp - ref.delta_logp).abs().max()) for r in runs]
    bound = min(fitted_order(nfes, state), ei.INTEGRATORS[method].order) - 0.3
    assert fitted_order(nfes, delta) > bound, (state, delta)


def test_a_flow_models_likelihood_starts_at_the_data():
    """Rectified flow: the default start is t = 0, the data itself (no truncation: logp is log p_0(x0)), with the
    step out of rho = 0 of ei_toolkit/data_start.py and the model term on [0, rho_1] by a Lagrange rule in rho.
    dopri5 in the rho frame (the default there) meets the exact mixture log-density up to the prior mismatch; the
    plan converges to it until the data step's floor: its state error rho_1^2 / 2 |d eps / d rho| with rho_1 = t_min
    on uniform_logrho (x_T off by 6e-5, 4.3e-4 nats over 16 dimensions, measured)."""
    sde = ei.RectifiedFlow()
    p = get_problem("gmm16")
    v = p.flow_model(sde)
    x0 = p.sample_data(4, generator=torch.Generator().manual_seed(0))
    exact = p.log_prob(x0, sde, 0.0)

    def error(r):
        return float((r.logp + p.log_prob(r.x_T, sde, sde.t_max) - r.prior_logp - exact).abs().max())

    ref = ei.log_likelihood(v, x0, sde, method="torchdiffeq:dopri5", prediction="flow",
                            options={"rtol": 1e-8, "atol": 1e-8})
    assert ref.stats["t_start"] == 0.0 and ref.stats["frame"] == "rho" and error(ref) < 1e-4
    runs = [ei.log_likelihood(v, x0, sde, nfe=n, prediction="flow") for n in (65, 257)]
    assert all(r.stats["t_start"] == 0.0 for r in runs) and runs[1].nfe == 257
    assert error(runs[1]) < error(runs[0]) / 5 and error(runs[1]) < 1e-3, [error(r) for r in runs]
    assert error(ei.log_likelihood(v, x0, sde, nfe=129, prediction="flow", quadrature="plan")) < 1e-3  # 2.1e-4
    with pytest.raises(ValueError, match=r"needs the model's noise prediction at sigma = 0, which prediction='x0'"):
        ei.log_likelihood(v, x0, sde, prediction="x0")
    with pytest.raises(ValueError, match=r"frame 'logrho' is singular at rho = 0"):
        ei.log_likelihood(v, x0, sde, method="torchdiffeq:dopri5", prediction="flow", options={"frame": "logrho"})


@pytest.mark.parametrize("method", ["ddim", "logrhoab3", "x0-logrhoab2-pc", "rhork-rk4", "x0-logrhoss3"])
@pytest.mark.parametrize("nfe", [12, 24, 36])
def test_gaussian_delta_is_the_plans_quadrature_of_a_known_function_at_any_nfe(method, nfe):
    """For data N(0, c^2 I), eps is linear in x, so div_y eps = d rho / (c^2 + rho^2) is exact at every evaluation and
    independent of the state: delta_logp is the same for every sample, however far apart (the state's own error
    cannot leak into it), and equals the plan's quadrature of that known function, computed here by running the same
    plan on a one-element state whose 'eps' is the closed form. Both to float64 round-off, at any NFE."""
    sde, d, c = ei.DiscreteVP.linear(), 8, 0.5
    model = gaussian(d, c).eps_model(sde)
    x0 = torch.randn(3, d, dtype=F64, generator=torch.Generator().manual_seed(0)) * torch.tensor([[0.01], [0.5], [3.0]],
                                                                                                dtype=F64)
    r = ei.log_likelihood(model, x0, sde, method=method, nfe=nfe, quadrature="plan")
    scale = float(r.delta_logp.abs().max())
    assert float(r.delta_logp.max() - r.delta_logp.min()) <= 1e-12 * max(scale, 1.0) * nfe
    integrator = ei.INTEGRATORS[method]
    times = ei.time_grid(sde, "uniform_logrho", nfe // integrator.evals_per_step, sde.t_min, sde.t_max)
    plan = plan_for(integrator.for_nfe(nfe, len(times) - 1), sde, times)
    et = plan.eval_times
    a, s, rho = sde.alpha(et).tolist(), sde.sigma(et).tolist(), sde.rho(et).tolist()
    g = [d * rh / (c * c + rh * rh) for rh in rho]

    def channel(z: torch.Tensor, k: int) -> torch.Tensor:
        return torch.full_like(z, g[k]) if plan.target == "eps" else (z - s[k] * g[k]) / a[k]

    quad = float(plan.run(torch.zeros(1, 1, dtype=F64), channel)) / float(sde.alpha(times[-1]))
    tt = torch.tensor([sde.t_min, sde.t_max], dtype=F64)
    la = sde.log_alpha(tt).tolist()
    assert abs(float(r.delta_logp[0]) - (d * (la[1] - la[0]) + quad)) <= 1e-12 * max(scale, 1.0) * nfe


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(kind):
    """delta_logp with Hutchinson's estimate, over N = 400 independent probe draws (one copy of x0 per draw, each with
    its own generator): the state, and so every evaluation point, is the same as the exact run's, and the estimate is
    linear in the integrand, so its mean is the exact run's delta_logp; |mean - exact| within 4 standard errors
    (a false alarm has probability 6e-5; the seeds are fixed, so the test is deterministic)."""
    sde, n = ei.DiscreteVP.linear(), 400
    p = get_problem("gmm16")
    model = p.eps_model(sde)
    x0 = p.sample_marginal(sde, sde.t_min, 1, torch.Generator().manual_seed(3))
    exact = ei.log_likelihood(model, x0, sde, nfe=24)
    gens = [torch.Generator().manual_seed(1000 + i) for i in range(n)]
    est = ei.log_likelihood(model, x0.expand(n, -1).clone(), sde, nfe=24, divergence=kind, generator=gens)
    assert torch.allclose(est.x_T, exact.x_T.expand(n, -1), rtol=0, atol=1e-12)
    mean, sem = float(est.delta_logp.mean()), float(est.delta_logp.std()) / math.sqrt(n)
    assert sem > 0 and abs(mean - float(exact.delta_logp[0])) <= 4 * sem, (mean, float(exact.delta_logp[0]), sem)
    more = ei.log_likelihood(model, x0, sde, nfe=24, divergence=kind, probes=64,
                             generator=[torch.Generator().manual_seed(7)])
    assert abs(float(more.delta_logp[0] - exact.delta_logp[0])) <= 4 * float(est.delta_logp.std()) / 8


def test_per_sample_generators_make_results_independent_of_the_batch_split():
    """Probes are drawn once per sample from that sample's generator: splitting the batch gives the same result per
    sample (up to the model's batch-size round-off, float64)."""
    sde = ei.EDM()
    p = get_problem("gmm16")
    model = p.eps_model(sde)
    x0 = p.sample_marginal(sde, sde.t_min, 6, torch.Generator().manual_seed(4))

    def gens(idx):
        return [torch.Generator().manual_seed(50 + i) for i in idx]

    whole = ei.log_likelihood(model, x0, sde, nfe=16, divergence="gaussian", probes=3, generator=gens(range(6)))
    parts = [ei.log_likelihood(model, x0[i:j], sde, nfe=16, divergence="gaussian", probes=3,
                               generator=gens(range(i, j))) for i, j in ((0, 1), (1, 4), (4, 6))]
    split = torch.cat([r.logp for r in parts])
    assert torch.allclose(whole.logp, split, rtol=1e-13, atol=1e-10)
    again = ei.log_likelihood(model, x0, sde, nfe=16, divergence="gaussian", probes=3, generator=gens(range(6)))
    assert torch.equal(again.logp, whole.logp)


@pytest.mark.parametrize("prediction", ["x0", "v", "score"])
def test_every_prediction_gives_the_eps_models_likelihood(prediction):
    """The same exact model returning x0, v or the score: conversions are exact, so the likelihoods agree to float64
    round-off amplified by the conversion (1 / sigma at t_min, ~1e2: 1e-9 nats)."""
    sde = ei.DiscreteVP.linear()
    p = get_problem("gmm16")
    eps_model = p.eps_model(sde)

    def model(x, t):
        eps = eps_model(x, t)
        a, s = sde.alpha(t).view(-1, 1), sde.sigma(t).view(-1, 1)
        x0 = (x - s * eps) / a
        return {"x0": x0, "v": a * eps - s * x0, "score": -eps / s}[prediction]

    x0 = p.sample_marginal(sde, sde.t_min, 3, torch.Generator().manual_seed(5))
    ref = ei.log_likelihood(eps_model, x0, sde, nfe=20)
    got = ei.log_likelihood(model, x0, sde, nfe=20, prediction=prediction)
    assert torch.allclose(got.logp, ref.logp, rtol=0, atol=1e-9)


def test_float32_input_follows_its_dtype():
    """A float32 x0 is integrated in float32 (x_T float32, likelihoods float64): within float32 round-off of the
    float64 result (eps 6e-8 per operation on |D| ~ 1e2, over 32 evaluations: 1e-3 nats is a wide bound)."""
    sde = ei.EDM()
    p = get_problem("gmm16")
    model = p.eps_model(sde)
    x0 = p.sample_marginal(sde, sde.t_min, 3, torch.Generator().manual_seed(6))
    r64 = ei.log_likelihood(model, x0, sde, nfe=32)
    r32 = ei.log_likelihood(model, x0.float(), sde, nfe=32)
    assert r32.x_T.dtype == torch.float32 and r32.logp.dtype == F64
    assert float((r32.logp - r64.logp).abs().max()) < 1e-3


def test_cld_returns_the_joint_density_of_data_and_velocity():
    """CLD (matrix SDE): logp is the joint log-density of u = (x, v) at t_min, checked against the exact mixture joint
    density up to the prior mismatch; aux_logp is log N(v; 0, gamma M) and bits_per_dim uses logp - aux_logp."""
    sde = ei.CLD()
    p = get_problem("gmm2d")
    u = p.sample_marginal(sde, sde.t_min, 4, torch.Generator().manual_seed(0))
    r = ei.log_likelihood(p.eps_model(sde), u, sde, method="torchdiffeq:dopri5", options={"rtol": 1e-8, "atol": 1e-8})
    mismatch = p.log_prob(r.x_T, sde, sde.t_max) - r.prior_logp
    assert float((r.logp + mismatch - p.log_prob(u, sde, sde.t_min)).abs().max()) < 1e-5
    v = u[:, 1]
    var = sde.gamma * sde.mass
    aux = -0.5 * (v * v).sum(1) / var - 0.5 * 2 * math.log(2 * math.pi * var)
    assert torch.allclose(r.stats["aux_logp"], aux, rtol=1e-12, atol=1e-12)
    assert r.dim == 2
    bpd = r.bits_per_dim(levels=None)
    assert torch.allclose(bpd, -(r.logp - aux) / (2 * math.log(2)), rtol=1e-12)
    fixed = ei.log_likelihood(p.eps_model(sde), u, sde, nfe=400)  # the default: torchdiffeq rk4, fixed steps
    assert fixed.nfe == 400 and float((fixed.logp - r.logp).abs().max()) < 1e-2


def test_bits_per_dim_follows_the_dequantisation_convention():
    r = LogLikelihood(logp=torch.tensor([-100.0], dtype=F64), prior_logp=torch.zeros(1, dtype=F64),
                      delta_logp=torch.tensor([-100.0], dtype=F64), x_T=torch.zeros(1, 10), nfe=1, dim=10)
    base = 100.0 / (10 * math.log(2))
    assert math.isclose(float(r.bits_per_dim()), base + 7.0)  # 8-bit data on [-1, 1]: log2(256 / 2)
    assert math.isclose(float(r.bits_per_dim(data_range=1.0)), base + 8.0)
    assert math.isclose(float(r.bits_per_dim(levels=None)), base)
    with pytest.raises(ValueError, match="data_range"):
        r.bits_per_dim(data_range=0)


def test_default_prior_per_family():
    """N(0, I) for variance preserving (alpha(t_max) < 1/2), N(0, sigma_max^2 I) for VE / EDM."""
    x = torch.randn(2, 5, dtype=F64)
    vp = default_prior(ei.DiscreteVP.linear())(x)
    assert torch.allclose(vp, torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(1))
    edm = default_prior(ei.EDM())(x)
    assert torch.allclose(edm, torch.distributions.Normal(0.0, 80.0).log_prob(x).sum(1))


def test_a_user_prior_overrides_the_default():
    sde = ei.EDM()
    p = get_problem("gmm2d")
    x0 = p.sample_marginal(sde, sde.t_min, 2, torch.Generator().manual_seed(0))
    r = ei.log_likelihood(p.eps_model(sde), x0, sde, nfe=8, prior=lambda z: p.log_prob(z, sde, sde.t_max))
    assert torch.allclose(r.prior_logp, p.log_prob(r.x_T, sde, sde.t_max))


def bad_calls():
    sde = ei.EDM()
    p = get_problem("gmm2d")
    m = p.eps_model(sde)
    x = p.sample_marginal(sde, sde.t_min, 2, torch.Generator().manual_seed(0))
    nan = x.clone()
    nan[0, 0] = math.nan
    return [
        (lambda: ei.log_likelihood(m, x, sde, probes=0), ValueError, "probes"),
        (lambda: ei.log_likelihood(m, x, sde, divergence="trace"), ValueError, "divergence"),
        (lambda: ei.log_likelihood(m, x, sde, probes=4), ValueError, "probes"),
        (lambda: ei.log_likelihood(m, x, sde, method="sddim"), ValueError, "stochastic"),
        (lambda: ei.log_likelihood(m, x, sde, method="adaptive"), ValueError, "torchdiffeq:dopri5"),
        (lambda: ei.log_likelihood(m, nan, sde), ValueError, "x0 is not finite"),
        (lambda: ei.log_likelihood(m, x.long(), sde), TypeError, "x0"),
        (lambda: ei.log_likelihood(m, x, sde, nfe=0), ValueError, "nfe"),
        (lambda: ei.log_likelihood(m, x, sde, t_start=0.001), ValueError, "t_start"),
        (lambda: ei.log_likelihood(m, x, sde, t_start=10.0, t_end=5.0), ValueError, "t_start < t_end"),
        (lambda: ei.log_likelihood(m, x, sde, prediction="noise"), ValueError, "prediction"),
        (lambda: ei.log_likelihood(m, x, sde, prior=lambda z: z), ValueError, "prior"),
        (lambda: ei.log_likelihood(m, x, sde, prior=3), TypeError, "prior"),
        (lambda: ei.log_likelihood(m, x, sde, generator=[torch.Generator()]), ValueError, "generator"),
        (lambda: ei.log_likelihood(m, x, sde, method="torchdiffeq:dopri5", nfe=10), ValueError, "adaptive"),
        (lambda: ei.log_likelihood(lambda z, t: m(z, t).detach(), x, sde), ValueError, "autograd"),
        (lambda: ei.log_likelihood(m, x, ei.CLD()), ValueError, "whole state"),
        (lambda: ei.log_likelihood(m, x, "vp"), TypeError, "sde"),
    ]


@pytest.mark.parametrize("case", range(18))
def test_bad_input_is_refused_naming_the_argument(case):
    call, exc, words = bad_calls()[case]
    with pytest.raises(exc, match=re.escape(words)):
        call()


def test_the_exact_divergence_is_guarded_by_dimension(monkeypatch):
    import ei_toolkit.likelihood as lk

    monkeypatch.setattr(lk, "MAX_EXACT_DIM", 8)
    sde = ei.EDM()
    m = get_problem("gmm16").eps_model(sde)
    with pytest.raises(ValueError, match="rademacher"):
        ei.log_likelihood(m, torch.zeros(2, 16, dtype=F64), sde)
    r = ei.log_likelihood(m, torch.zeros(2, 16, dtype=F64), sde, nfe=4, divergence="rademacher")
    assert r.stats["vjps"] == 4 and r.stats["probes"] == 1


def test_matrix_sdes_refuse_the_scalar_plans():
    sde = ei.CLD()
    u = torch.zeros(2, 2, 3, dtype=F64)
    with pytest.raises(ValueError, match="torchdiffeq"):
        ei.log_likelihood(get_problem("gmm2d").eps_model(sde), torch.zeros(2, 2, 2, dtype=F64), sde, method="tab2")
    assert u.shape[1] == sde.k


def test_the_likelihood_page_runs_as_written():
    page = ROOT / "docs" / "likelihood.md"
    ns: dict = {"__name__": "__docs__"}
    for code in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S):
        exec(compile(code, "docs/likelihood.md", "exec"), ns)  # the project's own documentation
    assert isinstance(ns["result"], LogLikelihood)


def test_the_default_method_follows_the_budget():
    """logrhoab3 up to 71 evaluations, x0-logrhoab2-pc up to 110, x0-logrhoab3 beyond, with the Lagrange quadrature
    (the rule benchmarks/results/likelihood.md states, which the code's table holds); an explicit grid's steps are
    the budget."""
    line = next(ln for ln in (ROOT / "benchmarks" / "results" / "likelihood.md").read_text().splitlines()
                if ln.startswith("ei_toolkit.likelihood.DEFAULTS_BY_NFE"))
    assert ast.literal_eval(line.split("`")[1]) == ei.likelihood.DEFAULTS_BY_NFE
    sde = ei.EDM()
    m = get_problem("gmm2d").eps_model(sde)
    x = torch.zeros(1, 2, dtype=F64)
    assert ei.log_likelihood(m, x, sde, nfe=71).stats["method"] == "logrhoab3"
    assert ei.log_likelihood(m, x, sde, nfe=72).stats["method"] == "x0-logrhoab2-pc"
    assert ei.log_likelihood(m, x, sde, nfe=111).stats["method"] == "x0-logrhoab3"
    r = ei.log_likelihood(m, x, sde)
    assert r.stats["method"] == ei.likelihood.DEFAULT_METHOD == "logrhoab3" and r.nfe == 64
    assert r.stats["grid"] == "uniform_logrho" and r.stats["quadrature"] == "lagrange"
    grid = ei.time_grid(sde, "uniform_logrho", 100, sde.t_min, sde.t_max)
    assert ei.log_likelihood(m, x, sde, grid=grid).stats["method"] == "x0-logrhoab2-pc"


@pytest.mark.parametrize("method", ["logrhoab3", "logrhoss2", "logrhoss3", "x0-logrhoss3"])
def test_the_budget_is_what_the_likelihood_spends(method):
    """nfe counts every evaluation, the step out of the data included: a singlestep method whose stages do not
    divide the rest takes a lower-order last step (logrhoss3 at nfe = 20 from the data spent 22 before)."""
    p = get_problem("gmm2d")
    x = 0.3 * torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    for sde, model, prediction in ((ei.RectifiedFlow(), p.flow_model(ei.RectifiedFlow()), "flow"),
                                   (ei.VPSDE(), p.eps_model(ei.VPSDE()), "eps")):
        for nfe in (8, 9, 10, 20):
            assert ei.log_likelihood(model, x, sde, method=method, nfe=nfe, prediction=prediction).nfe == nfe


def test_rectified_flow_and_velocity_models_plug_in():
    """Rectified flow (alpha = 1 - t, sigma = t) is a scalar SDE like the others: at 512 evaluations the result
    equals the exact mixture log-density up to the prior mismatch (a-posteriori estimate as in the first test), and a
    velocity model (prediction='flow', v = eps - x0) gives the eps model's likelihood to round-off."""
    sde = ei.RectifiedFlow()
    p = get_problem("gmm16")
    model = p.eps_model(sde)
    x0 = p.sample_marginal(sde, sde.t_min, 4, torch.Generator().manual_seed(0))
    runs = [ei.log_likelihood(model, x0, sde, nfe=n, t_start=sde.t_min) for n in (256, 512)]
    mismatch = p.log_prob(runs[1].x_T, sde, sde.t_max) - runs[1].prior_logp
    estimate = float((runs[1].logp - runs[0].logp).abs().max()) / 15
    err = float((runs[1].logp + mismatch - p.log_prob(x0, sde, sde.t_min)).abs().max())
    assert estimate < 1e-4 and err <= 10 * estimate + 1e-9, (err, estimate)

    def velocity(x, t):
        eps = model(x, t)
        s = t.view(-1, 1)
        return eps - (x - s * eps) / (1 - s)

    flow = ei.log_likelihood(velocity, x0, sde, nfe=32, prediction="flow", t_start=sde.t_min)
    assert torch.allclose(flow.logp, ei.log_likelihood(model, x0, sde, nfe=32, t_start=sde.t_min).logp, rtol=0,
                          atol=1e-9)


@pytest.mark.parametrize("method", ["ddim", "logrhoab3", "x0-logrhoab2-pc", "rhork-rk4", "x0-logrhoss3"])
@pytest.mark.parametrize("nfe", [12, 24, 36])
def test_gaussian_delta_is_the_lagrange_quadrature_of_a_known_function_at_any_nfe(method, nfe):
    """quadrature='lagrange': for data N(0, c^2 I), h = sigma div_x eps = d rho^2 / (c^2 + rho^2) is exact at every
    evaluation, so delta_logp is the same for every sample and equals lagrange_weights over the log rho of the plan's
    grid points (its evaluations there) applied to that closed form, to float64 round-off, at any NFE."""
    sde, d, c = ei.DiscreteVP.linear(), 8, 0.5
    model = gaussian(d, c).eps_model(sde)
    x0 = torch.randn(3, d, dtype=F64, generator=torch.Generator().manual_seed(0)) * torch.tensor([[0.01], [0.5], [3.0]],
                                                                                                dtype=F64)
    r = ei.log_likelihood(model, x0, sde, method=method, nfe=nfe)
    assert r.stats["quadrature"] == "lagrange"
    scale = float(r.delta_logp.abs().max())
    assert float(r.delta_logp.max() - r.delta_logp.min()) <= 1e-12 * max(scale, 1.0) * nfe
    integrator = ei.INTEGRATORS[method]
    times = ei.time_grid(sde, "uniform_logrho", nfe // integrator.evals_per_step, sde.t_min, sde.t_max)
    plan = plan_for(integrator.for_nfe(nfe, len(times) - 1), sde, times)
    nodes = [t for t in plan.eval_times.tolist() if t in set(plan.grid.tolist())]
    rho = sde.rho(torch.tensor(sorted(set(nodes)), dtype=F64))
    ends = torch.log(sde.rho(times[[0, -1]])).tolist()
    w = lagrange_weights(torch.log(rho).tolist(), ends[0], ends[1])
    quad = sum(wk * d * r_ * r_ / (c * c + r_ * r_) for wk, r_ in zip(w, rho.tolist(), strict=True))
    tt = torch.tensor([sde.t_min, sde.t_max], dtype=F64)
    la = sde.log_alpha(tt).tolist()
    assert abs(float(r.delta_logp[0]) - (d * (la[1] - la[0]) + quad)) <= 1e-12 * max(scale, 1.0) * nfe


def test_lagrange_weights_integrate_cubics_exactly():
    """On random unsorted nodes with a repeated one, inside [lo, hi] and short of its ends (extrapolated intervals),
    the weights integrate every cubic exactly (to 1e-12 relative) and a repeated node keeps only its last copy's
    weight; bad input is refused."""
    g = torch.Generator().manual_seed(3)
    nodes = (torch.rand(12, generator=g, dtype=F64) * 4 - 1).tolist()
    nodes.append(nodes[4])
    w = lagrange_weights(nodes, -1.5, 3.5)
    assert w[4] == 0.0 and w[-1] != 0.0
    for k in range(4):
        exact = (3.5 ** (k + 1) - (-1.5) ** (k + 1)) / (k + 1)
        assert abs(sum(wi * x**k for wi, x in zip(w, nodes, strict=True)) - exact) <= 1e-12 * 3.5 ** (k + 1)
    assert lagrange_weights([0.5], 0.0, 2.0) == [2.0]
    with pytest.raises(ValueError, match="lo < hi"):
        lagrange_weights([0.5], 1.0, 1.0)
    with pytest.raises(ValueError, match="at least one node"):
        lagrange_weights([], 0.0, 1.0)


def test_an_unknown_quadrature_is_refused():
    sde = ei.EDM()
    m = get_problem("gmm2d").eps_model(sde)
    with pytest.raises(ValueError, match="unknown quadrature 'simpson'; valid: lagrange, plan"):
        ei.log_likelihood(m, torch.zeros(1, 2, dtype=F64), sde, nfe=8, quadrature="simpson")
