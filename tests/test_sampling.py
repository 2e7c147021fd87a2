"""The sample/solve entry point: every method x grid x SDE, grids, dtypes, bad input."""

import re

import pytest
import torch

import ei_toolkit as ei
from ei_toolkit.testing import get_problem

SDES = {
    "vp": ei.VPSDE(),
    "subvp": ei.SubVPSDE(),
    "cosine": ei.CosineVPSDE(),
    "ve": ei.VESDE(),
    "edm": ei.EDM(),
    "ddpm": ei.DiscreteVP.linear(),
}
PROBLEM = get_problem("gmm2d")
# the methods with a plan (black-box torchdiffeq methods are tested in test_adapters.py)
PLANNED = [n for n, m in ei.INTEGRATORS.items() if isinstance(m, ei.Integrator)]


def nfes(method):
    k = ei.INTEGRATORS[method].evals_per_step
    return sorted({max(k, (n // k) * k) for n in (5, 8, 13, 21, 34, 50)})


@pytest.mark.parametrize("sde_name", SDES)
@pytest.mark.parametrize("method", PLANNED)
def test_every_method_and_grid_runs_on_every_sde(method, sde_name):
    sde = SDES[sde_name]
    model = PROBLEM.eps_model(sde)
    x = PROBLEM.sample_marginal(sde, sde.t_max, 8, torch.Generator().manual_seed(1))
    for grid in ei.GRIDS:
        for nfe in nfes(method):
            sol = ei.solve(model, x, sde, method=method, nfe=nfe, grid=grid)
            assert sol.nfe == nfe and sol.x.shape == x.shape
            assert torch.isfinite(sol.x).all(), (grid, nfe)


@pytest.mark.parametrize("sde_name", SDES)
@pytest.mark.parametrize("grid", list(ei.GRIDS))
def test_grids_are_strictly_decreasing_at_every_step_count(grid, sde_name):
    sde = SDES[sde_name]
    for steps in range(1, 1001):
        t = ei.time_grid(sde, grid, steps, sde.t_max, sde.t_min)  # raises if not strictly decreasing
        assert len(t) == steps + 1 and t[0] == sde.t_max and t[-1] == sde.t_min


def test_discrete_grid_to_the_data_time():
    sde = SDES["ddpm"]
    for grid in ei.GRIDS:
        for steps in (1, 2, 50):
            t = ei.time_grid(sde, grid, steps, 999.0, -1.0)
            assert t[-1] == -1.0 and len(t) == steps + 1 and bool((t[1:] < t[:-1]).all())
    model = PROBLEM.eps_model(sde)
    x = PROBLEM.sample_marginal(sde, 999.0, 8)
    for method in PLANNED:  # every method can sample to the data with its default grid
        k = ei.INTEGRATORS[method].evals_per_step
        assert torch.isfinite(ei.sample(model, x, sde, method=method, nfe=12 - 12 % k, t_end=-1.0)).all()


def test_solution_reports_grid_nfe_and_trajectory():
    sde = SDES["vp"]
    model = PROBLEM.eps_model(sde)
    x = PROBLEM.sample_marginal(sde, 1.0, 4)
    sol = ei.solve(model, x, sde, method="rhork-heun", nfe=10, grid="karras", trajectory=True)
    assert sol.nfe == 10 and len(sol.times) == 6 and len(sol.eval_times) == 10
    assert sol.trajectory.shape == (6, *x.shape)
    torch.testing.assert_close(sol.trajectory[-1], sol.x)
    assert sol.method == "rhork-heun" and sol.grid == "karras"


def test_progress_bar_writes_to_stderr(capsys):
    sde = SDES["vp"]
    ei.sample(PROBLEM.eps_model(sde), PROBLEM.sample_marginal(sde, 1.0, 2), sde, nfe=5, progress=True)
    assert "5/5" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_inputs_follow_dtype_and_stay_close(dtype):
    sde = SDES["ddpm"]
    model = PROBLEM.eps_model(sde)
    x = PROBLEM.sample_marginal(sde, sde.t_max, 64, torch.Generator().manual_seed(3))
    ref = ei.sample(model, x, sde, nfe=10)
    out = ei.sample(model, x.to(dtype), sde, nfe=10)
    assert out.dtype == dtype
    tol = {torch.float16: 5e-2, torch.bfloat16: 2e-1, torch.float32: 1e-4}[dtype]
    assert (out.double() - ref).abs().max() < tol


@pytest.mark.parametrize("prediction", ["x0", "v", "score"])
def test_prediction_types_give_the_same_samples(prediction):
    sde = SDES["cosine"]
    eps_model = PROBLEM.eps_model(sde)

    def model(x, t):
        a, s = sde.alpha(t).view(-1, 1), sde.sigma(t).view(-1, 1)
        e = eps_model(x, t)
        if prediction == "x0":
            return (x - s * e) / a
        if prediction == "score":
            return -e / s
        return a * e - s * (x - s * e) / a  # v = alpha eps - sigma x0

    x = PROBLEM.sample_marginal(sde, sde.t_max, 8)
    a = ei.sample(eps_model, x, sde, nfe=10)
    b = ei.sample(model, x, sde, nfe=10, prediction=prediction)
    torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9)


def test_explicit_grid_and_its_nfe():
    sde = SDES["ddpm"]
    model = PROBLEM.eps_model(sde)
    x = PROBLEM.sample_marginal(sde, 999.0, 2)
    grid = torch.tensor([999.0, 700.0, 300.0, 0.0])
    assert ei.solve(model, x, sde, grid=grid).nfe == 3
    with pytest.raises(ValueError, match=rf"nfe=10 does not match the explicit grid: 3 steps of "
                                         rf"{re.escape(ei.sampling.default_method(10)[0])} use 3"):
        ei.solve(model, x, sde, grid=grid, nfe=10)
    with pytest.raises(ValueError, match="an explicit grid must be strictly decreasing"):
        ei.solve(model, x, sde, grid=torch.tensor([999.0, 500.0, 500.0, 0.0]))


class TestBadInput:
    sde = SDES["vp"]
    model = staticmethod(PROBLEM.eps_model(SDES["vp"]))
    x = PROBLEM.sample_marginal(SDES["vp"], 1.0, 2)

    def test_unknown_method_lists_the_valid_ones(self):
        with pytest.raises(ValueError, match=r"unknown method 'tab9'; valid methods: ddim, euler, .*rhork-rk4"):
            ei.sample(self.model, self.x, self.sde, method="tab9")

    def test_unknown_grid_lists_the_valid_ones(self):
        with pytest.raises(ValueError, match=r"unknown grid 'cosine'; valid grids: uniform_t, quadratic_t"):
            ei.sample(self.model, self.x, self.sde, grid="cosine")

    def test_nfe_too_small_or_not_a_multiple_of_the_stages(self):
        with pytest.raises(ValueError, match=r"nfe=3 is not possible for 'rhork-rk4': it uses 4 model evaluations"):
            ei.sample(self.model, self.x, self.sde, method="rhork-rk4", nfe=3)
        with pytest.raises(ValueError, match=r"nfe=10 is not possible for 'rhork-kutta3'.*multiple of 3"):
            ei.sample(self.model, self.x, self.sde, method="rhork-kutta3", nfe=10)
        with pytest.raises(ValueError, match=r"nfe must be a positive integer; got 0"):
            ei.sample(self.model, self.x, self.sde, nfe=0)

    def test_t_start_not_above_t_end(self):
        with pytest.raises(ValueError, match=r"t_start and t_end must differ .*got both 0.5"):
            ei.sample(self.model, self.x, self.sde, t_start=0.5, t_end=0.5)
        with pytest.raises(ValueError, match=r"t_start must lie in the SDE's domain \[0, 1\]; got 2.0"):
            ei.sample(self.model, self.x, self.sde, t_start=2.0)

    def test_model_with_wrong_shape_or_dtype(self):
        with pytest.raises(ValueError, match=r"the model returned shape \(2, 1\); expected \(2, 2\)"):
            ei.sample(lambda x, t: x[:, :1], self.x, self.sde)
        with pytest.raises(TypeError, match=r"the model returned dtype torch.float32; expected torch.float64"):
            ei.sample(lambda x, t: x.float(), self.x, self.sde)
        with pytest.raises(TypeError, match=r"the model must return a tensor; got tuple"):
            ei.sample(lambda x, t: (x,), self.x, self.sde)

    def test_non_finite_model_output_reports_the_evaluation_and_time(self):
        def model(x, t):
            return torch.full_like(x, float("nan")) if t[0] < 0.5 else x * 0.1

        with pytest.raises(ei.NumericalError, match=r"model output is not finite at evaluation \d+ \(t = 0\.4"):
            ei.sample(model, self.x, self.sde, method="ddim", nfe=10, grid="uniform_t")

    def test_bad_x_and_prediction(self):
        with pytest.raises(TypeError, match=r"x must be a real floating-point tensor; got torch.int64"):
            ei.sample(self.model, torch.zeros(2, 2, dtype=torch.long), self.sde)
        with pytest.raises(ValueError, match=r"unknown prediction 'noise'; valid: eps, x0, v, score"):
            ei.sample(self.model, self.x, self.sde, prediction="noise")
        with pytest.raises(ValueError, match=r"prediction='v' needs a variance-preserving SDE"):
            ei.sample(self.model, self.x, ei.EDM(), prediction="v")


@pytest.mark.cuda
def test_cuda_sampling_matches_cpu():
    sde = SDES["ddpm"]
    model = PROBLEM.eps_model(sde)
    x = PROBLEM.sample_marginal(sde, 999.0, 32)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        out = ei.sample(model, x.to("cuda", dtype), sde, nfe=10)
        assert out.device.type == "cuda" and out.dtype == dtype
        ref = ei.sample(model, x.to(dtype), sde, nfe=10)
        atol = 0.05 if dtype != torch.float32 else 1e-4
        torch.testing.assert_close(out.cpu().double(), ref.double(), rtol=0, atol=atol)


@pytest.mark.cuda
@pytest.mark.parametrize("method", ["logrhoab2", "tab3", "rhork-rk4", "ipndm"])
def test_no_host_device_synchronisation_in_the_step_loop(method):
    """torch's sync debug mode turns any synchronising call inside the loop into an error."""
    from ei_toolkit.integrators import plan_for

    sde = SDES["ddpm"]
    integ = ei.INTEGRATORS[method]
    x = torch.randn(8, 3, 16, 16, device="cuda")
    grid = ei.time_grid(sde, integ.default_grid, 10 // integ.evals_per_step * 1 or 1, sde.t_max, sde.t_min)
    plan = plan_for(integ, sde, grid)
    ev = ei.ModelEvaluator(lambda x, t: 0.1 * x, sde)
    eps_fn = ev.bind(plan.eval_times, x, plan.target)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = plan.run(x, eps_fn)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ev.check()  # the one synchronisation, after the loop
    assert torch.isfinite(out).all()
