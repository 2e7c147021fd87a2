"""Log-likelihood through the probability-flow ODE (Song et al., "Score-Based Generative Modeling through Stochastic
Differential Equations", ICLR 2021, appendix D.2; Chen et al., "Neural Ordinary Differential Equations", 2018;
Grathwohl et al., "FFJORD", ICLR 2019), with the semilinear structure doing the work (docs/math.md section 4.13).

Along the probability-flow ODE dx/dt = F x + (G^2 / (2 sigma)) eps(x, t), the instantaneous change of variables
gives log p_0(x_0) = log p_T(x_T) + int_0^T div_x(dx/dt) dt. The linear part's divergence is F(t) d (trace F
times the data size for matrix SDEs) and integrates in closed form, d log(alpha_T / alpha_0) (m log det
Psi(T, 0)); in y = x / alpha and rho the model term's divergence is div_y eps = alpha div_x eps and

    log p_0(x_0) = log p_T(x_T) + d log(alpha_T / alpha_0) + int_{rho_0}^{rho_T} alpha div_x eps(x(rho), t(rho)) drho.

In log rho the model term is int h dlog rho with h = rho alpha div_x eps = sigma div_x eps: a bounded, smooth
function of log rho (about d at high noise, where eps is nearly linear with div_x eps ~ d / sigma, and about d
sigma^2 / s^2 -> 0 below the data's own scale s). The forward plan (the exponential integrator of the inversion
issue) moves the state from data to noise and evaluates h on its way; with ``quadrature="lagrange"`` (the default)
the integral is a quadrature of the values at the grid points, where the state has the method's full order (a
Runge-Kutta or singlestep stage inside a step sees a state of lower order, which would cap the integral at order 2):
on each interval between them the Lagrange polynomial in log rho through the :data:`QUADRATURE_POINTS` nearest
points (centred; extrapolated past the last point, where h is flattest), integrated exactly. As every value is known
before the quadrature, it is centred rather than causal, and at a given NFE far more accurate than carrying the
integral as a channel of the state (``quadrature="plan"``: X_D = alpha D obeys the same semilinear ODE as x with
``eps`` = alpha div_x eps and is integrated by the plan's own weights; x0-form plans see the channel's x0 = (X_D -
sigma g) / alpha), whose extrapolating multistep weights amplify the rise of h between the data's scale and the
noise (benchmarks/results/likelihood.md). The divergence is exact (one vector-Jacobian product per dimension,
batched) or the Skilling-Hutchinson estimate E[v^T J v] with probes v drawn once per sample (Skilling 1989;
Hutchinson 1990).

Fixed steps by default: every rank of a distributed run then makes the same number of model evaluations, so
collective operations inside the model (DDP, sharded models) stay in step; an adaptive solver's step count depends
on the data and ranks drift apart (k-diffusion's adaptive ``log_likelihood`` deadlocks under DDP, its issue #79).
``method="torchdiffeq:dopri5"`` (any torchdiffeq method) integrates the augmented system [y, D] in the log-rho frame
(the y frame for matrix SDEs) instead, adaptive on request.

Rectified flow starts at the data, t = 0 (rho = 0), where its model is trained: the state takes the step out of
rho = 0 of :mod:`ei_toolkit.data_start`, and the model term on [0, rho_1], below the log-rho quadrature's first node,
integrates g = alpha div_x eps in rho through its values at rho = 0 and the first grid points (the rho frame for
torchdiffeq methods).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torchdiffeq

from .adapters import FlowODE, NFEBudgetExceeded
from .data_start import check_data_start_prediction, data_step, rest_of_grid, starts_at_data
from .errors import NumericalError, abs_max, positive_int
from .grids import time_grid
from .integrators import Integrator, Method, SolveRequest, get_integrator
from .integrators.adaptive import DEFAULT_MAX_NFE
from .integrators.base import MultistepPlan, plan_for
from .integrators.torchdiffeq import TorchDiffEq
from .model import Model, ModelEvaluator, check_prediction, to_eps, to_x0
from .noise import check_generator
from .sampling import _working_dtype, default_t_end, grid_ends
from .sde import LinearSDE, MatrixLinearSDE
from .sde.matrix import apply_block
from .zero_snr import alpha_sigma_at, budget_left

QUADRATURES = ("lagrange", "plan")
"""``quadrature=``: a centred Lagrange quadrature in log rho of the divergence at the plan's evaluation points
(default), or the divergence carried as a channel of the state by the plan's own weights (module docstring)."""
QUADRATURE_POINTS = 4
"""Points of the piecewise Lagrange interpolant of ``quadrature="lagrange"`` (cubic: error O(h^4) in the log-rho
step h where the integrand is smooth)."""
DIVERGENCES = ("exact", "rademacher", "gaussian", "hutchinson")
"""``divergence=``: the exact trace, or Skilling-Hutchinson with Rademacher (``"hutchinson"`` is an alias) or
Gaussian probes."""
MAX_EXACT_DIM = 16384
"""The exact divergence costs one vector-Jacobian product per dimension: refused above this many dimensions per
sample (use a Hutchinson estimate)."""
CHUNK_ELEMENTS = 2**24
"""Elements of the cotangents of one batched vector-Jacobian call (the exact divergence is chunked to this)."""
DEFAULT_NFE = 64
"""Model evaluations of the default fixed-step likelihood solve (benchmarks/results/likelihood.md)."""
DEFAULTS_BY_NFE: tuple[tuple[int | None, str], ...] = (
    (71, "logrhoab3"), (110, "x0-logrhoab2-pc"), (None, "x0-logrhoab3"))
