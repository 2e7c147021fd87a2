"""Rectified flow as a first-class family (issue 21): ei.RectifiedFlow (alpha = 1 - t, sigma = t; Liu et al. 2023,
Lipman et al. 2023, Esser et al. 2024), the velocity prediction ``"flow"``, the start at t = 1 (rho = inf) and the
encoding's end there, against diffusers' flow schedulers and the exact velocity of Gaussian mixtures."""

import ast
import itertools
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import ei_toolkit as ei
from ei_toolkit.integrators import Integrator
from ei_toolkit.model import to_eps, to_x0
from ei_toolkit.testing import convergence_order
from ei_toolkit.testing.problems import get_problem

ORDERED = [n for n, m in ei.INTEGRATORS.items() if isinstance(m, Integrator) and not m.stochastic]
F32 = torch.finfo(torch.float32).eps


@pytest.fixture(scope="module")
def flow():
    return ei.RectifiedFlow()


@pytest.fixture(scope="module")
def gmm2d():
    return get_problem("gmm2d")


def _noise(n=64, d=2, dtype=torch.float64, seed=0):
    return torch.randn(n, d, dtype=dtype, generator=torch.Generator().manual_seed(seed))


# -- the SDE and the prediction ------------------------------------------------------------------------------------


def test_rectified_flow_is_the_linear_path_in_closed_form(flow):
    t = torch.tensor([0.0, 0.001, 0.25, 0.5, 0.9, 0.9999], dtype=torch.float64)
    torch.testing.assert_close(flow.alpha(t), 1 - t, rtol=0, atol=1e-15)
    torch.testing.assert_close(flow.sigma(t), t, rtol=0, atol=1e-15)
    torch.testing.assert_close(flow.rho(t), t / (1 - t), rtol=1e-14, atol=0)
    inner = t[1:]
    torch.testing.assert_close(flow.drift(inner), -1 / (1 - inner), rtol=1e-14, atol=0)
    torch.testing.assert_close(flow.diffusion(inner) ** 2, 2 * inner / (1 - inner), rtol=1e-13, atol=0)
    torch.testing.assert_close(flow.t_of_rho(flow.rho(inner)), inner, rtol=1e-13, atol=0)
    assert (flow.t0, flow.t_min, flow.t_terminal) == (0.0, 1e-3, 1.0)
    assert flow.t_max == 1 - 1e-4 and abs(flow.rho_max - 9999) < 1e-6
    a, s = flow.alpha_sigma(torch.tensor([0.5, 1.0], dtype=torch.float64))
    assert a.tolist() == [0.5, 0.0] and s.tolist() == [0.5, 1.0]
    assert ei.RectifiedFlow().key == flow.key != ei.RectifiedFlow(t_max=0.999).key
    with pytest.raises(ValueError, match=r"t_max must lie in \(0, 1\)"):
        ei.RectifiedFlow(t_max=1.0)


def test_flow_prediction_converts_exactly_to_eps_and_x0(flow):
    """x = (1 - t) x0 + t z and v = z - x0 give x0 = x - t v and eps = z = x + (1 - t) v (float64: the
    identities hold to a few ulp of |x| ~ 3)."""
    g = torch.Generator().manual_seed(3)
    x0, z = torch.randn(32, 5, dtype=torch.float64, generator=g), torch.randn(32, 5, dtype=torch.float64, generator=g)
    for t in (0.0, 0.1, 0.5, 0.97, 1.0):
        x = (1 - t) * x0 + t * z
        torch.testing.assert_close(to_x0("flow", z - x0, x, 1 - t, t), x0, rtol=0, atol=1e-14)
        torch.testing.assert_close(to_eps("flow", z - x0, x, 1 - t, t), z, rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="needs the rectified-flow path"):
        ei.sample(lambda x, t: x, _noise(), ei.VPSDE(), prediction="flow", nfe=4)


def test_the_mixture_velocity_is_the_exact_eps_minus_the_posterior_mean(flow, gmm2d):
    v, eps = gmm2d.flow_model(flow), gmm2d.eps_model(flow)
    x = _noise(128)
    for t in (0.01, 0.3, 0.9):
        tt = torch.full((128,), t, dtype=torch.float64)
        torch.testing.assert_close(to_eps("flow", v(x, tt), x, 1 - t, t), eps(x, tt), rtol=0, atol=1e-13)
    # at t = 1 the posterior mean is the data mean: v = x - E[x0]
    mean = (gmm2d.weights[:, None] * gmm2d.means).sum(0)
    torch.testing.assert_close(v(x, torch.ones(128, dtype=torch.float64)), x - mean, rtol=0, atol=1e-14)


