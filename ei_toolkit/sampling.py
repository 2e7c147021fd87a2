"""One entry point for sampling: :func:`sample` returns the final tensor, :func:`solve` a :class:`Solution`.

``model(x, t)`` returns a tensor shaped like ``x`` (eps, x0, v or score, per ``prediction``); ``t`` is a
1-D tensor of the batch size in the SDE's own time units (fractional model timesteps for DiscreteVP).
Coefficients are computed in float64 once per (method, SDE, grid) and cached; the loop multiplies by Python
floats, so dtype and device follow ``x`` and nothing in the loop waits on the device.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .adapters import model_to_eps
from .diffusion.thresholding import check_threshold_args, threshold_x0
from .errors import NumericalError
from .grids import time_grid
from .integrators import Integrator, MultistepPlan, RungeKuttaPlan, get_integrator
from .sde import LinearSDE

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
PREDICTIONS = ("eps", "x0", "v", "score")
# The most accurate method per evaluation in benchmarks/results/accuracy.md (with its grid, uniform_logrho).
DEFAULT_METHOD = "logrhoab2"

_PLANS: OrderedDict[tuple, MultistepPlan | RungeKuttaPlan] = OrderedDict()
_GRIDS: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_EVAL_CACHE: OrderedDict[tuple, tuple] = OrderedDict()
_PLAN_CACHE_SIZE = 64


@dataclass
class Solution:
    """What :func:`solve` returns."""

    x: torch.Tensor  # the state at t_end
    times: torch.Tensor  # the time grid (float64), from t_start to t_end
    eval_times: torch.Tensor  # the time of each model evaluation (float64)
    nfe: int  # model evaluations used
    method: str
    grid: str
    trajectory: torch.Tensor | None = None  # states at every grid time, stacked time-first, if requested
    stats: dict[str, float] = field(default_factory=dict)


def plan_for(integrator: Integrator, sde: LinearSDE, grid: torch.Tensor) -> MultistepPlan | RungeKuttaPlan:
    """The cached float64 plan of ``integrator`` on ``grid``."""
    key = (id(integrator), integrator.name, id(sde._b), grid.numpy().tobytes())
    plan = _PLANS.get(key)
    if plan is None:
        plan = integrator.plan(sde, grid)
        _check_plan(plan, integrator.name)
        _PLANS[key] = plan
        if len(_PLANS) > _PLAN_CACHE_SIZE:
            _PLANS.popitem(last=False)
    else:
        _PLANS.move_to_end(key)
    return plan


def _check_plan(plan: MultistepPlan | RungeKuttaPlan, name: str) -> None:
    values = list(plan.psi) + [w for row in plan.weights for w in row]
    if not all(v == v and abs(v) != float("inf") for v in values):
        raise NumericalError(f"the coefficients of {name!r} on this grid are not finite")


class _ModelEvaluator:
    """Calls the model at the plan's evaluation times, converts its output to eps, checks it."""

    def __init__(self, model: Model, x: torch.Tensor, sde: LinearSDE, eval_times: torch.Tensor,
                 prediction: str, clip_x0: float | None = None, dynamic_threshold: float | None = None) -> None:
        self.model, self.prediction, self.shape, self.dtype = model, prediction, x.shape, x.dtype
        self.clip_x0, self.dynamic_threshold = clip_x0, dynamic_threshold
        time_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        self.times64 = eval_times
        # per (times, device, dtype): one host-to-device copy, then reused by every call
        key = (eval_times.numpy().tobytes(), id(sde._b), x.device, time_dtype)
        cached = _EVAL_CACHE.get(key)
        if cached is None:
            a, s = sde.alpha(eval_times), sde.sigma(eval_times)
            cached = (eval_times.to(device=x.device, dtype=time_dtype), a.tolist(), s.tolist(),
                      bool(torch.allclose(a * a + s * s, torch.ones_like(a), atol=1e-6)))
            _EVAL_CACHE[key] = cached
            if len(_EVAL_CACHE) > _PLAN_CACHE_SIZE:
                _EVAL_CACHE.popitem(last=False)
        self.t_dev, self.alpha, self.sigma, variance_preserving = cached
        self.batch = x.shape[0]
        if prediction == "v" and not variance_preserving:
            raise ValueError("prediction='v' needs a variance-preserving SDE (alpha^2 + sigma^2 = 1)")
        self.check_now = x.device.type == "cpu"
        self.sum_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        self.finite: list[torch.Tensor] = []
        self.count = 0

    def __call__(self, x: torch.Tensor, k: int) -> torch.Tensor:
        out = self.model(x, self.t_dev[k].expand(self.batch))
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the model must return a tensor; got {type(out).__name__}")
        if out.shape != self.shape:
            raise ValueError(f"the model returned shape {tuple(out.shape)}; expected {tuple(self.shape)} (the shape "
                             "of x)")
        if out.dtype != self.dtype:
            raise TypeError(f"the model returned dtype {out.dtype}; expected {self.dtype} (the dtype of x)")
        # One reduction instead of an element-wise isfinite: any NaN or inf makes the sum non-finite
        # (accumulated in at least float32, so a large finite half-precision output does not overflow).
        # On a GPU the sums are kept and checked once, after the loop.
        total = out.sum(dtype=self.sum_dtype)
        if self.check_now:
            if not bool(torch.isfinite(total)):
                self._raise(k)
        else:
            self.finite.append(total)
        self.count += 1
        a, s = self.alpha[k], self.sigma[k]
        eps = model_to_eps(self.prediction, out, x, a, s)
        if self.clip_x0 is None and self.dynamic_threshold is None:
            return eps
        x0 = threshold_x0((x - s * eps) / a, self.clip_x0, self.dynamic_threshold)
        return (x - a * x0) / s

    def _raise(self, k: int) -> None:
        raise NumericalError(f"the model output is not finite at evaluation {k} (t = {self.times64[k].item():.6g})")

    def check(self) -> None:
        """Report a non-finite model output (one device synchronisation, after the loop)."""
        if self.finite:
            flags = torch.isfinite(torch.stack(self.finite)).cpu()
            if not bool(flags.all()):
                self._raise(int((~flags).nonzero()[0]))


