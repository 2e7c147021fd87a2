"""The data-prediction (x0) exponential integrators, the predictor-corrector plans and the singlestep methods
(docs/math.md sections 4.7-4.9): identities that fail if a kernel, a weight or the runner's bookkeeping breaks."""

import math

import pytest
import torch

import ei_toolkit as ei
from ei_toolkit.integrators import ExponentialAdams, PredictorCorrectorPlan, SinglestepExponential, plan_for
from ei_toolkit.model import ModelEvaluator
from ei_toolkit.testing import get_problem

SDES = {"vp": ei.VPSDE(), "ddpm": ei.DiscreteVP.linear(), "edm": ei.EDM()}


def _linear_x0(sde, c0, c1):
    """A model whose data prediction is c0 + c1 * lam(t), lam = -log rho, whatever x is."""

    def model(x, t):
        lam = -torch.log(sde.rho(t.to(torch.float64))).to(x.dtype)
        return (c0 + c1 * lam[:, None]).expand_as(x).clone()

    return model


def _exact_linear_x0(sde, x, t_a, t_b, c0, c1):
    """x at t_b from x at t_a for x0 = c0 + c1 lam: (sigma_b/sigma_a) x + alpha_b int e^{lam - lam_b} x0 dlam."""
    ta, tb = torch.tensor(t_a, dtype=torch.float64), torch.tensor(t_b, dtype=torch.float64)
    la, lb = float(-torch.log(sde.rho(ta))), float(-torch.log(sde.rho(tb)))
    ab, sa, sb = float(sde.alpha(tb)), float(sde.sigma(ta)), float(sde.sigma(tb))
    e = math.exp(la - lb)
    i0 = 1 - e  # int e^{lam - lb} dlam
    i1 = lb - 1 - (la - 1) * e  # int lam e^{lam - lb} dlam
    return sb / sa * x + ab * (c0 * i0 + c1 * i1)


def _problem(sde):
    g = torch.Generator().manual_seed(0)
    c0, c1 = torch.randn(1, 3, generator=g, dtype=torch.float64), torch.randn(1, 3, generator=g, dtype=torch.float64)
    x = torch.randn(2, 3, generator=g, dtype=torch.float64) * float(sde.sigma(torch.tensor(sde.t_max)))
    return _linear_x0(sde, c0, c1), x, c0, c1


@pytest.mark.parametrize("sde", SDES.values(), ids=SDES)
def test_one_point_x0_form_is_ddim(sde):
    """The x0 form's one-point step, (sigma_b/sigma_a) x + alpha_b (1 - rho_b/rho_a) x0, is DDIM's step."""
    mix = get_problem("gmm16")
    model = mix.eps_model(sde)
    x = mix.sample_marginal(sde, sde.t_max, 4, torch.Generator().manual_seed(1))
    one = ExponentialAdams("x0-one", 1, "logrho", "quadratic_t", target="x0")
    a = ei.sample(model, x, sde, method=one, nfe=7, grid="quadratic_t")
    b = ei.sample(model, x, sde, method="ddim", nfe=7, grid="quadratic_t")
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("variable", ["t", "rho", "logrho"])
def test_x0_weights_reproduce_constants(variable):
    """Every multistep row sums to the exact one-point weight, and psi is sigma_{i+1} / sigma_i."""
    sde = SDES["ddpm"]
    grid = ei.time_grid(sde, "uniform_logrho", 12, sde.t_max, sde.t_min)
    plan = plan_for(ExponentialAdams("w", 3, variable, "uniform_logrho", target="x0"), sde, grid)
    sig, rho, alpha = sde.sigma(grid), sde.rho(grid), sde.alpha(grid)
    for i in range(12):
        assert plan.psi[i] == pytest.approx(float(sig[i + 1] / sig[i]), rel=1e-12)
        assert sum(plan.weights[i]) == pytest.approx(float(alpha[i + 1] * (1 - rho[i + 1] / rho[i])), rel=1e-9)
    assert plan.target == "x0" and len(plan.weights[5]) == 3