# -- identities with diffusers' flow schedulers ----------------------------------------------------------------------


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("steps", [4, 28])
def test_one_point_method_is_flow_match_euler_step_for_step(flow, gmm2d, shift, steps):
    """ddim from t = 1 (the exact step from rho = inf, then one-point steps) on FlowMatchEulerDiscreteScheduler's
    sigmas is its Euler step x + (sigma_next - sigma) v, state by state. diffusers steps in float32: each step rounds
    |x| <= ~3 to float32 in a few operations, so states agree to ~4 steps' accumulated ulp: atol = 8 steps * eps * 4."""
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(steps)
    v = gmm2d.flow_model(flow)
    x = _noise(dtype=torch.float32)
    ours = ei.solve(v, x, flow, method="ddim", grid=sched.sigmas.double(), prediction="flow", trajectory=True)
    assert ours.nfe == steps and float(ours.times[0]) == 1.0 and ours.stats["start"] == "infinite noise"
    y, theirs = x, [x]
    for t, s in zip(sched.timesteps, sched.sigmas[:-1], strict=True):
        assert abs(float(t) - 1000 * float(s)) < 1e-3  # timesteps are model units: 1000 sigma
        y = sched.step(v(y, torch.full((len(y),), float(s))), t, y).prev_sample
        theirs.append(y)
    torch.testing.assert_close(ours.trajectory, torch.stack(theirs), rtol=0, atol=8 * steps * F32 * 4)


@pytest.mark.parametrize("steps", [6, 20])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_x0_midpoint_method_is_dpm_solver_2m_with_flow_sigmas(flow, gmm2d, steps, shift):
    """x0-logrhoab1-mid (two points in log rho, the polynomial frozen at the step's middle: DPM-Solver++(2M)) on
    DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction")'s sigmas equals its 2M
    steps. Its lower_order_final (and final_sigmas_type="zero" at any step count) makes the last step first order:
    ours is too, since no polynomial in log rho reaches rho = 0 (the step into the data is the one-point step), so
    no separate '-lof' method is needed. diffusers keeps sigma, alpha and log-SNR in float32 (its sigmas tensor):
    coefficients carry ~1e-7 relative error per step, so atol = steps * 1e-7 * |x| (<= 3) * 2."""
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction",
                                                  flow_shift=shift, solver_order=2)
    sched.set_timesteps(steps)
    v = gmm2d.flow_model(flow)
    x = _noise()
    grid = sched.sigmas.double()
    assert 0 < float(grid[0]) < flow.t_max  # DPM-Solver's flow sigmas start at 1 - 1/N, inside the domain
    ours = ei.solve(v, x, flow, method="x0-logrhoab1-mid", grid=grid, prediction="flow", trajectory=True)
    y, theirs = x, [x]
    for t, s in zip(sched.timesteps, sched.sigmas[:-1], strict=True):
        y = sched.step(v(y, torch.full((len(y),), float(s), dtype=torch.float64)), t, y).prev_sample
        theirs.append(y)
    torch.testing.assert_close(ours.trajectory, torch.stack(theirs), rtol=0, atol=steps * 1e-7 * 3 * 2)


def test_x0_singlestep_in_t_is_the_midpoint_rule_into_the_data(flow, gmm2d):
    """x0-tss2's step from t into the data (t = 0) is the classical midpoint rule in t on the velocity: the stage is
    the Euler (= DDIM) step to t / 2, and the line in t through x0(t), x0(t / 2) read at t = 0 is 2 x0(t / 2) - x0(t),
    which is x - t v(x_mid, t / 2). Float64 throughout: a few operations on |x| <= ~3, atol 1e-12."""
    v = gmm2d.flow_model(flow)
    x, t = _noise(), 0.6
    ours = ei.sample(v, x, flow, method="x0-tss2", grid=torch.tensor([t, 0.0], dtype=torch.float64),
                     prediction="flow")

    def vel(y, s):
        return v(y, torch.full((len(y),), s, dtype=torch.float64))

    x_mid = x - 0.5 * t * vel(x, t)
    torch.testing.assert_close(ours, x - t * vel(x_mid, 0.5 * t), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["x0-tss2", "x0-tss3"])
