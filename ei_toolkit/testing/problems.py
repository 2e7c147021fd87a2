"""Gaussian-mixture data distributions: the exact eps of every noised marginal and a high-accuracy
reference solution of the probability-flow ODE.

Data x0 ~ sum_k w_k N(mu_k, s_k^2 I). Under a linear SDE, x_t ~ sum_k w_k N(alpha mu_k, (alpha^2 s_k^2 +
sigma^2) I), so with responsibilities r_k(x) the exact eps = -sigma grad log p_t is
eps(x, t) = sigma sum_k r_k(x) (x - alpha mu_k) / (alpha^2 s_k^2 + sigma^2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torchdiffeq

from ..sde import LinearSDE
from ..sde.ode import batch_time


@dataclass(frozen=True)
class GaussianMixture:
    """sum_k w_k N(mu_k, s_k^2 I) in ``dim`` dimensions (states of any shape flatten to ``dim``)."""

    means: torch.Tensor  # [K, dim]
    stds: torch.Tensor  # [K]
    weights: torch.Tensor  # [K], sums to 1
    name: str = "gmm"

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k, None] * z

    def sample_marginal(self, sde: LinearSDE, t: float, n: int, generator: torch.Generator | None = None
                        ) -> torch.Tensor:
        """Exact samples of x_t (float64)."""
        tt = torch.tensor(t, dtype=torch.float64)
        x0 = self.sample_data(n, generator)
        return sde.alpha(tt) * x0 + sde.sigma(tt) * torch.randn(x0.shape, generator=generator, dtype=torch.float64)

    def eps_model(self, sde: LinearSDE):
        """The exact eps as a ``model(x, t)``; computes in float64 (float32 for lower precisions)."""
        means64, stds64, logw64 = self.means, self.stds, self.weights.log()

        def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            work = torch.float64 if x.dtype == torch.float64 else torch.float32
            xf = x.reshape(x.shape[0], -1).to(work)
            tt = t.to(torch.float64)
            a = sde.alpha(tt).to(work)[:, None, None]
            s = sde.sigma(tt).to(work)[:, None]
            mu, sd, logw = (v.to(device=x.device, dtype=work) for v in (means64, stds64, logw64))
            var = a[:, :, 0] ** 2 * sd[None, :] ** 2 + s**2  # [B, K]
            diff = xf[:, None, :] - a * mu[None]  # [B, K, d]
            logp = logw[None] - 0.5 * (diff**2).sum(-1) / var - 0.5 * self.dim * torch.log(var)
            r = torch.softmax(logp, dim=1)
            eps = s * ((r / var)[:, :, None] * diff).sum(1)
            return eps.to(x.dtype).reshape(x.shape)

        return model

    def reference(self, sde: LinearSDE, x: torch.Tensor, t_start: float, t_end: float | Sequence[float],
                  rtol: float = 1e-10, atol: float = 1e-10) -> torch.Tensor:
        """The probability-flow ODE solved from t_start to t_end by dopri5 at tight tolerance, in the log-rho
        frame dy/dlog rho = rho eps (well conditioned at both ends), float64. A sequence of end times
        (decreasing) gives the states at each of them, stacked time-first, from one solve."""
        model = self.eps_model(sde)
        many = not isinstance(t_end, (int, float))
        ends = [float(v) for v in (t_end if many else [t_end])]
        ts = torch.tensor([t_start, *ends], dtype=torch.float64)
        if not bool((ts[1:] < ts[:-1]).all()):
            raise ValueError("reference(): end times must be decreasing and below t_start")
        rho = sde.rho(ts)
        x = x.to(torch.float64)
        if rho[-1] <= 0:
            raise ValueError("reference(): t_end must have rho > 0")

        def f(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            r = torch.exp(s)
            t = sde.t_of_rho(r.clamp(rho[-1], rho[0]))
            return r * model(sde.alpha(t) * y, batch_time(t, y))

        s_span = rho.log()
        y = torchdiffeq.odeint(f, x / sde.alpha(ts[0]), s_span, rtol=rtol, atol=atol, method="dopri5",
                               options={"step_t": s_span})[1:]
        out = sde.alpha(ts[1:]).view(-1, *([1] * x.ndim)) * y
        return out if many else out[0]


def _circle(k: int, radius: float) -> torch.Tensor:
    ang = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
    return radius * torch.stack([ang.cos(), ang.sin()], 1)


def _random_means(k: int, dim: int, scale: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(k, dim, generator=g, dtype=torch.float64)


def _mixture(name: str, means: torch.Tensor, std: float, seed: int = 0) -> GaussianMixture:
    k = means.shape[0]
    g = torch.Generator().manual_seed(seed + 1)
    w = torch.rand(k, generator=g, dtype=torch.float64) + 0.5
    return GaussianMixture(means=means, stds=torch.full((k,), std, dtype=torch.float64), weights=w / w.sum(),
                           name=name)


PROBLEMS = {
    "gmm2d": lambda: _mixture("gmm2d", _circle(8, 0.7), 0.1),
    "gmm2d-sharp": lambda: _mixture("gmm2d-sharp", _circle(8, 0.7), 0.02),
    "gmm16": lambda: _mixture("gmm16", _random_means(5, 16, 0.4, 16), 0.15, 16),
    "gmm64-sharp": lambda: _mixture("gmm64-sharp", _random_means(10, 64, 0.3, 64), 0.03, 64),
}


def get_problem(name: str) -> GaussianMixture:
    """A named Gaussian-mixture problem: {names}."""
    if name not in PROBLEMS:
        raise ValueError(f"unknown problem {name!r}; valid problems: {', '.join(PROBLEMS)}")
    return PROBLEMS[name]()


get_problem.__doc__ = (get_problem.__doc__ or "").format(names=", ".join(PROBLEMS))


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, n_proj: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two equally sized samples (rows), over ``n_proj`` random unit
    directions drawn from ``seed``: the two-sample statistic of the stochastic-sampling tests and benchmark."""
    if a.shape != b.shape:
        raise ValueError(f"samples must have the same shape; got {tuple(a.shape)} and {tuple(b.shape)}")
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(a.shape[1], n_proj, generator=g, dtype=torch.float64)
    d = d / d.norm(dim=0, keepdim=True)
    pa, pb = (a.double() @ d).sort(0).values, (b.double() @ d).sort(0).values
    return float((pa - pb).pow(2).mean().sqrt())
