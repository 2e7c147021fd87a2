"""Encoding from the data itself (rho = 0): the forward probability-flow ODE started at t0, where sigma = 0.

A flow-matching model is trained on t in [0, 1] and evaluated at t = 0, where x is the data; inverting a real image
with such a model (editing, RF-inversion) starts there, not at a small positive time. Every plan in rho handles
rho = 0 as an end of a sampling run (the step into the data), but a forward step out of rho = 0 has log-step
h = log(rho_1 / 0) = inf for the log-rho plans and no noise information for the data-prediction (x0) forms, whose
x0 = x at t0. So the first step is taken here for every method, the mirror of the first step from infinite noise
(:mod:`ei_toolkit.zero_snr`): in y = x / alpha the ODE is dy/drho = eps (docs/math.md section 3), and the
one-point step with eps frozen at its value at the data,

    x_1 = (alpha_1 / alpha_0) x_0 + sigma_1 eps(x_0, t0),

is exact for a constant eps (its local error is rho_1^2 / 2 |d eps / d rho|). The model's noise prediction at the
data is defined for ``eps``, ``v`` (eps = v at sigma = 0) and ``flow`` (eps = x + v) models; an ``x0`` or ``score``
model carries none there (x0 = x, sigma score = 0), and a start at t0 is refused for them. The rest of the run is the
method's own on the remaining grid points, started afresh (a multistep method cannot extrapolate through log rho =
-inf), like the run after the step from infinite noise. A named grid is laid from t0 to t_end with one more point
than the method needs for ``nfe - 1`` evaluations: the same points as sampling's grid into the data, reversed, so an
encoding and a sampling run with the same grid meet at the same times. A method that picks its own steps starts at
``sde.t_min`` after the first step.

Only families that sample into the data (``ends_at_data``: :class:`~ei_toolkit.RectifiedFlow`) start here; for the
others the model's smallest time is ``sde.t_min`` and a forward solve starts at or above it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from .errors import positive_int
from .integrators import Integrator
from .integrators.base import cached_grid
from .solution import Solution
from .zero_snr import _shifted, alpha_sigma_at, budget_left

if TYPE_CHECKING:
    from .integrators import Method, SolveRequest

DATA_START_PREDICTIONS = ("eps", "v", "flow")
"""The predictions that give the noise prediction eps at sigma = 0 (an x0 model returns x there, a score model's eps =
-sigma score vanishes)."""


def starts_at_data(sde: object, t_start: float, t_end: float) -> bool:
    """Whether a solve from ``t_start`` to ``t_end`` is an encoding from the data time t0 of a family whose model is
    defined there (``ends_at_data``)."""
    return (bool(getattr(sde, "ends_at_data", False)) and t_start < t_end
            and t_start == float(getattr(sde, "t0", float("nan"))))


def check_data_start_prediction(prediction: str, sde: Any) -> None:
    """A clear error for a model whose output gives no noise prediction at sigma = 0."""
    if prediction not in DATA_START_PREDICTIONS:
        raise ValueError(f"an encoding from the data (t_start = t0 = {float(sde.t0):g}) needs the model's noise "
                         f"prediction at sigma = 0, which prediction={prediction!r} does not give; use a model "
                         f"with prediction in {DATA_START_PREDICTIONS} or start at t_start=sde.t_min")


def data_step(x: torch.Tensor, eps: torch.Tensor, ratio: float, sigma_1: float) -> torch.Tensor:
    """The one-point step out of rho = 0: ``ratio * x + sigma_1 * eps`` with ratio = alpha_1 / alpha_0."""
    return torch.add(torch.mul(x, ratio), eps, alpha=sigma_1)


def rest_of_grid(method: Integrator, sde: Any, grid: str | torch.Tensor, total: int, t0: float,
                 t_end: float) -> torch.Tensor:
    """The grid after the step out of the data for ``total`` evaluations in all: an explicit grid without its first
    point t0, or the named grid laid from ``t0`` to ``t_end`` with one more point than ``method`` needs for the other
    ``total - 1`` (and the last step to infinite noise, where ``t_end`` is ``sde.t_terminal``: that grid is laid to
    ``sde.t_max`` and its end moved), without t0."""
    if not isinstance(grid, str):
        return torch.as_tensor(grid, dtype=torch.float64).flatten()[1:]
    terminal = t_end == getattr(sde, "t_terminal", None)
    if total == 1:  # the data step alone, straight to t_end
        return torch.tensor([t_end], dtype=torch.float64)
    try:  # the evaluations left: the method's steps (and the last step to infinite noise, where it ends)
        body = 1 if terminal and total == 2 else (
            1 + method.steps_for_nfe(total - 2) if terminal else method.steps_for_nfe(total - 1))
    except ValueError as exc:
        raise ValueError(f"nfe={total} from the data: one evaluation at t0, then {total - 1} for {method.name!r}"
                         f"{' and the last step to infinite noise' if terminal else ''}: {exc}") from None
    full = cached_grid(sde, grid, body + 1, t0, float(sde.t_max) if terminal else t_end)
    if terminal:
        full = full.clone()
        full[-1] = t_end
    return full[1:]


def solve_from_data(method: Method, request: SolveRequest,
                    run: Callable[[Method, SolveRequest], Solution]) -> Solution:
    """Solve the forward ``request`` (``t_start`` = ``sde.t0``, rho = 0) with ``method``: one model evaluation at the
    data and the step above, then ``run(method, rest)`` on the rest of the grid (the runner's own dispatch: the
    encoding's last step to infinite noise and the round-off check included); ``nfe`` counts every evaluation."""
    start = time.perf_counter()
    sde, ev = request.sde, request.evaluator
    check_data_start_prediction(ev.prediction, sde)
    t0, t_end = float(request.t_start), float(request.t_end)
    nfe = request.nfe
    rest: torch.Tensor | None = None
    grid_name = "adaptive"
    if request.explicit_grid or isinstance(method, Integrator):
        grid = request.grid if request.explicit_grid else method.grid_for(request)
        grid_name = "explicit" if request.explicit_grid else grid
        rest = rest_of_grid(method, sde, grid, 10 if nfe is None else positive_int("nfe", nfe), t0, t_end)
    t1 = float(rest[0]) if rest is not None else float(sde.t_min)
    a0, _ = alpha_sigma_at(sde, t0)
    a1, s1 = alpha_sigma_at(sde, t1)
    nfe0 = ev.nfe
    x = request.x
    x1 = data_step(x, ev(x, t0, "eps", alpha=a0, sigma=0.0), a1 / a0, s1)
    user = request.callback
    extra: dict[str, object] = {}  # the rest's own stats (an end at infinite noise, the round-off gain)
    if user is not None:  # grid point 1 reached; the method's own steps below report 2, 3, ...
        user(1, t1, x1)
    if rest is not None and len(rest) < 2:  # a single step, straight to t_end
        ev.check()
        out, times, evals = x1, torch.tensor([t0, t1], dtype=torch.float64), torch.tensor([t0], dtype=torch.float64)
        traj = torch.stack([x, x1]) if request.trajectory else None
    else:
        sub = dataclasses.replace(request, x=x1, t_start=t1, grid=rest if rest is not None else request.grid,
                                  nfe=budget_left(nfe, rest is not None and not request.explicit_grid, 1),
                                  callback=None if user is None else _shifted(user, 1))
        sol = run(method, sub)
        out = sol.x
        times = torch.cat([torch.tensor([t0], dtype=torch.float64), sol.times.to(torch.float64)])
        evals = torch.cat([torch.tensor([t0], dtype=torch.float64), sol.eval_times.to(torch.float64)])
        traj = (torch.cat([x[None], sol.trajectory]) if request.trajectory and sol.trajectory is not None
                else None)
        grid_name = sol.grid if rest is None else grid_name
        extra = {k: v for k, v in sol.stats.items() if k not in ("nfe", "steps", "grid", "seconds")}
    return Solution(x=out, times=times, eval_times=evals, nfe=ev.nfe - nfe0, method=method.name, grid=grid_name,
                    trajectory=traj, stats={**extra, "seconds": time.perf_counter() - start, "start": "data"})