def test_x0_singlestep_in_t_is_exact_for_a_data_prediction_linear_in_t(flow, name):
    """With x0(x, t) = c0 + c1 t (a model whose data prediction is that line, whatever x) the exact solution of the
    flow ODE dx/dt = (x - x0) / t is x(s) = s (x(t) / t + int_t^s -x0(tau) / tau^2 dtau) = (s / t) x(t) + c0 (1 - s / t)
    - c1 s log(s / t); a method whose polynomial lives in t integrates it exactly (to round-off) on every step."""
    c0 = torch.tensor([0.3, -0.7], dtype=torch.float64)
    c1 = torch.tensor([1.1, 0.4], dtype=torch.float64)

    def model(x, t):  # the velocity (x - x0) / t of that data prediction
        tt = t.reshape(-1, 1).to(x.dtype)
        return (x - (c0 + c1 * tt)) / tt

    x, t0, t1 = _noise(8), 0.9, 0.05
    out = ei.sample(model, x, flow, method=name, grid="uniform_t", nfe=12, t_start=t0, t_end=t1, prediction="flow")
    exact = (t1 / t0) * x + c0 * (1 - t1 / t0) - c1 * t1 * math.log(t1 / t0)
    torch.testing.assert_close(out, exact, rtol=0, atol=1e-10)


# -- convergence -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ORDERED)
def test_every_method_reaches_its_order_on_rectified_flow(flow, name):
    """On the window t = 0.9 -> 0.1 (rho 9 -> 0.11, finite) under rectified flow; iPNDM, whose order needs equal
    rho steps, on 0.9 -> 0.7 (its uniform-rho grid is steep over a wider window, as on 1 -> 0.85 under VP)."""
    end = 0.7 if name == "ipndm" else 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ei.RoundoffWarning)
        convergence_order(name, sde=flow, t_start=0.9, t_end=end).check()


@pytest.mark.parametrize("name", ORDERED)
def test_every_method_spends_exactly_the_budget_through_the_special_ends(flow, gmm2d, name):
    """nfe is what a run costs, whatever special step it takes: from pure noise (t = 1), from the data (t = 0), to
    pure noise, and from the data to pure noise, for every budget the method can spend there. A singlestep method
    whose stages do not divide what is left takes a lower-order last step; before the budget reached it past the
    special step, logrhoss3 at nfe = 20 from pure noise spent 22, an unfair count in every comparison."""
    m = ei.INTEGRATORS[name]
    v, z = gmm2d.flow_model(flow), _noise(4)
    runs = {"from pure noise": dict(t_start=1.0, t_end=0.0), "from the data": dict(t_start=0.0, t_end=0.5),
            "to pure noise": dict(t_start=0.5, t_end=1.0), "from the data to pure noise": dict(t_start=0.0, t_end=1.0)}
    spent = 0
    for where, ends in runs.items():
        special = 2 if where == "from the data to pure noise" else 1
        for nfe in (5, 8, 9, 10, 20):
            if not m.accepts_nfe(nfe - special) and nfe - special > 0:
                continue  # the method cannot spend what the special steps leave (rhork-*: whole steps only)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ei.RoundoffWarning)
                sol = ei.solve(v, z, flow, method=name, nfe=nfe, prediction="flow", **ends)
            assert sol.nfe == nfe, (where, nfe, sol.nfe)
            assert len(sol.eval_times) == nfe, (where, nfe)
            spent += 1
    assert spent >= 4  # every method has budgets it can spend on each kind of run


@pytest.mark.parametrize("method", [None, "ddim", "logrhoab2", "x0-logrhoab2", "x0-logrhoab1-mid", "logrhoss3",
                                    "rhork-heun", "x0-logrhoab1-mid-pc-lof", "ipndm", "euler"])
def test_sampling_from_pure_noise_converges_to_the_exact_flow(flow, gmm2d, method):
    """From t = 1 (x = z) to the data (t_end = 0) with the exact mixture velocity: the result converges to the
    rectified-flow ODE's solution (DOP853 on dx/dt = v at 1e-11), at least first order in the number of steps."""
    v = gmm2d.flow_model(flow)
    x = _noise()
    ref = gmm2d.flow_reference(x, 1.0, 0.0)
    kw = {} if method is None else {"method": method}
    m = ei.INTEGRATORS[method] if method else None
    per = getattr(m, "evals_per_step", 1) or 1
    errors = []
    for steps in (12, 48):
        nfe = steps * per if per > 1 else steps
        sol = ei.solve(v, x, flow, prediction="flow", nfe=nfe + (1 if per > 1 else 0), t_end=0.0, **kw)
        assert float(sol.times[0]) == 1.0 and float(sol.times[-1]) == 0.0
        errors.append(float((sol.x - ref).abs().max()))
    assert errors[1] < errors[0] / 3 and errors[1] < 0.05, errors


