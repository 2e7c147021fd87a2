"""Stochastic DDIM: the exact step of the lambda-family reverse SDE with the data prediction frozen.

In the y-frame (y = x / alpha), dy = (1 + lambda^2)(y - x0_hat)/rho drho + lambda sqrt(2 rho) dW. With x0_hat
frozen over a step from rho_t down to rho_s, u = y - x0_hat solves a linear SDE exactly (MATH.md section 5):

    y_s = x0_hat + rho_s e eps_t + rho_s sqrt(1 - e^2) z,   e = (rho_s / rho_t)^(lambda^2),

so in x: x_s = Psi(s, t) x_t + alpha_s (rho_s e - rho_t) eps_t + sigma_s sqrt(1 - e^2) z. lambda = 0 is
deterministic DDIM; lambda = 1 gives the DDPM posterior variance. DDIM's eta (Song et al. 2021, eq. 16) is
the same step with e = sqrt(1 - eta^2 (1 - r^2)), r = rho_s / rho_t, i.e. a lambda for each step.
Weak order 1; one evaluation per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .base import EpsFn, Integrator, StepCallback, combine

if TYPE_CHECKING:
    from ..sde import LinearSDE

# brownian(i) -> a standard normal tensor for step i (e.g. from a Brownian path's increment)
NoiseFn = Callable[[int], torch.Tensor]


@dataclass(frozen=True)
class StochasticPlan:
    """x_{i+1} = psi[i] x_i + weight[i] eps_i + noise[i] z_i."""

    grid: torch.Tensor
    psi: tuple[float, ...]
    weights: tuple[tuple[float, ...], ...]
    noise: tuple[float, ...]
    rho: torch.Tensor  # rho at the grid times (float64), for Brownian increments
    eval_times: torch.Tensor


class StochasticDDIM(Integrator):
    """Stochastic DDIM with a fixed ``lam`` (lambda >= 0), or with DDIM's ``eta`` (0 <= eta)."""

    order = 1  # weak order
    default_grid = "quadratic_t"
    stochastic = True

    def __init__(self, lam: float | None = None, eta: float | None = None) -> None:
        if (lam is None) == (eta is None):
            raise ValueError("give exactly one of lam (lambda >= 0) and eta (DDIM's eta >= 0)")
        v = lam if lam is not None else eta
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            which = "lam" if lam is not None else "eta"
            raise ValueError(f"{which} must be a finite number >= 0; got {v!r}")
        self.lam, self.eta = lam, eta
        self.name = f"sddim(lam={lam:g})" if lam is not None else f"sddim(eta={eta:g})"

    def plan(self, sde: LinearSDE, grid: torch.Tensor) -> StochasticPlan:
        t = grid.to(torch.float64)
        rho, alpha, sigma = sde.rho(t), sde.alpha(t), sde.sigma(t)
        r = rho[1:] / rho[:-1]
        if self.lam is not None:
            e = torch.where(r > 0, r.clamp_min(1e-300) ** (self.lam**2), torch.zeros_like(r)) if self.lam > 0 else (
                torch.ones_like(r))
        else:
            e = torch.sqrt((1 - self.eta**2 * (1 - r * r)).clamp_min(0))
        w = alpha[1:] * (rho[1:] * e - rho[:-1])
        noise = sigma[1:] * torch.sqrt((1 - e * e).clamp_min(0))
        return StochasticPlan(grid=t, psi=tuple(sde.psi(t[1:], t[:-1]).tolist()),
                              weights=tuple((v,) for v in w.tolist()), noise=tuple(noise.tolist()), rho=rho,
                              eval_times=t[:-1].clone())

    def integrate(self, plan: StochasticPlan, x: torch.Tensor, eps_fn: EpsFn,  # type: ignore[override]
                  callback: StepCallback | None = None, start: int = 0, history: Sequence[torch.Tensor] = (),
                  generator: torch.Generator | None = None, noise: NoiseFn | None = None) -> torch.Tensor:
        for i in range(start, len(plan.psi)):
            e = eps_fn(x, i)
            terms = [(plan.weights[i][0], e)]
            if plan.noise[i] != 0.0:
                z = noise(i) if noise is not None else torch.randn(x.shape, generator=generator, dtype=x.dtype,
                                                                   device=x.device)
                terms.append((plan.noise[i], z))
            x = combine(x, plan.psi[i], terms)
            if callback is not None:
                callback(i + 1, x)
        return x


def brownian_noise(bm: Callable[[float, float], torch.Tensor], plan: StochasticPlan,
                   shape: Sequence[int]) -> NoiseFn:
    """Standard normal z_i from a Brownian path over s = -rho: z_i = (W(s_{i+1}) - W(s_i)) / sqrt(s_{i+1} - s_i),
    so that sddim and a torchsde solve can share one path (for strong-convergence comparisons)."""
    s = (-plan.rho).tolist()

    def z(i: int) -> torch.Tensor:
        return (bm(s[i], s[i + 1]) / math.sqrt(s[i + 1] - s[i])).reshape(shape)

    return z
