"""DDIM: the order-0 exponential integrator (eps frozen over the step).

x_{t'} = (alpha_{t'} / alpha_t) x_t + alpha_{t'} (rho_{t'} - rho_t) eps(x_t, t)   (MATH.md section 4),
which for a VP schedule is exactly deterministic DDIM (Song, Meng & Ermon, ICLR 2021). Order 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .base import Integrator, MultistepPlan

if TYPE_CHECKING:
    from ..sde import LinearSDE


class DDIM(Integrator):
    name = "ddim"
    order = 1
    default_grid = "quadratic_t"

    def plan(self, sde: LinearSDE, grid: torch.Tensor) -> MultistepPlan:
        t = grid.to(torch.float64)
        rho, alpha = sde.rho(t), sde.alpha(t)
        w = alpha[1:] * (rho[1:] - rho[:-1])
        return MultistepPlan(grid=t, psi=tuple(sde.psi(t[1:], t[:-1]).tolist()),
                             weights=tuple((v,) for v in w.tolist()), eval_times=t[:-1].clone())
