"""iPNDM: improved pseudo numerical methods (Zhang & Chen, DEIS, ICLR 2023, section 4; after PNDM, Liu et al.
ICLR 2022).

The DDIM transfer x_{i+1} = psi_i x_i + alpha_{i+1} (rho_{i+1} - rho_i) eps' with eps' the fixed-coefficient
Adams-Bashforth combination of the last evaluations (orders 1..4: 1; (3, -1)/2; (23, -16, 5)/12;
(55, -59, 37, -9)/24). PNDM's Runge-Kutta warm start is replaced by the lower-order combinations, so it
costs one evaluation per step. The coefficients assume equal steps in rho: order 4 on a uniform rho grid.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .base import Integrator, MultistepPlan, as_tuple2

if TYPE_CHECKING:
    from ..sde import LinearSDE

_AB = ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


class IPNDM(Integrator):
    name = "ipndm"
    order = 4
    default_grid = "uniform_logrho"
    convergence_grid = "uniform_rho"

    def plan(self, sde: LinearSDE, grid: torch.Tensor) -> MultistepPlan:
        t = grid.to(torch.float64)
        rho, alpha = sde.rho(t), sde.alpha(t)
        ddim = (alpha[1:] * (rho[1:] - rho[:-1])).tolist()
        rows = [[d * c for c in _AB[min(i, 3)]] for i, d in enumerate(ddim)]
        return MultistepPlan(grid=t, psi=tuple(sde.psi(t[1:], t[:-1]).tolist()), weights=as_tuple2(rows),
                             eval_times=t[:-1].clone())
