"""Exponential Adams-Bashforth integrators: tAB-DEIS, rhoAB-DEIS and the same in log rho.

DEIS (Zhang & Chen, ICLR 2023, section 4): over a step from t_i to t_{i+1}, fit the polynomial through the
last k evaluations eps_i, eps_{i-1}, ... in a variable v (t for tAB, rho for rhoAB, log rho here as a third
choice) and integrate it exactly against the exponential kernel:

    x_{i+1} = Psi(t_{i+1}, t_i) x_i + sum_j C_ij eps_{i-j},
    C_ij = alpha(t_{i+1}) int_{rho_i}^{rho_{i+1}} l_j(v(rho)) drho,

l_j the Lagrange basis on v_i, v_{i-1}, ... (MATH.md section 4). The integrand is smooth in rho, so a
32-node Gauss-Legendre rule per step is exact to round-off for rho and close to it for t and log rho; all
weights are computed at once, in float64, once per grid. The first steps use fewer points (no extra
evaluations); ``lower_order_final`` also lowers the order on the last steps. Order k with k points.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from .base import Integrator, MultistepPlan, as_tuple2

if TYPE_CHECKING:
    from ..sde import LinearSDE

_GL_X, _GL_W = np.polynomial.legendre.leggauss(32)
VARIABLES = ("t", "rho", "logrho")


def variable_of_rho(sde: LinearSDE, variable: str, rho: torch.Tensor) -> torch.Tensor:
    """The extrapolation variable v as a function of rho (float64)."""
    if variable == "t":
        return sde.t_of_rho(rho)
    if variable == "rho":
        return rho
    if variable == "logrho":
        return torch.log(rho)
    raise ValueError(f"unknown extrapolation variable {variable!r}; valid: {', '.join(VARIABLES)}")


def adams_plan(sde: LinearSDE, grid: torch.Tensor, points: int, variable: str,
               lower_order_final: bool = False) -> MultistepPlan:
    """Coefficients of the k-point exponential Adams-Bashforth method in ``variable`` on ``grid``."""
    t = grid.to(torch.float64)
    n = len(t) - 1
    rho = sde.rho(t)
    alpha = sde.alpha(t)
    psi = sde.psi(t[1:], t[:-1])
    v_grid = variable_of_rho(sde, variable, rho).numpy()
    mid = (0.5 * (rho[1:] + rho[:-1])).numpy()
    half = (0.5 * (rho[1:] - rho[:-1])).numpy()
    rq = mid[:, None] + half[:, None] * _GL_X[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        vq = variable_of_rho(sde, variable, torch.from_numpy(np.clip(rq, 0, None))).numpy()
    a_next = alpha[1:].numpy()
    weights = []
    for i in range(n):
        m = min(points, i + 1)
        if lower_order_final:
            m = min(m, n - i)
        if variable == "logrho" and rho[i + 1] <= 0:  # log rho -> -inf at the data: a DDIM step there
            m = 1
        nodes = v_grid[i - m + 1: i + 1][::-1]  # v_i, v_{i-1}, ...
        row = []
        for j in range(m):
            ell = np.ones_like(vq[i])
            for k in range(m):
                if k != j:
                    ell = ell * (vq[i] - nodes[k]) / (nodes[j] - nodes[k])
            row.append(a_next[i] * half[i] * float(np.dot(_GL_W, ell)))
        weights.append(row)
    return MultistepPlan(grid=t, psi=tuple(psi.tolist()), weights=as_tuple2(weights), eval_times=t[:-1].clone())


class ExponentialAdams(Integrator):
    """k-point exponential Adams-Bashforth in t (tAB), rho (rhoAB) or log rho (logrhoAB); order k."""

    def __init__(self, name: str, points: int, variable: str, default_grid: str,
                 lower_order_final: bool = False) -> None:
        if variable not in VARIABLES:
            raise ValueError(f"unknown extrapolation variable {variable!r}; valid: {', '.join(VARIABLES)}")
        if not 1 <= points <= 6:
            raise ValueError(f"points must be between 1 and 6; got {points}")
        self.name, self.points, self.variable = name, points, variable
        self.order = points
        self.default_grid = default_grid
        self.lower_order_final = lower_order_final

    def plan(self, sde: LinearSDE, grid: torch.Tensor) -> MultistepPlan:
        return adams_plan(sde, grid, self.points, self.variable, self.lower_order_final)