"""The default fixed-step method for scalar SDEs by budget, (largest nfe, method), on the uniform log-rho grid with
the Lagrange quadrature: per NFE the lowest geometric-mean error of delta_logp over the six mixtures of
benchmarks/results/likelihood.md, keeping the previous pick while it is within 1.25x of the best, switching at the
geometric midpoints of the measured budgets (64 / 80 and 96 / 128)."""
DEFAULT_METHOD = "logrhoab3"
"""The default at :data:`DEFAULT_NFE` evaluations."""
DEFAULT_GRID = "uniform_logrho"
DEFAULT_MATRIX_METHOD = "torchdiffeq:rk4"
"""Matrix SDEs (CLD): a fixed-step torchdiffeq method in the y frame (the forward plans do not carry the divergence
channel for matrix coefficients yet)."""
LOG2 = math.log(2.0)


@dataclass(frozen=True)
class LogLikelihood:
    """What :func:`log_likelihood` returns; every tensor has one float64 value per sample unless stated.

    ``logp = prior_logp + delta_logp`` (nats per sample): the log-density of the data at ``t_start`` (the truncation
    at t_min: the density of x_{t_min}, which for small t_min approximates the data density; rectified flow starts at
    the data itself, t = 0). ``delta_logp`` is
    the integral of the flow's divergence (linear part in closed form plus the model term), ``x_T`` the encoding at
    ``t_end`` (x's dtype), ``nfe`` the model evaluations of the solve, ``dim`` the data dimensions per sample and
    ``stats`` the rest (method, grid, divergence, probes, vector-Jacobian products, linear term, seconds; for a
    matrix SDE ``aux_logp``, the log-density of the auxiliary blocks under their initial law)."""

    logp: torch.Tensor
    prior_logp: torch.Tensor
    delta_logp: torch.Tensor
    x_T: torch.Tensor
    nfe: int
    dim: int
    stats: dict[str, Any] = field(default_factory=dict)

    def bits_per_dim(self, *, levels: int | None = 256, data_range: float = 2.0) -> torch.Tensor:
        """Bits per dimension, bpd = -logp / (dim ln 2) + log2(levels / data_range).

        Convention (Ho et al. 2020; Song et al. 2021, score_sde's ``bpd`` with its offset 7 for centred data): the
        data were ``levels``-valued integers k (8-bit images: 256) mapped to an interval of width ``data_range``
        (default 2: [-1, 1], x = 2 (k + u) / 256 - 1 with u ~ U[0, 1) the uniform dequantisation the caller adds;
        data_range=1 for [0, 1], offset 8). A bin of the dequantised density has width data_range / levels, so the
        discrete model's log2-probability is the density's minus dim log2(levels / data_range) bits: the offset.
        ``levels=None`` gives the continuous density's bits per dimension (no offset). For a matrix SDE the data's
        part is used: logp - aux_logp over the data block (in expectation over the auxiliary draw, an upper bound
        on the data's bits per dimension, as in the CLD paper)."""
        logp = self.logp - self.stats.get("aux_logp", 0.0)
        bpd = -logp / (self.dim * LOG2)
        if levels is None:
            return bpd
        levels = positive_int("levels", levels)
        if isinstance(data_range, bool) or not isinstance(data_range, (int, float)) or not (
                math.isfinite(data_range) and data_range > 0):
            raise ValueError(f"data_range must be a positive number (the width of the data interval); got "
                             f"{data_range!r}")
        return bpd + math.log2(levels / data_range)


