"""Euler's method on the original probability-flow ODE dx/dt = F x + G^2 / (2 sigma) eps: the naive
baseline that ignores the semilinear structure (DEIS, section 3). Order 1."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .base import Integrator, MultistepPlan

if TYPE_CHECKING:
    from ..sde import LinearSDE


class Euler(Integrator):
    name = "euler"
    order = 1
    default_grid = "quadratic_t"

    def plan(self, sde: LinearSDE, grid: torch.Tensor) -> MultistepPlan:
        t = grid.to(torch.float64)
        ti = t[:-1]
        dt = t[1:] - ti
        g = sde.diffusion(ti)
        psi = 1 + dt * sde.drift(ti)
        w = dt * g * g / (2 * sde.sigma(ti))
        return MultistepPlan(grid=t, psi=tuple(psi.tolist()), weights=tuple((v,) for v in w.tolist()),
                             eval_times=ti.clone())
