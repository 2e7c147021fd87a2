"""Measure a method's order of convergence, as the project's own tests do (docs/math.md section 8).

>>> from ei_toolkit.testing import convergence_order
>>> convergence_order("tab2").check()          # raises AssertionError: declared vs fitted order
>>> convergence_order(my_registered_method)    # any method object or registered name

The problem is a Gaussian mixture with exact eps (2-D, ``gmm2d``) under the VP SDE (or CLD for matrix SDEs),
integrated over a window on grids of N = 64..512 steps and compared with a DOP853 solution at tolerance 1e-13; the
order is the fitted slope of log error against log N. Multistep plans start from exact history (the reference states
and their evaluations at the first grid points), as the order of a multistep formula is defined.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..grids import time_grid
from ..integrators import Integrator, Method, get_integrator, plan_for
from ..model import ModelEvaluator
from ..sampling import solve
from ..sde import VPSDE
from .problems import get_problem

_REFERENCES: OrderedDict[tuple, dict[float, torch.Tensor]] = OrderedDict()


def _exact_states(sde: Any, mix: Any, problem: str, x: torch.Tensor, grids: Sequence[torch.Tensor],
                  config: tuple) -> dict[float, torch.Tensor]:
    """The reference state at every time of every grid, from one solve (dense output), cached by value for the
    methods checked on the same problem (at most 8 problems)."""
    key = (sde.key, problem, config)
    hit = _REFERENCES.get(key)
    if hit is None:
        forward = float(grids[0][-1]) > float(grids[0][0])
        times = sorted({v for g in grids for v in g[1:].tolist()}, reverse=not forward)
        tol = 1e-12 if getattr(sde, "is_matrix", False) else 1e-13  # matrix: scipy calls per evaluation; 1e-12
        hit = dict(zip(times, mix.reference(sde, x, float(grids[0][0]), times, rtol=tol, atol=tol), strict=True))
        _REFERENCES[key] = hit
        if len(_REFERENCES) > 8:
            _REFERENCES.popitem(last=False)
    return hit


@dataclass(frozen=True)
class ConvergenceResult:
    """Errors of ``method`` for each step count and the fitted order (slope of log error against log steps)."""

    method: str
    declared: int | None
    fitted: float
    steps: tuple[int, ...]
    errors: tuple[float, ...]

    def check(self, tolerance: float = 0.3, above: float = 1.0) -> ConvergenceResult:
        """Raise AssertionError unless declared - tolerance <= fitted <= declared + above."""
        if self.declared is None:
            raise ValueError(f"{self.method!r} declares no order (set its `order`)")
        if not self.declared - tolerance <= self.fitted <= self.declared + above:
            raise AssertionError(
                f"{self.method}: declared order {self.declared}, fitted order {self.fitted:.2f} (allowed "
                f"[{self.declared - tolerance:g}, {self.declared + above:g}]); errors "
                + ", ".join(f"N={n}: {e:.2e}" for n, e in zip(self.steps, self.errors, strict=True)))
        return self


def convergence_order(method: str | Method, *, sde: Any = None, problem: str = "gmm2d",
                      steps: Sequence[int] = (64, 128, 256, 512), t_start: float | None = None,
                      t_end: float | None = None, grid: str | None = None, exact_start: bool = True,
                      batch: int = 8, seed: int = 0, forward: bool = False) -> ConvergenceResult:
    """Fit the order of convergence of ``method`` (see the module docstring). Defaults: the VP SDE on t in
    [1, 0.1] with a uniform log-rho grid (the method's ``convergence_grid`` and window [1, 0.85] if it declares one,
    e.g. iPNDM's uniform rho); matrix methods given a matrix ``sde`` use a uniform t grid. Deterministic methods
    only: the grid must have a fixed number of steps. ``t_start < t_end`` measures the forward (inversion)
    direction, from an exact sample of the marginal at ``t_start``; ``forward=True`` is the default window
    mirrored."""
    m = get_integrator(method)
    if m.stochastic:
        raise ValueError(f"convergence_order measures deterministic methods; {m.name!r} is stochastic")
    sde = VPSDE() if sde is None else sde
    matrix = bool(getattr(sde, "is_matrix", False))
    mix = get_problem(problem)
    if matrix:  # wider components: the CLD marginals stay smooth on the window
        mix = type(mix)(means=mix.means, stds=mix.stds * 3, weights=mix.weights, name=mix.name)
    special = getattr(m, "convergence_grid", None)
    t0 = sde.t_max if t_start is None else float(t_start)
    t1 = (0.85 if special == "uniform_rho" else 0.1) if t_end is None else float(t_end)
    if forward:
        if t_start is not None or t_end is not None:
            raise ValueError("forward=True mirrors the default window; for another one give t_start < t_end")
        t0, t1 = t1, t0
    grid = grid or ("uniform_t" if matrix else special or "uniform_logrho")
    model = mix.eps_model(sde)
    x = mix.sample_marginal(sde, t0, batch, torch.Generator().manual_seed(seed))
    evals = getattr(m, "evals_per_step", 1) or 1
    grids = [time_grid(sde, grid, int(n), t0, t1) for n in steps]
    integrator = isinstance(m, Integrator)
    plans = [plan_for(m, sde, g) for g in grids] if integrator else [None] * len(grids)
    starts = [p.history - 1 if (exact_start and p is not None and p.history > 1) else 0 for p in plans]
    exact = _exact_states(sde, mix, problem, x, grids, (grid, tuple(int(n) for n in steps), t0, t1, batch, seed))
    errors = []
    for g, plan, s in zip(grids, plans, starts, strict=True):
        if plan is None:
            out = solve(model, x, sde, method=m, grid=g, nfe=(len(g) - 1) * evals).x
        else:
            evaluator = ModelEvaluator(model, sde)
            eps_fn = evaluator.bind(plan.eval_times, x, plan.target)
            states = [x] + [exact[g[j].item()] for j in range(1, s + 1)]
            history = [eps_fn(states[j], j) for j in range(s)]
            out = plan.run(states[s], eps_fn, start=s, history=history)
        errors.append((out - exact[t1]).abs().max().item())
    if not all(math.isfinite(e) and e > 0 for e in errors):
        raise ArithmeticError(f"{m.name}: errors are not finite and positive: {errors}")
    slope = float(np.polyfit(-np.log(np.asarray(steps, dtype=float)), np.log(errors), 1)[0])
    return ConvergenceResult(m.name, m.order, slope, tuple(int(n) for n in steps), tuple(errors))
