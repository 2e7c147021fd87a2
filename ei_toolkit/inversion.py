"""Inversion: the probability-flow ODE run from data to noise (encoding), and the exact inverse of a sampler.

:func:`invert` integrates forward in time, from ``t_start`` (default ``sde.t_min``; for rectified flow the data
time t = 0, where its first step is :mod:`ei_toolkit.data_start`'s) up to ``t_end`` (default ``sde.t_max``), with
any deterministic method: the exponential integrators' plans are formulas in the step's two
ends, so on an increasing grid they are the same float64 coefficients as for sampling, mirrored (docs/math.md
section 4.12). The one-point method is DDIM inversion (Song et al. 2021, section 4.3; diffusers'
DDIMInverseScheduler).

An inversion with ``n`` evaluations and a sampler with ``n`` evaluations are two different discretisations of one
ODE, so ``sample(invert(x0))`` differs from ``x0`` by both their errors (the drift that users of DDIM inversion
report). ``exact=True`` removes it: it returns the x_T from which :func:`ei_toolkit.sample` with the same method, nfe
and grid reproduces x0 to a tolerance. Hong et al. ("On Exact Inversion of DPM-Solvers", CVPR 2024) solve each
step's implicit equation; a multistep method couples every step to its predecessors' evaluations (and a
predictor-corrector or singlestep method evaluates at states that exist only inside a step), so here the equation is
the whole sampler, F(x) = x0 with F the sampler (t_end -> t_start), solved by Newton's method per sample
(Jacobian-free Newton-Krylov: Knoll & Keyes, J. Comput. Phys. 2004): each Newton direction solves F'(x) d = F(x) - x0
by GMRES (Saad & Schultz 1986) to a relative residual of :data:`FORCING`, right-preconditioned by the forward solve G
with the same method (an approximate inverse: G(F(x)) = x + O(h^p)), with the products F'(x) G'(F(x)) v by forward
differences of one encoder and one sampler solve each; a backtracking line search per sample (beta = 1, 1/2, ...)
keeps every accepted step a decrease of the relative residual |F(x) - x0| / |x0|. The start is G(x0). Where the
method's own forward solve diverges (strong extrapolation over long steps), DDIM on the same grid points is the
start and preconditioner. A sample whose residual no step lowers, also after one retry with four times the Krylov
vectors and a tighter forcing term, raises :class:`~ei_toolkit.NumericalError` (as does ``max_iter``); the
evaluations of every solve are counted in ``Solution.nfe`` (``stats``: iterations, krylov, residual, encoder).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from .errors import NumericalError, positive_int
from .integrators import Integrator, Method, get_integrator
from .integrators.base import cached_grid
from .model import Model
from .sampling import DEFAULT_MATRIX_METHOD, _check_time, _working_dtype, default_inversion_method, default_t_end, solve
from .sde import LinearSDE, MatrixLinearSDE
from .solution import Solution

MAX_ITER = 50
"""Default cap on the Newton iterations of an exact inversion."""
KRYLOV = 20
"""Default cap on the GMRES iterations per Newton iteration (each costs one sampler and one encoder solve)."""
FORCING = 0.1
"""Newton's direction is accepted once GMRES has reduced the linearised residual to this fraction of |r|."""
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
    krylov: int = KRYLOV,
    options: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
    trajectory: bool = False,
    solution: bool = False,
) -> torch.Tensor | Solution:
    """Encode ``x0`` (data at ``t_start``, default ``sde.t_min``; the data time t0 itself for RectifiedFlow, whose model
    is defined there: :mod:`ei_toolkit.data_start`) to the noise end ``t_end`` (default ``sde.t_max``) through the
    probability-flow ODE; returns the encoding, or a :class:`~ei_toolkit.Solution` with ``solution=True``.

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
    lo = default_t_end(sde) if lo is None else lo  # the data t0 for a family sampled into it (data_start.py)
    hi = sde.t_max if hi is None else hi
    if not lo < hi:
        raise ValueError(f"invert runs from data to noise: t_start must be below t_end; got t_start={lo:g}, "
                         f"t_end={hi:g}")
    if method is None and not isinstance(sde, MatrixLinearSDE):
        budget = nfe if nfe is not None or forward_grid is None else len(forward_grid) - 1
        method, named = default_inversion_method(budget)
        grid = named if grid is None else grid
    if exact:  # checked before any work
        if method is not None and not isinstance(get_integrator(method), Integrator):
            raise ValueError(f"exact=True inverts a sampler with a fixed grid; {get_integrator(method).name!r} "
                             "chooses its steps from the state (pass its accepted grid, Solution.times, as grid= of "
                             "a fixed-step method instead)")
        tol = default_tolerance(_working_dtype(x0, dtype)) if tol is None else _positive_float("tol", tol)
        max_iter = positive_int("max_iter", max_iter)
        krylov = positive_int("krylov", krylov)
    common: dict[str, Any] = dict(method=method, nfe=nfe, prediction=prediction, options=options, dtype=dtype)
    model = _Counted(model)  # every evaluation, those of a solve that fails included
    ends_fwd = {} if forward_grid is not None else {"t_start": lo, "t_end": hi}
    fwd_grid = forward_grid if forward_grid is not None else grid
    try:
        encoded = solve(model, x0, sde, grid=fwd_grid, progress=progress and not exact,
                        trajectory=trajectory and not exact, **ends_fwd, **common)
    except NumericalError:
        if not exact:
            raise
        encoded = None
    if not exact:
        encoded.stats["seconds"] = time.perf_counter() - start
        return encoded if solution else encoded.x
    ends_rev = {} if reverse_grid is not None else {"t_start": hi, "t_end": lo}
    rev_grid = reverse_grid if reverse_grid is not None else grid

    def sampler(x: torch.Tensor) -> Solution:  # F: noise end -> data end
        return solve(model, x, sde, grid=rev_grid, **ends_rev, **common)

    def ddim_grid() -> torch.Tensor:
        """The sampler's grid points, increasing, for DDIM (a start at zero terminal SNR: the grid from t_max with
        its end moved to t_terminal, as sampling lays it)."""
        if fwd_grid is not None and not isinstance(fwd_grid, str):
            return fwd_grid
        chosen = get_integrator(common["method"] if common["method"] is not None else DEFAULT_MATRIX_METHOD)
        steps = chosen.steps_for_nfe(10 if nfe is None else nfe)
        terminal = hi == getattr(sde, "t_terminal", None)
        grid = cached_grid(sde, fwd_grid or chosen.default_grid, steps, sde.t_max if terminal else hi, lo).flip(0)
        if terminal:
            grid = grid.clone()
            grid[-1] = hi
        return grid

    fallback = [encoded is None]

    def encoder(x: torch.Tensor) -> Solution:  # G: data end -> noise end
        """The method's own forward solve; where it diverges (strong extrapolation over long steps), DDIM on the
        same grid points from then on: the start and preconditioner only need to be near the inverse."""
        if not fallback[0]:
            try:
                return solve(model, x, sde, grid=fwd_grid, **ends_fwd, **common)
            except NumericalError:
                fallback[0] = True
        return solve(model, x, sde, grid=ddim_grid(), **{**common, "method": "ddim", "nfe": None})

    if encoded is None:
        encoded = encoder(x0)
        encoded.method = str(get_integrator(common["method"] or DEFAULT_MATRIX_METHOD).name)
    out = _exact(sampler, encoder, x0, encoded, tol, max_iter, krylov, progress, solution, start)
    encoded.nfe = encoded.stats["nfe"] = model.calls
    encoded.stats["encoder"] = "ddim" if fallback[0] else encoded.method
    return out


def _exact(sampler: Any, encoder: Any, x0: torch.Tensor, encoded: Solution, tol: float, max_iter: int,
           krylov: int, progress: bool, solution: bool, start: float) -> torch.Tensor | Solution:
    """Newton's method on F(x) = x0 with GMRES, right-preconditioned by the forward solve (module docstring)."""
    work = encoded.x.dtype
    x0w = x0.to(work)
    def run(fn: Any, x: torch.Tensor, tolerate: bool = False) -> torch.Tensor:
        try:
            sol = fn(x)
        except NumericalError:
            if not tolerate:
                raise
            return torch.full_like(x, math.nan)  # a trial point the sampler cannot integrate: no better
        return sol.x

    x = encoded.x  # G(x0): the start
    fx = run(sampler, x)
    scale = _norms(x0w).clamp_min(torch.finfo(torch.float64).tiny)
    residual = _norms(fx - x0w) / scale
    root = math.sqrt(torch.finfo(work).eps)  # finite-difference steps: half the working digits
    shape = (-1,) + (1,) * (x0.ndim - 1)
    iterations = inner = 0
    width = krylov
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_iter, desc=f"exact inversion ({encoded.method})", unit="iter")
    try:
        while bool((residual > tol).any()):
            if iterations == max_iter:
                raise NumericalError(
                    f"exact inversion with {encoded.method} did not converge in max_iter={max_iter} iterations: the "
                    f"round trip's relative residual is {float(residual.max()):.3g} > tol={tol:g} for "
                    f"{int((residual > tol).sum())} of {len(residual)} samples; raise max_iter or tol")
            iterations += 1
            g_fx = run(encoder, fx)

            def operator(v: torch.Tensor, fx: torch.Tensor = fx, g_fx: torch.Tensor = g_fx, x: torch.Tensor = x
                         ) -> tuple[torch.Tensor, torch.Tensor]:
                """(J M v, M v) by forward differences: M = G'(F(x)), J = F'(x)."""
                e1 = (root * (1 + _norms(fx))).to(work).view(shape)
                mv = (run(encoder, fx + e1 * v) - g_fx) / e1
                e2 = (root * (1 + _norms(x)) / _norms(mv).clamp_min(1e-300)).to(work).view(shape)
                return (run(sampler, x + e2 * mv) - fx) / e2, mv

            direction, k = _gmres(operator, fx - x0w, width, FORCING if width == krylov else FORCING**2)
            inner += k
            x, fx, residual, stuck = _line_search(run, sampler, x, fx, direction, x0w, scale, residual, tol, shape)
            if bool(stuck.any()):
                if width == krylov:  # one retry from the new point with a wider, tighter Krylov solve
                    width = 4 * krylov
                    continue
                raise NumericalError(
                    f"exact inversion with {encoded.method} stalled after {iterations} iterations: the round trip's "
                    f"relative residual stays at {float(residual[stuck].max()):.3g} > tol={tol:g} for "
                    f"{int(stuck.sum())} samples (no step along Newton's direction lowers it, also with {width} "
                    "Krylov vectors: the model's round-off, or a sampler that is not invertible there, e.g. "
                    "clipping or too few steps); raise tol, use float64 or more steps")
            width = krylov
            if bar is not None:
                bar.update(1)
                bar.set_postfix(residual=f"{float(residual.max()):.2g}")
    finally:
        if bar is not None:
            bar.close()
    encoded.x = x
    encoded.trajectory = None
    encoded.stats.update(iterations=iterations, krylov=inner, residual=float(residual.max()),
                         tol=tol, exact=True, seconds=time.perf_counter() - start)
    return encoded if solution else x