def solve(
    model: Model,
    x: torch.Tensor,
    sde: LinearSDE,
    *,
    method: str | Integrator = DEFAULT_METHOD,
    nfe: int | None = None,
    grid: str | torch.Tensor | None = None,
    t_start: float | None = None,
    t_end: float | None = None,
    prediction: str = "eps",
    generator: torch.Generator | None = None,
    progress: bool = False,
    trajectory: bool = False,
    lam: float | None = None,
    eta: float | None = None,
    brownian: Callable[[float, float], torch.Tensor] | None = None,
    options: dict | None = None,
    clip_x0: float | None = None,
    dynamic_threshold: float | None = None,
) -> Solution:
    """Integrate the probability-flow ODE of ``sde`` from ``t_start`` (default ``sde.t_max``) down to
    ``t_end`` (default ``sde.t_min``) with exactly ``nfe`` model evaluations (default 10).

    ``method`` names an integrator (``ei_toolkit.integrators.INTEGRATORS``) and ``grid`` a time grid
    (``ei_toolkit.grids.GRIDS``; default: the integrator's recommended grid) or gives the times explicitly.
    ``method="sddim"`` is stochastic DDIM with ``lam`` (lambda >= 0) or DDIM's ``eta``; its noise comes from
    ``generator``, or from a Brownian path ``brownian(s0, s1)`` over s = -rho (e.g.
    :func:`ei_toolkit.adapters.brownian_motion`, shared with :func:`ei_toolkit.sdeint`).
    ``method="torchdiffeq:<name>"`` hands the transformed ODE to torchdiffeq (``options``: ``frame``,
    ``rtol``, ``atol``, ``max_nfe``); fixed-grid methods get ``nfe`` evaluations, adaptive ones ignore it.
    ``clip_x0`` clamps the data prediction to [-clip_x0, clip_x0]; ``dynamic_threshold`` (a percentile such
    as 0.995) applies Imagen's dynamic thresholding to it, for pixel-space models.
    """
    check_threshold_args(clip_x0, dynamic_threshold)
    from .sde.matrix import MatrixLinearSDE

    if isinstance(sde, MatrixLinearSDE):
        return _solve_matrix(model, x, sde, method, nfe, grid, t_start, t_end, prediction,
                             lam=lam, eta=eta, options=options, clip_x0=clip_x0, dynamic_threshold=dynamic_threshold)
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"sde must be an ei_toolkit.LinearSDE or MatrixLinearSDE; got {type(sde).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"x must be a floating-point tensor; got {got}")
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"x must have a batch dimension first; got shape {tuple(x.shape)}")
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; valid: {', '.join(PREDICTIONS)}")
    if not callable(model):
        raise TypeError("model must be callable as model(x, t)")
    if isinstance(method, str) and method.startswith("torchdiffeq:"):
        if lam is not None or eta is not None:
            raise ValueError("lam/eta apply to method='sddim' only")
        return _solve_torchdiffeq(model, x, sde, method.split(":", 1)[1], nfe, grid, t_start, t_end, prediction,
                                  options or {})
    if options:
        raise ValueError("options= applies to torchdiffeq methods only")
    if method == "sddim":
        if lam is None and eta is None:
            raise ValueError("method='sddim' needs lam= (lambda >= 0) or eta= (DDIM's eta)")
        integrator = _stochastic_ddim(lam, eta)
    elif lam is not None or eta is not None:
        raise ValueError(f"lam/eta apply to method='sddim' only; {method!r} is deterministic")
    else:
        integrator = get_integrator(method)
    t_start = sde.t_max if t_start is None else float(t_start)
    t_end = sde.t_min if t_end is None else float(t_end)
    explicit = grid is not None and not isinstance(grid, str)
    if not explicit:
        if not t_start > t_end:
            raise ValueError(f"t_start must be greater than t_end (sampling runs backwards in time); got "
                             f"t_start={t_start}, t_end={t_end}")
        for name, v in (("t_start", t_start), ("t_end", t_end)):
            if not sde.t0 <= v <= sde.t_max:
                raise ValueError(f"{name} must lie in the SDE's domain [{sde.t0:g}, {sde.t_max:g}]; got {v}")
        steps = integrator.steps_for_nfe(10 if nfe is None else nfe)
        grid_name = grid or integrator.default_grid
        key = (id(sde._b), grid_name, steps, t_start, t_end)
        times = _GRIDS.get(key)
        if times is None:
            times = _GRIDS[key] = time_grid(sde, grid_name, steps, t_start, t_end)
            if len(_GRIDS) > _PLAN_CACHE_SIZE:
                _GRIDS.popitem(last=False)
    else:
        times = time_grid(sde, grid, 0, t_start, t_end)
        grid_name = "explicit"
        needed = (len(times) - 1) * integrator.evals_per_step
        if nfe is not None and nfe != needed:
            raise ValueError(f"nfe={nfe} does not match the explicit grid: {len(times) - 1} steps of "
                             f"{integrator.name} use {needed} evaluations")
    plan = plan_for(integrator, sde, times)
    evaluator = _ModelEvaluator(model, x, sde, plan.eval_times, prediction, clip_x0, dynamic_threshold)
    states: list[torch.Tensor] = [x] if trajectory else []
    n_steps = len(times) - 1
    bar = _Progress(n_steps) if progress else None

    def on_step(i: int, state: torch.Tensor) -> None:
        if trajectory:
            states.append(state)
        if bar is not None:
            bar.update(i)

    extra = {}
    if getattr(integrator, "stochastic", False):
        from .integrators.sddim import brownian_noise

        extra = {"generator": generator,
                 "noise": brownian_noise(brownian, plan, x.shape) if brownian is not None else None}
    elif brownian is not None:
        raise ValueError(f"brownian= applies to stochastic methods only; {integrator.name!r} is deterministic")
    out = integrator.integrate(plan, x, evaluator, callback=on_step if (trajectory or bar) else None, **extra)
    if bar is not None:
        bar.close()
    evaluator.check()
    return Solution(x=out, times=times.clone(), eval_times=plan.eval_times.clone(), nfe=evaluator.count,
                    method=integrator.name,
                    grid=grid_name, trajectory=torch.stack(states) if trajectory else None)