def test_a_float32_flow_model_samples_from_pure_noise(flow, gmm2d):
    v = gmm2d.flow_model(flow)
    x = _noise(dtype=torch.float32)
    out = ei.sample(v, x, flow, prediction="flow", nfe=20, t_end=0.0)
    ref = gmm2d.flow_reference(x.double(), 1.0, 0.0)
    assert out.dtype == torch.float32 and float((out.double() - ref).abs().max()) < 0.05
    # one step from pure noise to the data is x0 = x - v(x, 1): the data mean
    mean = (gmm2d.weights[:, None] * gmm2d.means).sum(0)
    one = ei.sample(v, x.double(), flow, prediction="flow", nfe=1, t_end=0.0, method="ddim")
    torch.testing.assert_close(one, mean.expand(64, 2), rtol=0, atol=1e-14)


def test_eps_and_x0_models_start_below_pure_noise_only(flow, gmm2d):
    with pytest.raises(ValueError, match="needs a model that predicts x0 or v"):
        ei.sample(gmm2d.eps_model(flow), _noise(), flow, nfe=5)
    out = ei.sample(gmm2d.eps_model(flow), _noise(), flow, nfe=10, t_start=flow.t_max, t_end=0.0)
    assert torch.isfinite(out).all()


# -- EMS, calibrated grids, stochastic sampling, generate ------------------------------------------------------------


def test_ems_with_flow_statistics_beats_its_plain_method(flow):
    """model_statistics of a velocity model (prediction="flow"), then EMS from pure noise: on gmm16 at NFE 10 the
    fitted linear part cuts the error of DDIM and of the two-point method (measured 0.44x and 0.36x; asserted 0.7x)."""
    mix = get_problem("gmm16")
    v = mix.flow_model(flow)
    stats = ei.model_statistics(v, _noise(256, 16, seed=5), flow, prediction="flow", nodes=60)
    x = _noise(128, 16)
    ref = mix.flow_reference(x, 1.0, 0.0)
    for name, plain in (("ems-logrhoab0", "ddim"), ("ems-logrhoab1", "logrhoab1")):
        ems = ei.sample(v, x, flow, method=ei.EMSAdams.named(name, stats), nfe=10, prediction="flow", t_end=0.0,
                        grid="quadratic_t")
        base = ei.sample(v, x, flow, method=plain, nfe=10, prediction="flow", t_end=0.0, grid="quadratic_t")
        e_ems, e_base = float((ems - ref).norm(dim=1).mean()), float((base - ref).norm(dim=1).mean())
        assert e_ems < 0.7 * e_base, (name, e_ems, e_base)


def test_optimize_grid_on_a_flow_model(flow, gmm2d):
    v = gmm2d.flow_model(flow)
    cal = _noise(64, seed=6) * flow.t_max  # states at t_max ~ the prior
    grid, info = ei.optimize_grid(v, cal, flow, method="x0-logrhoab2", nfe=6, prediction="flow", max_solves=40,
                                  return_info=True)
    assert float(grid[0]) == flow.t_terminal and len(grid) == 7 and info["loss"] <= info["loss_default"]


def test_calibration_and_its_check_start_where_sample_starts(flow, gmm2d):
    """optimize_grid and heldout_check begin and end where ei.sample does without t_start / t_end: t_terminal = 1
    (pure noise), not t_max, and the data, t = 0 (their grids were laid from t_max and their reference started
    there, so a calibrated grid was compared with solves from another start). The check's baseline error is that of
    ei.sample's default run against the exact flow; rel 1e-3: the check's own adaptive reference (rtol 1e-7) is
    1e-4 of the NFE-8 error or less."""
    v = gmm2d.flow_model(flow)
    x = _noise(32, seed=7)
    exact = gmm2d.flow_reference(x, 1.0, 0.0)  # from pure noise to the data: sample's default ends for a flow
    plain = ei.sample(v, x, flow, method="x0-logrhoab1-pc", nfe=8, prediction="flow")
    expected = float((plain - exact).pow(2).mean(1).sqrt().median())
    report = ei.heldout_check(v, x, flow, method="x0-logrhoab1-pc", nfe=8, prediction="flow")
    assert report.passed and report.ratio == 1.0
    assert report.baseline_error == pytest.approx(expected, rel=1e-3)
    grid = ei.optimize_grid(v, x, flow, method="x0-logrhoab1-pc", nfe=8, prediction="flow", max_solves=1)
    default = ei.sample(v, x, flow, method="x0-logrhoab1-pc", nfe=8, prediction="flow", grid=grid)
    # one solve: the default grid itself, through the optimiser's log-increment parameterisation (float64 round-off
    # of the times, ~1e-15, moved the states by 4e-12)
    torch.testing.assert_close(default, plain, rtol=0, atol=1e-9)


