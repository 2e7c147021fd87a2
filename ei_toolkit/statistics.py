"""Empirical model statistics for :class:`~ei_toolkit.integrators.ems.EMSAdams` (DPM-Solver-v3's idea, Zheng et al.
2023; docs/math.md section 4.11): along the calibration batch's ODE trajectories, on nodes uniform in
lam = -log rho,

* l = tr(sigma d eps / dx) / d, the mean linear response of sigma eps to x (Hutchinson's estimator with Rademacher
  probes and central differences of the model), so that f = sigma eps - l x depends on x as little as possible;
* s, b: the least-squares fit f' ~ s f + b over the batch (s a scalar, b shaped like one sample), f' the
  derivative along the trajectories (second-order differences in lam); s is shrunk towards 0 (ridge,
  :data:`RIDGE`) where f is negligible next to sigma eps, as for Gaussian data.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import NumericalError, positive_int
from .files import model_id as _model_id
from .grids import time_grid
from .integrators.ems import ModelStatistics, _sde_tag
from .integrators.kernels import half_lambda
from .model import Model, ModelEvaluator
from .sde import LinearSDE

RIDGE = 1e-6
"""Regularisation of the fit f' ~ s f + b, relative to the spread of sigma eps over the batch."""


def model_statistics(model: Model, x: torch.Tensor, sde: LinearSDE, *, nodes: int = 200, probes: int = 2,
                     t_start: float | None = None, t_end: float | None = None, prediction: str = "eps",
                     generator: torch.Generator | None = None, step: float = 1e-3,
                     model_id: str | None = None) -> ModelStatistics:
    """Estimate l, s, b (module docstring) on ``nodes + 1`` nodes uniform in -log rho from ``t_start`` (default
    ``sde.t_max``) to ``t_end`` (default ``sde.t_min``), from the calibration batch ``x`` (states at t_start; a few
    hundred draws of the prior). Costs ``nodes`` batch evaluations for the trajectories (4-point exponential Adams,
    float64 state) and ``(nodes + 1) * (1 + 2 * probes)`` for the statistics. ``step``: the central-difference step
    relative to the state's RMS, at least sqrt(eps) of ``x``'s dtype (below, the difference of the two evaluations is
    round-off: at a step under eps it is exactly 0). ``model_id``: what the statistics record as their model
    (default: :func:`ei_toolkit.grid_opt.model_id` of ``model``, the SHA-256 of an nn.Module's weights), checked by
    ``ModelStatistics.load(..., model=)``. Returns :class:`ModelStatistics` (``.save(path)`` /
    ``ModelStatistics.load``)."""
    from .sampling import solve

    if not isinstance(sde, LinearSDE):
        raise TypeError(f"sde must be a scalar ei_toolkit.LinearSDE; got {type(sde).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2 or x.shape[0] < 1:
        raise ValueError("x must be a floating-point tensor shaped (batch, *sample shape): the calibration batch")
    nodes = positive_int("nodes", nodes)
    probes = positive_int("probes", probes)
    if nodes < 4:
        raise ValueError(f"nodes must be at least 4 (the derivative along lam needs them); got {nodes}")
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0 < step < 1:
        raise ValueError(f"step must be a number in (0, 1); got {step!r}")
    floor = math.sqrt(torch.finfo(x.dtype).eps)
    if step < floor:
        raise ValueError(f"step={step!r} is below what {x.dtype} resolves: the central differences of the model would "
                         f"be round-off (0 for a step under eps); use step >= sqrt(eps) = {floor:.3g} (default 1e-3), "
                         "or a float64 calibration batch")
    recorded = _model_id(model) if model_id is None else _model_id(model_id)
    t_start = float(sde.t_max if t_start is None else t_start)
    t_end = float(sde.t_min if t_end is None else t_end)
    if not sde.t0 <= t_end < t_start <= sde.t_max:
        raise ValueError(f"need sde.t0 <= t_end < t_start <= sde.t_max; got t_start={t_start}, t_end={t_end}")
    grid = time_grid(sde, "uniform_logrho", nodes, t_start, t_end)
    lam = half_lambda(sde, grid)
    if not np.isfinite(lam).all():
        raise ValueError("the statistics need a finite log-SNR at both ends: t_end must have rho > 0 and t_start "
                         "rho < inf")
    with torch.no_grad():
        states = solve(model, x, sde, method="logrhoab3", grid=grid, prediction=prediction, trajectory=True,
                       dtype=torch.float64).trajectory
        evaluator = ModelEvaluator(model, sde, prediction, model_dtype=x.dtype)
        eps_fn = evaluator.bind(grid, states[0])
        sigma = sde.sigma(grid).numpy()
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        d = states[0][0].numel()
        f_rows, l_rows, spread = [], [], []
        for k in range(nodes + 1):
            xk = states[k]
            eps = eps_fn(xk, k).to(torch.float64)
            delta = step * float(xk.pow(2).mean().sqrt().clamp_min(1e-12))
            tr = 0.0
            for _ in range(probes):
                v = torch.randint(0, 2, xk.shape, generator=gen).to(xk) * 2 - 1
                diff = eps_fn(xk + delta * v, k).to(torch.float64) - eps_fn(xk - delta * v, k).to(torch.float64)
                tr += float((v * diff).reshape(len(xk), -1).sum(1).mean()) / (2 * delta)
            l_rows.append(sigma[k] * tr / probes / d)
            se = sigma[k] * eps
            spread.append(float((se - se.mean(0)).pow(2).sum()))
            f_rows.append(sigma[k] * eps - l_rows[-1] * xk)
        evaluator.check()
    f = torch.stack(f_rows).reshape(nodes + 1, x.shape[0], -1).numpy()
    fp = np.gradient(f, lam, axis=0, edge_order=2)
    fc = f - f.mean(1, keepdims=True)
    pc = fp - fp.mean(1, keepdims=True)
    # ridge: where f is tiny next to sigma eps (near-Gaussian data, eps ~ linear in x) s is noise; shrink it to 0
    den = (fc * fc).sum((1, 2)) + RIDGE * np.asarray(spread)
    s = np.where(den > 0, (fc * pc).sum((1, 2)) / np.where(den > 0, den, 1.0), 0.0)
    b = fp.mean(1) - s[:, None] * f.mean(1)
    l_arr = np.asarray(l_rows)
    if not (np.isfinite(l_arr).all() and np.isfinite(s).all() and np.isfinite(b).all()):
        raise NumericalError("model_statistics: the estimates are not finite (the model returned extreme values "
                             "along the calibration trajectories)")
    return ModelStatistics(lam=torch.from_numpy(lam.copy()), l=torch.from_numpy(l_arr), s=torch.from_numpy(s),
                           b=torch.from_numpy(b).reshape(nodes + 1, *x.shape[1:]), sde=_sde_tag(sde),
                           samples=int(x.shape[0]), model=recorded)
