"""Stochastic DDIM: the exact step of the lambda-family reverse SDE with the data prediction frozen.

In the y-frame (y = x / alpha), dy = (1 + lambda^2)(y - x0_hat)/rho drho + lambda sqrt(2 rho) dW. With x0_hat
frozen over a step from rho_t down to rho_s, u = y - x0_hat solves a linear SDE exactly (docs/math.md section 5):

    y_s = x0_hat + rho_s e eps_t + rho_s sqrt(1 - e^2) z,   e = (rho_s / rho_t)^(lambda^2),

so in x: x_s = Psi(s, t) x_t + alpha_s (rho_s e - rho_t) eps_t + sigma_s sqrt(1 - e^2) z. lambda = 0 is
deterministic DDIM; lambda = 1 gives the DDPM posterior variance. DDIM's eta (Song et al. 2021, eq. 16) is the
same step with e = sqrt(1 - eta^2 (1 - r^2)), r = rho_s / rho_t, i.e. a lambda for each step.
Weak order 1; one evaluation per step. Its noise comes from the solve's noise source (a generator, one generator
per sample, or a Brownian path: :meth:`~ei_toolkit.integrators.Integrator.noise_source`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .base import Integrator, Method, MultistepPlan


def _level(which: str, v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{which} must be a finite number >= 0; got {v!r}")
    return float(v)


class StochasticDDIM(Integrator):
    """Stochastic DDIM with a fixed ``lam`` (lambda >= 0), or with DDIM's ``eta`` (0 <= eta <= 1)."""

    order = 1  # weak order
    default_grid = "quadratic_t"
    stochastic = True

    def __init__(self, lam: float | None = None, eta: float | None = None, name: str | None = None) -> None:
        if (lam is None) == (eta is None):
            raise ValueError("give exactly one of lam (lambda >= 0) and eta (DDIM's eta in [0, 1])")
        self.lam = None if lam is None else _level("lam", lam)
        self.eta = None if eta is None else _level("eta", eta)
        if self.eta is not None and self.eta > 1:
            raise ValueError(f"eta must lie in [0, 1] (DDIM's eta; 1 is the DDPM posterior); got {eta!r}")
        self.name = name or (f"sddim(lam={self.lam:g})" if lam is not None else f"sddim(eta={self.eta:g})")

    def configure(self, *, lam: float | None = None, eta: float | None = None,
                  options: dict[str, Any] | None = None) -> Method:
        if options:
            raise ValueError(f"options= applies to black-box methods; {self.name!r} takes lam= or eta=")
        if lam is None and eta is None:
            return self
        return StochasticDDIM(lam=lam, eta=eta)

    def plan(self, sde: Any, grid: torch.Tensor) -> MultistepPlan:
        t = grid.to(torch.float64)
        rho, alpha, sigma = sde.rho(t), sde.alpha(t), sde.sigma(t)
        r = rho[1:] / rho[:-1]
        if self.lam is not None:
            e = r.clamp_min(0) ** (self.lam**2) if self.lam > 0 else torch.ones_like(r)
        else:
            e = torch.sqrt((1 - self.eta**2 * (1 - r * r)).clamp_min(0))
        w = alpha[1:] * (rho[1:] * e - rho[:-1])
        noise = sigma[1:] * torch.sqrt((1 - e * e).clamp_min(0))
        return MultistepPlan(grid=t, psi=tuple(sde.psi(t[1:], t[:-1]).tolist()),
                             weights=tuple((v,) for v in w.tolist()), noise=tuple(noise.tolist()),
                             eval_times=t[:-1].clone())
