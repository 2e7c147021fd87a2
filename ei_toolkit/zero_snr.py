"""Sampling from zero terminal SNR (Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed",
WACV 2024): a :class:`~ei_toolkit.DiscreteVP` whose table ends at alpha = 0 starts at infinite noise,
rho = sigma / alpha = inf, where eps = x and only the data prediction x0 carries information (x0 = -v for a
v-model; an eps-model's x0 = (x - sigma eps) / alpha is undefined there).

The first step is therefore the exact exponential-integrator step with x0 frozen (docs/math.md section 5, stochastic
DDIM, in the limit rho_t -> inf, where the ratio rho_s / rho_t vanishes): in the y = x / alpha frame
y_s = x0 + rho_s (e eps_t + sqrt(1 - e^2) z), so in x

    x_s = alpha_s x0 + sigma_s (e x_t + sqrt(1 - e^2) z),

with e = 1 for every deterministic method (the probability-flow ODE: x_s = alpha_s x0 + sigma_s x_t), and for
stochastic DDIM e = 0 when lambda > 0 and e = sqrt(1 - eta^2) for DDIM's eta. A deterministic plan on the data
prediction (:func:`keeps_terminal_evaluation`) takes this step only to the last finite time t_max and keeps the
evaluation as its own first one there (x0 barely moves between rho = inf and rho_max: by about alpha_max /
sigma_max), so its multistep history starts with the evaluation at infinite noise; every other method's solve is
its own on the finite part of the schedule, started afresh after the step to the grid's second point (an eps-form
multistep method cannot extrapolate through rho = inf). This module is the hook that :func:`ei_toolkit.solve`
calls when ``t_start`` is ``sde.t_terminal`` (it sits beside the core, below :mod:`ei_toolkit.diffusion`);
:class:`~ei_toolkit.diffusion.EIScheduler` takes the same first step. A ``callback`` of the request sees the
whole grid: grid point 1 after the step from infinite noise, then 2 .. steps, as on any other run.

Two families end at infinite noise: :class:`~ei_toolkit.DiscreteVP` with zero terminal SNR (t_terminal = N - 1) and
:class:`~ei_toolkit.RectifiedFlow` (t_terminal = 1, alpha = 1 - t: Liu et al. 2023, Esser et al. 2024), whose
velocity model gives x0 = x - v at t = 1; there the step above is exactly Euler's on dx/dt = v from t = 1. Both keep
``sde.t_max`` as the last finite time (grids are laid from it, then their first point is moved to t_terminal).

The other direction (:func:`solve_to_infinite_noise`, an encoding with ``t_end = sde.t_terminal``) ends with the
one-point eps-form step x_b = Psi x_a + alpha_b (rho_b - rho_a) eps(x_a) in the limit alpha_b -> 0, where
Psi = alpha_b / alpha_a -> 0 and alpha_b rho_b = sigma_b: x_b = sigma_b eps(x_a), the noise the model sees in x_a
(for rectified flow, z = x_a + (1 - t_a) v).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from .errors import positive_int
from .integrators import Integrator
from .integrators.base import cached_grid
from .noise import gaussian_noise
from .solution import Solution

if TYPE_CHECKING:
    from .integrators import Method, SolveRequest


def terminal_mixing(method: Any) -> float:
    """e of the first step from infinite noise for ``method`` (1 for deterministic methods); a clear error for a
    stochastic method whose step from rho = inf is not known here."""
    if not getattr(method, "stochastic", False):
        return 1.0
    lam, eta = getattr(method, "lam", None), getattr(method, "eta", None)
    if lam is not None:
        return 0.0 if lam > 0 else 1.0
    if eta is not None:
        return math.sqrt(max(0.0, 1.0 - eta * eta))
    raise ValueError(f"the stochastic method {getattr(method, 'name', method)!r} has no known step from infinite "
                     "noise (zero terminal SNR); start below sde.t_terminal (t_start=sde.t_max)")


def infinite_noise_step(x: torch.Tensor, x0: torch.Tensor, alpha_next: float, sigma_next: float, e: float = 1.0,
                        z: torch.Tensor | None = None) -> torch.Tensor:
    """The exact step from rho = inf with x0 frozen: alpha_next x0 + sigma_next (e x + sqrt(1 - e^2) z)."""
    out = torch.mul(x0, alpha_next)
    if e != 0.0:
        out.add_(x, alpha=sigma_next * e)
    if e != 1.0:
        if z is None:
            raise ValueError("a stochastic step from infinite noise needs noise z")
        out.add_(z, alpha=sigma_next * math.sqrt(max(0.0, 1.0 - e * e)))
    return out


TERMINAL_PREDICTIONS = ("x0", "v", "flow")
"""The predictions whose data prediction is defined at alpha = 0 (x0 = -v for VP v-models, x - v for flow models)."""


def check_prediction(prediction: str) -> None:
    if prediction not in TERMINAL_PREDICTIONS:
        raise ValueError(f"sampling from zero terminal SNR (alpha = 0 at t_terminal) needs a model that predicts x0 "
                         f"or v: prediction={prediction!r} gives x0 = (x - sigma eps) / alpha, undefined at alpha = 0 "
                         "(Lin et al. 2024 train such models with v-prediction; a rectified-flow model's velocity is "
                         "prediction='flow'); or start below t_terminal")


def budget_left(nfe: int | None, named: bool, spent: int, default: int = 10) -> int | None:
    """The evaluations a method has left after ``spent`` special ones (at infinite noise, at the data, the last step
    to infinite noise), for the method's own run on the rest of the grid: on a grid laid from a name the whole budget
    (``default`` without ``nfe``) counts, since a singlestep method spends what its stages do not divide on a
    lower-order last step (without it, nfe=8 from infinite noise took 9); on a grid given by the caller, ``nfe`` if
    given, else the grid alone decides (None)."""
    if named:
        return (default if nfe is None else nfe) - spent
    return None if nfe is None else nfe - spent


def alpha_sigma_at(sde: Any, t: float) -> tuple[float, float]:
    """alpha(t), sigma(t) as Python floats, t_terminal included (alpha = 0 there)."""
    if t == getattr(sde, "t_terminal", None):
        return 0.0, 1.0
    t64 = torch.tensor([t], dtype=torch.float64)
    return float(sde.alpha(t64)), float(sde.sigma(t64))


def terminal_grid(grid: torch.Tensor, t_terminal: float) -> torch.Tensor:
    """A grid computed from the last finite time (sde.t_max) with its first point moved to t_terminal: the same
    later points, and a first step that starts at infinite noise."""
    out = grid.clone()
    out[0] = t_terminal
    return out


def _shifted(callback: Callable[[int, float, torch.Tensor], None],
             by: int) -> Callable[[int, float, torch.Tensor], None]:
    """``callback`` with grid indices of a sub-solve moved ``by`` points, to the indices of the whole grid."""
    return lambda i, t, x: callback(i + by, t, x)


def solve_from_infinite_noise(method: Method, request: SolveRequest,
                              check: Callable[[Method, SolveRequest], None] | None = None) -> Solution:
    """Solve ``request`` (whose ``t_start`` is ``request.sde.t_terminal``) with ``method``: one model evaluation at
    infinite noise and the exact step above, then the method on the rest of its grid (``nfe`` counts both).
    ``check(method, rest)`` vets the request on the finite part of the grid before it runs (the runner's
    round-off check)."""
    start = time.perf_counter()
    sde, ev = request.sde, request.evaluator
    t_terminal = float(sde.t_terminal)
    check_prediction(ev.prediction)
    e = terminal_mixing(method)
    if e == 1.0 and keeps_terminal_evaluation(method, request):
        return _solve_keeping_the_terminal_evaluation(method, request, check, start)
    if e != 1.0 and request.brownian is not None:
        raise ValueError("a Brownian path over s = -rho cannot start at rho = inf: pass generator= for sampling "
                         "from zero terminal SNR")
    nfe = request.nfe
    rest: torch.Tensor | None = None
    grid_name = "adaptive"
    if request.explicit_grid:
        times = torch.as_tensor(request.grid, dtype=torch.float64).flatten()
        if float(times[0]) != t_terminal:
            raise ValueError("an explicit grid from zero terminal SNR must start at sde.t_terminal")
        rest, grid_name = times[1:], "explicit"
    elif isinstance(method, Integrator):
        total = 10 if nfe is None else positive_int("nfe", nfe)
        try:
            steps = 1 if total == 1 else 1 + method.steps_for_nfe(total - 1)
        except ValueError as exc:
            raise ValueError(f"nfe={total} from zero terminal SNR: one evaluation at infinite noise, then "
                             f"{total - 1} for {method.name!r}: {exc}") from None
        grid_name = method.grid_for(request)
        full = terminal_grid(cached_grid(sde, grid_name, steps, sde.t_max, request.t_end), t_terminal)
        rest = full[1:]
    t1 = float(rest[0]) if rest is not None else sde.t_max
    x = request.x
    a1, s1 = alpha_sigma_at(sde, t1)
    nfe0 = ev.nfe
    x0 = ev(x, t_terminal, "x0", alpha=0.0, sigma=1.0)
    z = gaussian_noise(request.generator)(0, x) if e != 1.0 else None
    x1 = infinite_noise_step(x, x0, a1, s1, e, z)
    user = request.callback
    if user is not None:  # grid point 1 reached; the method's own steps below report 2, 3, ...
        user(1, t1, x1)
    states = [x, x1] if request.trajectory else []
    if rest is not None and len(rest) < 2:  # a single step, straight to t_end
        ev.check()
        out, times, evals = x1, torch.tensor([t_terminal, t1], dtype=torch.float64), torch.tensor([t_terminal])
        traj = torch.stack(states) if request.trajectory else None
    else:
        left = budget_left(nfe, rest is not None and not request.explicit_grid, 1)
        sub = dataclasses.replace(request, x=x1, t_start=t1,
                                  grid=rest if rest is not None else request.grid, nfe=left,
                                  callback=None if user is None else _shifted(user, 1))
        if check is not None:
            check(method, sub)
        sol = method.solve(sub)
        out = sol.x
        times = torch.cat([torch.tensor([t_terminal], dtype=torch.float64), sol.times.to(torch.float64)])
        evals = torch.cat([torch.tensor([t_terminal], dtype=torch.float64), sol.eval_times.to(torch.float64)])
        traj = (torch.cat([x[None], sol.trajectory]) if request.trajectory and sol.trajectory is not None
                else None)
    return Solution(x=out, times=times, eval_times=evals, nfe=ev.nfe - nfe0, method=method.name, grid=grid_name,
                    trajectory=traj, stats={"seconds": time.perf_counter() - start, "start": "infinite noise"})


def keeps_terminal_evaluation(method: Method, request: SolveRequest | None) -> bool:
    """Whether the run from infinite noise keeps its first evaluation as the plan's first (a deterministic fixed-grid
    method on the data prediction, or one that says so with a true ``keeps_terminal_evaluation`` attribute: EMS with
    one point; an explicit grid needs a second point below ``sde.t_max``). Not the two-point
    rule frozen at the step's middle (DPM-Solver-2M's, ``-mid``): with the node at lam_max its error on the flow
    mixtures of benchmarks/bench_flow.py at NFE 20 on quadratic_t was 8-9x the restarted run's (other x0 plans:
    0.5-1.4x, most near 1), so it restarts as before."""
    if not isinstance(method, Integrator) or method.stochastic:
        return False
    if getattr(method, "target", "eps") != "x0" and not getattr(method, "keeps_terminal_evaluation", False):
        return False
    if getattr(method, "rule", None) == "midpoint":  # measured: a node at lam_max hurts the frozen-midpoint rule
        return False
    if request is not None and request.explicit_grid:
        times = torch.as_tensor(request.grid, dtype=torch.float64).flatten()
        return len(times) >= 2 and float(times[1]) < float(request.sde.t_max)
    return True


class _FirstGiven:
    """The request's evaluator with the plan's first evaluation (index 0) given: the data prediction at t_terminal,
    already computed (and counted) by the runner, or for a plan on eps (EMS) the noise it implies at the state the
    plan starts from, (y - alpha x0) / sigma at t_max (the terminal state itself: the exact step put y = alpha x0 +
    sigma x there); everything else is the evaluator's own."""

    def __init__(self, evaluator: Any, first: torch.Tensor, alpha: float, sigma: float) -> None:
        self._evaluator, self._first, self._alpha, self._sigma = evaluator, first, alpha, sigma

    def bind(self, times: torch.Tensor, x: torch.Tensor, target: str = "eps") -> Callable[[torch.Tensor, int],
                                                                                          torch.Tensor]:
        inner = self._evaluator.bind(times, x, target)
        first, a, s = self._first, self._alpha, self._sigma
        if target == "x0":
            return lambda y, k: first if k == 0 else inner(y, k)
        return lambda y, k: (y - a * first) / s if k == 0 else inner(y, k)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._evaluator, name)