def sample(model: Model, x: torch.Tensor, sde: LinearSDE, *, method: str | Integrator = DEFAULT_METHOD,
           nfe: int | None = None, grid: str | torch.Tensor | None = None, t_start: float | None = None,
           t_end: float | None = None, prediction: str = "eps", generator: torch.Generator | None = None,
           progress: bool = False, lam: float | None = None, eta: float | None = None,
           brownian: Callable[[float, float], torch.Tensor] | None = None,
           options: dict | None = None, clip_x0: float | None = None,
           dynamic_threshold: float | None = None) -> torch.Tensor:
    """Like :func:`solve`, returning only the final tensor."""
    return solve(model, x, sde, method=method, nfe=nfe, grid=grid, t_start=t_start, t_end=t_end,
                 prediction=prediction, generator=generator, progress=progress, lam=lam, eta=eta,
                 brownian=brownian, options=options, clip_x0=clip_x0, dynamic_threshold=dynamic_threshold).x


def _solve_matrix(model: Model, x: torch.Tensor, sde: object, method: object, nfe: int | None,
                  grid: str | torch.Tensor | None, t_start: float | None, t_end: float | None, prediction: str,
                  **unsupported: object) -> Solution:
    """Matrix (gDDIM) SDEs: ddim and tab0..tab3 with matrix coefficients (see ei_toolkit.sde.matrix)."""
    from .sde.matrix import MATRIX_METHODS, matrix_grid, sample_matrix

    if method not in MATRIX_METHODS:
        raise ValueError(f"method {method!r} does not support matrix SDEs yet; valid: {', '.join(MATRIX_METHODS)}")
    if prediction != "eps":
        raise ValueError("matrix SDEs take eps-models (eps = -R_t^T score); got prediction={prediction!r}")
    used = [k for k, v in unsupported.items() if v is not None]
    if used:
        raise ValueError(f"{', '.join(used)} not supported for matrix SDEs")
    n = 10 if nfe is None else nfe
    g = grid if grid is not None else "quadratic_t"
    times = matrix_grid(sde, g, n, t_start, t_end)  # type: ignore[arg-type]
    out = sample_matrix(model, x, sde, points=MATRIX_METHODS[method], grid=times)
    return Solution(x=out, times=times, eval_times=times[:-1].clone(), nfe=len(times) - 1, method=str(method),
                    grid=g if isinstance(g, str) else "explicit")


