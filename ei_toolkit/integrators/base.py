"""The machinery every method shares.

A :class:`Method` turns a :class:`SolveRequest` (model evaluator, state, SDE, time span, budget) into a
:class:`~ei_toolkit.Solution`. Most methods are an :class:`Integrator`: it turns a time grid into a *plan*,
float64 coefficients computed once per (integrator, SDE, grid), cached by value, plus the times at which the
model is evaluated. A plan runs itself: a short loop of fused tensor updates whose coefficients are Python floats
(scalar SDEs) or k x k matrices acting on the block axis (matrix SDEs, gDDIM), so nothing in the loop waits on
the device. Black-box methods (torchdiffeq) subclass :class:`Method` directly.

Plans:

* :class:`MultistepPlan`: x_{i+1} = psi_i x_i + sum_j w_ij e_{i-j} (+ noise_i z_i for stochastic methods), one
  evaluation per step (DDIM, tAB, rhoAB, log-rho AB, iPNDM, Euler, stochastic DDIM);
* :class:`RungeKuttaPlan`: explicit stages, each an exponential-integrator combination of x_i and the earlier
  stage evaluations (rhoRK).

``e`` is what the plan's ``target`` names: the model's eps, or its data prediction x0.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import torch

from ..errors import NumericalError, positive_int
from ..grids import GRIDS, time_grid
from ..sde.matrix import apply_block

if TYPE_CHECKING:
    from ..model import ModelEvaluator
    from ..solution import Solution

# eps_fn(x, k): the model's eps (or x0, per the plan's target) at x and at the plan's k-th evaluation time.
EpsFn = Callable[[torch.Tensor, int], torch.Tensor]
StepCallback = Callable[[int, torch.Tensor], None]
Coefficient = float | torch.Tensor  # a Python float, or a k x k float64 matrix acting on the block axis


class NoiseSource(Protocol):
    """``noise(i, x)``: standard normal noise for step i, shaped, typed and placed like ``x``."""

    def __call__(self, i: int, x: torch.Tensor) -> torch.Tensor: ...


def combine(x: torch.Tensor, a: Coefficient, terms: Sequence[tuple[Coefficient, torch.Tensor]]) -> torch.Tensor:
    """a x + sum w e as one multiply and fused in-place adds (a new tensor; x is not modified). Float coefficients
    scale; matrix coefficients act on the block axis (dim 1)."""
    if type(a) is float:
        out = torch.mul(x, a)
        for w, e in terms:
            if w != 0.0:
                out.add_(e, alpha=w)
        return out
    out = apply_block(a, x)
    for w, e in terms:
        out.add_(apply_block(w, e))
    return out


def _finite(c: Coefficient) -> bool:
    if isinstance(c, torch.Tensor):
        return bool(torch.isfinite(c).all())
    return math.isfinite(c)


class Plan(abc.ABC):
    """Coefficients for one grid, and how to run them."""

    grid: torch.Tensor  # float64, decreasing, steps + 1 times
    eval_times: torch.Tensor  # float64, one per model evaluation
    target: str  # what the plan combines: "eps" or "x0"

    @property
    def steps(self) -> int:
        return len(self.grid) - 1

    @property
    def history(self) -> int:
        """How many past evaluations a step combines (1 for one-step methods)."""
        return 1

    @abc.abstractmethod
    def coefficients(self) -> Iterator[Coefficient]:
        """Every coefficient, for the finiteness check."""

    @abc.abstractmethod
    def run(self, x: torch.Tensor, eps_fn: EpsFn, *, start: int = 0, history: Sequence[torch.Tensor] = (),
            callback: StepCallback | None = None, noise: NoiseSource | None = None) -> torch.Tensor:
        """Run from grid point ``start`` (x is the state there). ``history`` holds the model's e at the grid points
        before ``start`` (oldest first) for multistep plans, e.g. exact starting values for an order test."""

    def check(self, name: str) -> None:
        """Raise :class:`NumericalError` if a coefficient is not finite."""
        bad = next((c for c in self.coefficients() if not _finite(c)), None)
        if bad is not None:
            raise NumericalError(f"the coefficients of {name!r} on this grid are not finite (e.g. {bad}); the grid "
                                 f"{self.grid.tolist()[:4]}... may be too coarse or reach a singular time")

    def _on(self, fields: Sequence[str], x: torch.Tensor) -> tuple:
        """The named coefficient fields with matrix coefficients moved to x's device and dtype (once per device
        and dtype: a plan holds at most a few copies)."""
        cache = self._device_cache  # type: ignore[attr-defined]
        key = (tuple(fields), x.device, x.dtype)
        hit = cache.get(key)
        if hit is None:
            move = lambda m: m.to(device=x.device, dtype=x.dtype)  # noqa: E731
            hit = cache[key] = tuple(_map_coefficients(getattr(self, f), move) for f in fields)
        return hit


def _map_coefficients(rows: Any, f: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(rows, torch.Tensor):
        return f(rows)
    if isinstance(rows, tuple):
        return tuple(_map_coefficients(r, f) for r in rows)
    return rows


def _flatten(rows: Any) -> Iterator[Coefficient]:
    if isinstance(rows, tuple):
        for r in rows:
            yield from _flatten(r)
    elif rows is not None:
        yield rows


def _matrix(rows: Any) -> bool:
    return any(isinstance(c, torch.Tensor) for c in _flatten(rows))


@dataclass(frozen=True, eq=False)
class MultistepPlan(Plan):
    """x_{i+1} = psi[i] x_i + sum_j weights[i][j] e_{i-j} (+ noise[i] z_i), e_i the newest evaluation."""

    grid: torch.Tensor
    psi: tuple[Coefficient, ...]
    weights: tuple[tuple[Coefficient, ...], ...]
    eval_times: torch.Tensor
    noise: tuple[float, ...] | None = None
    target: str = "eps"
    _device_cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def history(self) -> int:
        return max(len(w) for w in self.weights)

    def coefficients(self) -> Iterator[Coefficient]:
        yield from _flatten((self.psi, self.weights, self.noise))

    @property
    def corrects(self) -> bool:
        """Whether a step is corrected once the next evaluation exists (:class:`PredictorCorrectorPlan`)."""
        return False

    def entry(self, i: int, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """What the history keeps of evaluation ``i`` (model output ``e`` in the plan's target, at state ``x``):
        ``e`` itself; plans that combine something else (EMS) override this. Step-by-step drivers such as
        EIScheduler call it as :meth:`run` does."""
        return e

    def step(self, i: int, x: torch.Tensor, hist: list[torch.Tensor], noise: NoiseSource | None = None,
             psi: Sequence[Coefficient] | None = None, weights: Sequence[Sequence[Coefficient]] | None = None
             ) -> torch.Tensor:
        """Step i from x, with ``hist`` the evaluations so far (newest last, e_i included; trimmed here to what the
        plan needs)."""
        psi = self.psi if psi is None else psi
        w = (self.weights if weights is None else weights)[i]
        if len(hist) > self.history:
            del hist[: len(hist) - self.history]
        terms = [(w[j], hist[-1 - j]) for j in range(len(w))]
        if self.noise is not None and self.noise[i] != 0.0:
            if noise is None:
                raise ValueError("this plan is stochastic: pass a noise source")
            terms.append((self.noise[i], noise(i, x)))
        return combine(x, psi[i], terms)

    def run(self, x: torch.Tensor, eps_fn: EpsFn, *, start: int = 0, history: Sequence[torch.Tensor] = (),
            callback: StepCallback | None = None, noise: NoiseSource | None = None) -> torch.Tensor:
        psi, weights = self._on(("psi", "weights"), x) if _matrix(self.psi) else (None, None)
        hist = list(history)[-self.history:] if self.history > 1 else []
        for i in range(start, self.steps):
            hist.append(self.entry(i, x, eps_fn(x, i)))
            x = self.step(i, x, hist, noise, psi, weights)
            if callback is not None:
                callback(i + 1, x)
        return x


@dataclass(frozen=True, eq=False)
class PredictorCorrectorPlan(MultistepPlan):
    """A multistep plan whose steps are corrected once the next evaluation exists (UniPC's idea, without extra
    evaluations): after e_{i+1} is evaluated at the predicted x_{i+1}, x_{i+1} = psi[i] x_i + sum_j
    corrector[i][j] e_{i+1-j}, and the run goes on from there (with e_{i+1} as evaluated). The last step is not
    corrected."""

    corrector: tuple[tuple[Coefficient, ...], ...] = ()

    @property
    def history(self) -> int:
        return max(super().history, max((len(c) for c in self.corrector), default=0))

    def coefficients(self) -> Iterator[Coefficient]:
        yield from super().coefficients()
        yield from _flatten(self.corrector)

    @property
    def corrects(self) -> bool:
        return True

    def correct(self, i: int, x_prev: torch.Tensor, hist: list[torch.Tensor],
                psi: Sequence[Coefficient] | None = None,
                corrector: Sequence[Sequence[Coefficient]] | None = None) -> torch.Tensor:
        """Step i again, from x_prev = x_i, with ``hist`` ending in e_{i+1}."""
        psi = self.psi if psi is None else psi
        c = (self.corrector if corrector is None else corrector)[i]
        return combine(x_prev, psi[i], [(c[j], hist[-1 - j]) for j in range(len(c))])

    def run(self, x: torch.Tensor, eps_fn: EpsFn, *, start: int = 0, history: Sequence[torch.Tensor] = (),
            callback: StepCallback | None = None, noise: NoiseSource | None = None) -> torch.Tensor:
        fields = ("psi", "weights", "corrector")
        psi, weights, corrector = self._on(fields, x) if _matrix(self.psi) else (None, None, None)
        hist = list(history)[-self.history:]
        x_prev: torch.Tensor | None = None
        for i in range(start, self.steps):
            hist.append(self.entry(i, x, eps_fn(x, i)))
            if x_prev is not None:
                x = self.correct(i - 1, x_prev, hist, psi, corrector)
                if callback is not None:
                    callback(i, x)  # the corrected state at grid point i replaces the predicted one
            x_prev = x
            x = self.step(i, x, hist, noise, psi, weights)
            if callback is not None and i + 1 == self.steps:
                callback(i + 1, x)
        return x


@dataclass(frozen=True, eq=False)
class RungeKuttaPlan(Plan):
    """Stage s of step i evaluates at x_s = stage_psi[i][s] x_i + sum_l stage_weights[i][s][l] k_l;
    x_{i+1} = psi[i] x_i + sum_s weights[i][s] k_s. Steps may differ in their number of stages (eval_times lists
    the stages of every step in order)."""

    grid: torch.Tensor
    stage_psi: tuple[tuple[Coefficient, ...], ...]
    stage_weights: tuple[tuple[tuple[Coefficient, ...], ...], ...]
    psi: tuple[Coefficient, ...]
    weights: tuple[tuple[Coefficient, ...], ...]
    eval_times: torch.Tensor
    target: str = "eps"
    _device_cache: dict = field(default_factory=dict, repr=False, compare=False)

    def coefficients(self) -> Iterator[Coefficient]:
        yield from _flatten((self.stage_psi, self.stage_weights, self.psi, self.weights))

    def run(self, x: torch.Tensor, eps_fn: EpsFn, *, start: int = 0, history: Sequence[torch.Tensor] = (),
            callback: StepCallback | None = None, noise: NoiseSource | None = None) -> torch.Tensor:
        fields = ("stage_psi", "stage_weights", "psi", "weights")
        stage_psi, stage_weights, psi, weights = (self._on(fields, x) if _matrix(self.psi) else
                                                  tuple(getattr(self, f) for f in fields))
        offset = sum(len(stage_psi[i]) for i in range(start))  # steps may have different numbers of stages
        for i in range(start, self.steps):
            ks: list[torch.Tensor] = []
            for s in range(len(stage_psi[i])):
                a = stage_psi[i][s]
                first = s == 0 and type(a) is float and a == 1.0
                xs = x if first else combine(x, a, list(zip(stage_weights[i][s], ks, strict=False)))
                ks.append(eps_fn(xs, offset))
                offset += 1
            x = combine(x, psi[i], list(zip(weights[i], ks, strict=True)))
            if callback is not None:
                callback(i + 1, x)
        return x


def as_tuple2(rows: Sequence[Sequence[Any]]) -> tuple[tuple[Coefficient, ...], ...]:
    """Rows of coefficients as tuples: numbers become Python floats, matrices float64 CPU tensors."""
    return tuple(tuple(coefficient(v) for v in r) for r in rows)


def coefficient(v: Any) -> Coefficient:
    """A plan coefficient: a Python float, or a float64 CPU tensor for a k x k matrix."""
    if isinstance(v, (np.ndarray, torch.Tensor)) and np.ndim(v) == 2:
        return torch.as_tensor(v, dtype=torch.float64).cpu().clone()
    return float(v)


# ---------------------------------------------------------------------------------------------------------------
# the request and the methods


@dataclass
class SolveRequest:
    """Everything a method needs to solve; built by :func:`ei_toolkit.solve` after it validated the arguments."""

    evaluator: ModelEvaluator
    x: torch.Tensor  # the state at t_start, in the working precision
    sde: Any  # LinearSDE or MatrixLinearSDE
    t_start: float
    t_end: float
    nfe: int | None = None
    grid: str | torch.Tensor | None = None
    generator: torch.Generator | Sequence[torch.Generator] | None = None
    brownian: Callable[[float, float], torch.Tensor] | None = None
    trajectory: bool = False
    progress: bool = False
    callback: Callable[[int, float, torch.Tensor], None] | None = None  # (grid index, time, state) after each step

    @property
    def explicit_grid(self) -> bool:
        return self.grid is not None and not isinstance(self.grid, str)


class Method(abc.ABC):
    """A way to solve the probability-flow ODE (or a reverse SDE) from a :class:`SolveRequest`.

    Capabilities: ``stochastic`` (draws noise: gets a noise source, takes ``lam``/``eta``), ``matrix`` (handles
    matrix (gDDIM) SDEs), ``black_box`` (hands the transformed ODE to another library; takes ``options``).
    """

    name: str
    order: int | None = None  # global order of convergence on smooth problems, where there is one
    stochastic: ClassVar[bool] = False
    matrix: ClassVar[bool] = False
    black_box: ClassVar[bool] = False
    default_grid: str = "uniform_logrho"
    default_matrix_grid: str = "quadratic_t"  # for matrix SDEs, which have no scalar rho

    @property
    def key(self) -> Hashable:
        """A frozen, hashable description of this method's configuration (its class and public attributes), by
        which plans are cached; raises TypeError when an attribute has no value-based description."""
        state = tuple(sorted((k, _freeze(v)) for k, v in vars(self).items() if not k.startswith("_")))
        return (type(self).__module__, type(self).__qualname__, self.name, state)

    def configure(self, *, lam: float | None = None, eta: float | None = None,
                  options: dict[str, Any] | None = None) -> Method:
        """This method with the given noise level or solver options (a new object); by default it takes none."""
        self.refuse_noise(lam, eta)
        if options:
            raise ValueError(f"options= applies to black-box methods (e.g. 'torchdiffeq:dopri5'); {self.name!r} "
                             f"takes none; got {sorted(options)}")
        return self

    def refuse_noise(self, lam: float | None, eta: float | None) -> None:
        """The error for a noise level given to a deterministic method."""
        if lam is not None or eta is not None:
            raise ValueError(f"lam/eta apply to stochastic methods only; {self.name!r} is deterministic")

    @abc.abstractmethod
    def solve(self, request: SolveRequest) -> Solution:
        """Solve the request; the returned Solution's x is in the request's working precision."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}: order {self.order}>"


def _freeze(v: Any) -> Hashable:
    if v is None or isinstance(v, (str, int, float, bool, bytes, torch.dtype)):
        return v
    if isinstance(v, (tuple, list)):
        return tuple(_freeze(u) for u in v)
    if isinstance(v, dict):
        return tuple(sorted((str(k), _freeze(u)) for k, u in v.items()))
    if isinstance(v, (torch.Tensor, np.ndarray)):
        a = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v
        return ("array", str(a.dtype), a.shape, np.ascontiguousarray(a).tobytes())
    if dataclasses.is_dataclass(v) and type(v).__hash__ is not object.__hash__:
        return (type(v).__qualname__, _freeze(dataclasses.astuple(v)))
    raise TypeError(f"{type(v).__name__} has no value-based description")


class Integrator(Method):
    """A method defined by its plan: a name, a declared order, evaluations per step, a recommended grid, and
    :meth:`plan`. ``convergence_grid`` names the grid the order holds on, if only one (iPNDM: uniform rho)."""

    order: int
    evals_per_step: int = 1
    convergence_grid: str | None = None

    def steps_for_nfe(self, nfe: int) -> int:
        """Number of steps that uses exactly ``nfe`` model evaluations, or a clear error."""
        n = check_nfe(nfe)
        k = self.evals_per_step
        if n % k:
            valid = ", ".join(str(k * m) for m in range(1, 5))
            raise ValueError(f"nfe={n} is not possible for {self.name!r}: it uses {k} model evaluations per step, so "
                             f"nfe must be a multiple of {k} ({valid}, ...)")
        return n // k

    def for_nfe(self, nfe: int | None, steps: int) -> Integrator:
        """This method as configured to spend ``nfe`` evaluations (None: the usual number) on ``steps`` steps; a
        method with several evaluations per step may return a copy that lowers the order of its last steps."""
        return self

    @abc.abstractmethod
    def plan(self, sde: Any, grid: torch.Tensor) -> Plan:
        """Float64 coefficients for this grid (called once per grid; :func:`plan_for` caches the result)."""

    def noise_source(self, plan: Plan, request: SolveRequest) -> NoiseSource | None:
        """The noise a stochastic plan draws: from ``request.brownian`` (a Brownian path over s = -rho) or from
        ``request.generator`` (one generator, or one per sample). Deterministic methods draw none."""
        if not self.stochastic:
            if request.brownian is not None:
                raise ValueError(f"brownian= applies to stochastic methods only; {self.name!r} is deterministic")
            return None
        from ..noise import brownian_noise, gaussian_noise

        if request.brownian is not None:
            return brownian_noise(request.brownian, request.sde.rho(plan.grid))
        return gaussian_noise(request.generator)

    def times(self, request: SolveRequest) -> tuple[torch.Tensor, str]:
        """The grid of this request (cached by value) and its name."""
        if request.explicit_grid:
            times = time_grid(request.sde, request.grid, 0, request.t_start, request.t_end)
            steps = len(times) - 1
            if request.nfe is not None and self.steps_for_nfe(request.nfe) != steps:
                fits = [n for n in range(1, steps * self.evals_per_step + 1)
                        if self.accepts_nfe(n) and self.steps_for_nfe(n) == steps]
                raise ValueError(f"nfe={request.nfe} does not match the explicit grid: {steps} steps of "
                                 f"{self.name} use {' to '.join(str(n) for n in sorted({fits[0], fits[-1]}))} "
                                 "evaluations")
            return times, "explicit"
        steps = self.steps_for_nfe(10 if request.nfe is None else request.nfe)
        name = self.grid_for(request)
        if name not in GRIDS:
            raise ValueError(f"unknown grid {name!r}; valid grids: {', '.join(GRIDS)} (or an explicit tensor of "
                             "times)")
        return cached_grid(request.sde, name, steps, request.t_start, request.t_end), name

    def grid_for(self, request: SolveRequest) -> str:
        """The named grid a request without an explicit grid runs on: ``request.grid``, else this method's default
        (:attr:`default_grid`; :attr:`default_matrix_grid` for matrix SDEs). Methods whose default depends on the SDE
        or the data override it; every runner asks here (the zero-SNR start and end included)."""
        if request.grid is not None:
            return request.grid
        return self.default_matrix_grid if getattr(request.sde, "is_matrix", False) else self.default_grid

    def accepts_nfe(self, nfe: int) -> bool:
        """Whether some number of steps uses exactly ``nfe`` evaluations."""
        try:
            self.steps_for_nfe(nfe)
        except ValueError:
            return False
        return True

    def solve(self, request: SolveRequest) -> Solution:
        from ..solution import Solution

        start = time.perf_counter()
        times, grid_name = self.times(request)
        plan = plan_for(self.for_nfe(request.nfe, len(times) - 1), request.sde, times)
        x = request.x
        eps_fn = request.evaluator.bind(plan.eval_times, x, plan.target)
        noise = self.noise_source(plan, request)
        states: list[torch.Tensor] = [x] if request.trajectory else []
        bar = _progress(plan.steps, self.name) if request.progress else None

        user = request.callback
        t_list = times.tolist() if user is not None else []

        def on_step(i: int, state: torch.Tensor) -> None:
            if request.trajectory:
                states.append(state)
            if user is not None:  # grid point i reached (a corrector's plan: the corrected state)
                user(i, t_list[i], state)
            if bar is not None:
                bar.update(1)

        nfe0 = request.evaluator.nfe
        hook = request.trajectory or bar is not None or user is not None
        try:
            out = plan.run(x, eps_fn, callback=on_step if hook else None, noise=noise)
        finally:
            if bar is not None:
                bar.close()
        request.evaluator.check()
        nfe = request.evaluator.nfe - nfe0
        return Solution(x=out, times=times.clone(), eval_times=plan.eval_times.clone(), nfe=nfe, method=self.name,
                        grid=grid_name, trajectory=torch.stack(states) if request.trajectory else None,
                        stats={"seconds": time.perf_counter() - start})


def check_nfe(nfe: Any) -> int:
    """nfe as a Python int (numpy integers accepted), or a clear error."""
    return positive_int("nfe", nfe)


def _progress(total: int, name: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"sampling ({name})", unit="step")


# ---------------------------------------------------------------------------------------------------------------
# caches, keyed by value and bounded

_PLANS: OrderedDict[tuple, Plan] = OrderedDict()
_GRIDS: OrderedDict[tuple, torch.Tensor] = OrderedDict()
CACHE_SIZE = 64


def _lru_get(cache: OrderedDict, key: tuple, make: Callable[[], Any]) -> Any:
    hit = cache.get(key)
    if hit is None:
        hit = cache[key] = make()
        if len(cache) > CACHE_SIZE:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return hit


def plan_for(integrator: Integrator, sde: Any, grid: torch.Tensor) -> Plan:
    """The float64 plan of ``integrator`` on ``grid``, checked for finite coefficients, cached by value (the
    integrator's :attr:`~Method.key`, the SDE's ``key`` and the grid's bytes; at most :data:`CACHE_SIZE` plans)."""
    grid = grid.to(torch.float64).cpu()

    def make() -> Plan:
        plan = integrator.plan(sde, grid)
        plan.check(integrator.name)
        return plan

    try:
        key = (integrator.key, sde.key, grid.numpy().tobytes())
    except TypeError:  # a configuration without a value-based description: not cached
        return make()
    return _lru_get(_PLANS, key, make)


def cached_grid(sde: Any, name: str, steps: int, t_start: float, t_end: float) -> torch.Tensor:
    """``time_grid(sde, name, steps, t_start, t_end)``, cached by value."""
    return _lru_get(_GRIDS, (sde.key, name, steps, t_start, t_end),
                    lambda: time_grid(sde, name, steps, t_start, t_end))