def _solve_keeping_the_terminal_evaluation(method: Method, request: SolveRequest,
                                           check: Callable[[Method, SolveRequest], None] | None,
                                           start: float) -> Solution:
    """A data-prediction plan laid from ``sde.t_max`` (the last finite time) that starts at infinite noise: the
    exact step with x0 frozen takes the state from t_terminal to t_max (the first step of the module docstring,
    alpha_max x0 + sigma_max x), and the plan's first evaluation, at t_max, is that x0, the model's data prediction
    at t_terminal. Between the two times x0 moves by about alpha_max / sigma_max (1e-4 for RectifiedFlow), far below
    the discretisation error, and the multistep history keeps the evaluation at infinite noise as its first node
    (at lam(t_max)): a restart after the first step had to build the history again (on the 16 x 16 patch flow UNet
    at NFE 5, UniPC-3 on the shifted grid: 0.113 restarted, 0.043 kept, diffusers' own 0.043 from sigma =
    1 - 1e-6). ``nfe`` counts the first evaluation as one of the plan's."""
    sde, ev = request.sde, request.evaluator
    t_terminal, t_max = float(sde.t_terminal), float(sde.t_max)
    if request.explicit_grid:
        times = torch.as_tensor(request.grid, dtype=torch.float64).flatten()
        if float(times[0]) != t_terminal:
            raise ValueError("an explicit grid from zero terminal SNR must start at sde.t_terminal")
        grid, grid_name = torch.cat([torch.tensor([t_max], dtype=torch.float64), times[1:]]), "explicit"
    else:
        total = 10 if request.nfe is None else positive_int("nfe", request.nfe)
        grid_name = method.grid_for(request)
        grid = cached_grid(sde, grid_name, method.steps_for_nfe(total), t_max, request.t_end)
    x = request.x
    a_max, s_max = alpha_sigma_at(sde, t_max)
    nfe0 = ev.nfe
    x0 = ev(x, t_terminal, "x0", alpha=0.0, sigma=1.0)
    # the plan's own budget, the first evaluation included; a callback sees grid points 1, 2, ... as usual
    sub = dataclasses.replace(request, evaluator=_FirstGiven(ev, x0, a_max, s_max),
                              x=infinite_noise_step(x, x0, a_max, s_max), t_start=t_max, grid=grid,
                              nfe=budget_left(request.nfe, not request.explicit_grid, 0))
    if check is not None:
        check(method, sub)
    sol = method.solve(sub)
    times = sol.times.to(torch.float64).clone()
    times[0] = t_terminal
    evals = sol.eval_times.to(torch.float64).clone()
    evals[0] = t_terminal
    traj = None
    if request.trajectory and sol.trajectory is not None:
        traj = sol.trajectory.clone()
        traj[0] = x
    return Solution(x=sol.x, times=times, eval_times=evals, nfe=ev.nfe - nfe0, method=method.name, grid=grid_name,
                    trajectory=traj, stats={"seconds": time.perf_counter() - start, "start": "infinite noise"})