def test_stochastic_ddim_from_pure_noise_forgets_x(flow, gmm2d):
    """lam > 0: the first step from rho = inf draws fresh noise (zero_snr.terminal_mixing = 0); same generator,
    different x: the same sample."""
    v = gmm2d.flow_model(flow)
    x = _noise()
    a = ei.sample(v, x, flow, prediction="flow", method="sddim", lam=1.0, nfe=3,
                  generator=torch.Generator().manual_seed(1))
    b = ei.sample(v, 2 * x, flow, prediction="flow", method="sddim", lam=1.0, nfe=3,
                  generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)


def test_generate_samples_a_flow_model(flow, gmm2d, tmp_path):
    v = gmm2d.flow_model(flow)
    res = ei.generate(v, flow, (2,), 16, tmp_path / "out", nfe=8, prediction="flow", t_end=0.0, progress=False,
                      model_id="gmm2d-flow")
    index, data = ei.load_shards(tmp_path / "out")
    assert index.tolist() == list(range(16)) and data.shape == (16, 2) and np.isfinite(data).all() and res is not None


@pytest.mark.parametrize("method", ["x0-logrhoab2-unipc", "x0-logrhoab1-pc", "x0-logrhoab2", "x0-logrhoss2"])
def test_from_pure_noise_a_data_prediction_plan_keeps_the_first_evaluation(flow, gmm2d, method,
                                                                          runs_from_t_max_with_its_first_answer):
    """From t = 1 a data-prediction plan runs from t_max with the model's x0 at t = 1 as its first evaluation (after
    the exact step with x0 frozen to t_max; zero_snr.py): the same as that plan from t_max, started at the exact
    step's state, with a model that answers that x0 at its first call; nfe evaluations in all, the first at t = 1.
    The eps form and the frozen-midpoint rule restart after the first step instead (measured: see zero_snr.py)."""
    from ei_toolkit.zero_snr import keeps_terminal_evaluation

    assert keeps_terminal_evaluation(ei.INTEGRATORS[method], None)
    assert not any(keeps_terminal_evaluation(ei.INTEGRATORS[m], None)
                   for m in ("x0-logrhoab1-mid-pc", "x0-logrhoab1-mid", "logrhoab2", "sddim"))
    # the first answer: the velocity whose x0 = x - t v is x0_1
    runs_from_t_max_with_its_first_answer(gmm2d.flow_model(flow), _noise(16), flow, method,
                                          lambda x, t, x0_1: (x - x0_1) / t[:, None])


# -- inversion ---------------------------------------------------------------------------------------------------------


def test_invert_a_flow_model_to_t_max_and_to_pure_noise(flow, gmm2d):
    """Encodings from t_min converge to the rectified-flow ODE's; to t = 1 the last step is the exact one into
    rho = inf, x_b = sigma_b eps(x_a) = x_a + (1 - t_a) v (one more evaluation)."""
    v = gmm2d.flow_model(flow)
    z = _noise()
    data = gmm2d.flow_reference(z, 1.0, flow.t_min)
    errors = []
    for nfe in (20, 80):
        sol = ei.invert(v, data, flow, prediction="flow", nfe=nfe, t_start=flow.t_min, t_end=1.0, solution=True)
        assert sol.nfe == nfe and float(sol.times[-1]) == 1.0 and sol.stats["end"] == "infinite noise"
        errors.append(float((sol.x - z).abs().max()))
    assert errors[1] < errors[0] / 10 and errors[1] < 0.01, errors
    at_max = ei.invert(v, data, flow, prediction="flow", nfe=80, t_start=flow.t_min)
    ref = gmm2d.flow_reference(data, flow.t_min, flow.t_max)
    assert float((at_max - ref).abs().max()) < 0.01
    # one step from t_a straight to pure noise: z = x + (1 - t_a) v(x, t_a)
    one = ei.invert(v, data, flow, prediction="flow", nfe=1, method="ddim", t_start=flow.t_min, t_end=1.0)
    tt = torch.full((64,), flow.t_min, dtype=torch.float64)
    torch.testing.assert_close(one, data + (1 - flow.t_min) * v(data, tt), rtol=0, atol=1e-13)


def test_round_trip_through_pure_noise(flow, gmm2d):
    """sample(invert(x0)) with 40 evaluations each way returns x0 to the two discretisation errors, both ends at the
    data (t = 0, the default of both) and at pure noise."""
    v = gmm2d.flow_model(flow)
    data = gmm2d.flow_reference(_noise(), 1.0, 0.0)
    z = ei.invert(v, data, flow, prediction="flow", nfe=40, t_end=1.0)
    back = ei.sample(v, z, flow, prediction="flow", nfe=40)
    assert float((back - data).abs().max()) < 0.05
    assert np.isfinite(back.numpy()).all()