def _gmres(operator: Any, r: torch.Tensor, m: int, forcing: float) -> tuple[torch.Tensor, int]:
    """Per-sample GMRES for (J M) z = r from z = 0, stopped when every sample's linear residual is below
    ``forcing`` |r| or after ``m`` iterations; returns (M z, iterations). The Krylov vectors of the batch are
    orthogonalised per sample (modified Gram-Schmidt), the small least-squares problems solved batched."""
    b = r.shape[0]
    beta = _norms(r)
    basis = [r / beta.clamp_min(1e-300).to(r.dtype).view((-1,) + (1,) * (r.ndim - 1))]
    images: list[torch.Tensor] = []
    h = torch.zeros(b, m + 1, m, dtype=torch.float64)
    y = torch.zeros(b, 0, dtype=torch.float64)
    k = 0
    for j in range(m):
        k = j + 1
        w, mv = operator(basis[j])
        images.append(mv)
        for i in range(j + 1):
            hij = _dots(w, basis[i])
            h[:, i, j] = hij
            w = w - hij.to(w.dtype).view((-1,) + (1,) * (w.ndim - 1)) * basis[i]
        h[:, j + 1, j] = _norms(w)
        basis.append(w / h[:, j + 1, j].clamp_min(1e-300).to(w.dtype).view((-1,) + (1,) * (w.ndim - 1)))
        rhs = torch.zeros(b, j + 2, 1, dtype=torch.float64)
        rhs[:, 0, 0] = beta
        hj = h[:, : j + 2, : j + 1]
        y = torch.linalg.lstsq(hj, rhs).solution  # (b, j + 1, 1)
        left = torch.linalg.vector_norm(rhs - hj @ y, dim=(1, 2))
        y = y[:, :, 0]
        if bool((left <= forcing * beta).all()):
            break
    out = torch.zeros_like(r)
    for j, mv in enumerate(images):
        out = out + y[:, j].to(r.dtype).view((-1,) + (1,) * (r.ndim - 1)) * mv
    return out, k


