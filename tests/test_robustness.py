"""Low precision, non-finite values and hostile input (issue 10): clear errors naming the method, grid and argument,
never a torch overflow, a silent inf or silent garbage."""

import warnings

import numpy as np
import pytest
import torch

import ei_toolkit as ei
from ei_toolkit.integrators.base import cached_grid, plan_for
from ei_toolkit.integrators.conditioning import roundoff_gain
from ei_toolkit.testing import get_problem

PROBLEM = get_problem("gmm2d")
COSINE = ei.CosineVPSDE()
VP = ei.VPSDE()


def rel_err(y, ref):
    return float((y.double() - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_huge_coefficients_in_low_precision_raise_naming_method_and_grid(dtype):
    model = PROBLEM.eps_model(COSINE)
    x = PROBLEM.sample_marginal(COSINE, COSINE.t_max, 8, torch.Generator().manual_seed(0))
    # tab3 extrapolates eps in t from four points near t_max over the whole last step: weights up to 5e6
    with pytest.raises(ei.NumericalError, match=r"^tab3 on the uniform_rho grid with nfe=4 amplifies the "
                                                rf"{str(dtype)[6:]} round-off .* about 1\.\de\+07-fold"):
        ei.sample(model, x.to(dtype), COSINE, method="tab3", grid="uniform_rho", nfe=4)
    y = ei.sample(model, x, COSINE, method="tab3", grid="uniform_rho", nfe=4)  # float64 is not refused
    assert torch.isfinite(y).all()


def _gain(method, grid, nfe, sde=VP, prediction="eps"):
    m = ei.INTEGRATORS[method]
    plan = plan_for(m, sde, cached_grid(sde, grid, m.steps_for_nfe(nfe), sde.t_max, sde.t_min))
    return roundoff_gain(plan, sde, prediction)


def test_roundoff_gain_separates_stable_plans_from_extrapolating_ones():
    for method in ("ddim", "logrhoab2", "tab3", "rhork-kutta3", "x0-logrhoab2"):  # recommended grids, 30 evaluations
        assert _gain(method, ei.INTEGRATORS[method].default_grid, 30) < 20
    assert _gain("tab3", "uniform_rho", 10) > 1e4  # the same method on a grid that extrapolates over long steps


@pytest.mark.parametrize("method", ["tab2", "x0-logrhoab2"])
def test_roundoff_gain_is_the_sensitivity_to_the_model_output_on_gaussian_data(method):
    # finite differences, independently of the implementation: data N(0, s^2) has eps = sigma x / (alpha^2 s^2 +
    # sigma^2); an eps model's output error d becomes an x0 error -sigma / alpha d in a data-prediction plan
    m = ei.INTEGRATORS[method]
    plan = plan_for(m, VP, cached_grid(VP, "uniform_t", 6, VP.t_max, VP.t_min))
    a, s_ = VP.alpha(plan.eval_times).tolist(), VP.sigma(plan.eval_times).tolist()
    x0_form = plan.target == "x0"
    worst = 0.0
    for scale in (0.0, 0.1, 0.5, 1.0):
        def run(k, delta, scale=scale):
            def fn(y, j):
                e = y * s_[j] / (a[j] ** 2 * scale**2 + s_[j] ** 2) + (delta if j == k else 0.0)
                return (y - s_[j] * e) / a[j] if x0_form else e
            return plan.run(torch.ones(1, dtype=torch.float64), fn).item()
        worst = max(worst, sum(abs(run(k, 1e-6) - run(k, -1e-6)) / 2e-6 for k in range(len(a))))
    assert roundoff_gain(plan, VP) == pytest.approx(worst, rel=1e-5)


def test_a_plan_that_amplifies_round_off_warns_and_the_gain_predicts_the_error():
    # rhork-rk4-38 at nfe=100 on the cosine schedule's steep end: four stages per step in t where rho changes fast
    model = PROBLEM.eps_model(COSINE)
    x = PROBLEM.sample_marginal(COSINE, COSINE.t_max, 8, torch.Generator().manual_seed(0))
    ref = PROBLEM.reference(COSINE, x, COSINE.t_max, COSINE.t_min)
    kw = dict(method="rhork-rk4-38", grid="quadratic_t", nfe=100)
    with pytest.warns(ei.RoundoffWarning, match=r"^rhork-rk4-38 on the quadratic_t grid with nfe=100 amplifies the "
                                                r"float16 round-off .* about 1\.7e\+02-fold"):
        sol = ei.solve(model, x.half(), COSINE, **kw)
    gain = sol.stats["roundoff_gain"]
    excess = rel_err(sol.x, ref) - rel_err(ei.sample(model, x, COSINE, **kw), ref)
    assert 0.25 < excess / (gain * 2.0**-11) < 4, (excess, gain)
    with warnings.catch_warnings():  # the default plan amplifies little: no warning, a small gain
        warnings.simplefilter("error")
        assert ei.solve(model, x.half(), COSINE, nfe=10).stats["roundoff_gain"] < 20


def test_half_precision_keeps_its_accuracy_as_nfe_grows():
    # the state is kept in float32: bf16 error no longer grows with NFE (was 2.0 at NFE 1000 for EDM / ddim)
    sde = ei.EDM()
    model = PROBLEM.eps_model(sde)
    x = PROBLEM.sample_marginal(sde, sde.t_max, 8, torch.Generator().manual_seed(1))
    ref = PROBLEM.reference(sde, x, sde.t_max, sde.t_min)
    errs = {nfe: rel_err(ei.sample(model, x.to(torch.bfloat16), sde, method="ddim", nfe=nfe), ref)
            for nfe in (100, 1000)}
    assert errs[1000] < 0.02 and errs[1000] <= errs[100] + 0.01, errs


def test_nan_in_x_and_non_finite_model_outputs_are_reported_with_method_and_grid():
    model = PROBLEM.eps_model(VP)
    x = PROBLEM.sample_marginal(VP, 1.0, 4)
    bad = x.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(ei.NumericalError, match=r"x is not finite at t_start = 1"):
        ei.sample(model, bad, VP)

    def blows_up(x, t):
        return torch.full_like(x, float("inf")) if float(t[0]) < 0.5 else model(x, t)

    with pytest.raises(ei.NumericalError, match=r"^tab2 on the quadratic_t grid \(nfe=10, float32 model input\): "
                                                r"the model output is not finite at evaluation 4 \(t = 0\.375339\)"):
        ei.sample(blows_up, x.float(), VP, method="tab2", grid="quadratic_t", nfe=10)


def test_a_half_precision_result_that_overflows_is_an_error_not_inf():
    # EDM: x / alpha can grow from 40 by up to 80 max|eps|; eps = -900 takes it to 72,040, within reach but beyond
    # float16's 65,504
    x = torch.full((2, 2), 40.0, dtype=torch.float16)
    with pytest.raises(ei.NumericalError, match=r"^ddim on the .* grid \(nfe=10, float16 model input\): the result "
                                                r"overflows float16"):
        ei.sample(lambda x, t: torch.full_like(x, -900.0), x, ei.EDM(), method="ddim", nfe=10)


def test_torchdiffeq_adams_on_an_unequal_grid_is_refused():
    model = PROBLEM.eps_model(VP)
    x = PROBLEM.sample_marginal(VP, 1.0, 4)
    with pytest.raises(ValueError, match=r"torchdiffeq's 'explicit_adams' assumes equal steps .* the uniform_rho grid "
                                         r"is not uniform in its 'logrho' frame; use grid='uniform_logrho'"):
        ei.sample(model, x, VP, method="torchdiffeq:explicit_adams", grid="uniform_rho", nfe=10)
    # an equal grid in its frame is accepted; in the log-rho frame torchdiffeq's fixed-step Adams diverges on this
    # problem (1e8 x the data scale at every nfe from 20 to 400), which is reported, not returned
    with pytest.raises(ei.NumericalError, match=r"the result diverged"):
        ei.sample(model, x, VP, method="torchdiffeq:explicit_adams", grid="uniform_logrho", nfe=20)
    x = PROBLEM.sample_marginal(VP, 1.0, 4, torch.Generator().manual_seed(0))
    y = ei.sample(model, x, VP, method="torchdiffeq:explicit_adams", grid="uniform_t", nfe=100, options={"frame": "t"})
    assert rel_err(y, PROBLEM.reference(VP, x, 1.0, VP.t_min)) < 0.02


def test_numpy_integers_and_bad_noise_levels():
    model = PROBLEM.eps_model(VP)
    x = PROBLEM.sample_marginal(VP, 1.0, 4)
    torch.testing.assert_close(ei.sample(model, x, VP, nfe=np.int64(7)), ei.sample(model, x, VP, nfe=7))
    assert ei.solve(model, x, VP, method="rhork-heun", nfe=np.int32(8)).nfe == 8
    with pytest.raises(ValueError, match=r"eta must lie in \[0, 1\]"):
        ei.sample(model, x, VP, method="sddim", eta=1.5)
    with pytest.raises(ValueError, match=r"eta must be a finite number >= 0; got -0.1"):
        ei.sample(model, x, VP, method="sddim", eta=-0.1)
    with pytest.raises(ValueError, match=r"lam must be a finite number >= 0; got True"):
        ei.sample(model, x, VP, method="sddim", lam=True)
    with pytest.raises(ValueError, match=r"nfe must be a positive integer; got 2.5"):
        ei.sample(model, x, VP, nfe=2.5)
    with pytest.raises(ValueError, match=r"nfe must be a positive integer; got True"):
        ei.sample(model, x, VP, nfe=True)


HOSTILE = [
    (dict(drift="-1", diffusion="(lambda: 0).__globals__['__builtins__']['__import__']('os').system('id')*0+1"),
     ValueError, r"diffusion"),
    (dict(drift="-1", diffusion="t^2"), ValueError, r"write powers with \*\*"),
    (dict(drift="-x", diffusion="1"), ValueError, r"drift must be a function of t alone.*depends on x"),
    (dict(drift="__import__('os')", diffusion="1"), ValueError, r"drift"),
    (dict(drift="-1", diffusion="1", t_max=float("nan")), ValueError, r"t_max must be a finite real number"),
    (dict(drift="-1", diffusion="1", t_max="1"), ValueError, r"t_max must be a finite real number"),
    (dict(drift="-1", diffusion="1", t_max=1.0, t_min=-1.0), ValueError, r"t_min must be >= t0"),
    (dict(drift="-1", diffusion="1", t_max=1.0, sigma_init=-1.0), ValueError, r"sigma_init must be a real number"),
    (dict(drift="-a", diffusion="1", t_max=1.0, a=float("inf")), ValueError, r"\ba\b"),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), HOSTILE)
def test_hostile_sde_arguments_are_rejected_by_name(kwargs, error, message):
    kwargs = {"t_max": 1.0, **kwargs}
    with pytest.raises(error, match=message):
        ei.LinearSDE(**kwargs)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(method="nope"), r"unknown method 'nope'"),
    (dict(grid="foo"), r"unknown grid 'foo'"),
    (dict(nfe=0), r"nfe must be a positive integer; got 0"),
    (dict(method="rhork-rk4", nfe=10), r"nfe=10 is not possible for 'rhork-rk4'"),
    (dict(t_start=2.0), r"t_start must lie in the SDE's domain"),
    (dict(t_start=float("nan")), r"t_start must be a finite real number"),
    (dict(t_end=0.5, t_start=0.5), r"t_start and t_end must differ"),
    (dict(t_end=0.5, t_start=0.4, method="sddim"), r"'sddim' is stochastic: the reverse SDE runs from noise to data"),
    (dict(grid=torch.tensor([1.0, 0.5, 0.1]), t_start=1.0), r"an explicit grid gives its own start and end"),
    (dict(grid=torch.tensor([1.0, 0.5, 0.6])), r"must be strictly decreasing"),
    (dict(prediction="noise"), r"unknown prediction 'noise'"),
    (dict(dtype=torch.int32), r"dtype must be a floating-point torch.dtype"),
    (dict(generator=3), r"generator must be a torch.Generator or a list"),
    (dict(method="sddim", generator=[torch.Generator()]), r"a list needs one torch.Generator per sample \(4\)"),
    (dict(clip_x0=-1.0), r"clip_x0 must be a positive number"),
    (dict(options={"rtol": 1e-3}), r"options= applies to black-box methods"),
    (dict(brownian=lambda a, b: None), r"brownian= applies to stochastic methods only"),
])
def test_hostile_sampling_arguments_are_rejected_by_name(kwargs, message):
    model = PROBLEM.eps_model(VP)
    x = PROBLEM.sample_marginal(VP, 1.0, 4)
    with pytest.raises((ValueError, TypeError), match=message):
        ei.sample(model, x, VP, **kwargs)


