"""One entry point for sampling: :func:`sample` returns the final tensor, :func:`solve` a :class:`Solution`.

``model(x, t)`` returns a tensor shaped like ``x`` (eps, x0, v or score, per ``prediction``); ``t`` is a 1-D
tensor of the batch size in the SDE's own time units (fractional model timesteps for DiscreteVP). :func:`solve`
checks the arguments, builds a :class:`~ei_toolkit.model.ModelEvaluator` and a
:class:`~ei_toolkit.integrators.SolveRequest`, and hands them to the method: plans are computed in float64 once
per (method, SDE, grid) and cached by value; the loop multiplies by Python floats (or k x k matrices for matrix
SDEs), so nothing in it waits on the device.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .data_start import solve_from_data, starts_at_data
from .errors import NumericalError, abs_max, all_finite, positive_int
from .grids import HIGH_DIM, vp_or_logrho
from .integrators import INTEGRATORS, Integrator, Method, SolveRequest, get_integrator
from .integrators.base import plan_for
from .integrators.conditioning import check_roundoff
from .model import Model, ModelEvaluator
from .noise import check_generator
from .sde import LinearSDE, MatrixLinearSDE
from .solution import Solution
from .zero_snr import solve_from_infinite_noise, solve_to_infinite_noise

# Chosen by benchmarks/choose_default.py over the 24 mixture problems of benchmarks/results/accuracy.md and the trained
# networks of benchmarks/results/trained.md: see benchmarks/results/default.md. DEFAULTS_BY_NFE holds (largest nfe,
# method, grid) in increasing order; the grid VP_OR_LOGRHO is grids.vp_or_logrho(sde) (quadratic_t for variance-
# preserving schedules, uniform_logrho for the others). DEFAULT_METHOD is the choice at nfe=10 (and wherever a single
# name is needed: EIScheduler's config).
VP_OR_LOGRHO = "vp_or_logrho"
DEFAULT_METHOD = "x0-logrhoab1-mid-pc-lof"
DEFAULTS_BY_NFE: tuple[tuple[int | None, str, str], ...] = (
    (7, "x0-logrhoab1-unipc", VP_OR_LOGRHO), (14, DEFAULT_METHOD, VP_OR_LOGRHO),
    (None, "x0-logrhoab2-unipc-bh1", "uniform_logrho"))
DEFAULT_GRID = VP_OR_LOGRHO  # the grid at nfe=10
# Data of grids.HIGH_DIM (512) or more elements per sample (16 x 16 RGB and up) take DEFAULTS_BY_NFE_HIGH_DIM: the
# trained image-patch UNet (768 elements) wants steps at high noise where the digits model (64) and every mixture
# (2-256) want them near the data (benchmarks/results/default.md, "With the trained models"), as SD3 shifts its
# schedule toward noise for larger images (Esser et al. 2024, section 5.3.2) and the DPM-Solver authors advise another
# grid for high resolutions. The threshold lies between the largest mixture and the patch model; the high-dimensional
# table rests on that one trained model per family so far.
DEFAULTS_BY_NFE_HIGH_DIM: tuple[tuple[int | None, str, str], ...] = (
    (7, "logrhoab1-mid", "karras"), (14, "x0-logrhoab1-mid-pc", "uniform_logrho"),
    (None, "x0-logrhoab2-unipc", "uniform_logrho"))


# Under classifier-free guidance above GUIDED_ABOVE (a model that carries ``guidance_scale``, as
# ei.diffusion.classifier_free_guidance's do), extrapolation overshoots at NFE <= 20; GUIDED_DEFAULTS_BY_NFE holds what
# the guided digits models at scales 4 and 8 chose (benchmarks/results/default.md, trained.md); beyond its last
# entry, measured up to NFE 20, DEFAULTS_BY_NFE applies.
GUIDED_ABOVE = 2.0
GUIDED_DEFAULTS_BY_NFE: tuple[tuple[int, str, str], ...] = (
    (7, "euler", VP_OR_LOGRHO), (14, "x0-logrhoab1-mid-lof", VP_OR_LOGRHO),
    (20, "x0-logrhoab1-mid-pc", "uniform_logrho"))
GUIDED_METHOD = "x0-logrhoab1-mid-lof"  # the guided choice at nfe=10: DPM-Solver++(2M) as diffusers runs it
GUIDED_UP_TO_NFE = GUIDED_DEFAULTS_BY_NFE[-1][0]
# For matrix SDEs (no scalar rho): the most accurate method at NFE 10-20 in benchmarks/results/cld.md.
DEFAULT_MATRIX_METHOD = "tab2"
WORKING_DTYPES = (torch.float32, torch.float64)


def _grid_name(grid: str) -> str:
    return "quadratic_t (variance-preserving SDEs; uniform_logrho otherwise)" if grid == VP_OR_LOGRHO else grid


def describe_defaults() -> str:
    """The default by budget in words (for help texts): "logrhoab1-mid on uniform_logrho up to 6, ..."."""

    def words(table: Sequence[tuple[int | None, str, str]]) -> str:
        return ", ".join(f"{name} on {_grid_name(grid)} " + (f"up to {top}" if top is not None else "beyond")
                         for top, name, grid in table)

    return (f"{words(DEFAULTS_BY_NFE)}; for data of {HIGH_DIM} or more elements per sample "
            f"{words(DEFAULTS_BY_NFE_HIGH_DIM)}")


def _pick(table: Sequence[tuple[int | None, str, str]], n: int, sde: LinearSDE | None) -> tuple[str, str] | None:
    for top, name, grid in table:
        if top is None or n <= top:
            return name, vp_or_logrho(sde) if grid == VP_OR_LOGRHO else grid
    return None


def default_t_start(sde: LinearSDE) -> float:
    """Where a solve without ``t_start`` begins: ``sde.t_terminal`` (infinite noise: zero-SNR DiscreteVP,
    RectifiedFlow) where the SDE has one, else ``sde.t_max``."""
    terminal = getattr(sde, "t_terminal", None)
    return float(sde.t_max if terminal is None else terminal)


def default_t_end(sde: LinearSDE) -> float:
    """Where a solve without ``t_end`` stops: ``sde.t_min``, the model's smallest time, or the data ``sde.t0`` for a
    family that samples into the data by default (``ends_at_data``: RectifiedFlow, whose pipelines end at sigma = 0
    and whose default methods were chosen on runs to t = 0)."""
    return float(sde.t0 if getattr(sde, "ends_at_data", False) else sde.t_min)


def default_method(nfe: int | None = None, *, guidance_scale: float | None = None,
                   sde: LinearSDE | None = None, dim: int | None = None) -> tuple[str, str]:
    """sample()'s default (method, grid) for ``nfe`` model evaluations (None: 10), scalar SDEs:
    :data:`DEFAULTS_BY_NFE` (benchmarks/results/default.md; :func:`describe_defaults` says it in words), or
    :data:`DEFAULTS_BY_NFE_HIGH_DIM` for data of ``dim`` >= :data:`HIGH_DIM` elements per sample.

    With classifier-free guidance above scale 2 (``guidance_scale``): :data:`GUIDED_DEFAULTS_BY_NFE` up to its last
    budget. A grid given as :data:`VP_OR_LOGRHO` is ``quadratic_t`` when ``sde`` is variance preserving
    (alpha(t_max) < 1/2, or no sde given), else ``uniform_logrho``. A family with its own measured default
    (RectifiedFlow: benchmarks/results/flow.md) uses that, with ``dim`` likewise."""
    n = 10 if nfe is None else positive_int("nfe", nfe)
    if dim is not None:
        dim = positive_int("dim", dim)
    if guidance_scale is not None:
        g = float(guidance_scale)
        if not math.isfinite(g):
            raise ValueError(f"guidance_scale must be a finite number; got {guidance_scale!r}")
        picked = _pick(GUIDED_DEFAULTS_BY_NFE, n, sde) if g > GUIDED_ABOVE else None
        if picked is not None:
            return picked
    own = getattr(sde, "default_method", None)  # a family with its own measured default (RectifiedFlow: flow.md)
    high = dim is not None and dim >= HIGH_DIM
    if callable(own):
        return own(n, high_dim=high)
    picked = _pick(DEFAULTS_BY_NFE_HIGH_DIM if high else DEFAULTS_BY_NFE, n, sde)
    if picked is None:
        raise RuntimeError("DEFAULTS_BY_NFE must end with an entry without a bound (None)")
    return picked


# The forward direction (data to noise: ei.invert, ei.log_likelihood) has its own default, chosen by
# benchmarks/bench_inversion.py: per NFE (10, 20, 50) the method with the lowest geometric mean of the relative
# encoding error over nine mixtures (DDPM linear, EDM, rectified flow with a velocity model) on uniform_logrho,
# switching at the geometric midpoint of the measured budgets (benchmarks/results/inversion.md). Its encoding error
# is at worst 0.33x (NFE 10), 0.19x (20) and 0.034x (50) the best diffusers inverse scheduler's on the DDPM problems
# (round trips: see the file).
INVERSION_DEFAULTS_BY_NFE: tuple[tuple[int | None, str], ...] = ((31, "x0-logrhoab1"), (None, "x0-logrhoab2"))
INVERSION_GRID = "uniform_logrho"


def default_inversion_method(nfe: int | None = None) -> tuple[str, str]:
    """The default (method, grid) of a forward solve (t_start < t_end) with ``nfe`` evaluations (None: 10)."""
    n = 10 if nfe is None else positive_int("nfe", nfe)
    return next(name for top, name in INVERSION_DEFAULTS_BY_NFE if top is None or n <= top), INVERSION_GRID


def guidance_scale_of(model: object) -> float | None:
    """The classifier-free guidance scale a model declares (attribute ``guidance_scale``; None if it declares
    none): :func:`ei_toolkit.diffusion.classifier_free_guidance` sets it."""
    g = getattr(model, "guidance_scale", None)
    return None if g is None or isinstance(g, bool) or not isinstance(g, int | float) else float(g)


def _check_time(name: str, v: object) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        f = math.nan
    if isinstance(v, bool) or not math.isfinite(f):
        raise ValueError(f"{name} must be a finite real number; got {v!r}")
    return f


def grid_ends(grid: object, t_start: object, t_end: object) -> tuple[torch.Tensor | None, float | None,
                                                                      float | None]:
    """(the explicit grid's times or None, t_start, t_end) checked: an explicit grid gives its own ends (then
    t_start/t_end must be unset) and has at least 2 times; a grid name or None leaves the ends as given."""
    t_start, t_end = _check_time("t_start", t_start), _check_time("t_end", t_end)
    if grid is None or isinstance(grid, str):
        return None, t_start, t_end
    if t_start is not None or t_end is not None:
        raise ValueError("an explicit grid gives its own start and end: leave t_start/t_end unset")
    times = torch.as_tensor(grid, dtype=torch.float64).flatten()
    if times.numel() < 2:
        raise ValueError(f"an explicit grid needs at least 2 times; got {times.numel()}")
    return times, float(times[0]), float(times[-1])


def solve(
    model: Model,
    x: torch.Tensor,
    sde: LinearSDE | MatrixLinearSDE,
    *,
    method: str | Method | None = None,
    nfe: int | None = None,
    grid: str | torch.Tensor | None = None,
    t_start: float | None = None,
    t_end: float | None = None,
    prediction: str = "eps",
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    progress: bool = False,
    trajectory: bool = False,
    lam: float | None = None,
    eta: float | None = None,
    brownian: Callable[[float, float], torch.Tensor] | None = None,
    options: dict[str, Any] | None = None,
    clip_x0: float | None = None,
    dynamic_threshold: float | None = None,
    dtype: torch.dtype | None = None,
    callback: Callable[[int, float, torch.Tensor], None] | None = None,
) -> Solution:
    """Integrate the probability-flow ODE of ``sde`` (or, for a stochastic method, its reverse SDE) from ``t_start``
    (default ``sde.t_max``; ``sde.t_terminal``, pure noise, where the SDE has one) down to ``t_end`` (default
    ``sde.t_min``; the data, t0, for RectifiedFlow: :func:`default_t_end`) with exactly ``nfe`` model evaluations
    (default 10).

    ``method`` names a registered method (``ei_toolkit.INTEGRATORS``; default: :func:`default_method` of nfe,
    ``logrhoab2`` on ``uniform_logrho`` at nfe 7-19, ``tab2`` for matrix SDEs) or is a method object; ``grid``
    names a time grid (``ei_toolkit.GRIDS``; default: the method's) or gives
    the times explicitly (then ``t_start``/``t_end`` must not be given: the grid's ends are used).
    Stochastic methods (``"sddim"``: stochastic DDIM) take ``lam`` (lambda >= 0) or DDIM's ``eta``; their noise comes
    from ``generator`` (one, or a list with one per sample: sample n then depends on generator n only) or from a
    Brownian path ``brownian(s0, s1)`` over s = -rho (:func:`ei_toolkit.adapters.brownian_motion`).
    Black-box methods (``"torchdiffeq:<name>"``) take ``options`` (``frame``, ``rtol``, ``atol``, ``max_nfe``).
    ``clip_x0`` clamps the data prediction to [-clip_x0, clip_x0]; ``dynamic_threshold`` (a percentile such as
    0.995) applies Imagen's dynamic thresholding to it, for pixel-space models.

    The state is integrated in ``dtype`` (default: x's dtype, at least float32) while the model is called with
    x's dtype; the result has x's dtype. ``Solution.stats`` reports nfe, steps, grid and wall time.

    ``callback(i, t, x)`` is called after each step of a fixed-grid method with the index i of the grid point
    reached (1 to steps), its time t and the state there (in the working precision; a predictor-corrector method
    reports the corrected state).
    """
    start = time.perf_counter()
    matrix = isinstance(sde, MatrixLinearSDE)
    if not matrix and not isinstance(sde, LinearSDE):
        raise TypeError(f"sde must be an ei_toolkit.LinearSDE or MatrixLinearSDE; got {type(sde).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.is_complex():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"x must be a real floating-point tensor; got {got}")
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"x must have a batch dimension first; got shape {tuple(x.shape)}")
    if matrix and (x.ndim < 2 or x.shape[1] != sde.k):
        raise ValueError(f"x must have shape (batch, {sde.k}, ...) for this {sde.k}x{sde.k} matrix SDE; got "
                         f"{tuple(x.shape)}")
    work = _working_dtype(x, dtype)
    times, t_start, t_end = grid_ends(grid, t_start, t_end)
    explicit = times is not None
    if method is None and not matrix:  # the default depends on the budget: nfe, or the explicit grid's steps
        budget = len(times) - 1 if explicit and nfe is None else nfe
        if t_start is not None and t_end is not None and t_start < t_end:  # forward: the inversion default
            method, default_grid = default_inversion_method(budget)
        else:
            method, default_grid = default_method(budget, guidance_scale=guidance_scale_of(model), sde=sde,
                                                  dim=x[0].numel())
        grid = default_grid if grid is None else grid
    chosen = get_integrator(method if method is not None else DEFAULT_MATRIX_METHOD)
    chosen = chosen.configure(lam=lam, eta=eta, options=options)
    if matrix and not chosen.matrix:
        raise ValueError(f"method {chosen.name!r} does not support matrix SDEs; valid: "
                         f"{', '.join(n for n, m in INTEGRATORS.items() if m.matrix)}")
    check_generator(generator, x.shape[0])
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable as callback(i, t, x); got {type(callback).__name__}")
    if callback is not None and not isinstance(chosen, Integrator):
        raise ValueError(f"callback= reports the steps of a fixed-grid method; {chosen.name!r} chooses its own steps")
    if not explicit:
        forward = t_start is not None and t_end is not None and t_start < t_end
        if not forward:
            t_start = default_t_start(sde) if t_start is None else t_start
            t_end = default_t_end(sde) if t_end is None else t_end
        if t_start == t_end:
            raise ValueError(f"t_start and t_end must differ (t_start > t_end samples, t_start < t_end inverts); got "
                             f"both {t_start}")
        if not forward and t_start < t_end:
            raise ValueError(f"t_start must be greater than t_end (sampling runs backwards in time; to integrate "
                             f"forward, from data to noise, give both t_start < t_end or use ei.invert); got "
                             f"t_start={t_start}, t_end={t_end}")
        lo = sde.t_min if matrix else sde.t0
        for name, v in (("t_start", t_start), ("t_end", t_end)):
            terminal = v == getattr(sde, "t_terminal", None)  # infinite noise: a start, or an encoding's end
            if not lo <= v <= sde.t_max and not (terminal and (name == "t_start") != forward):
                raise ValueError(f"{name} must lie in the SDE's domain [{lo:g}, {sde.t_max:g}]; got {v}")
    forward = t_end > t_start
    if forward:
        _check_forward(chosen, sde, t_start)
    evaluator = ModelEvaluator(model, sde, prediction, clip_x0=clip_x0, dynamic_threshold=dynamic_threshold,
                               model_dtype=x.dtype)
    x_max = abs_max(x)  # one synchronisation: finiteness, and the scale the divergence check starts from
    if not math.isfinite(x_max):
        raise NumericalError(f"x is not finite at t_start = {t_start:g} (it holds NaN or inf)")
    request = SolveRequest(evaluator=evaluator, x=x.to(work), sde=sde, t_start=t_start, t_end=t_end, nfe=nfe,
                           grid=grid, generator=generator, brownian=brownian, trajectory=trajectory,
                           progress=progress, callback=callback)
    gains: list[float | None] = []

    def check(m: Method, r: SolveRequest) -> None:
        gains.append(_check_roundoff(m, r, x.dtype))

    def run(m: Method, r: SolveRequest) -> Solution:
        """The request's own run, past a start at the data: the hooks at infinite noise, else the method."""
        if r.t_start == getattr(sde, "t_terminal", None):  # hook: the first step from rho = inf (zero terminal SNR)
            return solve_from_infinite_noise(m, r, check=check)
        if r.t_end == getattr(sde, "t_terminal", None):  # hook: an encoding's last step, into rho = inf
            return solve_to_infinite_noise(m, r, check=check)
        check(m, r)
        return _named(m, r, x.dtype)

    # hook: an encoding's first step, out of rho = 0 (data_start.py)
    sol = solve_from_data(chosen, request, run) if starts_at_data(sde, t_start, t_end) else run(chosen, request)
    gain = max((g for g in gains if g is not None), default=None)
    if gain is not None:  # the plan's round-off gain for x's dtype (integrators/conditioning.py)
        sol.stats["roundoff_gain"] = gain
    end_max = abs_max(sol.x)  # one synchronisation, after the loop
    if not math.isfinite(end_max):
        raise NumericalError(f"{_describe(chosen, request, x.dtype)}: the state is not finite at the end "
                             f"(t = {t_end:g}) although every model output was: "
                             f"the {work} working precision overflowed; pass dtype=torch.float64")
    if not matrix:
        _check_divergence(chosen, request, x.dtype, x_max, end_max)
    sol.x = sol.x.to(x.dtype)
    if x.dtype == torch.float16 and not all_finite(sol.x):
        raise NumericalError(f"{_describe(chosen, request, x.dtype)}: the result overflows float16 (|x| > 65504) "
                             "when cast back to x's dtype; the run diverged or the data scale needs float32")
    if sol.trajectory is not None:
        sol.trajectory = sol.trajectory.to(x.dtype)
    sol.stats["method"] = chosen.name
    sol.stats["seconds"] = time.perf_counter() - start
    return sol


EPS_BOUND = 1e3
"""Elementwise bound on |eps| used by the divergence check (a Gaussian noise prediction stays far below it, also
under strong guidance)."""


def _check_divergence(method: Method, request: SolveRequest, model_dtype: torch.dtype, start_max: float,
                      end_max: float) -> None:
    """Report a run whose result the ODE cannot reach. In y = x / alpha the flow is dy/drho = eps (docs/math.md
    section 3), so |y_end| <= |y_start| + (rho_start - rho_end) max|eps| elementwise; with |eps| <= EPS_BOUND a
    larger result means the integrator diverged (a finite but astronomically wrong state is not returned)."""
    if getattr(request.sde, "t_terminal", None) in (request.t_start, request.t_end):
        return  # a start at (or an encoding to) infinite noise: no finite bound
    ends = torch.tensor([request.t_start, request.t_end], dtype=torch.float64)
    alpha, rho = request.sde.alpha(ends).tolist(), request.sde.rho(ends).tolist()
    if not (alpha[0] > 0 and alpha[1] > 0 and math.isfinite(rho[0]) and math.isfinite(rho[1])):
        return
    bound = start_max / alpha[0] + EPS_BOUND * abs(rho[0] - rho[1])  # either direction
    if end_max / alpha[1] > bound:
        raise NumericalError(f"{_describe(method, request, model_dtype)}: the result diverged: max |x / alpha| = "
                             f"{end_max / alpha[1]:.3g} at t = {request.t_end:g}, beyond the {bound:.3g} the ODE can "
                             f"reach from x (|eps| <= {EPS_BOUND:g}); use more steps or another method or grid")


def _check_forward(method: Method, sde: LinearSDE | MatrixLinearSDE, t_start: float) -> None:
    """What a forward solve (t_start < t_end: data to noise, the probability-flow ODE run as an encoder) refuses:
    stochastic methods (the reverse SDE runs toward the data only); a start below ``sde.t_min`` (the model is
    evaluated where a forward step starts, and the data time rho = 0 is outside its domain), except the data time
    itself for a family sampled into the data (:mod:`ei_toolkit.data_start`)."""
    if t_start < sde.t_min and not starts_at_data(sde, t_start, math.inf):
        raise ValueError(f"a forward solve starts where the model is defined: t_start must be >= sde.t_min = "
                         f"{sde.t_min:g}{' or be the data time t0' if getattr(sde, 'ends_at_data', False) else ''}; "
                         f"got {t_start:g}")
    if method.stochastic:
        raise ValueError(f"{method.name!r} is stochastic: the reverse SDE runs from noise to data only; integrate "
                         f"forward (t_start < t_end) with a deterministic method")


def _describe(method: Method, request: SolveRequest, model_dtype: torch.dtype) -> str:
    grid = "explicit" if request.explicit_grid else (request.grid or getattr(method, "default_grid", None))
    dtype = str(model_dtype).removeprefix("torch.")
    return f"{method.name} on the {grid} grid (nfe={request.nfe}, {dtype} model input)"


def _check_roundoff(method: Method, request: SolveRequest, model_dtype: torch.dtype) -> float | None:
    """A clear error, before the run, when the plan would amplify the model dtype's round-off into noise
    (:mod:`ei_toolkit.integrators.conditioning`)."""
    if not isinstance(method, Integrator) or model_dtype == torch.float64:
        return None
    times, grid_name = method.times(request)
    nfe = request.nfe if request.nfe is not None else (len(times) - 1) * method.evals_per_step
    return check_roundoff(plan_for(method, request.sde, times), request.sde, model_dtype, method.name, grid_name,
                          nfe, request.evaluator.prediction)


def _named(method: Method, request: SolveRequest, model_dtype: torch.dtype) -> Solution:
    """``method.solve(request)``; numerical trouble is reported with the method, grid, nfe and dtype named."""
    try:
        return method.solve(request)
    except NumericalError as exc:
        msg = str(exc)
        if msg.startswith(method.name):
            raise
        try:
            named = type(exc)(f"{_describe(method, request, model_dtype)}: {msg}")
        except Exception:  # an exception class with another signature
            raise exc from None
        raise named from exc


def _working_dtype(x: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return x.dtype if x.dtype in WORKING_DTYPES else torch.float32
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype (the working precision); got {dtype!r}")
    return dtype


def sample(
    model: Model,
    x: torch.Tensor,
    sde: LinearSDE | MatrixLinearSDE,
    *,
    method: str | Method | None = None,
    nfe: int | None = None,
    grid: str | torch.Tensor | None = None,
    t_start: float | None = None,
    t_end: float | None = None,
    prediction: str = "eps",
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    progress: bool = False,
    trajectory: bool = False,
    lam: float | None = None,
    eta: float | None = None,
    brownian: Callable[[float, float], torch.Tensor] | None = None,
    options: dict[str, Any] | None = None,
    clip_x0: float | None = None,
    dynamic_threshold: float | None = None,
    dtype: torch.dtype | None = None,
    callback: Callable[[int, float, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Like :func:`solve` (same arguments), returning only the final tensor."""
    return solve(model, x, sde, method=method, nfe=nfe, grid=grid, t_start=t_start, t_end=t_end,
                 prediction=prediction, generator=generator, progress=progress, trajectory=trajectory, lam=lam,
                 eta=eta, brownian=brownian, options=options, clip_x0=clip_x0,
                 dynamic_threshold=dynamic_threshold, dtype=dtype, callback=callback).x