def default_prior(sde: LinearSDE | MatrixLinearSDE, t: float | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Each family's standard prior at ``t`` (default ``sde.t_max``) as ``prior(x_T) -> log density per sample``:
    N(0, I) for variance-preserving SDEs (alpha(t) < 1/2; score_sde), N(0, sigma(t)^2 I) otherwise (variance
    exploding, EDM: k-diffusion); for matrix SDEs N(0, Sigma_t) per data dimension (the marginal of zero data,
    the CLD paper's equilibrium N(0, diag(1, M)) up to its convergence at t_max). The true marginal at t is the data
    pushed forward, N(alpha mu, alpha^2 S + sigma^2 I) for data N(mu, S): the difference of the two
    log-densities at x_T is the prior-mismatch error (docs/likelihood.md)."""
    t = sde.t_max if t is None else float(t)
    if isinstance(sde, MatrixLinearSDE):
        cov = torch.as_tensor(sde.sigma_matrix(t), dtype=torch.float64)
        prec, logdet, k = torch.linalg.inv(cov), float(torch.logdet(cov)), sde.k

        def matrix_prior(u: torch.Tensor) -> torch.Tensor:
            u64 = u.to(torch.float64).reshape(u.shape[0], k, -1)
            m = u64.shape[-1]
            quad = (u64 * torch.einsum("ab,nbd->nad", prec.to(u64.device), u64)).sum((1, 2))
            return -0.5 * quad - 0.5 * m * (logdet + k * math.log(2 * math.pi))

        return matrix_prior
    tt = torch.tensor(t, dtype=torch.float64)
    a, s = float(sde.alpha(tt)), float(sde.sigma(tt))
    var = 1.0 if a < 0.5 else s * s

    def prior(x: torch.Tensor) -> torch.Tensor:
        x64 = x.to(torch.float64).reshape(x.shape[0], -1)
        d = x64.shape[1]
        return -0.5 * (x64 * x64).sum(1) / var - 0.5 * d * math.log(2 * math.pi * var)

    return prior


# ---------------------------------------------------------------------------------------------------------------
# the model term and its divergence


class _Field:
    """Calls the model with gradients on, checks what it returns, converts it to eps and takes the divergence of
    eps (exact or Hutchinson), optionally weighted by a k x k matrix on the block axis (tr(K J) for matrix SDEs).
    Non-finite outputs are collected and reported after the loop (no host-device synchronisation per call)."""

    def __init__(self, model: Model, prediction: str, model_dtype: torch.dtype, probes: torch.Tensor | None,
                 matrix: bool) -> None:
        self.model, self.prediction, self.model_dtype = model, prediction, model_dtype
        self.probes, self.matrix = probes, matrix
        self.nfe = 0
        self.vjps = 0
        self.batched = True
        self.totals: list[torch.Tensor] = []
        self.where: list[float] = []

    def __call__(self, x: torch.Tensor, tb: torch.Tensor, t: float, alpha: float | None, sigma: float | None,
                 weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(raw model output, eps, divergence) at state x (detached, x's dtype) and time t."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            out = self.model(xg if xg.dtype == self.model_dtype else xg.to(self.model_dtype), tb)
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"the model must return a tensor; got {type(out).__name__}")
            if out.shape != x.shape:
                raise ValueError(f"the model returned shape {tuple(out.shape)}; expected {tuple(x.shape)} (the shape "
                                 "of x)")
            if out.dtype != self.model_dtype:
                raise TypeError(f"the model returned dtype {out.dtype}; expected {self.model_dtype} (the dtype it "
                                "was called with)")
            if not out.requires_grad:
                raise ValueError("the model's output does not depend on x through autograd (it was computed without "
                                 "gradients or detached): the divergence needs torch.autograd; do not wrap the model "
                                 "in torch.no_grad / inference_mode")
            out = out.to(x.dtype)
            eps = out if self.matrix or self.prediction == "eps" else to_eps(self.prediction, out, xg, alpha, sigma)
            div = self._divergence(eps, xg, weight)
        self.nfe += 1
        self.totals.append(out.detach().sum(dtype=torch.float64 if out.dtype == torch.float64 else torch.float32))
        self.where.append(t)
        return out.detach(), eps.detach(), div.detach()

    def _grad(self, eps: torch.Tensor, xg: torch.Tensor, cot: torch.Tensor) -> torch.Tensor:
        """cot[j]^T J for every j (one batched vector-Jacobian call; one call per row where the model's operations
        have no batching rule)."""
        self.vjps += cot.shape[0]
        if self.batched:
            try:
                return torch.autograd.grad(eps, xg, cot, retain_graph=True, is_grads_batched=True)[0]
            except (RuntimeError, NotImplementedError):
                self.batched = False
        return torch.stack([torch.autograd.grad(eps, xg, c, retain_graph=True)[0] for c in cot])

    def _divergence(self, eps: torch.Tensor, xg: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        b = xg.shape[0]
        if self.probes is not None:  # Skilling-Hutchinson: mean over probes of v^T K J v
            v = self.probes
            cot = v if weight is None else _apply_block_batched(weight.T, v)
            g = self._grad(eps, xg, cot)
            return (g * v).reshape(v.shape[0], b, -1).sum(2).mean(0)
        n = xg[0].numel()
        shape = xg.shape
        chunk = max(1, min(n, CHUNK_ELEMENTS // max(1, b * n)))
        total = torch.zeros(b, dtype=xg.dtype, device=xg.device)
        for lo in range(0, n, chunk):
            c = min(chunk, n - lo)
            idx = torch.arange(lo, lo + c, device=xg.device)
            if weight is None:
                cot = torch.zeros(c, b, n, dtype=xg.dtype, device=xg.device)
                cot[torch.arange(c, device=xg.device), :, idx] = 1.0
            else:  # basis direction (a, i) weighted: K[a, :] on the block axis at position i
                k = shape[1]
                m = n // k
                a, i = idx // m, idx % m
                cot = torch.zeros(c, b, k, m, dtype=xg.dtype, device=xg.device)
                rows = weight.to(xg.dtype)[a]  # [c, k]: row a of K for direction (a, i)
                jj, kk = torch.arange(c, device=xg.device)[:, None], torch.arange(k, device=xg.device)[None, :]
                cot[jj, :, kk, i[:, None]] = rows[:, :, None].expand(c, k, b)
                cot = cot.reshape(c, b, n)
            g = self._grad(eps, xg, cot.reshape(c, *shape)).reshape(c, b, n)
            total += g[torch.arange(c, device=xg.device), :, idx].sum(0)
        return total

    def check(self) -> None:
        """Report a non-finite model output (one synchronisation, after the loop)."""
        if not self.totals:
            return
        flags = torch.isfinite(torch.stack([t.double() for t in self.totals])).cpu()
        if not bool(flags.all()):
            k = int((~flags).nonzero()[0])
            raise NumericalError(f"the model output is not finite at evaluation {k} (t = {self.where[k]:.6g})")


def _apply_block_batched(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The k x k matrix m on the block axis (dim 2) of probes v of shape (P, batch, k, ...)."""
    return torch.einsum("ab,pnb...->pna...", m.to(v.dtype), v)


def _draw_probes(kind: str, probes: int, x: torch.Tensor,
                 generator: torch.Generator | Sequence[torch.Generator] | None) -> torch.Tensor:
    """Probes of shape (probes, batch, *sample shape): from one generator per sample (sample n's probes depend on
    generator n only, whatever the batch split), or from one generator / torch's global one for the whole batch."""

    def draw(shape: tuple[int, ...], g: torch.Generator | None, device: torch.device) -> torch.Tensor:
        if kind == "gaussian":
            return torch.randn(shape, generator=g, dtype=x.dtype, device=device)
        return torch.randint(0, 2, shape, generator=g, device=device).to(x.dtype) * 2 - 1

    if generator is None or isinstance(generator, torch.Generator):
        dev = generator.device if generator is not None else x.device
        return draw((probes, *x.shape), generator, dev).to(x.device)
    per = [draw((probes, *x.shape[1:]), g, g.device).to(x.device) for g in generator]
    return torch.stack(per, dim=1)


# ---------------------------------------------------------------------------------------------------------------
# the entry point


def log_likelihood(
    model: Model,
    x0: torch.Tensor,
    sde: LinearSDE | MatrixLinearSDE,
    *,
    nfe: int | None = None,
    method: str | Method | None = None,
    grid: str | torch.Tensor | None = None,
    divergence: str = "exact",
    probes: int = 1,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    prediction: str = "eps",
    prior: Callable[[torch.Tensor], torch.Tensor] | None = None,
    quadrature: str = "lagrange",
    t_start: float | None = None,
    t_end: float | None = None,
    options: dict[str, Any] | None = None,
    progress: bool = False,
    dtype: torch.dtype | None = None,
) -> LogLikelihood:
    """The log-likelihood of ``x0`` (data at ``t_start``, default ``sde.t_min``; the data time t0 itself for
    RectifiedFlow, whose first step is :mod:`ei_toolkit.data_start`'s) under the model's probability-flow
    ODE, integrated up to ``t_end`` (default ``sde.t_max``), where ``prior`` (default :func:`default_prior`)
    scores the encoding.

    ``method``/``nfe``/``grid``: a deterministic fixed-step method of :func:`ei_toolkit.solve` (default
    :func:`default_method` of nfe on ``uniform_logrho``, :data:`DEFAULTS_BY_NFE`); the divergence at its evaluation
    points is integrated by ``quadrature`` (:data:`QUADRATURES`: ``"lagrange"``, a centred piecewise Lagrange
    quadrature in log rho, default; ``"plan"``, a channel of the state integrated by the plan's own weights; module
    docstring). ``"torchdiffeq:<name>"`` integrates [y, D] with torchdiffeq (``options``: ``rtol``, ``atol``,
    ``frame``, ``max_nfe``; adaptive methods take no nfe; ``quadrature`` does not apply). Matrix SDEs (CLD) default
    to :data:`DEFAULT_MATRIX_METHOD`; ``x0`` is then the whole state u = (x, v, ...) of shape (batch, k, ...) and
    ``logp`` the joint log-density of data and auxiliary blocks (``stats["aux_logp"]`` is the auxiliary blocks'
    log-density under their initial law: logp - aux_logp with v drawn from that law is, in expectation, a lower
    bound on the data's log-likelihood, Dockhorn et al. 2022).

    ``divergence``: ``"exact"`` (one vector-Jacobian product per dimension, batched; at most
    :data:`MAX_EXACT_DIM` dimensions) or Skilling-Hutchinson with ``probes`` probes per sample, ``"rademacher"``
    (alias ``"hutchinson"``) or ``"gaussian"``, drawn once per sample before the solve from ``generator`` (a list
    of one torch.Generator per sample makes each sample's result independent of the batch split).
    ``prediction`` is what the model returns (eps, x0, v, score). The state is integrated in ``dtype`` (default:
    x0's, at least float32); the model is called with x0's dtype; the likelihoods are float64.
    """
    start = time.perf_counter()
    matrix = isinstance(sde, MatrixLinearSDE)
    if not matrix and not isinstance(sde, LinearSDE):
        raise TypeError(f"sde must be an ei_toolkit.LinearSDE or MatrixLinearSDE; got {type(sde).__name__}")
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point() or x0.is_complex():
        got = x0.dtype if isinstance(x0, torch.Tensor) else type(x0).__name__
        raise TypeError(f"x0 must be a real floating-point tensor; got {got}")
    if x0.ndim < 2 or x0.shape[0] < 1 or x0[0].numel() < 1:
        raise ValueError(f"x0 must have a batch dimension first and data after it; got shape {tuple(x0.shape)}")
    if matrix and (x0.ndim < 3 or x0.shape[1] != sde.k):
        raise ValueError(f"x0 must be the whole state of the {sde.k}x{sde.k} matrix SDE, shape (batch, {sde.k}, ...) "
                         f"(data and auxiliary blocks, e.g. CLD's (x, v)); got {tuple(x0.shape)}")
    check_prediction(prediction)
    if matrix and prediction != "eps":
        raise ValueError(f"matrix SDEs take eps-models (eps = -R_t^T score); got prediction={prediction!r}")
    if not isinstance(divergence, str) or divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; valid: {', '.join(DIVERGENCES)}")
    kind = "rademacher" if divergence == "hutchinson" else divergence
    probes = positive_int("probes", probes)
    if kind == "exact" and probes != 1:
        raise ValueError(f"probes applies to a Hutchinson divergence ('rademacher' or 'gaussian'); got probes={probes} "
                         "with divergence='exact'")
    check_generator(generator, x0.shape[0])
    if not isinstance(quadrature, str) or quadrature not in QUADRATURES:
        raise ValueError(f"unknown quadrature {quadrature!r}; valid: {', '.join(QUADRATURES)}")
    if prior is not None and not callable(prior):
        raise TypeError(f"prior must be a callable x_T -> log density per sample; got {type(prior).__name__}")
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False; got {progress!r}")
    work = _working_dtype(x0, dtype)
    n = x0[0].numel()
    if kind == "exact" and n > MAX_EXACT_DIM:
        raise ValueError(f"divergence='exact' takes one vector-Jacobian product per dimension: {n} dimensions per "
                         f"sample is above MAX_EXACT_DIM = {MAX_EXACT_DIM}; use divergence='rademacher' (Hutchinson)")
    times, lo, hi = grid_ends(grid, t_start, t_end)
    explicit = times is not None
    lo = (sde.t_min if matrix else default_t_end(sde)) if lo is None else lo  # t0 for rectified flow
    hi = sde.t_max if hi is None else hi
    from_data = not matrix and starts_at_data(sde, lo, hi)  # the data step first (data_start.py)
    if not (sde.t_min <= lo or from_data) or not lo < hi <= sde.t_max:
        raise ValueError(f"the likelihood integrates from data to noise inside the model's window: need t_min = "
                         f"{sde.t_min:g} <= t_start < t_end <= t_max = {sde.t_max:g}"
                         f"{' (or t_start = t0, the data)' if getattr(sde, 'ends_at_data', False) else ''}; got "
                         f"t_start={lo:g}, t_end={hi:g}")
    if from_data:
        check_data_start_prediction(prediction, sde)
    if not math.isfinite(abs_max(x0)):  # one synchronisation, before the solve
        raise ValueError("x0 is not finite (it holds NaN or inf)")
    if nfe is not None:
        nfe = positive_int("nfe", nfe)
    chosen = _resolve_method(method, matrix, options, len(times) - 1 if explicit and nfe is None else nfe)
    x = x0.to(work)
    probe_tensor = None if kind == "exact" else _draw_probes(kind, probes, x, generator)
    fld = _Field(model, prediction, x0.dtype, probe_tensor, matrix)
    if isinstance(chosen, TorchDiffEq):
        x_T, model_term, info = _solve_torchdiffeq(chosen, fld, sde, x, lo, hi, nfe, grid, progress)
    else:
        if matrix:
            raise ValueError(f"method {chosen.name!r}: on matrix SDEs the likelihood runs a torchdiffeq method (fixed "
                             f"steps: 'torchdiffeq:rk4', default; adaptive: 'torchdiffeq:dopri5')")
        budget = DEFAULT_NFE if nfe is None and not explicit else nfe
        if from_data:
            x_T, model_term, info = _solve_plan_from_data(chosen, fld, sde, x, lo, hi, budget, grid, progress,
                                                          quadrature)
        else:
            x_T, model_term, info = _solve_plan(chosen, fld, sde, x, lo, hi, budget, grid, progress, quadrature)
    info.pop("h_nodes", None)
    fld.check()
    if not bool(torch.isfinite(x_T).all()) or not bool(torch.isfinite(model_term).all()):
        raise NumericalError(f"{chosen.name}: the encoding or the divergence integral is not finite at t = {hi:g}; "
                             "use more steps or dtype=torch.float64")
    linear, dim = _linear_term(sde, x0, lo, hi)
    delta = model_term.to(torch.float64) + linear
    score = default_prior(sde, hi) if prior is None else prior
    prior_logp = score(x_T.to(x0.dtype))
    if not isinstance(prior_logp, torch.Tensor) or prior_logp.shape != (x0.shape[0],):
        raise ValueError(f"prior must return one log density per sample, shape ({x0.shape[0]},); got "
                         f"{getattr(prior_logp, 'shape', type(prior_logp).__name__)}")
    prior_logp = prior_logp.to(torch.float64)
    stats: dict[str, Any] = {"method": chosen.name, "divergence": kind, "quadrature": info.pop("quadrature", None),
                             "probes": probes if kind != "exact" else None,
                             "vjps": fld.vjps, "linear_term": linear, "model_term": model_term.to(torch.float64),
                             "t_start": lo, "t_end": hi, **info}
    if matrix:
        stats["aux_logp"] = _aux_logp(sde, x0)
    stats["seconds"] = time.perf_counter() - start
    return LogLikelihood(logp=prior_logp + delta, prior_logp=prior_logp, delta_logp=delta,
                         x_T=x_T.to(x0.dtype), nfe=fld.nfe, dim=dim, stats=stats)


def default_method(nfe: int | None = None) -> str:
    """The default likelihood method for scalar SDEs with ``nfe`` evaluations (None: :data:`DEFAULT_NFE`)."""
    n = DEFAULT_NFE if nfe is None else positive_int("nfe", nfe)
    return next(name for top, name in DEFAULTS_BY_NFE if top is None or n <= top)


def _resolve_method(method: str | Method | None, matrix: bool, options: dict[str, Any] | None,
                    budget: int | None) -> Method:
    if method is None:
        method = DEFAULT_MATRIX_METHOD if matrix else default_method(budget)
    chosen = get_integrator(method).configure(options=options)
    if chosen.stochastic:
        raise ValueError(f"method {chosen.name!r} is stochastic: the likelihood integrates the probability-flow ODE; "
                         "use a deterministic method")
    if chosen.name == "adaptive":
        raise ValueError("method='adaptive' integrates toward the data only; for adaptive steps use "
                         "method='torchdiffeq:dopri5' (fixed steps, the default, keep distributed ranks in step)")
    if not isinstance(chosen, (Integrator, TorchDiffEq)):
        raise ValueError(f"method {chosen.name!r} is neither a fixed-step integrator nor a torchdiffeq method")
    return chosen


def _linear_term(sde: LinearSDE | MatrixLinearSDE, x0: torch.Tensor, lo: float, hi: float) -> tuple[float, int]:
    """The linear part's divergence integrated exactly: d log(alpha_hi / alpha_lo) (Liouville: m log det
    Psi(hi, lo) for matrix SDEs), and the data dimensions per sample."""
    if isinstance(sde, MatrixLinearSDE):
        m = x0[0].numel() // sde.k
        _, logdet = np.linalg.slogdet(sde.psi(hi, lo))
        return float(m * logdet), m
    d = x0[0].numel()
    la = sde.log_alpha(torch.tensor([lo, hi], dtype=torch.float64)).tolist()
    return float(d * (la[1] - la[0])), d


def _aux_logp(sde: MatrixLinearSDE, u: torch.Tensor) -> torch.Tensor:
    """log N(u[:, 1:]; 0, sigma_init[1:, 1:]) per sample: the auxiliary blocks' initial law (CLD: v ~ N(0, gamma M))."""
    s0 = np.asarray(sde.sigma_matrix(sde.t0), dtype=np.float64)[1:, 1:]
    cov = torch.as_tensor(s0, dtype=torch.float64)
    v = u.to(torch.float64).reshape(u.shape[0], sde.k, -1)[:, 1:]
    m, k = v.shape[-1], cov.shape[0]
    quad = (v * torch.einsum("ab,nbd->nad", torch.linalg.inv(cov).to(v.device), v)).sum((1, 2))
    return -0.5 * quad - 0.5 * m * (float(torch.logdet(cov)) + k * math.log(2 * math.pi))


def _solve_plan(method: Integrator, fld: _Field, sde: LinearSDE, x: torch.Tensor, lo: float, hi: float,
                nfe: int | None, grid: str | torch.Tensor | None, progress: bool, quadrature: str
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The state on the method's forward plan and the model term of delta_logp, by ``quadrature`` (module
    docstring): the Lagrange quadrature of h = sigma div_x eps at the evaluation points, or the channel X_D = alpha D
    carried by the plan."""
    evaluator = ModelEvaluator(fld.model, sde, fld.prediction, model_dtype=fld.model_dtype)
    request = SolveRequest(evaluator=evaluator, x=x, sde=sde, t_start=lo, t_end=hi, nfe=nfe,
                           grid=grid if grid is not None else DEFAULT_GRID)
    times, grid_name = method.times(request)
    plan = plan_for(method.for_nfe(nfe, len(times) - 1), sde, times)
    channel = quadrature == "plan"
    if channel and isinstance(plan, MultistepPlan) and type(plan).entry is not MultistepPlan.entry:
        raise ValueError(f"method {method.name!r} combines something other than the model output (EMS): its plan "
                         "cannot carry the divergence channel; use quadrature='lagrange' or another method")
    et = plan.eval_times
    alphas, sigmas, ts = sde.alpha(et).tolist(), sde.sigma(et).tolist(), et.tolist()
    tdtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    t_dev = et.to(device=x.device, dtype=tdtype)
    b, shape, n = x.shape[0], x.shape, x[0].numel()
    target = plan.target
    values: dict[int, torch.Tensor] = {}  # evaluation index -> h = sigma div_x eps

    def prediction(out: torch.Tensor, eps: torch.Tensor, xs: torch.Tensor, k: int) -> torch.Tensor:
        if target == "eps":
            return eps
        return out if fld.prediction == "x0" else to_x0(fld.prediction, out, xs, alphas[k], sigmas[k])

    def eps_fn(z: torch.Tensor, k: int) -> torch.Tensor:
        if not channel:
            out, eps, div = fld(z, t_dev[k].expand(b), ts[k], alphas[k], sigmas[k])
            values[k] = sigmas[k] * div
            return prediction(out, eps, z, k)
        xs = z[:, :n].reshape(shape)
        a, s = alphas[k], sigmas[k]
        out, eps, div = fld(xs, t_dev[k].expand(b), ts[k], a, s)
        values[k] = s * div
        g = a * div  # div_y eps = alpha div_x eps
        e_d = g if target == "eps" else (z[:, n] - s * g) / a  # the channel's x0: X_D = alpha x0_D + sigma g
        return torch.cat([prediction(out, eps, xs, k).reshape(b, n), e_d.reshape(b, 1).to(z.dtype)], dim=1)

    z = x if not channel else torch.cat([x.reshape(b, n), torch.zeros(b, 1, dtype=x.dtype, device=x.device)], dim=1)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=plan.steps, desc=f"log-likelihood ({method.name})", unit="step")
    try:
        out = plan.run(z, eps_fn, callback=(lambda i, _: bar.update(1)) if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    # the step starts only: a stage inside a step (Runge-Kutta, singlestep) sees a state of lower order
    on_grid = torch.isclose(et[:, None], plan.grid[None, :], rtol=1e-12, atol=0.0).any(1).tolist()
    order = [k for k in sorted(values) if on_grid[k]]
    info = {"grid": grid_name, "steps": plan.steps, "quadrature": quadrature,
            "h_nodes": ([ts[k] for k in order], [values[k] for k in order])}  # for a start at the data
    if channel:
        alpha_hi = float(sde.alpha(torch.tensor(float(times[-1]), dtype=torch.float64)))
        return out[:, :n].reshape(shape), out[:, n] / alpha_hi, info
    lams = torch.log(sde.rho(et[order])).tolist()
    ends = torch.log(sde.rho(torch.tensor([float(times[0]), float(times[-1])], dtype=torch.float64))).tolist()
    weights = lagrange_weights(lams, ends[0], ends[1], QUADRATURE_POINTS)
    stacked = torch.stack([values[k] for k in order]).to(torch.float64)
    return out, (torch.as_tensor(weights, dtype=torch.float64, device=stacked.device)[:, None] * stacked).sum(0), info


def _solve_plan_from_data(method: Integrator, fld: _Field, sde: LinearSDE, x: torch.Tensor, t0: float, hi: float,
                          nfe: int | None, grid: str | torch.Tensor | None, progress: bool, quadrature: str
                          ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """From the data (t0, rho = 0; rectified flow): one evaluation there and the step out of rho = 0
    (:mod:`ei_toolkit.data_start`), then :func:`_solve_plan` from t_1. The model term on [0, rho_1], where the log-rho
    quadrature cannot reach, integrates g = alpha div_x eps in rho by the Lagrange polynomial through g at rho = 0 and
    at the first QUADRATURE_POINTS - 1 grid points (g_k = h_k / rho_k): g turns on the data's own scale in rho (about
    the smallest component's standard deviation), which rho_1 need not be far below, so a trapezoid left a floor of
    4e-4 nats on the 16-dimensional mixture."""
    grid = DEFAULT_GRID if grid is None else grid
    name = grid if isinstance(grid, str) else "explicit"
    rest = rest_of_grid(method, sde, grid, DEFAULT_NFE if nfe is None else nfe, t0, hi)
    t1 = float(rest[0])
    (a0, _), (a1, s1) = alpha_sigma_at(sde, t0), alpha_sigma_at(sde, t1)
    tdtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    _, eps0, div0 = fld(x, torch.full((x.shape[0],), t0, dtype=tdtype, device=x.device), t0, a0, 0.0)
    x1 = data_step(x, eps0, a1 / a0, s1)
    if len(rest) < 2:  # the data step alone: g at t_1 takes one more evaluation there
        _, _, div1 = fld(x1, torch.full((x.shape[0],), t1, dtype=tdtype, device=x.device), t1, a1, s1)
        term = 0.5 * float(sde.rho(torch.tensor(t1, dtype=torch.float64))) * (a0 * div0 + a1 * div1)
        return x1, term.to(torch.float64), {"grid": name, "steps": 1, "quadrature": quadrature}
    left = budget_left(nfe, isinstance(grid, str), 1, DEFAULT_NFE)
    x_T, term, info = _solve_plan(method, fld, sde, x1, t1, hi, left, rest, progress, quadrature)
    info["steps"] += 1
    info["grid"] = name
    ts, hs = info.pop("h_nodes")
    ts, hs = ts[:QUADRATURE_POINTS - 1], hs[:QUADRATURE_POINTS - 1]
    rhos = sde.rho(torch.tensor(ts, dtype=torch.float64)).tolist()
    weights = lagrange_weights([0.0, *rhos], 0.0, rhos[0], QUADRATURE_POINTS)
    gs = [a0 * div0.to(torch.float64)] + [h.to(torch.float64) / r for h, r in zip(hs, rhos, strict=True)]
    head = sum(w * g for w, g in zip(weights, gs, strict=True))
    return x_T, term.to(torch.float64) + head, info


def lagrange_weights(nodes: Sequence[float], lo: float, hi: float, points: int = QUADRATURE_POINTS) -> list[float]:
    """Weights w with int_lo^hi h(s) ds ~ sum_k w[k] h(nodes[k]): on each interval between consecutive breakpoints
    (lo, the nodes inside [lo, hi], hi), the Lagrange polynomial through the ``points`` nodes nearest to it (centred,
    shifted inward at the ends), integrated exactly (Gauss-Legendre). Nodes equal to within 1e-12 are one point
    (the later one's weight: a later stage at the same time has the better state). Float64 on the host."""
    points = positive_int("points", points)
    if not nodes:
        raise ValueError("lagrange_weights needs at least one node")
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"need finite lo < hi; got lo={lo!r}, hi={hi!r}")
    ranked = sorted(range(len(nodes)), key=lambda k: nodes[k])
    kept: list[int] = []  # distinct nodes, ascending; of equal ones the last evaluated
    for k in ranked:
        if kept and abs(nodes[k] - nodes[kept[-1]]) <= 1e-12 * (1.0 + abs(nodes[k])):
            kept[-1] = max(kept[-1], k)
        else:
            kept.append(k)
    xs = np.array([nodes[k] for k in kept], dtype=np.float64)
    m = len(xs)
    p = min(points, m)
    gx, gw = np.polynomial.legendre.leggauss(max(p, 2))
    cuts = np.unique(np.concatenate([[lo], xs[(xs > lo) & (xs < hi)], [hi]]))
    w = np.zeros(m)
    for a, c in itertools.pairwise(cuts):
        i = int(np.searchsorted(xs, 0.5 * (a + c)))  # xs[i - 1] < midpoint <= xs[i]
        first = max(0, min(i - p // 2, m - p))
        sel = xs[first:first + p]
        s = 0.5 * (c - a) * gx + 0.5 * (c + a)
        for j in range(p):
            basis = np.ones_like(s)
            for q in range(p):
                if q != j:
                    basis *= (s - sel[q]) / (sel[j] - sel[q])
            w[first + j] += 0.5 * (c - a) * float(np.dot(gw, basis))
    out = [0.0] * len(nodes)
    for j, k in enumerate(kept):
        out[k] = float(w[j])
    return out


def _solve_torchdiffeq(method: TorchDiffEq, fld: _Field, sde: LinearSDE | MatrixLinearSDE, x: torch.Tensor,
                       lo: float, hi: float, nfe: int | None, grid: str | torch.Tensor | None, progress: bool
                       ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The augmented system [y, D] with torchdiffeq: dy/dlog rho = rho eps, dD/dlog rho = rho alpha div_x eps
    (frames "rho" and "t" likewise; matrix SDEs: dy/dt = Psi(t0, t) K eps, dD/dt = tr(K J), K = 1/2 G G^T R^-T)."""
    frame = method.frame
    if starts_at_data(sde, lo, hi):  # rho = 0: the log-rho frame starts at -inf and the t frame divides by sigma
        if frame not in (None, "rho"):
            raise ValueError(f"{method.name} from the data (t_start = t0): frame {frame!r} is singular at rho = 0; "
                             "use frame='rho' (the default there)")
        frame = "rho"
    flow = FlowODE(fld.model, sde, frame, fld.prediction)
    matrix = flow.matrix
    b = x.shape[0]
    max_nfe = method.max_nfe if method.max_nfe is not None else DEFAULT_MAX_NFE
    tdtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    steps = method.evals_per_step
    if steps is not None:
        if grid is not None and not isinstance(grid, str):
            times = time_grid(sde, grid, 0, lo, hi)
        else:
            n = 10 if nfe is None else nfe
            if n % steps:
                raise ValueError(f"nfe={n} is not possible for {method.name}: it uses {steps} model evaluations per "
                                 f"step, so nfe must be a multiple of {steps}")
            times = time_grid(sde, grid or ("quadratic_t" if matrix else DEFAULT_GRID), n // steps, lo, hi)
    else:
        if nfe is not None or grid is not None:
            raise ValueError(f"{method.name} is adaptive: nfe/grid do not apply; set rtol/atol in options=")
        times = torch.tensor([lo, hi], dtype=torch.float64)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc=f"log-likelihood ({method.name})", unit="eval")

    def func(tau: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if fld.nfe >= max_nfe:
            raise NFEBudgetExceeded(f"{method.name} needed more than max_nfe={max_nfe} model evaluations; loosen "
                                    "rtol/atol or raise max_nfe in options=")
        y = state[0]
        t = flow.t_of(torch.as_tensor(tau, dtype=torch.float64).reshape(()))
        tt = float(t)
        xs = flow.decode(y, t)
        tb = torch.full((b,), tt, dtype=tdtype, device=y.device)
        if bar is not None:
            bar.update(1)
        if matrix:
            kernel = 0.5 * sde.GGt(tt) @ np.linalg.inv(sde.factor(tt)).T
            weight = torch.as_tensor(kernel, dtype=torch.float64)
            _, eps, div = fld(xs, tb, tt, None, None, weight.to(device=y.device))
            if flow.frame == "t":
                return apply_block(sde.F(tt), xs) + apply_block(kernel, eps), div
            return apply_block(sde.psi(sde.t0, tt) @ kernel, eps), div
        a, s = float(sde.alpha(t)), float(sde.sigma(t))
        _, eps, div = fld(xs, tb, tt, a, s)
        if flow.frame == "t":
            gg = float(sde.diffusion(t)) ** 2 / (2 * s)
            return float(sde.drift(t)) * xs + gg * eps, gg * div
        rho = float(sde.rho(t)) if flow.frame == "logrho" else 1.0
        return rho * eps, (rho * a) * div

    taus = flow.tau(times).to(tdtype)
    opts = dict(method.options)
    if steps is None:
        opts.setdefault("step_t", taus)
    y0 = flow.encode(x, times[0])
    d0 = torch.zeros(b, dtype=x.dtype, device=x.device)
    try:
        ys, ds = torchdiffeq.odeint(func, (y0, d0), taus, rtol=method.rtol, atol=method.atol, method=method.solver,
                                    options=opts or None)
    finally:
        if bar is not None:
            bar.close()
    x_T = flow.decode(ys[-1], times[-1])
    return x_T, ds[-1], {"grid": "adaptive" if steps is None else (grid if isinstance(grid, str) else "explicit"),
                         "frame": flow.frame, "steps": None if steps is None else len(times) - 1}
