"""DDIM: the order-0 exponential integrator (eps frozen over the step).

x_{t'} = Psi(t', t) x_t + alpha_{t'} (rho_{t'} - rho_t) eps(x_t, t)   (docs/math.md section 4),
which for a VP schedule is exactly deterministic DDIM (Song, Meng & Ermon, ICLR 2021); for a matrix SDE the weight
is R_{t'} - Psi(t', t) R_t (gDDIM, Zhang, Tao & Chen 2022). Order 1.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Integrator, MultistepPlan, as_tuple2
from .kernels import one_point_weights, steps_of, transitions


class DDIM(Integrator):
    name = "ddim"
    order = 1
    default_grid = "quadratic_t"
    matrix = True

    def plan(self, sde: Any, grid: torch.Tensor) -> MultistepPlan:
        t = grid.to(torch.float64)
        psi, w = transitions(sde, *steps_of(t)), one_point_weights(sde, *steps_of(t))
        return MultistepPlan(grid=t, psi=as_tuple2([psi])[0], weights=as_tuple2([[v] for v in w]),
                             eval_times=t[:-1].clone())