def test_an_encoding_from_the_data_is_eulers_step_then_the_method(flow, gmm2d):
    """From t = 0 (rho = 0, the default start of ei.invert for flow models): one evaluation at the data and the
    one-point step x_1 = x + t_1 v(x, 0), then the method on the rest of the grid (data_start.py). DDIM is Euler on
    dx/dt = v in this direction too, so DDIM from the data is the Euler chain to round-off; the grid is the sampling
    grid into the data, reversed; nfe, callback, trajectory and the end at pure noise compose."""
    v = gmm2d.flow_model(flow)
    data = gmm2d.flow_reference(_noise(), 1.0, 0.0)
    grid = torch.tensor([0.0, 0.05, 0.2, 0.45, 0.8], dtype=torch.float64)
    x = data
    for t, s in itertools.pairwise(grid):
        x = x + (s - t) * v(x, torch.full((len(x),), float(t), dtype=torch.float64))
    seen = []
    sol = ei.solve(v, data, flow, method="ddim", grid=grid, prediction="flow", trajectory=True,
                   callback=lambda i, t, y: seen.append((i, t)))
    torch.testing.assert_close(sol.x, x, rtol=0, atol=1e-14)
    assert sol.nfe == 4 and sol.stats["start"] == "data" and sol.times.tolist() == grid.tolist()
    assert seen == [(i + 1, float(t)) for i, t in enumerate(grid[1:])] and sol.trajectory.shape == (5, 64, 2)
    torch.testing.assert_close(sol.trajectory[-1], sol.x, rtol=0, atol=0)
    for nfe, method in ((9, "x0-logrhoab2"), (9, "rhork-heun"), (1, "ddim")):
        enc = ei.invert(v, data, flow, prediction="flow", nfe=nfe, method=method, solution=True)
        sampling = ei.grids.time_grid(flow, enc.grid, len(enc.times) - 1, flow.t_max, 0.0)
        assert enc.nfe == nfe and float(enc.times[0]) == 0.0
        # the same formula laid from the other end: equal to a few float64 ulps of t <= 1
        torch.testing.assert_close(enc.times, sampling.flip(0), rtol=0, atol=4 * torch.finfo(torch.float64).eps)
    one = ei.invert(v, data, flow, prediction="flow", nfe=1, method="ddim", t_end=0.5)  # a single step from t = 0
    torch.testing.assert_close(one, data + 0.5 * v(data, torch.zeros(64, dtype=torch.float64)), rtol=0, atol=1e-14)
    to_noise = ei.invert(v, data, flow, prediction="flow", nfe=80, t_end=1.0, solution=True)
    assert to_noise.nfe == 80 and to_noise.stats["end"] == "infinite noise" and float(to_noise.times[-1]) == 1.0
    assert float((to_noise.x - gmm2d.flow_reference(data, 0.0, 1.0)).abs().max()) < 0.01  # measured 1.3e-3


@pytest.mark.parametrize("name", ORDERED)
def test_every_method_encodes_from_the_data_at_its_order(flow, gmm2d, name):
    """Every deterministic method from t = 0 to 0.5 on quadratic_t, against DOP853 at 1e-11: the data step's local
    error rho_1^2 / 2 |d eps / d rho| falls as steps^-4 there (rho_1 ~ steps^-2), so each method keeps its order
    (measured slopes from 80 to 160 steps: 0.97-4.2; the x0 forms and logrhoab3 approach theirs from below, the
    slowest x0-logrhoab3: 2.97, 3.21, 3.40 from 20 to 160 steps, so the bound is the order less 0.65). iPNDM needs
    equal rho steps for its order (convergence_grid) and is held to 1.8."""
    m = ei.INTEGRATORS[name]
    v = gmm2d.flow_model(flow)
    data = gmm2d.sample_data(32, generator=torch.Generator().manual_seed(0))
    ref = gmm2d.flow_reference(data, 0.0, 0.5)
    steps = (40, 80, 160)
    errors = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ei.RoundoffWarning)
        for n in steps:
            x = ei.invert(v, data, flow, prediction="flow", method=name, nfe=1 + n * m.evals_per_step,
                          grid="quadratic_t", t_end=0.5)
            errors.append(float((x - ref).norm() / ref.norm()))
    slope = math.log(errors[1] / errors[2]) / math.log(2)
    want = 1.8 if m.convergence_grid else min(m.order, 4) - 0.65
    assert errors[2] < errors[1] < errors[0] and slope >= want, (errors, slope)


