"""The step machinery every integrator shares.

An integrator turns a time grid into a *plan*: float64 coefficients computed once per (SDE, grid) and
cached, plus the list of times at which it evaluates the model. Running the plan is a short loop of fused
tensor updates with Python-float coefficients (no host-device synchronisation).

Two shapes of plan cover every method here:

* :class:`MultistepPlan`: x_{i+1} = psi_i x_i + sum_j w_ij eps_{i-j}, one evaluation per step (DDIM, tAB,
  rhoAB, iPNDM, and Euler on the original ODE, whose "psi" is 1 + dt F).
* :class:`RungeKuttaPlan`: explicit Runge-Kutta stages, each an exponential-integrator combination of x_i
  and the earlier stage evaluations (rhoRK).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

if TYPE_CHECKING:
    from ..sde import LinearSDE

# eps_fn(x, k): the model's eps at x and at the plan's k-th evaluation time.
EpsFn = Callable[[torch.Tensor, int], torch.Tensor]
StepCallback = Callable[[int, torch.Tensor], None]


@dataclass(frozen=True)
class MultistepPlan:
    """x_{i+1} = psi[i] x_i + sum_j weights[i][j] eps_{i-j} (eps_{i} is the newest)."""

    grid: torch.Tensor  # float64, decreasing, steps + 1 times
    psi: tuple[float, ...]
    weights: tuple[tuple[float, ...], ...]
    eval_times: torch.Tensor  # float64, one per evaluation

    @property
    def history(self) -> int:
        return max(len(w) for w in self.weights)


@dataclass(frozen=True)
class RungeKuttaPlan:
    """Stage s of step i evaluates at x_s = stage_psi[i][s] x_i + sum_l stage_weights[i][s][l] k_l;
    x_{i+1} = psi[i] x_i + sum_s weights[i][s] k_s."""

    grid: torch.Tensor
    stage_psi: tuple[tuple[float, ...], ...]
    stage_weights: tuple[tuple[tuple[float, ...], ...], ...]
    psi: tuple[float, ...]
    weights: tuple[tuple[float, ...], ...]
    eval_times: torch.Tensor


def combine(x: torch.Tensor, a: float, terms: Sequence[tuple[float, torch.Tensor]]) -> torch.Tensor:
    """a x + sum w e, as one multiply and fused in-place adds (a new tensor; x is not modified)."""
    out = torch.mul(x, a)
    for w, e in terms:
        if w != 0.0:
            out.add_(e, alpha=w)
    return out


class Integrator(abc.ABC):
    """Base class: a name, a declared order, a recommended grid, and how to build and run a plan."""

    name: ClassVar[str]
    order: ClassVar[int]  # global order of convergence on smooth problems
    evals_per_step: ClassVar[int] = 1
    default_grid: ClassVar[str] = "uniform_logrho"
    convergence_grid: ClassVar[str | None] = None  # grid the order holds on, if only one (iPNDM: uniform rho)

    def steps_for_nfe(self, nfe: int) -> int:
        """Number of steps that uses exactly ``nfe`` model evaluations, or a clear error."""
        if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < 1:
            raise ValueError(f"nfe must be a positive integer; got {nfe!r}")
        k = self.evals_per_step
        if nfe % k:
            valid = ", ".join(str(k * m) for m in range(1, 5))
            raise ValueError(f"nfe={nfe} is not possible for {self.name!r}: it uses {k} model evaluations per "
                             f"step, so nfe must be a multiple of {k} ({valid}, ...)")
        return nfe // k

    @abc.abstractmethod
    def plan(self, sde: LinearSDE, grid: torch.Tensor) -> MultistepPlan | RungeKuttaPlan:
        """Float64 coefficients for this grid (called once per grid; the sampler caches the result)."""

    def integrate(self, plan: MultistepPlan | RungeKuttaPlan, x: torch.Tensor, eps_fn: EpsFn,
                  callback: StepCallback | None = None, start: int = 0,
                  history: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """Run ``plan`` from grid point ``start`` (x is the state there). ``history`` holds eps at the
        grid points before ``start`` (oldest first) for multistep methods, e.g. exact starting values."""
        if isinstance(plan, MultistepPlan):
            return _run_multistep(plan, x, eps_fn, callback, start, history)
        return _run_runge_kutta(plan, x, eps_fn, callback, start)

    def __repr__(self) -> str:
        return f"<integrator {self.name}: order {self.order}, {self.evals_per_step} evaluation(s) per step>"


def _run_multistep(plan: MultistepPlan, x: torch.Tensor, eps_fn: EpsFn, callback: StepCallback | None,
                   start: int, history: Sequence[torch.Tensor]) -> torch.Tensor:
    keep = plan.history
    hist = list(history)[-keep:] if keep > 1 else []
    for i in range(start, len(plan.psi)):
        hist.append(eps_fn(x, i))
        if len(hist) > keep:
            del hist[0]
        w = plan.weights[i]
        x = combine(x, plan.psi[i], [(w[j], hist[-1 - j]) for j in range(len(w))])
        if callback is not None:
            callback(i + 1, x)
    return x


def _run_runge_kutta(plan: RungeKuttaPlan, x: torch.Tensor, eps_fn: EpsFn, callback: StepCallback | None,
                     start: int) -> torch.Tensor:
    stages = len(plan.stage_psi[0]) if plan.stage_psi else 0
    for i in range(start, len(plan.psi)):
        ks: list[torch.Tensor] = []
        for s in range(stages):
            a = plan.stage_psi[i][s]
            xs = x if s == 0 and a == 1.0 else combine(x, a, list(zip(plan.stage_weights[i][s], ks, strict=False)))
            ks.append(eps_fn(xs, i * stages + s))
        x = combine(x, plan.psi[i], list(zip(plan.weights[i], ks, strict=True)))
        if callback is not None:
            callback(i + 1, x)
    return x


def as_tuple2(rows: Sequence[Sequence[float]]) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in r) for r in rows)