@pytest.mark.parametrize("sde", SDES.values(), ids=SDES)
def test_two_point_x0_logrho_method_is_exact_for_x0_linear_in_lam(sde):
    """From exact history, x0-logrhoab1 integrates an x0 linear in lam = -log rho without error."""
    model, x, c0, c1 = _problem(sde)
    grid = ei.time_grid(sde, "uniform_logrho", 6, sde.t_max, sde.t_min)
    plan = plan_for(ei.INTEGRATORS["x0-logrhoab1"], sde, grid)
    fn = ModelEvaluator(model, sde, "x0").bind(plan.eval_times, x, "x0")
    x1 = _exact_linear_x0(sde, x, float(grid[0]), float(grid[1]), c0, c1)
    out = plan.run(x1, fn, start=1, history=[fn(x, 0)])
    torch.testing.assert_close(out, _exact_linear_x0(sde, x, float(grid[0]), float(grid[-1]), c0, c1),
                               rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sde", SDES.values(), ids=SDES)
def test_corrector_makes_every_corrected_state_exact(sde):
    """x0-logrhoab0-pc predicts with DDIM (not exact for a linear x0) and corrects with the 2-point polynomial
    (exact): every grid point but the last is exact; the uncorrected last step is not. A plan whose corrections were
    skipped or misapplied fails here."""
    model, x, c0, c1 = _problem(sde)
    grid = ei.time_grid(sde, "uniform_logrho", 6, sde.t_max, sde.t_min)
    plan = plan_for(ei.INTEGRATORS["x0-logrhoab0-pc"], sde, grid)
    assert isinstance(plan, PredictorCorrectorPlan) and len(plan.corrector) == 5
    fn = ModelEvaluator(model, sde, "x0").bind(plan.eval_times, x, "x0")
    states = {}
    out = plan.run(x, fn, callback=lambda i, s: states.__setitem__(i, s))
    assert sorted(states) == list(range(1, 7))
    for i in range(1, 6):
        torch.testing.assert_close(states[i], _exact_linear_x0(sde, x, float(grid[0]), float(grid[i]), c0, c1),
                                   rtol=1e-9, atol=1e-9)
    exact_end = _exact_linear_x0(sde, x, float(grid[0]), float(grid[-1]), c0, c1)
    assert (out - exact_end).abs().max() > 1e-6


@pytest.mark.parametrize("name", ["x0-logrhoss2", "x0-logrhoss3"])
@pytest.mark.parametrize("sde", SDES.values(), ids=SDES)
def test_singlestep_x0_methods_are_exact_for_x0_linear_in_lam(sde, name):
    model, x, c0, c1 = _problem(sde)
    sol = ei.solve(model, x, sde, method=name, nfe=12, prediction="x0", dtype=torch.float64)
    exact = _exact_linear_x0(sde, x, sde.t_max, sde.t_min, c0, c1)
    torch.testing.assert_close(sol.x, exact, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("nfe, steps", [(10, 4), (11, 4), (12, 4), (5, 2), (1, 1)])
def test_singlestep_spends_exactly_nfe_with_a_lower_order_last_step(nfe, steps):
    sde = SDES["ddpm"]
    mix = get_problem("gmm16")
    model = mix.eps_model(sde)
    calls = []
    x = mix.sample_marginal(sde, sde.t_max, 3, torch.Generator().manual_seed(2))
    sol = ei.solve(lambda x, t: calls.append(1) or model(x, t), x, sde, method="x0-logrhoss3", nfe=nfe)
    assert sol.nfe == nfe == len(calls) and len(sol.times) == steps + 1
    assert ei.INTEGRATORS["x0-logrhoss3"].steps_for_nfe(nfe) == steps


def test_singlestep_explicit_grid_checks_nfe():
    sde = SDES["vp"]
    model = get_problem("gmm16").eps_model(sde)
    x = torch.randn(2, 16)
    grid = ei.time_grid(sde, "uniform_logrho", 4, sde.t_max, sde.t_min)
    assert ei.solve(model, x, sde, method="logrhoss3", grid=grid, nfe=11).nfe == 11
    with pytest.raises(ValueError, match=r"nfe=13 does not match the explicit grid: 4 steps of logrhoss3 use 10 to 12"):
        ei.solve(model, x, sde, method="logrhoss3", grid=grid, nfe=13)


@pytest.mark.parametrize("name", ["logrhoss2", "x0-logrhoss3", "x0-logrhoab2", "x0-tab2", "logrhoab1-pc"])
def test_steps_into_the_data_are_accurate(name):
    """A last step to rho = 0 (log rho infinite) is taken in its exact limit (x0 form) or with stages in rho
    (singlestep): doubling the steps shrinks the error to the solution at the data time (rhoAB-4 on 1000 steps: the
    DOP853 reference cannot reach rho = 0, where its log-rho frame is singular)."""
    sde = SDES["ddpm"]
    problem = get_problem("gmm2d")
    model = problem.eps_model(sde)
    x = problem.sample_marginal(sde, sde.t_max, 8, torch.Generator().manual_seed(3))
    exact = ei.sample(model, x.double(), sde, method="rhoab3", nfe=1000, t_end=sde.t0, grid="quadratic_t")
    errors = []
    for nfe in (12, 24, 48):
        out = ei.sample(model, x.double(), sde, method=name, nfe=nfe, t_end=sde.t0, grid="quadratic_t")
        errors.append(float((out - exact).abs().max()))
    assert errors[2] < errors[1] < errors[0] and errors[2] < 0.3 * errors[0], errors


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="unknown target 'v'"):
        ExponentialAdams("bad", 2, "rho", "uniform_logrho", target="v")
    with pytest.raises(ValueError, match="collocation must be a Collocation or one of the orders"):
        SinglestepExponential("bad", 4)
    with pytest.raises(ValueError, match="method 'x' does not support matrix SDEs"):
        ei.sample(lambda u, t: u, torch.zeros(1, 2, 3), ei.CLD(), method=ExponentialAdams("x", 2, "t", "uniform_t",
                                                                                          target="x0"))


@pytest.mark.parametrize("target", ["eps", "x0"])
@pytest.mark.parametrize("sde_name", ["vp", "ddpm", "edm"])
def test_the_midpoint_rule_has_dpm_solver_2m_coefficients(target, sde_name):
    # by hand (docs/math.md 4.10): with lam = -log rho and h_i = lam_{i+1} - lam_i, the one-point weight w_i is
    # -sigma_{i+1} (e^{h_i} - 1) (eps) or alpha_{i+1} (1 - e^{-h_i}) (x0), and the two-point row is
    # (w_i (1 + h_i / (2 h_{i-1})), -w_i h_i / (2 h_{i-1})): DPM-Solver-2M / DPM-Solver++(2M)
    sde = SDES[sde_name]
    name = "logrhoab1-mid" if target == "eps" else "x0-logrhoab1-mid"
    grid = ei.time_grid(sde, "quadratic_t", 7, sde.t_max, sde.t_min)
    plan = plan_for(ei.INTEGRATORS[name], sde, grid)
    lam = (-torch.log(sde.rho(grid))).tolist()
    alpha, sigma = sde.alpha(grid).tolist(), sde.sigma(grid).tolist()
    for i, row in enumerate(plan.weights):
        h = lam[i + 1] - lam[i]
        w = -sigma[i + 1] * math.expm1(h) if target == "eps" else -alpha[i + 1] * math.expm1(-h)
        want = [w] if i == 0 else [w * (1 + h / (2 * (lam[i] - lam[i - 1]))), -w * h / (2 * (lam[i] - lam[i - 1]))]
        assert [float(c) for c in row] == pytest.approx(want, rel=1e-10), i
    assert plan.psi[-1] == pytest.approx(sigma[-1] / sigma[-2] if target == "x0" else alpha[-1] / alpha[-2], rel=1e-12)


def test_the_midpoint_rule_differs_from_the_exact_rule_and_unknown_rules_are_refused():
    # x0 linear in lam: the exact 2-point rule reproduces it (tested above), the midpoint rule does not
    sde = SDES["vp"]
    model = _linear_x0(sde, 0.3, 0.05)
    x = torch.ones(2, 3, dtype=torch.float64)
    kw = dict(grid="uniform_logrho", nfe=6, prediction="x0")
    exact = ei.sample(model, x, sde, method="x0-logrhoab1", **kw)
    mid = ei.sample(model, x, sde, method="x0-logrhoab1-mid", **kw)
    assert not torch.allclose(exact, mid, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="unknown rule 'simpson'; valid: exact, midpoint"):
        ExponentialAdams("bad", 2, "logrho", "uniform_logrho", rule="simpson")


@pytest.mark.parametrize("sde_name", ["vp", "ddpm", "edm"])
def test_unipc_type_plan_is_the_midpoint_predictor_with_the_exact_corrector(sde_name):
    """x0-logrhoab1-mid-pc (UniPC bh2, order 2) predicts with DPM-Solver++(2M)'s rows (x0-logrhoab1-mid) and corrects
    with the exact three-point integral (x0-logrhoab1-pc's corrector); its -lof form lowers the points on the last
    steps (one point on the last, at most two in the corrector of the one before)."""
    sde = SDES[sde_name]
    grid = ei.time_grid(sde, "quadratic_t", 8, sde.t_max, sde.t_min)
    plan = plan_for(ei.INTEGRATORS["x0-logrhoab1-mid-pc"], sde, grid)
    mid, pc = plan_for(ei.INTEGRATORS["x0-logrhoab1-mid"], sde, grid), plan_for(ei.INTEGRATORS["x0-logrhoab1-pc"],
                                                                                 sde, grid)
    assert isinstance(plan, PredictorCorrectorPlan)
    assert plan.weights == mid.weights and plan.corrector == pc.corrector and plan.psi == mid.psi
    lof = plan_for(ei.INTEGRATORS["x0-logrhoab1-mid-pc-lof"], sde, grid)
    assert [len(r) for r in lof.weights] == [1, 2, 2, 2, 2, 2, 2, 1]
    assert [len(r) for r in lof.corrector] == [2, 3, 3, 3, 3, 3, 2]
    assert lof.weights[:7] == plan.weights[:7] and lof.corrector[:6] == plan.corrector[:6]
