"""Gaussian-mixture data distributions: the exact eps of every noised marginal and a high-accuracy
reference solution of the probability-flow ODE, for scalar and matrix (gDDIM) SDEs.

Data x0 ~ sum_k w_k N(mu_k, s_k^2 I). Under a scalar linear SDE, x_t ~ sum_k w_k N(alpha mu_k, (alpha^2 s_k^2 +
sigma^2) I), so with responsibilities r_k(x) the exact eps = -sigma grad log p_t is
eps(x, t) = sigma sum_k r_k(x) (x - alpha mu_k) / (alpha^2 s_k^2 + sigma^2).
Under a k x k matrix SDE on u = (x, v, ...) with the data in block 0 (the other blocks start from the SDE's
sigma_init), u_t ~ sum_k w_k N(Psi(t, t0) e1 mu_k, Sigma_t + s_k^2 Psi e1 e1^T Psi^T) per data dimension, and
eps = -R_t^T grad log p_t (gDDIM's parameterisation, docs/math.md section 6).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .reference import reference_solution


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

    def sample_marginal(self, sde: Any, t: float, n: int, generator: torch.Generator | None = None
                        ) -> torch.Tensor:
        """Exact samples of x_t (float64): shape (n, dim), or (n, k, dim) for a matrix SDE."""
        x0 = self.sample_data(n, generator)
        if getattr(sde, "is_matrix", False):
            psi = torch.as_tensor(sde.psi(float(t), sde.t0))
            chol = torch.as_tensor(np.linalg.cholesky(sde.sigma_matrix(float(t))))
            z = torch.randn(n, sde.k, self.dim, generator=generator, dtype=torch.float64)
            return psi[None, :, 0, None] * x0[:, None, :] + torch.einsum("ab,nbd->nad", chol, z)
        tt = torch.tensor(t, dtype=torch.float64)
        return sde.alpha(tt) * x0 + sde.sigma(tt) * torch.randn(x0.shape, generator=generator, dtype=torch.float64)

    def eps_model(self, sde: Any):
        """The exact eps as a ``model(x, t)``; computes in float64 (float32 for lower precisions)."""
        if getattr(sde, "is_matrix", False):
            return self._matrix_eps_model(sde)

        def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            tt = t.to(torch.float64)
            eps, _ = self._posterior(x, sde.alpha(tt), sde.sigma(tt), data=False)
            return eps.to(x.dtype).reshape(x.shape)

        return model

    def _posterior(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, data: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(E[eps | x_t], E[x0 | x_t] or None without ``data``) of the noised mixture x_t = alpha x0 + sigma eps, per
        sample (alpha, sigma: float64 of the batch size), flattened; computed in float64 (float32 for lower
        precisions)."""
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        xf = x.reshape(x.shape[0], -1).to(work)
        a = alpha.reshape(-1).to(work)[:, None, None]
        s = sigma.reshape(-1).to(work)[:, None]
        mu, sd, logw = (v.to(device=x.device, dtype=work) for v in (self.means, self.stds, self.weights.log()))
        var = a[:, :, 0] ** 2 * sd[None, :] ** 2 + s**2  # [B, K]
        diff = xf[:, None, :] - a * mu[None]  # [B, K, d]
        logp = logw[None] - 0.5 * (diff**2).sum(-1) / var - 0.5 * self.dim * torch.log(var)
        r = torch.softmax(logp, dim=1)
        eps = s * ((r / var)[:, :, None] * diff).sum(1)
        if not data:
            return eps, None
        x0 = (r[:, :, None] * (mu[None] + (a * sd[None, :, None] ** 2 / var[:, :, None]) * diff)).sum(1)
        return eps, x0

    def flow_model(self, sde: Any):
        """The exact velocity of rectified flow (Liu et al. 2023; Lipman et al. 2023) as a ``model(x, t)``:
        v = E[z - x0 | x_t] = eps - E[x0 | x_t] (= (x - E[x0 | x_t]) / t for t > 0), from the mixture's posterior,
        so defined on all of [0, 1] (v = x - E[x0] at t = 1); ``t`` is sigma. ``sde`` is an
        :class:`~ei_toolkit.RectifiedFlow` (alpha = 1 - t, sigma = t). Computes in float64 (float32 for lower
        precisions)."""

        def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            s = t.to(torch.float64).reshape(-1)  # sigma = t
            eps, x0 = self._posterior(x, 1 - s, s)
            return (eps - x0).to(x.dtype).reshape(x.shape)

        return model

    def flow_reference(self, x: torch.Tensor, t_start: float, t_end: float | Sequence[float],
                       rtol: float = 1e-11) -> torch.Tensor:
        """The rectified-flow ODE dx/dt = v(x, t) of the exact velocity from ``t_start`` to ``t_end`` (t = 1, pure
        noise, and t = 0, the data, included: v is smooth in x on all of [0, 1]) by DOP853 at ``rtol`` = atol;
        float64, a sequence of monotone end times gives the states at each, stacked time-first."""
        from scipy.integrate import solve_ivp

        from ..sde import RectifiedFlow

        many = not isinstance(t_end, (int, float))
        ends = [float(v) for v in (t_end if many else [t_end])]
        v = self.flow_model(RectifiedFlow())
        x64 = x.to(torch.float64)
        shape = x64.shape

        def f(t: float, y: np.ndarray) -> np.ndarray:
            tt = torch.full((shape[0],), t, dtype=torch.float64)
            return v(torch.from_numpy(y).reshape(shape), tt).numpy().ravel()

        sol = solve_ivp(f, (float(t_start), ends[-1]), x64.numpy().ravel(), method="DOP853", rtol=rtol, atol=rtol,
                        t_eval=ends)
        if not sol.success:
            raise ArithmeticError(f"the reference solve failed: {sol.message}")
        out = torch.stack([torch.from_numpy(sol.y[:, i].copy()).reshape(shape) for i in range(len(ends))])
        return out if many else out[0]

    def _matrix_eps_model(self, sde: Any):
        """eps = -R_t^T score for u of shape (batch, k, dim) and t a 1-D tensor (all equal, as in sampling)."""
        logw = self.weights.log()

        def model(u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            tt = float(t.reshape(-1)[0])
            psi = torch.as_tensor(sde.psi(tt, sde.t0), dtype=torch.float64)
            sig = torch.as_tensor(sde.sigma_matrix(tt), dtype=torch.float64)
            r = torch.as_tensor(sde.factor(max(tt, sde.t_min)), dtype=torch.float64)
            e1 = psi[:, 0]
            cov = sig[None] + self.stds[:, None, None] ** 2 * torch.outer(e1, e1)[None]  # [K, k, k]
            prec = torch.linalg.inv(cov)
            u64 = u.to(torch.float64)
            mean = e1[None, :, None] * self.means[:, None, :]  # [K, k, d]
            diff = u64[:, None] - mean[None]  # [B, K, k, d]
            pd = torch.einsum("kab,nkbd->nkad", prec, diff)
            logp = logw[None] - 0.5 * (diff * pd).sum((2, 3)) - 0.5 * u.shape[-1] * torch.logdet(cov)[None]
            resp = torch.softmax(logp, 1)
            score = -(resp[:, :, None, None] * pd).sum(1)
            return (-torch.einsum("ba,nbd->nad", r, score)).to(u.dtype)

        return model

    def log_prob(self, x: torch.Tensor, sde: Any, t: float) -> torch.Tensor:
        """The exact log-density of the noised marginal p_t at ``x`` (nats per sample, float64): a mixture of
        N(alpha mu_k, (alpha^2 s_k^2 + sigma^2) I) for a scalar SDE (x of shape (n, dim) or any shape flattening to
        dim); for a matrix SDE, x of shape (n, k, dim) and per data dimension the k-variate
        N(Psi(t, t0) e1 mu_k, Sigma_t + s_k^2 Psi e1 e1^T Psi^T) (the joint density of data and auxiliary blocks)."""
        x64 = x.to(torch.float64)
        logw = self.weights.log()
        if getattr(sde, "is_matrix", False):
            tt = float(t)
            psi = torch.as_tensor(sde.psi(tt, sde.t0), dtype=torch.float64)
            e1 = psi[:, 0]
            cov = torch.as_tensor(sde.sigma_matrix(tt), dtype=torch.float64)[None] + \
                self.stds[:, None, None] ** 2 * torch.outer(e1, e1)[None]  # [K, k, k]
            diff = x64[:, None] - e1[None, None, :, None] * self.means[None, :, None, :]  # [n, K, k, d]
            quad = (diff * torch.einsum("kab,nkbd->nkad", torch.linalg.inv(cov), diff)).sum((2, 3))
            k, d = sde.k, x.shape[-1]
            comp = -0.5 * quad - 0.5 * d * (torch.logdet(cov)[None] + k * math.log(2 * math.pi))
            return torch.logsumexp(logw[None] + comp, dim=1)
        tt = torch.tensor(float(t), dtype=torch.float64)
        a, s = float(sde.alpha(tt)), float(sde.sigma(tt))
        xf = x64.reshape(x.shape[0], -1)
        var = a * a * self.stds**2 + s * s  # [K]
        quad = ((xf[:, None, :] - a * self.means[None]) ** 2).sum(-1) / var[None]
        comp = -0.5 * quad - 0.5 * self.dim * torch.log(2 * math.pi * var)[None]
        return torch.logsumexp(logw[None] + comp, dim=1)

    def reference(self, sde: Any, x: torch.Tensor, t_start: float, t_end: float | Sequence[float],
                  rtol: float = 1e-10, atol: float | None = None) -> torch.Tensor:
        """The probability-flow ODE of the exact eps from t_start to t_end, solved at tight tolerance
        (:func:`~ei_toolkit.testing.reference_solution`), float64; a sequence of decreasing end times gives the
        states at each, stacked time-first, from one solve."""
        return reference_solution(self.eps_model(sde), sde, x, t_start, t_end, rtol=rtol, atol=atol)


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