def test_exact_inversion_from_the_data(flow, gmm2d):
    """exact=True from t = 0: the default sampler run back into the data reproduces x0 to the tolerance."""
    v = gmm2d.flow_model(flow)
    data = gmm2d.flow_reference(_noise(8), 1.0, 0.0)
    sol = ei.invert(v, data, flow, prediction="flow", nfe=10, exact=True, solution=True)
    back = ei.sample(v, sol.x, flow, prediction="flow", method=sol.method, nfe=10, t_start=flow.t_max)
    assert float(((back - data).norm(dim=1) / data.norm(dim=1)).max()) <= 1e-6


def test_a_start_at_the_data_needs_the_noise_prediction_there(flow, gmm2d):
    """An x0 or score model says nothing about the noise at sigma = 0; a VP model is not defined at t = 0."""
    v = gmm2d.flow_model(flow)
    data = gmm2d.flow_reference(_noise(4), 1.0, 0.0)

    def x0_model(x, t):
        return x - t[:, None] * v(x, t)

    with pytest.raises(ValueError, match=r"needs the model's noise prediction at sigma = 0, which prediction='x0'"):
        ei.invert(x0_model, data, flow, prediction="x0", nfe=8)
    ok = ei.invert(x0_model, data, flow, prediction="x0", nfe=8, t_start=flow.t_min)  # above t0: fine
    assert torch.isfinite(ok).all()
    vp = ei.VPSDE()
    with pytest.raises(ValueError, match=r"t_start must be >= sde.t_min = 0.001; got 0"):
        ei.invert(gmm2d.eps_model(vp), data, vp, t_start=0.0)


# -- time shifting as grids (SD3, Flux) -------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [0.5, 3.0, 7.5])
def test_a_shift_is_a_translation_in_log_rho(flow, shift):
    # (windows whose ends' rho / shift stay inside the domain, to build the unshifted grid for comparison)
    """shifted(shift) puts rho' = shift * rho on the uniform-sigma grid between the ends' rho / shift, for rectified
    flow and for any other SDE (VP here); float64, so equal to ~1e-14 relative."""
    from ei_toolkit.grids import shift_sigma, shifted, uniform_sigma

    for sde, t0, t1 in ((flow, 0.9, 0.05), (ei.VPSDE(), 0.5, 1e-3)):
        grid = shifted(sde, 12, t0, t1, shift)
        ends = sde.t_of_rho(sde.rho(torch.tensor([t0, t1], dtype=torch.float64)) / shift)
        base = uniform_sigma(sde, 12, float(ends[0]), float(ends[1]))
        torch.testing.assert_close(sde.rho(grid).log(), sde.rho(base).log() + np.log(shift), rtol=0, atol=1e-12)
        assert float(grid[0]) == t0 and float(grid[-1]) == t1
    # for rectified flow the translation is SD3's sigma' = s sigma / (1 + (s - 1) sigma)
    u = flow.t_of_rho(flow.rho(torch.tensor([0.9], dtype=torch.float64)) / shift)
    torch.testing.assert_close(shifted(flow, 10, 0.9, 0.0, shift)[1:],
                               shift_sigma(uniform_sigma(flow, 10, float(u), 0.0), shift)[1:], rtol=1e-13, atol=0)
    base = uniform_sigma(flow, 10, flow.t_max, 0.0)
    assert base.tolist() == ei.time_grid(flow, "uniform_sigma", 10, flow.t_max, 0.0).tolist()


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_the_static_shift_is_flow_match_eulers(shift):
    """FlowMatchEulerDiscreteScheduler's sigmas are shift_sigma of n points uniform from 1 to its smallest training
    sigma, itself shifted: shift_sigma(1/N) (float32: a few ulp)."""
    diffusers = pytest.importorskip("diffusers")
    from ei_toolkit.grids import shift_sigma

    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(9)
    base = torch.linspace(1, float(shift_sigma(torch.tensor(1e-3, dtype=torch.float64), shift)), 9,
                          dtype=torch.float64)
    torch.testing.assert_close(sched.sigmas[:-1].double(), shift_sigma(base, shift), rtol=4 * F32, atol=0)