def solve_to_infinite_noise(method: Method, request: SolveRequest,
                            check: Callable[[Method, SolveRequest], None] | None = None) -> Solution:
    """Solve the forward ``request`` (``t_start`` < ``t_end`` = ``request.sde.t_terminal``, an encoding to pure noise)
    with ``method`` up to the grid's last finite time t_a, then take the exact last step x_b = sigma_b eps(x_a)
    (module docstring): one more model evaluation, counted in ``nfe``. A named grid is laid from ``t_start`` to
    ``sde.t_max`` and its last point moved to t_terminal, the mirror of the sampling grid from infinite noise.
    ``check(method, body)`` vets the request on the finite part before it runs."""
    start = time.perf_counter()
    sde, ev = request.sde, request.evaluator
    t_terminal = float(sde.t_terminal)
    nfe = request.nfe
    grid_name = "explicit"
    if request.explicit_grid:
        times = torch.as_tensor(request.grid, dtype=torch.float64).flatten()
        if float(times[-1]) != t_terminal:
            raise ValueError("an explicit grid to infinite noise must end at sde.t_terminal")
        body = times[:-1]
    elif isinstance(method, Integrator):
        total = 10 if nfe is None else positive_int("nfe", nfe)
        try:
            steps = 1 if total == 1 else 1 + method.steps_for_nfe(total - 1)
        except ValueError as exc:
            raise ValueError(f"nfe={total} to infinite noise: {total - 1} evaluations for {method.name!r}, then one "
                             f"for the last step: {exc}") from None
        grid_name = method.grid_for(request)
        body = cached_grid(sde, grid_name, steps, request.t_start, sde.t_max)[:-1]
    else:
        raise ValueError(f"{getattr(method, 'name', method)!r} chooses its own steps; an encoding to infinite noise "
                         "(t_end = sde.t_terminal) needs a fixed-grid method")
    nfe0 = ev.nfe
    x = request.x
    if len(body) < 2:  # a single step from t_start straight to infinite noise
        times_run, evals = body, torch.empty(0, dtype=torch.float64)
        traj_head = x[None] if request.trajectory else None
    else:
        sub = dataclasses.replace(request, t_end=float(body[-1]), grid=body,
                                  nfe=budget_left(nfe, not request.explicit_grid, 1))  # before the last step
        if check is not None:
            check(method, sub)
        sol = method.solve(sub)
        x, times_run, evals = sol.x, sol.times.to(torch.float64), sol.eval_times.to(torch.float64)
        traj_head = sol.trajectory if request.trajectory else None
    t_a = float(body[-1])
    a_a, s_a = alpha_sigma_at(sde, t_a)
    out = ev(x, t_a, "eps", alpha=a_a, sigma=s_a)  # x_b = sigma_b eps(x_a), sigma_b = sigma(t_terminal) = 1
    ev.check()
    times = torch.cat([times_run, torch.tensor([t_terminal], dtype=torch.float64)])
    evals = torch.cat([evals, torch.tensor([t_a], dtype=torch.float64)])
    traj = torch.cat([traj_head, out[None]]) if traj_head is not None else None
    if request.callback is not None:  # the last grid point, at infinite noise
        request.callback(len(times) - 1, t_terminal, out)
    return Solution(x=out, times=times, eval_times=evals, nfe=ev.nfe - nfe0, method=method.name, grid=grid_name,
                    trajectory=traj, stats={"seconds": time.perf_counter() - start, "end": "infinite noise"})
