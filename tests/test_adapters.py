"""torchdiffeq / torchsde adapters and stochastic DDIM."""

import itertools
import math

import numpy as np
import pytest
import torch
import torchdiffeq

import ei_toolkit as ei
from ei_toolkit.adapters import NFEBudgetExceeded
from ei_toolkit.testing import GaussianMixture, get_problem, sliced_wasserstein

VP = ei.VPSDE()
PROBLEM = get_problem("gmm2d")
X = PROBLEM.sample_marginal(VP, 1.0, 32, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("frame", ["t", "rho", "logrho"])
@pytest.mark.parametrize("sde", [ei.VPSDE(), ei.CosineVPSDE()], ids=repr)
def test_dopri5_in_each_frame_agrees_with_the_reference(sde, frame):
    model = PROBLEM.eps_model(sde)
    x = PROBLEM.sample_marginal(sde, sde.t_max, 32, torch.Generator().manual_seed(1))
    ref = PROBLEM.reference(sde, x, sde.t_max, sde.t_min, rtol=1e-12, atol=1e-12)
    sol = ei.odeint(model, x, sde, rtol=1e-9, atol=1e-9, frame=frame)
    assert sol.nfe > 0
    torch.testing.assert_close(sol.x, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("theirs", "ours"), [("rk4", "rhork-rk4-38"), ("euler", "ddim"),
                                               ("midpoint", "rhork-midpoint")])
def test_fixed_grid_torchdiffeq_in_the_rho_frame_is_our_rhork(theirs, ours):
    """torchdiffeq's rk4 is Kutta's 3/8 rule; on the same rho grid it is our rhork-rk4-38 to round-off."""
    sde = ei.DiscreteVP.linear()
    model = PROBLEM.eps_model(sde)
    x = PROBLEM.sample_marginal(sde, 999.0, 16)
    k = ei.INTEGRATORS[ours].evals_per_step
    a = ei.solve(model, x, sde, method=f"torchdiffeq:{theirs}", nfe=5 * k, grid="karras", options={"frame": "rho"})
    b = ei.solve(model, x, sde, method=ours, nfe=5 * k, grid="karras")
    assert a.nfe == b.nfe == 5 * k
    torch.testing.assert_close(a.x, b.x, rtol=1e-12, atol=1e-12)


def test_raw_functions_work_with_odeint_adjoint():
    """Gradients through torchdiffeq.odeint_adjoint on FlowODE match plain backpropagation."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()

    def loss(adjoint):
        net.zero_grad()
        func = ei.FlowODE(lambda x, t: net(x) * 0.5, VP, frame="logrho")
        taus = func.tau(torch.tensor([1.0, 0.1], dtype=torch.float64))
        solver = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
        kw = {"adjoint_params": tuple(net.parameters())} if adjoint else {}
        y = solver(func, func.encode(X, 1.0), taus, rtol=1e-9, atol=1e-9, **kw)[-1]
        func.decode(y, 0.1).pow(2).sum().backward()
        return [p.grad.clone() for p in net.parameters()]

    for g_adj, g_direct in zip(loss(True), loss(False), strict=True):
        torch.testing.assert_close(g_adj, g_direct, rtol=1e-5, atol=1e-7)


def test_odeint_bad_input():
    model = PROBLEM.eps_model(VP)
    with pytest.raises(ValueError, match=r"unknown torchdiffeq method 'rk45'; valid: dopri8, dopri5"):
        ei.odeint(model, X, VP, method="rk45")
    with pytest.raises(ValueError, match=r"unknown torchdiffeq method 'rk45'"):
        ei.sample(model, X, VP, method="torchdiffeq:rk45")
    with pytest.raises(ValueError, match=r"unknown frame 'sigma'; valid frames: t, rho, logrho"):
        ei.odeint(model, X, VP, frame="sigma")
    with pytest.raises(NFEBudgetExceeded, match=r"more than max_nfe=20 model evaluations"):
        ei.odeint(model, X, VP, rtol=1e-10, atol=1e-10, max_nfe=20)
    with pytest.raises(ValueError, match=r"needs steps="):
        ei.odeint(model, X, VP, method="rk4")
    with pytest.raises(ValueError, match=r"nfe=10 is not possible for torchdiffeq:rk4"):
        ei.sample(model, X, VP, method="torchdiffeq:rk4", nfe=10)
    with pytest.raises(ValueError, match=r"is adaptive: nfe/grid do not apply"):
        ei.sample(model, X, VP, method="torchdiffeq:dopri5", nfe=10)
    with pytest.raises(ei.NumericalError, match=r"the model output is not finite at evaluation 0 \(t = 1\)"):
        ei.odeint(lambda x, t: x * float("inf"), X, VP)


# ---------------------------------------------------------------------------------------------------------
# stochastic DDIM


def test_sddim_with_lambda_zero_is_ddim_exactly():
    sde = ei.DiscreteVP.linear()
    model = PROBLEM.eps_model(sde)
    x = PROBLEM.sample_marginal(sde, 999.0, 16)
    for grid in ("quadratic_t", "karras"):
        a = ei.sample(model, x, sde, method="sddim", lam=0.0, nfe=10, grid=grid)
        b = ei.sample(model, x, sde, method="ddim", nfe=10, grid=grid)
        assert torch.equal(a, b)
        c = ei.sample(model, x, sde, method="sddim", eta=0.0, nfe=10, grid=grid)
        assert torch.equal(c, b)


def test_lambda_one_is_the_ddpm_posterior_variance_and_eta_is_ddims():
    sde = ei.DiscreteVP.linear()
    grid = torch.tensor([999.0, 800.0, 500.0, 200.0, 50.0, 0.0], dtype=torch.float64)
    a = sde.alphas_cumprod.double()[grid.long()]
    a_t, a_s = a[:-1], a[1:]
    posterior = (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
    plan = ei.integrators.StochasticDDIM(lam=1.0).plan(sde, grid)
    np.testing.assert_allclose(np.square(plan.noise), posterior.numpy(), rtol=1e-10)
    eta = 0.7
    plan = ei.integrators.StochasticDDIM(eta=eta).plan(sde, grid)
    np.testing.assert_allclose(np.square(plan.noise), eta**2 * posterior.numpy(), rtol=1e-10)
    # mean coefficient of eps: sqrt(1 - a_s - sigma_eta^2) - sqrt(a_s) sqrt(1 - a_t) / sqrt(a_t)
    w = torch.sqrt(1 - a_s - eta**2 * posterior) - torch.sqrt(a_s) * torch.sqrt(1 - a_t) / torch.sqrt(a_t)
    np.testing.assert_allclose([v[0] for v in plan.weights], w.numpy(), rtol=1e-10)


def test_eta_matches_diffusers_ddim_with_the_same_noise():
    diffusers = pytest.importorskip("diffusers")
    sde = ei.DiscreteVP.linear()
    model = PROBLEM.eps_model(sde)
    x = PROBLEM.sample_marginal(sde, 999.0, 8).float()
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                    set_alpha_to_one=False, timestep_spacing="trailing")
    sched.set_timesteps(10)
    zs = torch.randn(10, *x.shape, generator=torch.Generator().manual_seed(3))
    y = x
    for i, t in enumerate(sched.timesteps):
        y = sched.step(model(y, torch.full((8,), float(t))), t, y, eta=0.5, variance_noise=zs[i]).prev_sample
    grid = torch.tensor([999, 899, 799, 699, 599, 499, 399, 299, 199, 99, 0], dtype=torch.float64)
    from ei_toolkit.integrators import plan_for

    plan = plan_for(ei.integrators.StochasticDDIM(eta=0.5), sde, grid)
    ours = plan.run(x, ei.ModelEvaluator(model, sde).bind(plan.eval_times, x), noise=lambda i, like: zs[i])
    torch.testing.assert_close(ours, y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("lam", [0.5, 1.0, 2.0])
def test_sddim_samples_the_data_distribution(lam):
    """At 200 steps the samples' mean, covariance and sliced Wasserstein distance to fresh data match the
    data distribution within the sampling noise of 4000 points."""
    sde = ei.DiscreteVP.linear()
    mix = get_problem("gmm2d")
    n = 4000
    x = mix.sample_marginal(sde, 999.0, n, torch.Generator().manual_seed(10))
    out = ei.sample(mix.eps_model(sde), x, sde, method="sddim", lam=lam, nfe=200, t_end=-1.0,
                    generator=torch.Generator().manual_seed(11))
    data = mix.sample_data(n, torch.Generator().manual_seed(12))
    data2 = mix.sample_data(n, torch.Generator().manual_seed(13))
    mean = (mix.weights[:, None] * mix.means).sum(0)
    second = (mix.weights[:, None, None] * (mix.means[:, :, None] * mix.means[:, None, :])).sum(0)
    cov = second - torch.outer(mean, mean)
    cov += (mix.weights * mix.stds**2).sum() * torch.eye(2, dtype=torch.float64)
    assert (out.mean(0) - mean).abs().max() < 0.03
    assert (torch.cov(out.T) - cov).abs().max() < 0.03
    baseline = sliced_wasserstein(data, data2)
    assert sliced_wasserstein(out, data) < 2.5 * baseline + 0.01, (sliced_wasserstein(out, data), baseline)


def test_sddim_converges_strongly_to_torchsde_on_the_same_brownian_path():
    sde = ei.VPSDE()
    mix = get_problem("gmm2d")
    model = mix.eps_model(sde)
    t_start, t_end = 0.5, 0.05  # rho from about 4.5 to 0.3
    x = mix.sample_marginal(sde, t_start, 32, torch.Generator().manual_seed(4))
    bm = ei.brownian_motion(x, sde, t_start, t_end, entropy=7)
    fine = ei.sdeint(model, x, sde, lam=1.0, method="srk", dt=2e-3, t_start=t_start, t_end=t_end, bm=bm,
                     max_nfe=None).x
    errs = []
    for steps in (25, 50, 100, 200):
        out = ei.sample(model, x, sde, method="sddim", lam=1.0, nfe=steps, grid="uniform_logrho", t_start=t_start,
                        t_end=t_end, brownian=bm)
        errs.append((out - fine).pow(2).mean().sqrt().item())
    assert all(b < a for a, b in itertools.pairwise(errs)), errs
    slope = np.polyfit(-np.log([25, 50, 100, 200]), np.log(errs), 1)[0]
    assert slope > 0.4, (slope, errs)


def test_torchsde_adapter_with_image_shaped_inputs():
    dim = 3 * 8 * 8
    mix = GaussianMixture(means=torch.randn(3, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
                          * 0.3, stds=torch.full((3,), 0.2, dtype=torch.float64),
                          weights=torch.tensor([0.3, 0.3, 0.4], dtype=torch.float64))
    sde = ei.VPSDE()
    x = mix.sample_marginal(sde, 1.0, 4).reshape(4, 3, 8, 8)
    for method in ("euler", "milstein", "srk", "heun"):
        sol = ei.sdeint(mix.eps_model(sde), x, sde, lam=1.0, method=method, dt=1.0)
        assert sol.x.shape == (4, 3, 8, 8) and torch.isfinite(sol.x).all() and sol.nfe > 0


def test_stochastic_bad_input():
    model = PROBLEM.eps_model(VP)
    with pytest.raises(ValueError, match=r"lam must be a finite number >= 0; got -0.5"):
        ei.sample(model, X, VP, method="sddim", lam=-0.5)
    with pytest.raises(ValueError, match=r"lam must be a finite number >= 0"):
        ei.sdeint(model, X, VP, lam=-1.0)
    default = ei.sample(model, X, VP, method="sddim", generator=torch.Generator().manual_seed(1))
    lam1 = ei.sample(model, X, VP, method="sddim", lam=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(default, lam1)  # the registered sddim is lambda = 1, the DDPM posterior
    with pytest.raises(ValueError, match=r"give exactly one of lam"):
        ei.sample(model, X, VP, method="sddim", lam=1.0, eta=1.0)
    with pytest.raises(ValueError, match=r"lam/eta apply to stochastic methods only; 'tab3' is deterministic"):
        ei.sample(model, X, VP, method="tab3", lam=1.0)
    with pytest.raises(ValueError, match=r"unknown torchsde method 'rk4'; valid: euler, milstein"):
        ei.sdeint(model, X, VP, method="rk4")
    with pytest.raises(ei.NumericalError, match=r"the model output is not finite at evaluation 0 \(t = 1\)"):
        ei.sdeint(lambda x, t: x * float("nan"), X, VP, dt=0.5)


def test_generator_makes_stochastic_runs_reproducible():
    model = PROBLEM.eps_model(VP)
    a = ei.sample(model, X, VP, method="sddim", lam=1.0, nfe=10, generator=torch.Generator().manual_seed(5))
    b = ei.sample(model, X, VP, method="sddim", lam=1.0, nfe=10, generator=torch.Generator().manual_seed(5))
    c = ei.sample(model, X, VP, method="sddim", lam=1.0, nfe=10, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert math.isfinite(a.sum().item())


def test_torchdiffeq_methods_through_sample():
    model = PROBLEM.eps_model(VP)
    ref = PROBLEM.reference(VP, X, VP.t_max, VP.t_min, rtol=1e-12, atol=1e-12)
    out = ei.sample(model, X, VP, method="torchdiffeq:dopri5", options={"rtol": 1e-8, "atol": 1e-8})
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    errs = []
    for nfe in (30, 120):
        sol = ei.solve(model, X, VP, method="torchdiffeq:heun3", nfe=nfe, options={"frame": "logrho"})
        assert sol.nfe == nfe
        errs.append((sol.x - ref).abs().max().item())
    assert errs[1] < errs[0] / 8, errs  # third order: 4x the steps, far smaller error
    with pytest.raises(ValueError, match=r"unknown options \['tol'\]"):
        ei.sample(model, X, VP, method="torchdiffeq:dopri5", options={"tol": 1e-3})


# --- per-sample reproducibility, sdeint's defaults, progress bars, the stochastic page (issue 10 items 7, 8) ----


def test_sddim_sample_is_the_same_in_a_batch_of_1_and_of_8():
    model = PROBLEM.eps_model(VP)
    gens = lambda n: [torch.Generator().manual_seed(100 + i) for i in range(n)]  # noqa: E731
    one = ei.sample(model, X[:1], VP, method="sddim", lam=1.0, nfe=10, generator=gens(1))
    eight = ei.sample(model, X[:8], VP, method="sddim", lam=1.0, nfe=10, generator=gens(8))
    torch.testing.assert_close(one[0], eight[0], rtol=0, atol=1e-12)
    other = ei.sample(model, X[:1], VP, method="sddim", lam=1.0, nfe=10, generator=[torch.Generator().manual_seed(7)])
    assert (other[0] - one[0]).abs().max() > 1e-3  # the noise matters: a different generator, a different sample
    with pytest.raises(ValueError, match=r"generator: a list needs one torch.Generator per sample \(8\); got 2"):
        ei.sample(model, X[:8], VP, method="sddim", generator=gens(2))


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_sdeint_sample_is_the_same_in_a_batch_of_1_and_of_8(method):
    model = PROBLEM.eps_model(VP)
    gens = lambda n: [torch.Generator().manual_seed(200 + i) for i in range(n)]  # noqa: E731
    one = ei.sdeint(model, X[:1], VP, method=method, steps=20, generator=gens(1)).x
    eight = ei.sdeint(model, X[:8], VP, method=method, steps=20, generator=gens(8)).x
    torch.testing.assert_close(one[0], eight[0], rtol=0, atol=1e-12)
    assert (eight[0] - eight[1]).abs().max() > 1e-3
    # one generator for the whole batch is reproducible too, but sample 0 then depends on the batch
    a = ei.sdeint(model, X[:8], VP, method=method, steps=20, generator=torch.Generator().manual_seed(3)).x
    b = ei.sdeint(model, X[:8], VP, method=method, steps=20, generator=torch.Generator().manual_seed(3)).x
    assert torch.equal(a, b)


def test_sdeint_steps_are_equal_in_log_rho_and_the_cost_does_not_grow_with_the_rho_range():
    ddpm = ei.DiscreteVP.linear()
    model = PROBLEM.eps_model(ddpm)
    x = PROBLEM.sample_marginal(ddpm, ddpm.t_max, 8, torch.Generator().manual_seed(0))
    sol = ei.sdeint(model, x, ddpm, method="euler")
    assert sol.stats["steps"] == 100 and sol.nfe == 101 and sol.grid == "uniform_logrho"  # + torchsde's shape check
    assert ei.sdeint(model, x, ddpm, method="srk", nfe=40).nfe == 41  # 4 steps of 10 evaluations
    assert ei.sdeint(model, x, ddpm, method="heun", steps=7).stats["steps"] == 7
    # the docs' old call, a step of 0.01 in rho (0.01..157), stops before it starts instead of running for minutes
    with pytest.raises(NFEBudgetExceeded, match=r"15740 steps \(157400 model evaluations\), more than max_nfe=10000"
                                                r": dt=0.01 is a step in rho"):
        ei.sdeint(model, x, ddpm, lam=1.0, method="srk", dt=1e-2)
    with pytest.raises(NFEBudgetExceeded, match=r"50 steps \(50 model evaluations\), more than max_nfe=20"):
        ei.sdeint(model, x, ddpm, steps=50, max_nfe=20)
    with pytest.raises(ValueError, match=r"nfe=15 is not possible for torchsde's 'srk'"):
        ei.sdeint(model, x, ddpm, method="srk", nfe=15)
    with pytest.raises(ValueError, match=r"give one of steps \(in log rho\), nfe or dt"):
        ei.sdeint(model, x, ddpm, steps=10, dt=0.5)
    with pytest.raises(ValueError, match=r"steps must be a positive integer; got 0"):
        ei.sdeint(model, x, ddpm, steps=0)
    with pytest.raises(ValueError, match=r"max_nfe must be a positive integer; got True"):
        ei.sdeint(model, x, ddpm, max_nfe=True)
    assert ei.sdeint(model, x, ddpm, nfe=np.int64(5)).stats["steps"] == 5  # numpy integers are integers


def test_sdeint_converges_to_the_fine_solution_on_one_brownian_path():
    sde = ei.VPSDE()
    model = PROBLEM.eps_model(sde)
    x = PROBLEM.sample_marginal(sde, 0.5, 16, torch.Generator().manual_seed(4))
    bm = ei.brownian_motion(x, sde, 0.5, 0.05, entropy=11)
    fine = ei.sdeint(model, x, sde, method="heun", steps=800, t_start=0.5, t_end=0.05, bm=bm).x
    errs = [(ei.sdeint(model, x, sde, method="heun", steps=n, t_start=0.5, t_end=0.05, bm=bm).x - fine)
            .pow(2).mean().sqrt().item() for n in (25, 100)]
    assert errs[1] < errs[0] / 2, errs


def test_progress_bars_are_tqdm(capsys):
    model = PROBLEM.eps_model(VP)
    ei.sdeint(model, X[:4], VP, steps=5, progress=True)
    err = capsys.readouterr().err
    assert "sdeint (euler)" in err and "5/5" in err
    ei.sample(model, X[:4], VP, method="ddim", nfe=5, progress=True)
    err = capsys.readouterr().err
    assert "sampling (ddim)" in err and "5/5" in err


def test_the_stochastic_page_runs_in_seconds():
    import re
    import time
    from pathlib import Path

    page = Path(__file__).resolve().parents[1] / "docs" / "stochastic.md"
    ns: dict = {}
    start = time.perf_counter()
    for code in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S):
        exec(compile(code, "docs/stochastic.md", "exec"), ns)  # the project's own documentation
    assert time.perf_counter() - start < 60  # was 190 s (157,401 evaluations) for the sdeint example alone
    assert ns["sol"].nfe == 41 and torch.isfinite(ns["sol"].x).all()