_STOCHASTIC: dict[tuple, Integrator] = {}


def _stochastic_ddim(lam: float | None, eta: float | None) -> Integrator:
    from .integrators.sddim import StochasticDDIM

    key = (lam, eta)
    if key not in _STOCHASTIC:
        _STOCHASTIC[key] = StochasticDDIM(lam=lam, eta=eta)
    return _STOCHASTIC[key]


def _solve_torchdiffeq(model: Model, x: torch.Tensor, sde: LinearSDE, name: str, nfe: int | None,
                       grid: str | torch.Tensor | None, t_start: float | None, t_end: float | None,
                       prediction: str, options: dict) -> Solution:
    from .adapters import TORCHDIFFEQ_FIXED, TORCHDIFFEQ_METHODS, odeint

    if name not in TORCHDIFFEQ_METHODS:
        raise ValueError(f"unknown torchdiffeq method {name!r}; valid: {', '.join(TORCHDIFFEQ_METHODS)}")
    known = {"frame", "rtol", "atol", "max_nfe", "options"}
    if set(options) - known:
        raise ValueError(f"unknown options {sorted(set(options) - known)}; valid: {sorted(known)}")
    kw = dict(options)
    if name in TORCHDIFFEQ_FIXED:
        k = TORCHDIFFEQ_FIXED[name]
        explicit = grid is not None and not isinstance(grid, str)
        if not explicit:
            n = 10 if nfe is None else nfe
            if n < k or n % k:
                raise ValueError(f"nfe={n} is not possible for torchdiffeq:{name}: it uses {k} model evaluations "
                                 f"per step, so nfe must be a multiple of {k}")
            kw["steps"] = n // k
        kw["grid"] = grid
    elif nfe is not None or grid is not None:
        raise ValueError(f"torchdiffeq:{name} is adaptive: nfe/grid do not apply; set rtol/atol in options=")
    return odeint(model, x, sde, method=name, t_start=t_start, t_end=t_end, prediction=prediction, **kw)


class _Progress:
    """A minimal text progress bar on stderr."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.update(0)

    def update(self, i: int) -> None:
        width = 30
        done = int(width * i / max(self.total, 1))
        sys.stderr.write(f"\rsampling [{'#' * done}{'.' * (width - done)}] {i}/{self.total}")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")