def _line_search(run: Any, sampler: Any, x: torch.Tensor, fx: torch.Tensor, direction: torch.Tensor,
                 x0w: torch.Tensor, scale: torch.Tensor, residual: torch.Tensor, tol: float, shape: tuple
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x - beta d with beta = 1, 1/2, ... per sample until its residual falls (samples already within ``tol``
    stay); returns the new x, F(x), residuals, and the samples whose residual did not fall by beta = MIN_BETA."""
    searching = residual > tol
    beta = torch.ones_like(residual)
    while bool(searching.any()) and float(beta.min()) >= MIN_BETA:
        trial = x - beta.to(x.dtype).view(shape) * direction
        f_trial = run(sampler, trial, True)
        res_trial = _norms(f_trial - x0w) / scale
        better = searching & (res_trial < residual) & torch.isfinite(res_trial)
        keep = better.view(shape)
        x = torch.where(keep, trial, x)
        fx = torch.where(keep, f_trial, fx)
        residual = torch.where(better, res_trial, residual)
        searching = searching & ~better
        beta = beta / 2
    return x, fx, residual, searching


def _dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner products (float64)."""
    return (a.reshape(a.shape[0], -1).to(torch.float64) * b.reshape(b.shape[0], -1).to(torch.float64)).sum(1)


class _Counted:
    """``model`` with a count of its calls; other attributes (e.g. ``guidance_scale``) read through."""

    def __init__(self, model: Model) -> None:
        self.model, self.calls = model, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model(x, t)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


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