@pytest.mark.parametrize("kind", ["exponential", "linear"])
def test_flux_dynamic_shift_and_shift_terminal_are_static_shifts_of_the_same_sigmas(kind):
    diffusers = pytest.importorskip("diffusers")
    from ei_toolkit.grids import flux_shift, shift_sigma, stretch_to_terminal

    mu = 1.15 if kind == "exponential" else 2.5
    sched = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, time_shift_type=kind)
    base = np.linspace(1, 1e-3, 7)
    sched.set_timesteps(7, mu=mu)
    ours = shift_sigma(torch.as_tensor(base), flux_shift(mu, kind))
    torch.testing.assert_close(sched.sigmas[:-1].double(), ours, rtol=4 * F32, atol=0)
    term = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, shift_terminal=0.1)
    term.set_timesteps(7)
    base = np.linspace(1, float(shift_sigma(torch.tensor(1e-3, dtype=torch.float64), 3.0)), 7)
    ours = stretch_to_terminal(shift_sigma(torch.as_tensor(base), 3.0), 0.1)
    torch.testing.assert_close(term.sigmas[:-1].double(), ours, rtol=8 * F32, atol=0)
    assert abs(float(term.sigmas[-2]) - 0.1) < 1e-6
    with pytest.raises(ValueError, match="time_shift_type"):
        flux_shift(1.0, "cubic")


def test_sample_uses_the_flow_default_measured_for_flow_models(flow, gmm2d):
    """Per NFE, RectifiedFlow.DEFAULTS_BY_NFE (method and grid), DEFAULTS_BY_NFE_HIGH_DIM for data of
    sampling.HIGH_DIM elements or more, both as benchmarks/results/default.md states them."""
    v = gmm2d.flow_model(flow)
    for nfe in (4, 8, 10, 20, 40):
        method, grid = flow.default_method(nfe)
        sol = ei.solve(v, _noise(8), flow, prediction="flow", nfe=nfe, t_end=0.0)
        assert (sol.stats["method"], sol.grid) == (method, grid) and sol.nfe == nfe
    assert flow.default_method(10) == ("logrhoab1-pc", "quadratic_t")
    assert flow.default_method(10, high_dim=True) == ("ipndm", "uniform_logrho")
    assert ei.sampling.default_method(10, sde=flow, dim=3 * 16 * 16) == ("ipndm", "uniform_logrho")
    assert ei.sampling.default_method(10) == (ei.sampling.DEFAULT_METHOD, "quadratic_t")  # other SDEs keep theirs
    # the tables are the rule's picks in benchmarks/results/default.md
    text = (Path(__file__).parents[1] / "benchmarks" / "results" / "default.md").read_text().splitlines()
    for label, table in (("- flow (mixtures and trained): ", flow.DEFAULTS_BY_NFE),
                         ("- flow-high: ", flow.DEFAULTS_BY_NFE_HIGH_DIM)):
        line = next(ln for ln in text if ln.startswith(label))
        assert [tuple(r) for r in ast.literal_eval(line[len(label):])] == list(table)


# -- the documentation ------------------------------------------------------------------------------------------------


def test_the_flow_page_runs_as_written():
    """docs/flow.md's python blocks, in order, in one namespace (tests/test_docs.py's RUN_ELSEWHERE points here)."""
    pytest.importorskip("diffusers")
    import re
    from pathlib import Path

    page = Path(__file__).resolve().parents[1] / "docs" / "flow.md"
    ns: dict = {"__name__": "__docs__"}
    for code in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S):
        exec(compile(code, str(page), "exec"), ns)  # the project's own documentation
    # the flow default at NFE 10 on gmm2d (256 draws, seed 0: bench_flow.py's problem): 0.0755, 1.28x diffusers'
    # best flow scheduler there (UniPC-2 bh2, shift 1: 0.0589, benchmarks/results/flow.md); bound: 1.5x that peer
    assert float((ns["x0"] - ns["exact"]).norm() / ns["exact"].norm()) < 1.5 * 0.0589
    assert ns["sol"].stats["method"] == ns["flow"].default_method(10)[0] and torch.isfinite(ns["out"]).all()
    assert float((ns["noise"] - ns["z"]).norm() / ns["z"].norm()) < 0.05
    assert ns["scheduler"].prediction == "flow"


def test_adaptive_steps_from_pure_noise(flow, gmm2d):
    """method='adaptive' after the exact first step: its error follows its tolerance (measured 4e-4 at rtol 1e-4,
    9e-6 at 1e-6, relative)."""
    v = gmm2d.flow_model(flow)
    z = _noise()
    ref = gmm2d.flow_reference(z, 1.0, 0.0)
    errors = []
    for tol in (1e-4, 1e-6):
        sol = ei.solve(v, z, flow, method="adaptive", prediction="flow", t_end=0.0, options={"rtol": tol, "atol": tol})
        assert sol.stats["start"] == "infinite noise"
        errors.append(float((sol.x - ref).norm() / ref.norm()))
    assert errors[1] < errors[0] / 10 and errors[1] < 1e-4, errors
