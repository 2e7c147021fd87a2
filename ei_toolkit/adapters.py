"""The transformed probability-flow ODE and reverse SDE handed to any torchdiffeq / torchsde method.

Frames of the ODE (DEIS, Zhang & Chen 2023, section 3; docs/math.md sections 2-3 and 6):

* ``"t"``: the original dx/dt = F x + G^2 / (2 sigma) eps(x, t);
* ``"rho"``: y = x / alpha, dy/drho = eps(alpha y, t(rho));
* ``"logrho"``: y = x / alpha, dy/dlog rho = rho eps(alpha y, t(rho)), well conditioned at both ends
  (rho spans 1e-2..1e2 for DDPM, so equal steps in log rho are equal relative changes of the noise level);
* matrix SDEs (gDDIM): ``"t"`` and ``"y"`` (y = Psi(t0, t) u).

The reverse SDE of the lambda-family (docs/math.md section 5) in the y-frame, rho decreasing:
dy = (1 + lambda^2) eps drho + lambda sqrt(2 rho) dW; torchsde needs increasing time, so the adapter runs
in s = -rho.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torchdiffeq
from torchdiffeq._impl.odeint import SOLVERS as _TORCHDIFFEQ_SOLVERS

from .errors import NumericalError, all_finite, positive_int
from .grids import time_grid
from .model import Model, ModelEvaluator
from .sde import LinearSDE
from .sde.matrix import apply_block
from .solution import Solution

FRAMES = ("t", "rho", "logrho")
MATRIX_FRAMES = ("t", "y")
TORCHDIFFEQ_METHODS = tuple(m for m in _TORCHDIFFEQ_SOLVERS if m != "scipy_solver")
# fixed-grid methods, with their model evaluations per step
TORCHDIFFEQ_FIXED = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4, "explicit_adams": 1}
# fixed-grid methods whose coefficients assume equal steps (torchdiffeq's Adams-Bashforth(-Moulton))
TORCHDIFFEQ_EQUAL_STEPS = ("explicit_adams", "implicit_adams", "fixed_adams")
TORCHSDE_METHODS = ("euler", "milstein", "srk", "midpoint", "heun", "euler_heun", "reversible_heun")


class NFEBudgetExceeded(NumericalError):
    """A black-box solver asked for more model evaluations than ``max_nfe`` allows."""


def _frames(sde: Any) -> tuple[str, ...]:
    return MATRIX_FRAMES if getattr(sde, "is_matrix", False) else FRAMES


class FlowODE(torch.nn.Module):
    """``func(tau, state)`` of the probability-flow ODE in one frame, for torchdiffeq (an ``nn.Module``, so
    ``torchdiffeq.odeint_adjoint`` finds the model's parameters): the one implementation of the probability-flow
    vector field in this package, for scalar and matrix SDEs (docs/math.md sections 2, 3 and 6).

    Scalar SDEs: frames ``"t"`` (dx/dt = F x + G^2 / (2 sigma) eps), ``"rho"`` (y = x / alpha, dy/drho = eps) and
    ``"logrho"`` (dy/dlog rho = rho eps, well conditioned at both ends). Matrix SDEs (u of shape (batch, k, ...)):
    ``"t"`` (du/dt = F u + 1/2 G G^T R^-T eps) and ``"y"`` (y = Psi(t0, t) u, dy/dt = Psi(t0, t) 1/2 G G^T R^-T eps:
    no linear part left, the analogue of dy/drho = eps).

    Use :meth:`tau` to map SDE times to the frame's time, :meth:`encode` / :meth:`decode` to map x to the frame's
    state and back; :attr:`nfe` counts model evaluations. ``max_nfe`` makes a runaway adaptive solver stop with
    :class:`NFEBudgetExceeded` instead of running on.
    """

    def __init__(self, model: Model, sde: Any, frame: str | None = None, prediction: str = "eps",
                 max_nfe: int | None = None, evaluator: ModelEvaluator | None = None) -> None:
        super().__init__()
        self.matrix = bool(getattr(sde, "is_matrix", False))
        frame = frame or ("y" if self.matrix else "logrho")
        if frame not in _frames(sde):
            raise ValueError(f"unknown frame {frame!r}; valid frames: {', '.join(_frames(sde))}")
        if max_nfe is not None and (isinstance(max_nfe, bool) or not isinstance(max_nfe, int) or max_nfe < 1):
            raise ValueError(f"max_nfe must be a positive integer or None; got {max_nfe!r}")
        self.model = model  # registered as a submodule when it is one
        self.evaluator = evaluator or ModelEvaluator(model, sde, prediction)
        self.sde, self.frame, self.prediction, self.max_nfe = sde, frame, prediction, max_nfe
        self.nfe = 0
        if not self.matrix:
            self._rho_lo = float(sde.rho(torch.tensor(sde.t0, dtype=torch.float64)))
            self._rho_hi = sde.rho_max

    def tau(self, t: torch.Tensor | float) -> torch.Tensor:
        """The frame's time of SDE time t."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.frame in ("t", "y"):
            return t
        rho = self.sde.rho(t)
        return rho if self.frame == "rho" else torch.log(rho)

    def t_of(self, tau: torch.Tensor) -> torch.Tensor:
        """SDE time of the frame's time tau (clamped to the domain: solvers may probe just outside)."""
        if self.frame in ("t", "y"):
            lo = self.sde.t_min if self.matrix else self.sde.t0
            return tau.clamp(lo, self.sde.t_max)
        rho = tau if self.frame == "rho" else torch.exp(tau)
        return self.sde.t_of_rho(rho.clamp(self._rho_lo, self._rho_hi))

    def _scale(self, t: torch.Tensor | float, inverse: bool, like: torch.Tensor) -> torch.Tensor:
        """The map state -> x (or x -> state with ``inverse``) at time t, applied to ``like``."""
        sde = self.sde
        if self.matrix:
            tt = float(t)
            return apply_block(sde.psi(sde.t0, tt) if inverse else sde.psi(tt, sde.t0), like)
        alpha = sde.alpha(torch.as_tensor(t, dtype=torch.float64)).to(like.dtype)
        return like / alpha if inverse else like * alpha

    def encode(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        return x if self.frame == "t" else self._scale(t, True, x)

    def decode(self, state: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        return state if self.frame == "t" else self._scale(t, False, state)

    def forward(self, tau: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        if self.max_nfe is not None and self.nfe > self.max_nfe:
            raise NFEBudgetExceeded(f"the solver needed more than max_nfe={self.max_nfe} model evaluations "
                                    f"(at {self.frame} = {float(tau):.6g}); loosen rtol/atol or raise max_nfe")
        if not all_finite(state):
            raise NumericalError(f"the ODE state is not finite at {self.frame} = {float(tau):.6g}")
        sde = self.sde
        t = self.t_of(torch.as_tensor(tau, dtype=torch.float64).reshape(()))
        x = self.decode(state, t)
        eps = self.evaluator(x, t)
        if self.matrix:
            tt = float(t)
            kernel = 0.5 * sde.GGt(tt) @ np.linalg.inv(sde.factor(tt)).T
            if self.frame == "t":
                return apply_block(sde.F(tt), x) + apply_block(kernel, eps)
            return apply_block(sde.psi(sde.t0, tt) @ kernel, eps)
        if self.frame == "t":
            g = sde.diffusion(t)
            return sde.drift(t).to(x.dtype) * x + (g * g / (2 * sde.sigma(t))).to(x.dtype) * eps
        if self.frame == "rho":
            return eps
        return sde.rho(t).to(x.dtype) * eps


def odeint(
    model: Model,
    x: torch.Tensor,
    sde: Any,
    *,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    frame: str | None = None,
    t_start: float | None = None,
    t_end: float | None = None,
    steps: int | None = None,
    grid: str | torch.Tensor | None = None,
    options: dict | None = None,
    max_nfe: int | None = None,
    adjoint: bool = False,
    prediction: str = "eps",
    evaluator: ModelEvaluator | None = None,
) -> Solution:
    """Integrate the probability-flow ODE with any torchdiffeq ``method`` in ``frame`` (default ``"logrho"``;
    ``"y"`` for matrix SDEs), from ``t_start`` (default ``sde.t_max``) to ``t_end`` (default ``sde.t_min``);
    returns a :class:`~ei_toolkit.Solution` with x at t_end in the original variables, the number of model
    evaluations and the states at every grid time (``trajectory``).

    Adaptive methods (dopri5, ...) use ``rtol``/``atol`` and land exactly on t_end (no evaluation past it).
    Fixed-grid methods (euler, midpoint, heun2, heun3, rk4, explicit_adams) take ``steps`` steps on ``grid``
    (a grid name, default ``"uniform_logrho"`` (``"quadratic_t"`` for matrix SDEs), or explicit times), mapped
    into the frame. ``adjoint=True`` uses ``torchdiffeq.odeint_adjoint``.
    """
    if method not in TORCHDIFFEQ_METHODS:
        raise ValueError(f"unknown torchdiffeq method {method!r}; valid: {', '.join(TORCHDIFFEQ_METHODS)}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point tensor")
    start = time.perf_counter()
    t_start = sde.t_max if t_start is None else float(t_start)
    t_end = sde.t_min if t_end is None else float(t_end)
    if t_start == t_end:  # t_start > t_end samples; t_start < t_end runs the ODE forward (inversion)
        raise ValueError(f"t_start and t_end must differ; got both {t_start}")
    func = FlowODE(model, sde, frame, prediction, max_nfe, evaluator)
    opts = dict(options or {})
    fixed = method in TORCHDIFFEQ_FIXED or method in ("implicit_adams", "fixed_adams")
    default = "quadratic_t" if func.matrix else "uniform_logrho"
    if fixed:
        if grid is not None and not isinstance(grid, str):
            times = time_grid(sde, grid, 0, t_start, t_end)
        else:
            if steps is None:
                raise ValueError(f"the fixed-grid method {method!r} needs steps= (or an explicit grid=)")
            times = time_grid(sde, grid or default, steps, t_start, t_end)
    else:
        if steps is not None or grid is not None:
            raise ValueError(f"{method!r} is adaptive: steps/grid do not apply; use rtol/atol")
        times = torch.tensor([t_start, t_end], dtype=torch.float64)
        opts.setdefault("step_t", func.tau(times))  # land on t_end: never step past it (out of the domain)
    taus = func.tau(times)
    if method in TORCHDIFFEQ_EQUAL_STEPS and len(times) > 2:
        d = taus[1:] - taus[:-1]
        if float((d - d[0]).abs().max()) > 1e-6 * float(d.abs().max()):
            explicit = grid is not None and not isinstance(grid, str)
            what = "the explicit grid" if explicit else f"the {grid or default} grid"
            uniform = {"logrho": "uniform_logrho", "rho": "uniform_rho", "t": "uniform_t", "y": "uniform_t"}[func.frame]
            raise ValueError(f"torchdiffeq's {method!r} assumes equal steps (fixed Adams coefficients), but {what} is "
                             f"not uniform in its {func.frame!r} frame; use grid={uniform!r}")
    taus = taus.to(x.dtype) if x.dtype == torch.float64 else taus.float()
    y0 = func.encode(x, times[0])
    solver = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
    kwargs = {"adjoint_params": tuple(func.parameters())} if adjoint else {}
    if "step_t" in opts:
        opts["step_t"] = opts["step_t"].to(taus.dtype)
    ys = solver(func, y0, taus, rtol=rtol, atol=atol, method=method, options=opts or None, **kwargs)
    states = torch.stack([func.decode(ys[i], times[i]) for i in range(len(times))])
    return Solution(x=states[-1], times=times, eval_times=torch.empty(0, dtype=torch.float64), nfe=func.nfe,
                    method=f"torchdiffeq:{method} ({func.frame})", grid="fixed" if fixed else "adaptive",
                    trajectory=states, stats={"seconds": time.perf_counter() - start, "frame": func.frame,
                                              "steps": len(times) - 1 if fixed else None})


# ---------------------------------------------------------------------------------------------------------
# the reverse SDE


class ReverseSDE(torch.nn.Module):
    """The lambda-family reverse SDE in the y-frame for torchsde, in time s = -rho (increasing):

    dy = -(1 + lambda^2) eps(alpha y, t(rho)) ds + lambda sqrt(2 rho) dW_s,

    on flattened states (batch, d); additive noise, so Ito and Stratonovich coincide. ``shape`` is the
    state's original shape (the model sees it).
    """

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, model: Model, sde: LinearSDE, lam: float, shape: Sequence[int], prediction: str = "eps",
                 sde_type: str = "ito") -> None:
        super().__init__()
        _check_lam(lam)
        if sde_type not in ("ito", "stratonovich"):
            raise ValueError(f"sde_type must be 'ito' or 'stratonovich'; got {sde_type!r}")
        self.model, self.sde, self.lam, self.shape, self.prediction = model, sde, float(lam), tuple(shape), prediction
        self.evaluator = ModelEvaluator(model, sde, prediction)
        self.sde_type = sde_type
        self.nfe = 0
        self.max_nfe: int | None = None
        self._rho_lo = float(sde.rho(torch.tensor(sde.t0, dtype=torch.float64)))

    def _t(self, s: torch.Tensor) -> torch.Tensor:
        rho = (-s.double()).clamp(self._rho_lo, self.sde.rho_max)
        return self.sde.t_of_rho(rho)

    def f(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        if self.max_nfe is not None and self.nfe > self.max_nfe:
            raise NFEBudgetExceeded(f"the SDE solver needed more than max_nfe={self.max_nfe} model evaluations (at "
                                    f"rho = {-float(s):.6g})")
        if not all_finite(y):
            raise NumericalError(f"the SDE state is not finite at rho = {-float(s):.6g}")
        t = self._t(s)
        x = (self.sde.alpha(t).to(y.dtype) * y).reshape(self.shape)
        eps = self.evaluator(x, t)
        return -(1 + self.lam**2) * eps.reshape(y.shape)

    def g(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rho = (-s.double()).clamp_min(0)
        return torch.full_like(y, self.lam * math.sqrt(2 * float(rho)))


def _check_lam(lam: float) -> None:
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite number >= 0; got {lam!r}")


class PerSampleBrownian:
    """A Brownian motion on (batch, d) whose row n is an independent torchsde ``BrownianInterval`` seeded from
    ``generators[n]`` alone: sample n's path is the same whatever batch it is drawn in (sharded generation). It has
    the interface torchsde's solvers use (call, ``shape``, ``dtype``, ``device``, ``levy_area_approximation``)."""

    def __init__(self, paths: Sequence[Any]) -> None:
        self.paths = list(paths)

    def __call__(self, ta: Any, tb: Any = None, return_U: bool = False, return_A: bool = False) -> Any:
        parts = [p(ta, tb, return_U=return_U, return_A=return_A) for p in self.paths]
        if isinstance(parts[0], tuple):
            return tuple(torch.cat([p[i] for p in parts]) for i in range(len(parts[0])))
        return torch.cat(parts)

    def __repr__(self) -> str:
        return f"PerSampleBrownian({len(self.paths)} paths)"

    @property
    def dtype(self) -> torch.dtype:
        return self.paths[0].dtype

    @property
    def device(self) -> torch.device:
        return self.paths[0].device

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.paths), self.paths[0].shape[1]))

    @property
    def levy_area_approximation(self) -> str:
        return self.paths[0].levy_area_approximation


def _entropy(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())


def brownian_motion(x: torch.Tensor, sde: LinearSDE, t_start: float | None = None, t_end: float | None = None,
                    entropy: int | None = None, generator: torch.Generator | Sequence[torch.Generator] | None = None):
    """A torchsde Brownian motion over s = -rho on the flattened shape of ``x``, to drive :func:`sdeint`
    and the stochastic DDIM of :func:`ei_toolkit.sample` with the same path. Its seed is ``entropy``, or drawn from
    ``generator``; a list of generators (one per sample) gives each sample its own path (:class:`PerSampleBrownian`),
    so that sample n is the same whatever batch it is in."""
    import torchsde

    from .noise import check_generator

    check_generator(generator, x.shape[0])
    if entropy is not None and generator is not None:
        raise ValueError("give entropy or generator, not both")
    t_start = sde.t_max if t_start is None else t_start
    t_end = sde.t_min if t_end is None else t_end
    r = sde.rho(torch.tensor([t_start, t_end], dtype=torch.float64))

    def path(rows: int, seed: int | None) -> Any:
        return torchsde.BrownianInterval(t0=-float(r[0]), t1=-float(r[1]), size=(rows, x[0].numel()),
                                         dtype=x.dtype, device=x.device, entropy=seed,
                                         levy_area_approximation="space-time")

    if isinstance(generator, (list, tuple)):
        return PerSampleBrownian([path(1, _entropy(g)) for g in generator])
    return path(x.shape[0], _entropy(generator) if generator is not None else entropy)


# model evaluations per step of each torchsde method on the (additive-noise) reverse SDE
TORCHSDE_EVALS = {"euler": 1, "milstein": 1, "srk": 10, "midpoint": 2, "heun": 2, "euler_heun": 1,
                  "reversible_heun": 1}
STRATONOVICH_METHODS = ("midpoint", "heun", "euler_heun", "reversible_heun")  # the noise is additive: same SDE
DEFAULT_SDE_STEPS = 100
DEFAULT_SDE_MAX_NFE = 10_000


def sdeint(
    model: Model,
    x: torch.Tensor,
    sde: LinearSDE,
    *,
    lam: float = 1.0,
    method: str = "euler",
    steps: int | None = None,
    nfe: int | None = None,
    dt: float | None = None,
    max_nfe: int | None = DEFAULT_SDE_MAX_NFE,
    t_start: float | None = None,
    t_end: float | None = None,
    bm: object | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    prediction: str = "eps",
    sde_type: str = "ito",
    progress: bool = False,
    **kwargs: object,
) -> Solution:
    """Integrate the lambda-family reverse SDE (docs/math.md section 5) with a torchsde ``method`` in the rho frame;
    image-shaped ``x`` is flattened for torchsde and restored. Returns a :class:`~ei_toolkit.Solution`.

    Steps: ``steps`` (default 100) equal steps in log rho, or as many as ``nfe`` model evaluations allow
    (``TORCHSDE_EVALS`` per step), so the cost does not grow with the SDE's rho range; a step ending at rho = 0 (the
    data time) is the last. ``dt`` instead takes equal steps of ``dt`` in rho (torchsde's own stepping). ``max_nfe``
    (default 10,000; None: no limit) bounds the model evaluations: a run that would need more stops before it starts,
    or when it gets there. ``bm`` (see :func:`brownian_motion`) fixes the Brownian path; ``generator`` seeds it (one
    generator per sample: sample n is the same whatever batch it is in). ``progress=True`` shows a tqdm bar.
    """
    import torchsde

    start = time.perf_counter()
    _check_lam(lam)
    if method not in TORCHSDE_METHODS:
        raise ValueError(f"unknown torchsde method {method!r}; valid: {', '.join(TORCHSDE_METHODS)}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point tensor")
    if sum(v is not None for v in (steps, nfe, dt)) > 1:
        raise ValueError("give one of steps (in log rho), nfe or dt (a step in rho), not several")
    if max_nfe is not None:
        max_nfe = positive_int("max_nfe", max_nfe)
    if bm is not None and generator is not None:
        raise ValueError("give bm (a Brownian path) or generator (to seed one), not both")
    t_start = sde.t_max if t_start is None else float(t_start)
    t_end = sde.t_min if t_end is None else float(t_end)
    if not t_start > t_end:
        raise ValueError(f"t_start must be greater than t_end; got t_start={t_start}, t_end={t_end}")
    k = TORCHSDE_EVALS[method]
    if dt is not None:
        if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not (math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be a positive number (a step in rho); got {dt!r}")
        times = torch.tensor([t_start, t_end], dtype=torch.float64)
        r = sde.rho(times)
        n_steps = math.ceil(float(r[0] - r[1]) / dt - 1e-9)
    else:
        if nfe is not None:
            n_nfe = positive_int("nfe", nfe)
            if n_nfe < k or n_nfe % k:
                raise ValueError(f"nfe={n_nfe} is not possible for torchsde's {method!r}: it uses {k} model "
                                 f"evaluations per step, so nfe must be a multiple of {k}")
            n_steps = n_nfe // k
        else:
            n_steps = DEFAULT_SDE_STEPS if steps is None else positive_int("steps", steps)
        times = time_grid(sde, "uniform_logrho", n_steps, t_start, t_end)
        r = sde.rho(times)
    if max_nfe is not None and n_steps * k > max_nfe:
        raise NFEBudgetExceeded(f"sdeint with {method!r} would take {n_steps} steps ({n_steps * k} model "
                                f"evaluations), more than max_nfe={max_nfe}"
                                + (f": dt={dt} is a step in rho, which spans {float(r[-1]):.3g}..{float(r[0]):.3g}; "
                                   "use steps= or nfe= (steps in log rho)" if dt is not None else "")
                                + "; or raise max_nfe")
    a = sde.alpha(times[[0, -1]])
    rev = ReverseSDE(model, sde, lam, x.shape, prediction,
                     sde_type="stratonovich" if method in STRATONOVICH_METHODS else sde_type)
    rev.max_nfe = max_nfe
    y = (x / a[0].to(x.dtype)).reshape(x.shape[0], -1)
    if bm is None:
        bm = brownian_motion(x, sde, t_start, t_end, generator=generator)
    s = (-r).tolist()
    bar = _progress_bar(n_steps, f"sdeint ({method})") if progress else None
    try:
        if dt is not None:
            y = torchsde.sdeint(rev, y, torch.tensor([s[0], s[-1]], dtype=x.dtype), bm=bm, method=method, dt=dt,
                                **kwargs)[-1]
            if bar is not None:
                bar.update(n_steps)
        else:  # torchsde's solver stepped from grid point to grid point (its sdeint interpolates between them)
            from torchsde._core import methods as torchsde_methods
            from torchsde._core.sdeint import check_contract

            options = kwargs.pop("options", None)
            if kwargs:
                raise ValueError(f"unknown keyword arguments {sorted(kwargs)} (torchsde's fixed-step solvers take "
                                 "options= here)")
            ts_all = torch.tensor(s, dtype=x.dtype, device=x.device)
            wrapped, y, ts_all, bm, _, options = check_contract(rev, y, ts_all, bm, method, False, options, None,
                                                                 False)
            solver = torchsde_methods.select(method=method, sde_type=wrapped.sde_type)(
                sde=wrapped, bm=bm, dt=1.0, adaptive=False, rtol=1e-5, atol=1e-4, dt_min=1e-5, options=options)
            extra = solver.init_extra_solver_state(ts_all[0], y)
            for i in range(n_steps):
                y, extra = solver.step(ts_all[i], ts_all[i + 1], y, extra)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    out = (y * a[1].to(x.dtype)).reshape(x.shape)
    return Solution(x=out, times=times[[0, -1]].clone(), eval_times=torch.empty(0, dtype=torch.float64),
                    nfe=rev.nfe, method=f"torchsde:{method}", grid="fixed dt" if dt is not None else "uniform_logrho",
                    stats={"seconds": time.perf_counter() - start, "steps": n_steps})


def _progress_bar(total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step")
