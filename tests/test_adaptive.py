"""method="adaptive": the embedded exponential Adams pair with step-size control (ei_toolkit/integrators/adaptive.py).
Tolerance proportionality against the exact ODE solution, honest statistics (evaluations counted by a wrapper
model), the evaluation budget, bad options, float32 and float64."""

import math

import numpy as np
import pytest
import torch

import ei_toolkit as ei
from ei_toolkit.integrators.adaptive import lam_weights
from ei_toolkit.testing import get_problem


@pytest.fixture(scope="module")
def setup():
    sde = ei.VPSDE()
    mix = get_problem("gmm2d")
    x = mix.sample_marginal(sde, sde.t_max, 16, torch.Generator().manual_seed(0))
    ref = mix.reference(sde, x, sde.t_max, sde.t_min, rtol=1e-12, atol=1e-12)
    return sde, mix, mix.eps_model(sde), x, ref


class Counting:
    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.model(x, t)


def err(a, b):
    return float((a.double() - b).pow(2).mean().sqrt())


def test_the_step_weights_are_the_closed_forms_of_docs_math():
    """One and two points in lam, both forms (docs/math.md sections 4.2 and 4.7)."""
    h, h1 = 0.7, 0.4
    e = math.exp
    np.testing.assert_allclose(lam_weights(np.array([0.0]), h, "x0"), [1 - e(-h)], rtol=1e-13)
    c = (h - 1 + e(-h)) / h1
    np.testing.assert_allclose(lam_weights(np.array([0.0, -h1]), h, "x0"), [1 - e(-h) + c, -c], rtol=1e-13)
    np.testing.assert_allclose(lam_weights(np.array([0.0]), h, "eps"), [e(h) - 1], rtol=1e-13)
    c = (e(h) - 1 - h) / h1
    np.testing.assert_allclose(lam_weights(np.array([0.0, -h1]), h, "eps"), [e(h) - 1 + c, -c], rtol=1e-13)


@pytest.mark.parametrize(("form", "order", "corrector"), [("x0", 4, True), ("eps", 4, True), ("x0", 3, True),
                                                         ("x0", 2, True), ("x0", 4, False)])
def test_error_falls_with_the_tolerance(setup, form, order, corrector):
    sde, _, model, x, ref = setup
    errs, nfes = [], []
    for tol in (1e-3, 1e-4, 1e-5):
        sol = ei.solve(model, x, sde, method="adaptive",
                       options={"rtol": tol, "atol": tol, "form": form, "order": order, "corrector": corrector})
        errs.append(err(sol.x, ref))
        nfes.append(sol.nfe)
    assert errs[0] > errs[1] > errs[2], errs
    assert errs[0] / errs[2] > 10, errs  # two decades of tolerance buy at least one decade of error
    assert errs[2] < 1e-4 and errs[0] < 1e-2, errs
    assert nfes[0] < nfes[1] < nfes[2], nfes


def test_stats_match_the_evaluations_actually_made(setup):
    sde, _, model, x, _ = setup
    counted = Counting(model)
    sol = ei.solve(counted, x, sde, method="adaptive", options={"rtol": 1e-4, "atol": 1e-4})
    st = sol.stats
    assert sol.nfe == st["nfe"] == counted.calls == len(sol.eval_times)
    assert st["steps"] == st["accepted"] == len(sol.times) - 1 == len(st["h"]) > 3
    assert st["rejected"] >= 0 and st["grid"] == "adaptive"
    # each accepted step costs one evaluation (none after the last), a rejected first step one more
    assert st["accepted"] <= sol.nfe <= st["accepted"] + st["rejected"] + 1
    times = sol.times
    assert times.dtype == torch.float64 and bool((times[1:] < times[:-1]).all())
    assert times[0] == sde.t_max and times[-1] == sde.t_min
    torch.testing.assert_close(st["accepted_grid"], times)
    # the accepted grid is a grid: a fixed-step method runs on it
    y = ei.sample(model, x, sde, method="logrhoab2", grid=times)
    assert torch.isfinite(y).all()


def test_rejected_steps_cost_no_evaluation_after_the_first(setup):
    sde, _, model, x, _ = setup
    counted = Counting(model)
    # a huge first step is rejected (one wasted evaluation each time) until the estimate accepts it
    sol = ei.solve(counted, x, sde, method="adaptive", options={"rtol": 1e-5, "atol": 1e-5, "h_init": 5.0})
    assert sol.stats["rejected"] >= 1
    assert counted.calls == sol.nfe


def test_max_nfe_raises_budget_exceeded(setup):
    sde, _, model, x, _ = setup
    counted = Counting(model)
    with pytest.raises(ei.NFEBudgetExceeded, match="max_nfe=12"):
        ei.solve(counted, x, sde, method="adaptive", options={"rtol": 1e-6, "atol": 1e-6, "max_nfe": 12})
    assert counted.calls == 12
    sol = ei.solve(model, x, sde, method="adaptive", options={"rtol": 1e-2, "atol": 1e-2, "max_nfe": 200})
    assert sol.nfe <= 200


