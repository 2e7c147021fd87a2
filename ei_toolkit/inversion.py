"""Inversion: the probability-flow ODE run from data to noise (encoding), and the exact inverse of a sampler.

:func:`invert` integrates forward in time, from ``t_start`` (default ``sde.t_min``) up to ``t_end`` (default
``sde.t_max``), with any deterministic method: the exponential integrators' plans are formulas in the step's two
ends, so on an increasing grid they are the same float64 coefficients as for sampling, mirrored (docs/math.md
section 4.12). The one-point method is DDIM inversion (Song et al. 2021, section 4.3; diffusers'
DDIMInverseScheduler).

An inversion with ``n`` evaluations and a sampler with ``n`` evaluations are two different discretisations of one
ODE, so ``sample(invert(x0))`` differs from ``x0`` by both their errors (the drift that users of DDIM inversion
report). ``exact=True`` removes it: it returns the x_T from which :func:`ei_toolkit.sample` with the same method, nfe
and grid reproduces x0 to a tolerance. Hong et al. ("On Exact Inversion of DPM-Solvers", CVPR 2024) solve each
step's implicit equation; a multistep method couples every step to its predecessors' evaluations (and a
predictor-corrector or singlestep method evaluates at states that exist only inside a step), so here the implicit
equation is the whole sampler: find x with F(x) = x0, F the sampler (t_end -> t_start). The forward solve G with the
same method is an approximate inverse (G(F(x)) = x + O(h^p)), which gives the defect-correction iteration

    x_{k+1} = x_k - beta_k (G(F(x_k)) - G(x0)),    x_0 = G(x0),

whose error contracts by the factor |I - G'F'| = O(h^p) per iteration (two solves, 2 nfe evaluations). Each sample
keeps its own step factor beta (halved when its residual |F(x) - x0| / |x0| grows, doubled back to 1 when it falls),
and the iteration stops when every sample's residual is below ``tol``; a sample that does not converge within
``max_iter`` iterations raises :class:`~ei_toolkit.NumericalError`. The evaluations are counted in
``Solution.stats``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from .errors import NumericalError, positive_int
from .integrators import Method
from .model import Model
from .sampling import _check_time, _working_dtype, default_inversion_method, solve
from .sde import LinearSDE, MatrixLinearSDE
from .solution import Solution

MAX_ITER = 50
"""Default cap on the defect-correction iterations of an exact inversion (each costs two solves)."""
MIN_BETA = 2.0**-10
"""A sample whose step factor falls below this without its residual falling has stalled: reported."""


def default_tolerance(dtype: torch.dtype) -> float:
    """The default relative round-trip tolerance of an exact inversion in the working precision ``dtype``: the
    square root of its machine epsilon (1.5e-8 in float64, 3.5e-4 in float32), half its digits, the usual target of
    a nonlinear solve whose residual carries the round-off of two full solves."""
    return math.sqrt(torch.finfo(dtype).eps)


def invert(
    model: Model,
    x0: torch.Tensor,
    sde: LinearSDE | MatrixLinearSDE,
    *,
    method: str | Method | None = None,
    nfe: int | None = None,
    grid: str | torch.Tensor | None = None,
    exact: bool = False,
    prediction: str = "eps",
    t_start: float | None = None,
    t_end: float | None = None,
    tol: float | None = None,
    max_iter: int = MAX_ITER,
    options: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
    trajectory: bool = False,
    solution: bool = False,
) -> torch.Tensor | Solution:
    """Encode ``x0`` (data at ``t_start``, default ``sde.t_min``) to the noise end ``t_end`` (default ``sde.t_max``)
    through the probability-flow ODE; returns the encoding, or a :class:`~ei_toolkit.Solution` with ``solution=True``.

    ``method``, ``nfe`` and ``grid`` are :func:`ei_toolkit.solve`'s: default method and grid
    :func:`ei_toolkit.sampling.default_inversion_method`; a named grid is laid from ``t_start`` up to ``t_end`` (the
    same points as the sampling grid, which all built-in grids are symmetric in), an explicit grid may be given in
    either order. ``exact=True`` returns the x_T from which ``ei.sample(model, x_T, sde, method=method, nfe=nfe,
    grid=grid, t_start=t_end, t_end=t_start, prediction=prediction)`` reproduces ``x0`` to the relative tolerance
    ``tol`` (per sample, |F(x_T) - x0| / |x0| in the 2-norm; default :func:`default_tolerance` of the working dtype)
    within ``max_iter`` iterations (module docstring; ``stats["iterations"]``, ``stats["residual"]``, and ``nfe``
    counts every evaluation)."""
    start = time.perf_counter()
    if not isinstance(sde, (LinearSDE, MatrixLinearSDE)):
        raise TypeError(f"sde must be an ei_toolkit.LinearSDE or MatrixLinearSDE; got {type(sde).__name__}")
    if not isinstance(exact, bool):
        raise TypeError(f"exact must be True or False; got {exact!r}")
    lo = _check_time("t_start", t_start)
    hi = _check_time("t_end", t_end)
    forward_grid, reverse_grid = _grids(grid)
    if forward_grid is not None:
        if lo is not None or hi is not None:
            raise ValueError("an explicit grid gives its own start and end: leave t_start/t_end unset")
        lo, hi = float(forward_grid[0]), float(forward_grid[-1])
    lo = sde.t_min if lo is None else lo
    hi = sde.t_max if hi is None else hi
    if not lo < hi:
        raise ValueError(f"invert runs from data to noise: t_start must be below t_end; got t_start={lo:g}, "
                         f"t_end={hi:g}")
    if method is None and not isinstance(sde, MatrixLinearSDE):
        budget = nfe if nfe is not None or forward_grid is None else len(forward_grid) - 1
        method, named = default_inversion_method(budget)
        grid = named if grid is None else grid
    common: dict[str, Any] = dict(method=method, nfe=nfe, prediction=prediction, options=options, dtype=dtype)
    ends_fwd = {} if forward_grid is not None else {"t_start": lo, "t_end": hi}
    fwd_grid = forward_grid if forward_grid is not None else grid
    encoded = solve(model, x0, sde, grid=fwd_grid, progress=progress and not exact,
                    trajectory=trajectory and not exact, **ends_fwd, **common)
    if not exact:
        encoded.stats["seconds"] = time.perf_counter() - start
        return encoded if solution else encoded.x
    work = _working_dtype(x0, dtype)
    tol = default_tolerance(work) if tol is None else _positive_float("tol", tol)
    max_iter = positive_int("max_iter", max_iter)
    ends_rev = {} if reverse_grid is not None else {"t_start": hi, "t_end": lo}
    rev_grid = reverse_grid if reverse_grid is not None else grid

    def sampler(x: torch.Tensor) -> Solution:  # F: noise end -> data end
        return solve(model, x, sde, grid=rev_grid, **ends_rev, **common)

    def encoder(x: torch.Tensor) -> Solution:  # G: data end -> noise end
        return solve(model, x, sde, grid=fwd_grid, **ends_fwd, **common)

    return _exact(sampler, encoder, x0, encoded, tol, max_iter, progress, solution, start)


def _exact(sampler: Any, encoder: Any, x0: torch.Tensor, encoded: Solution, tol: float, max_iter: int,
           progress: bool, solution: bool, start: float) -> torch.Tensor | Solution:
    """The defect-correction iteration of the module docstring."""
    x0w = x0.to(encoded.x.dtype)
    g0 = encoded.x  # G(x0): the first iterate and the fixed point's reference
    x = g0
    nfe = encoded.nfe
    scale = _norms(x0w).clamp_min(torch.finfo(x0w.dtype).tiny)
    sol = sampler(x)
    nfe += sol.nfe
    residual = _norms(sol.x - x0w) / scale
    beta = torch.ones_like(residual)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    iterations = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_iter, desc=f"exact inversion ({encoded.method})", unit="iter")
    try:
        while bool((residual > tol).any()):
            if iterations == max_iter:
                worst = float(residual.max())
                raise NumericalError(
                    f"exact inversion with {encoded.method} did not converge in max_iter={max_iter} iterations: the "
                    f"round trip's relative residual is {worst:.3g} > tol={tol:g} for "
                    f"{int((residual > tol).sum())} of {len(residual)} samples; raise max_iter or tol, or use more "
                    "steps (the iteration contracts by the method's own error per iteration)")
            iterations += 1
            back = encoder(sol.x)  # G(F(x))
            trial = x - beta.view(shape).to(x.dtype) * (back.x - g0)
            sol_trial = sampler(trial)
            nfe += back.nfe + sol_trial.nfe
            res_trial = _norms(sol_trial.x - x0w) / scale
            better = (res_trial < residual) & torch.isfinite(res_trial)
            keep = better.view(shape)
            x = torch.where(keep, trial, x)
            sol.x = torch.where(keep, sol_trial.x, sol.x)
            residual = torch.where(better, res_trial, residual)
            beta = torch.where(better, (2 * beta).clamp_max(1.0), beta / 2)
            stalled = (beta < MIN_BETA) & (residual > tol)
            if bool(stalled.any()):
                raise NumericalError(
                    f"exact inversion with {encoded.method} stalled after {iterations} iterations: the round trip's "
                    f"relative residual stays at {float(residual[stalled].max()):.3g} > tol={tol:g} for "
                    f"{int(stalled.sum())} samples (the sampler is not invertible there at this tolerance: the "
                    "model's round-off or a non-invertible step, e.g. clipping); raise tol or use float64")
            if bar is not None:
                bar.update(1)
                bar.set_postfix(residual=f"{float(residual.max()):.2g}")
    finally:
        if bar is not None:
            bar.close()
    encoded.x = x
    encoded.nfe = nfe
    encoded.trajectory = None
    encoded.stats.update(nfe=nfe, iterations=iterations, residual=float(residual.max()), tol=tol, exact=True,
                         seconds=time.perf_counter() - start)
    return encoded if solution else x


def _norms(x: torch.Tensor) -> torch.Tensor:
    """Per-sample 2-norms (float64)."""
    return torch.linalg.vector_norm(x.reshape(x.shape[0], -1).to(torch.float64), dim=1)


def _positive_float(name: str, v: object) -> float:
    f = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan
    if not (math.isfinite(f) and f > 0):
        raise ValueError(f"{name} must be a positive finite number; got {v!r}")
    return f


def _grids(grid: object) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """An explicit grid as (increasing, decreasing) float64 tensors; (None, None) for a name or None."""
    if grid is None or isinstance(grid, str):
        return None, None
    if not isinstance(grid, (torch.Tensor, Sequence)):
        raise TypeError(f"grid must be a grid name or a 1-D tensor of times; got {type(grid).__name__}")
    t = torch.as_tensor(grid, dtype=torch.float64).flatten().cpu()
    if t.numel() < 2:
        raise ValueError(f"an explicit grid needs at least 2 times; got {t.numel()}")
    up = t if bool(t[-1] > t[0]) else t.flip(0)
    return up, up.flip(0)