@pytest.mark.parametrize(("x", "error", "message"), [
    (torch.zeros(4, 2, dtype=torch.int64), TypeError, r"x must be a real floating-point tensor"),
    (torch.zeros(4, 2, dtype=torch.complex64), TypeError, r"x must be a real floating-point tensor"),
    ([[0.0, 0.0]], TypeError, r"x must be a real floating-point tensor"),
    (torch.zeros(()), ValueError, r"x must have a batch dimension first"),
    (torch.full((4, 2), float("inf")), ei.NumericalError, r"x is not finite"),
])
def test_hostile_states_are_rejected(x, error, message):
    with pytest.raises(error, match=message):
        ei.sample(PROBLEM.eps_model(VP), x, VP)


def test_a_diverged_result_is_reported_not_returned():
    # torchdiffeq's explicit Adams on EDM with 50 uniform log-rho steps: finite, but 1e13 times the data scale (the
    # fuzz sweep's one silent-bad case); in y = x / alpha the ODE cannot get beyond |y_start| + rho_start max|eps|
    sde = ei.EDM()
    model = PROBLEM.eps_model(sde)
    x = PROBLEM.sample_marginal(sde, sde.t_max, 8, torch.Generator().manual_seed(0))
    kw = dict(method="torchdiffeq:explicit_adams", grid="uniform_logrho", nfe=50)
    for dtype in (torch.float64, torch.bfloat16):
        want = (r"^torchdiffeq:explicit_adams on the uniform_logrho grid \(nfe=50, "
                rf"{str(dtype)[6:]} model input\): the result "
                r"diverged: max \|x / alpha\| = \d\.\d+e\+1\d at t = 0\.002, beyond the 8\.0\de\+04")
        with pytest.raises(ei.NumericalError, match=want):
            ei.sample(model, x.to(dtype), sde, **kw)
    y = ei.sample(model, x, sde, nfe=50)  # a sound method on the same problem is not refused
    assert rel_err(y, PROBLEM.reference(sde, x, sde.t_max, sde.t_min)) < 1e-3