@pytest.mark.parametrize(("options", "match"), [
    ({"rtol": -1e-3}, "rtol"),
    ({"rtol": "1e-3"}, "rtol"),
    ({"atol": float("nan")}, "atol"),
    ({"order": 5}, "order"),
    ({"order": 2.0}, "order"),
    ({"form": "v"}, "form"),
    ({"max_nfe": 0}, "max_nfe"),
    ({"max_nfe": 1.5}, "max_nfe"),
    ({"h_init": 0}, "h_init"),
    ({"safety": 1.5}, "safety"),
    ({"min_factor": 1.2}, "min_factor"),
    ({"max_factor": 0.5}, "max_factor"),
    ({"controller": "pid"}, "controller"),
    ({"corrector": 1}, "corrector"),
    ({"tolerance": 1e-3}, "unknown options"),
])
def test_bad_options_are_named(setup, options, match):
    sde, _, model, x, _ = setup
    with pytest.raises(ValueError, match=match):
        ei.solve(model, x, sde, method="adaptive", options=options)


def test_nfe_grid_and_matrix_sdes_are_refused(setup):
    sde, _, model, x, _ = setup
    with pytest.raises(ValueError, match="nfe/grid do not apply"):
        ei.solve(model, x, sde, method="adaptive", nfe=10)
    with pytest.raises(ValueError, match="nfe/grid do not apply"):
        ei.solve(model, x, sde, method="adaptive", grid="uniform_logrho")
    assert not ei.INTEGRATORS["adaptive"].matrix  # ei.solve refuses matrix SDEs for it (no scalar rho)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_works_in_float32_and_float64(setup, dtype):
    sde, _, model, x, ref = setup
    sol = ei.solve(model, x.to(dtype), sde, method="adaptive", options={"rtol": 1e-4, "atol": 1e-4})
    assert sol.x.dtype == dtype
    assert err(sol.x, ref) < 1e-3


def test_solve_to_rho_zero_ends_with_the_data_prediction():
    """DiscreteVP to t0 = -1 (rho = 0): adaptive in log rho down to t_min, then the exact DDIM step to the data."""
    sde = ei.DiscreteVP.linear()
    mix = get_problem("gmm2d")
    model = mix.eps_model(sde)
    x = mix.sample_marginal(sde, sde.t_max, 8, torch.Generator().manual_seed(1))
    counted = Counting(model)
    sol = ei.solve(counted, x, sde, method="adaptive", t_end=-1.0, options={"rtol": 1e-5, "atol": 1e-5})
    assert sol.times[-1] == -1.0 and sol.times[-2] == sde.t_min and counted.calls == sol.nfe
    fine = ei.sample(model, x, sde, method="logrhoab3", nfe=200, t_end=-1.0)
    assert err(sol.x, fine.double()) < 1e-3


@pytest.mark.parametrize(("dtype", "floor"), [(torch.float32, 1.19e-6), (torch.float64, 2.22e-15)])
def test_a_tolerance_below_the_working_precision_is_refused(setup, dtype, floor):
    """Issue 24: rtol 1e-14 on a float32 state ran past 146,870 evaluations in 60 s (hours to go). rtol must be at
    least 10 eps of the state's dtype (the error estimate's round-off)."""
    from ei_toolkit.integrators.adaptive import rtol_floor

    sde, _, model, x, _ = setup
    assert rtol_floor(dtype) == pytest.approx(floor, rel=1e-2)
    counted = Counting(model)
    with pytest.raises(ValueError, match=rf"rtol'\]=.* is below what {dtype} can meet.*10 eps = "):
        ei.solve(counted, x.to(dtype), sde, method="adaptive", options={"rtol": floor / 2, "atol": floor / 2})
    assert counted.calls == 0
    ei.solve(model, x.to(dtype), sde, method="adaptive", options={"rtol": 1e-5, "atol": 1e-5})


def test_evaluations_are_capped_by_default(setup):
    """Issue 24: without max_nfe a noisy model at a tight tolerance ran for hours; the default cap stops it."""
    from ei_toolkit.integrators.adaptive import DEFAULT_MAX_NFE, Adaptive

    assert Adaptive().options["max_nfe"] == DEFAULT_MAX_NFE == 10_000
    sde, _, model, x, _ = setup
    assert Adaptive(max_nfe=None).options["max_nfe"] is None  # no cap, on request
    gen = torch.Generator().manual_seed(0)

    def noisy(y, t):
        return model(y, t) + 1e-6 * torch.randn(y.shape, generator=gen, dtype=y.dtype)

    with pytest.raises(ei.NFEBudgetExceeded, match="max_nfe=300"):
        ei.solve(noisy, x, sde, method="adaptive", options={"rtol": 1e-10, "atol": 1e-10, "max_nfe": 300})
