"""Convergence order of every registered integrator, parametrized from its declared order.

Problem: a 2-D Gaussian mixture (exact eps) under the VP SDE, integrated from t = 1 to t = 0.1 and compared
with a dopri5 solution at tolerance 1e-13. Multistep methods start from exact history (the reference state
and its eps at the first grid points), as the order of a multistep formula is defined; their default
lower-order warm start is tested separately. The fitted slope of log error against log step must reach the
declared order (within 0.3), and stay below order + 1.
"""

import numpy as np
import pytest
import torch

import ei_toolkit as ei
from ei_toolkit.integrators import MultistepPlan
from ei_toolkit.sampling import _ModelEvaluator, plan_for
from ei_toolkit.testing import get_problem

SDE = ei.VPSDE()
PROBLEM = get_problem("gmm2d")
MODEL = PROBLEM.eps_model(SDE)
X = PROBLEM.sample_marginal(SDE, 1.0, 8, torch.Generator().manual_seed(0))
STEPS = (64, 128, 256, 512)


def window(integrator):
    # iPNDM's fixed Adams-Bashforth coefficients assume equal rho steps: uniform rho, on a window where that
    # grid is reasonable.
    return (1.0, 0.85, "uniform_rho") if integrator.convergence_grid == "uniform_rho" else (1.0, 0.1, "uniform_logrho")


def errors(integrator, exact_start=True, steps=STEPS):
    """Max error at t1 for each step count; multistep methods get exact history at their first points."""
    t0, t1, grid_name = window(integrator)
    grids = [ei.time_grid(SDE, grid_name, n, t0, t1) for n in steps]
    plans = [plan_for(integrator, SDE, g) for g in grids]
    starts = [p.history - 1 if (exact_start and isinstance(p, MultistepPlan)) else 0 for p in plans]
    # one reference solve gives every state needed: the history points of each grid, and t1
    need = sorted({g[j].item() for g, s in zip(grids, starts, strict=True) for j in range(1, s + 1)} | {t1},
                  reverse=True)
    exact = dict(zip(need, PROBLEM.reference(SDE, X, t0, need, rtol=1e-13, atol=1e-13), strict=True))
    out = []
    for g, plan, start in zip(grids, plans, starts, strict=True):
        states = [X] + [exact[g[j].item()] for j in range(1, start + 1)]
        history = [MODEL(states[j], g[j].expand(len(X))) for j in range(start)]
        ev = _ModelEvaluator(MODEL, X, SDE, plan.eval_times, "eps")
        x = integrator.integrate(plan, states[start], ev, start=start, history=history)
        out.append((x - exact[t1]).abs().max().item())
    return out


@pytest.mark.parametrize("name", list(ei.INTEGRATORS))
def test_declared_order_is_reached(name):
    integrator = ei.INTEGRATORS[name]
    errs = errors(integrator)
    slope = np.polyfit(-np.log(STEPS), np.log(errs), 1)[0]
    assert integrator.order - 0.3 <= slope <= integrator.order + 1, (slope, errs)


@pytest.mark.parametrize("name", ["tab2", "rhoab3", "logrhoab2"])
def test_lower_order_warm_start_still_converges(name):
    """Without exact history the first steps use fewer points: the error still falls at least
    quadratically (the order-1 first step costs a local O(h^2))."""
    errs = errors(ei.INTEGRATORS[name], exact_start=False, steps=STEPS[:3])
    slope = np.polyfit(-np.log(STEPS[:3]), np.log(errs), 1)[0]
    assert slope >= 1.9, (slope, errs)
