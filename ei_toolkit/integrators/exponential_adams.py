"""Exponential Adams-Bashforth integrators: tAB-DEIS, rhoAB-DEIS and the same in log rho.

DEIS (Zhang & Chen, ICLR 2023, section 4): over a step from t_i to t_{i+1}, fit the polynomial through the last k
evaluations eps_i, eps_{i-1}, ... in a variable v (t for tAB, rho for rhoAB, log rho as a third choice) and
integrate it exactly against the exponential kernel:

    x_{i+1} = Psi(t_{i+1}, t_i) x_i + sum_j C_ij eps_{i-j},   C_ij = int_step kernel(tau) l_j(v(tau)) dtau,

l_j the Lagrange basis on v_i, v_{i-1}, ... (docs/math.md section 4). For scalar SDEs the kernel integral is
alpha(t_{i+1}) int drho: a 32-node Gauss-Legendre rule in rho is exact to round-off for rho and close to it for t
and log rho. In t the same method runs on matrix SDEs (gDDIM's multistep form, section 6), with k x k weights.
One-point steps use the exact DDIM weight. The first steps use fewer points (no extra evaluations);
``lower_order_final`` also lowers the order on the last steps. Order k with k points.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import Integrator, MultistepPlan, as_tuple2
from .kernels import (
    VARIABLES,
    check_variable,
    kernel_quadrature,
    lagrange_integrals,
    one_point_weights,
    transitions,
    variable_at,
)


def adams_plan(sde: Any, grid: torch.Tensor, points: int, variable: str,
               lower_order_final: bool = False) -> MultistepPlan:
    """Coefficients of the k-point exponential Adams-Bashforth method in ``variable`` on ``grid``."""
    t = grid.to(torch.float64)
    n = len(t) - 1
    psi = transitions(sde, t)
    exact = one_point_weights(sde, t)
    v_grid = variable_at(sde, variable, t)
    v_q, k_q = kernel_quadrature(sde, t, variable) if points > 1 else (None, None)
    weights = []
    for i in range(n):
        m = min(points, i + 1)
        if lower_order_final:
            m = min(m, n - i)
        if variable == "logrho" and not np.isfinite(v_grid[i + 1]):  # log rho -> -inf at the data: a DDIM step
            m = 1
        if m == 1:
            weights.append([exact[i]])
        else:
            weights.append(lagrange_integrals(v_grid[i - m + 1: i + 1][::-1], v_q[i], k_q[i]))
    return MultistepPlan(grid=t, psi=as_tuple2([psi])[0], weights=as_tuple2(weights), eval_times=t[:-1].clone())


class ExponentialAdams(Integrator):
    """k-point exponential Adams-Bashforth in t (tAB), rho (rhoAB) or log rho (logrhoAB); order k. In t it also
    runs on matrix SDEs."""

    def __init__(self, name: str, points: int, variable: str, default_grid: str,
                 lower_order_final: bool = False) -> None:
        if variable not in VARIABLES:
            raise ValueError(f"unknown extrapolation variable {variable!r}; valid: {', '.join(VARIABLES)}")
        if isinstance(points, bool) or not isinstance(points, int) or not 1 <= points <= 6:
            raise ValueError(f"points must be an integer between 1 and 6; got {points!r}")
        self.name, self.points, self.variable = name, points, variable
        self.order = points
        self.default_grid = default_grid
        self.lower_order_final = bool(lower_order_final)
        self.matrix = variable == "t"

    def plan(self, sde: Any, grid: torch.Tensor) -> MultistepPlan:
        check_variable(sde, self.variable)
        return adams_plan(sde, grid, self.points, self.variable, self.lower_order_final)
