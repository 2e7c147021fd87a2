"""Identities between integrators, and DDIM against the DDIM update formula."""

import itertools

import numpy as np
import pytest
import torch

import ei_toolkit as ei


def smooth_model(x, t):
    """An arbitrary smooth eps-model (not a real score): the identities hold for any model."""
    return torch.tanh(x) * (1 + 0.001 * t.view(-1, *([1] * (x.ndim - 1)))) + 0.1 * x.flip(-1)


X = torch.randn(6, 3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_ddim_equals_the_deterministic_ddim_update_on_a_ddpm_schedule():
    """Song et al. 2021, eq. (12) with sigma = 0, on integer timesteps of the DDPM linear schedule."""
    sde = ei.DiscreteVP.linear()
    ac = sde.alphas_cumprod.double()
    steps = [999, 899, 799, 699, 599, 499, 399, 299, 199, 99, 0]
    x = X.clone()
    for t, s in itertools.pairwise(steps):
        eps = smooth_model(x, torch.full((len(x),), float(t), dtype=torch.float64))
        x0 = (x - (1 - ac[t]).sqrt() * eps) / ac[t].sqrt()
        x = ac[s].sqrt() * x0 + (1 - ac[s]).sqrt() * eps
    ours = ei.sample(smooth_model, X, sde, method="ddim", grid=torch.tensor(steps, dtype=torch.float64))
    torch.testing.assert_close(ours, x, rtol=1e-12, atol=1e-12)
    # ... and to the data time t0 = -1 (alpha = 1: diffusers' set_alpha_to_one)
    eps = smooth_model(x, torch.zeros(len(x), dtype=torch.float64))
    x0 = (x - (1 - ac[0]).sqrt() * eps) / ac[0].sqrt()
    full = ei.sample(smooth_model, X, sde, method="ddim", grid=torch.tensor([*steps, -1.0], dtype=torch.float64))
    torch.testing.assert_close(full, x0, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sde", [ei.VPSDE(), ei.DiscreteVP.linear(), ei.EDM(), ei.CosineVPSDE()], ids=repr)
@pytest.mark.parametrize("other", ["tab0", "rhoab0", "rhork-euler"])
def test_order_zero_exponential_integrators_are_ddim(sde, other):
    for grid in ("uniform_t", "karras"):
        a = ei.sample(smooth_model, X, sde, method="ddim", nfe=12, grid=grid)
        b = ei.sample(smooth_model, X, sde, method=other, nfe=12, grid=grid)
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


def test_one_point_methods_share_weights_and_higher_orders_differ():
    sde = ei.VPSDE()
    grid = ei.time_grid(sde, "quadratic_t", 10, sde.t_max, sde.t_min)
    plans = {m: ei.integrators.get_integrator(m).plan(sde, grid) for m in ("ddim", "tab0", "rhoab0")}
    np.testing.assert_allclose(plans["tab0"].weights, plans["ddim"].weights, rtol=1e-13)
    np.testing.assert_allclose(plans["rhoab0"].weights, plans["ddim"].weights, rtol=1e-13)
    tab2 = ei.integrators.get_integrator("tab2").plan(sde, grid)
    assert len(tab2.weights[5]) == 3 and len(tab2.weights[0]) == 1  # warm start with lower order


def test_adams_weights_sum_to_the_ddim_weight():
    """The Lagrange basis sums to 1, so each step's weights sum to alpha_{i+1} (rho_{i+1} - rho_i)."""
    sde = ei.CosineVPSDE()
    grid = ei.time_grid(sde, "karras", 25, sde.t_max, sde.t_min)
    ddim = ei.integrators.get_integrator("ddim").plan(sde, grid)
    for m in ("tab3", "rhoab3", "logrhoab3"):
        plan = ei.integrators.get_integrator(m).plan(sde, grid)
        np.testing.assert_allclose([sum(w) for w in plan.weights], [w[0] for w in ddim.weights], rtol=1e-10)


def test_rho_adams_is_exact_for_eps_polynomial_in_rho():
    """If eps is a cubic in rho, rhoab3 integrates dy/drho = eps exactly (once 4 points are in)."""
    sde = ei.VESDE()  # alpha = 1, so x = y

    def model(x, t):
        r = sde.rho(t).view(-1, 1)
        return torch.ones_like(x) * (1 + r - 0.3 * r**2 + 0.01 * r**3)

    x = torch.zeros(2, 1, dtype=torch.float64)
    r0, r1 = sde.rho_max, sde.rho_min

    def exact(r):
        return r + r**2 / 2 - 0.1 * r**3 + 0.0025 * r**4

    out = ei.sample(model, x, sde, method="rhoab3", nfe=20, grid="uniform_rho")
    # the first three steps use 1, 2, 3 points: not exact; compare a run started from exact history instead
    grid = ei.time_grid(sde, "uniform_rho", 20, sde.t_max, sde.t_min)
    plan = ei.integrators.get_integrator("rhoab3").plan(sde, grid)
    rho = sde.rho(grid)
    hist = [model(x, grid[j].expand(2)) for j in range(3)]
    start_x = x + exact(rho[3]) - exact(rho[0])
    eps_fn = ei.ModelEvaluator(model, sde).bind(plan.eval_times, x)
    got = plan.run(start_x, eps_fn, start=3, history=hist)
    torch.testing.assert_close(got, x + exact(r1) - exact(r0), rtol=1e-11, atol=1e-9)
    assert not torch.allclose(out, got)


def test_butcher_tableaux_are_validated():
    from ei_toolkit.integrators import ButcherTableau

    with pytest.raises(ValueError, match="row 1 of a must sum to c"):
        ButcherTableau(a=((), (0.4,)), b=(0.5, 0.5), c=(0.0, 1.0), order=2)
    with pytest.raises(ValueError, match="order-2 condition fails"):
        ButcherTableau(a=((), (1.0,)), b=(0.7, 0.3), c=(0.0, 1.0), order=2)
    with pytest.raises(ValueError, match="order-4 condition fails"):
        ButcherTableau(a=((), (0.5,), (-1.0, 2.0)), b=(1 / 6, 2 / 3, 1 / 6), c=(0.0, 0.5, 1.0), order=4)


def test_the_documented_custom_integrators():
    """examples/custom_integrator.py: the hand-written AB2 in rho is rhoab1; Ralston's tableau is valid and
    second order (convergence is checked like every registered integrator)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "examples" / "custom_integrator.py"
    spec = importlib.util.spec_from_file_location("custom_integrator", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sde = ei.CosineVPSDE()
    a = ei.sample(smooth_model, X, sde, method=mod.BY_HAND, nfe=15, grid="karras")
    b = ei.sample(smooth_model, X, sde, method="rhoab1", nfe=15, grid="karras")
    torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)
    from ei_toolkit.testing import convergence_order

    convergence_order(mod.RALSTON).check()


def test_lower_order_final_lowers_the_last_steps():
    from ei_toolkit.integrators import ExponentialAdams

    sde = ei.VPSDE()
    grid = ei.time_grid(sde, "uniform_logrho", 10, sde.t_max, sde.t_min)
    lof = ExponentialAdams("tab3-lower-final", 4, "t", "uniform_logrho", lower_order_final=True)
    points = [len(w) for w in lof.plan(sde, grid).weights]
    assert points == [1, 2, 3, 4, 4, 4, 4, 3, 2, 1]
    assert [len(w) for w in ei.INTEGRATORS["tab3"].plan(sde, grid).weights][-3:] == [4, 4, 4]
    out = ei.sample(smooth_model, X, sde, method=lof, nfe=10, grid="uniform_logrho")  # an instance is a method
    assert torch.isfinite(out).all()
