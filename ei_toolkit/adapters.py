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

from .errors import NumericalError, all_finite
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
    if not t_start > t_end:
        raise ValueError(f"t_start must be greater than t_end; got t_start={t_start}, t_end={t_end}")
    func = FlowODE(model, sde, frame, prediction, max_nfe, evaluator)
    opts = dict(options or {})
    fixed = method in TORCHDIFFEQ_FIXED or method in ("implicit_adams", "fixed_adams")
    if fixed:
        if grid is not None and not isinstance(grid, str):
            times = time_grid(sde, grid, 0, t_start, t_end)
        else:
            if steps is None:
                raise ValueError(f"the fixed-grid method {method!r} needs steps= (or an explicit grid=)")
            default = "quadratic_t" if func.matrix else "uniform_logrho"
            times = time_grid(sde, grid or default, steps, t_start, t_end)
    else:
        if steps is not None or grid is not None:
            raise ValueError(f"{method!r} is adaptive: steps/grid do not apply; use rtol/atol")
        times = torch.tensor([t_start, t_end], dtype=torch.float64)
        opts.setdefault("step_t", func.tau(times))  # land on t_end: never step past it (out of the domain)
    taus = func.tau(times)
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
        self._rho_lo = float(sde.rho(torch.tensor(sde.t0, dtype=torch.float64)))

    def _t(self, s: torch.Tensor) -> torch.Tensor:
        rho = (-s.double()).clamp(self._rho_lo, self.sde.rho_max)
        return self.sde.t_of_rho(rho)

    def f(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
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


def brownian_motion(x: torch.Tensor, sde: LinearSDE, t_start: float | None = None, t_end: float | None = None,
                    entropy: int | None = None):
    """A torchsde Brownian motion over s = -rho on the flattened shape of ``x``, to drive :func:`sdeint`
    and the stochastic DDIM of :func:`ei_toolkit.sample` with the same path."""
    import torchsde

    t_start = sde.t_max if t_start is None else t_start
    t_end = sde.t_min if t_end is None else t_end
    r = sde.rho(torch.tensor([t_start, t_end], dtype=torch.float64))
    return torchsde.BrownianInterval(t0=-float(r[0]), t1=-float(r[1]), size=(x.shape[0], x[0].numel()),
                                     dtype=x.dtype, device=x.device, entropy=entropy,
                                     levy_area_approximation="space-time")


def sdeint(
    model: Model,
    x: torch.Tensor,
    sde: LinearSDE,
    *,
    lam: float = 1.0,
    method: str = "euler",
    dt: float = 1e-2,
    t_start: float | None = None,
    t_end: float | None = None,
    bm: object | None = None,
    prediction: str = "eps",
    sde_type: str = "ito",
    **kwargs: object,
) -> Solution:
    """Integrate the lambda-family reverse SDE with a torchsde ``method``, in the rho frame (step ``dt`` in
    rho); image-shaped ``x`` is flattened for torchsde and restored. ``bm`` (see :func:`brownian_motion`)
    fixes the Brownian path. Returns a :class:`~ei_toolkit.Solution`."""
    import torchsde

    start = time.perf_counter()
    _check_lam(lam)
    if method not in TORCHSDE_METHODS:
        raise ValueError(f"unknown torchsde method {method!r}; valid: {', '.join(TORCHSDE_METHODS)}")
    t_start = sde.t_max if t_start is None else float(t_start)
    t_end = sde.t_min if t_end is None else float(t_end)
    if not t_start > t_end:
        raise ValueError(f"t_start must be greater than t_end; got t_start={t_start}, t_end={t_end}")
    times = torch.tensor([t_start, t_end], dtype=torch.float64)
    rho = sde.rho(times)
    a = sde.alpha(times)
    rev = ReverseSDE(model, sde, lam, x.shape, prediction,
                     sde_type="stratonovich" if method in ("midpoint", "heun", "reversible_heun") else sde_type)
    y0 = (x / a[0].to(x.dtype)).reshape(x.shape[0], -1)
    ts = (-rho).to(x.dtype)
    if bm is None:
        bm = brownian_motion(x, sde, t_start, t_end)
    ys = torchsde.sdeint(rev, y0, ts, bm=bm, method=method, dt=dt, **kwargs)
    out = (ys[-1] * a[1].to(x.dtype)).reshape(x.shape)
    return Solution(x=out, times=times, eval_times=torch.empty(0, dtype=torch.float64), nfe=rev.nfe,
                    method=f"torchsde:{method}", grid="fixed dt", stats={"seconds": time.perf_counter() - start})
