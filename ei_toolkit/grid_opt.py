"""Calibrated time grids: :func:`optimize_grid` tunes the grid of a plan-based method to a model, and
:func:`save_grid` / :func:`load_grid` keep the result for that (model, SDE, method, NFE).

DEIS (Zhang & Chen, ICLR 2023, appendix "optimizing time discretization") notes that the best grid depends on the
model and the method; AYS, GITS and DMN are published variants. Here the grid is tuned directly for its purpose:
the discretisation error of the method on a small calibration batch against the toolkit's own high-accuracy
solution of the probability-flow ODE (method ``"adaptive"`` at tight tolerance, computed once).

Parameterisation (monotone by construction): the N steps are N positive increments of lam = -log rho (the
half log-SNR), softmax(theta) times the span of lam, so any theta gives a strictly decreasing grid with the fixed
ends; a grid ending at rho = 0 (lam = inf) tunes N increments from t_start to ``sde.t_min`` and drops the last
point, so that its last finite point (tuned, above t_min) steps into the data: every named grid into the data, not
only ``uniform_logrho`` (whose last finite point is t_min), is a point of the search, the default one included
(``quadratic_t``'s is 0.012 at 9 steps of rectified flow, and pinning it to t_min = 1e-3 made calibrated EMS grids
up to 2.3x worse than the default). The objective is the mean over the batch of the log of each trajectory's RMS error
(a geometric mean: robust to the rare trajectory on a boundary between modes, like the median the benchmarks
report, but smooth). The optimiser is derivative-free (Nelder-Mead from the best of the method's default grid,
``uniform_logrho``, ``quadratic_t`` and ``karras``; first on the shape of the increments, their logs tilted and bent
along the grid, two parameters for a quarter of the budget, then on every increment): the plans are float64
coefficients computed by NumPy from the grid, not a differentiable function of it.

Cost, bounded and reported: the reference (its NFE, on the calibration batch) plus at most ``max_solves`` solves
of ``nfe`` evaluations each (``return_info=True`` gives the counts).

Held-out check (issue 26): :func:`heldout_check` compares a method and grid with a baseline (the same method on its
default grid, or the base method of EMS) on draws not used to calibrate, against a near-exact reference;
``optimize_grid(..., heldout=)`` runs it on the grid it found and refuses or falls back to the default grid.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import NumericalError
from .files import model_id, read_json, write_new
from .grids import time_grid
from .integrators import Integrator, Method, get_integrator
from .integrators.adaptive import DEFAULT_MAX_NFE
from .integrators.base import SolveRequest
from .model import Model
from .sampling import DEFAULT_METHOD, default_method, default_t_end, default_t_start, solve
from .sde import LinearSDE

GRID_FORMAT = "ei_toolkit.grid"
GRID_VERSION = 1
_STARTS = ("uniform_logrho", "quadratic_t", "karras")


class _Budget(Exception):
    pass


@dataclass(frozen=True)
class HeldoutCheck:
    """The outcome of :func:`heldout_check`: the median over the held-out draws of each trajectory's RMS error
    (``error`` for the candidate, ``baseline_error``), their ``ratio``, the standard error of the mean of the
    per-draw log ratios (``log_ratio_se``: how far the comparison could move with other draws), whether it
    ``passed`` (ratio <= 1 + tolerance), and the batch model evaluations spent (``evaluations``: the reference's
    plus the two solves'), on ``draws`` draws."""

    candidate: str
    baseline: str
    nfe: int
    draws: int
    error: float
    baseline_error: float
    ratio: float
    log_ratio_se: float
    tolerance: float
    passed: bool
    evaluations: int

    def describe(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (f"held-out check {verdict} at NFE {self.nfe} on {self.draws} draws: {self.candidate} median error "
                f"{self.error:.3g} vs {self.baseline} {self.baseline_error:.3g} (ratio {self.ratio:.3g}, allowed "
                f"<= {1 + self.tolerance:.3g}; log-ratio standard error {self.log_ratio_se:.2g}; "
                f"{self.evaluations} batch evaluations)")


class HeldoutCheckFailed(ValueError):
    """A calibration (EMS statistics or a grid) did worse than its baseline on held-out draws; ``.report`` is the
    :class:`HeldoutCheck`."""

    def __init__(self, message: str, report: HeldoutCheck) -> None:
        super().__init__(message)
        self.report = report


def _moved(grid: torch.Tensor, first: float) -> torch.Tensor:
    """A grid laid from sde.t_max with its first time moved to ``first`` (t_terminal: the step from infinite noise,
    as :func:`ei_toolkit.solve` lays its own grids)."""
    grid = grid.to(torch.float64).clone()
    grid[0] = first
    return grid


@torch.no_grad()  # a check and a calibration never need gradients: no autograd graph kept across the solves
def heldout_check(model: Model, x: torch.Tensor, sde: LinearSDE, *, method: str | Method, nfe: int,
                  grid: Any = None, baseline: str | Method | None = None, baseline_grid: Any = None,
                  reference: torch.Tensor | None = None, prediction: str = "eps", t_start: float | None = None,
                  t_end: float | None = None, tolerance: float = 0.0, reference_rtol: float = 1e-7,
                  reference_max_nfe: int | None = None) -> HeldoutCheck:
    """Compare ``method`` on ``grid`` with ``baseline`` (default: ``method`` itself) on ``baseline_grid`` (None: its
    default grid) at ``nfe``, from the held-out draws ``x`` (states at t_start that calibration did not see), by the
    median over the draws of each trajectory's RMS error against ``reference`` (the exact solution at t_end;
    default: method "adaptive" at ``reference_rtol``, whose own error is orders below the integrators' at NFE <= 50).
    It passes when the ratio of the medians is at most ``1 + tolerance``: the default 0 falls back whenever the
    calibration does not help on these draws, which costs nothing against the baseline. A candidate that diverges
    (NumericalError) has infinite error. Cost: the reference's evaluations (0 if given) plus 2 solves of ``nfe``,
    all on ``x``."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 1 or x.shape[0] < 2:
        raise ValueError("x must be a floating-point tensor of at least 2 held-out draws (batch first)")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < math.inf:
        raise ValueError(f"tolerance must be a finite number >= 0; got {tolerance!r}")
    m = get_integrator(method)
    b = m if baseline is None else get_integrator(baseline)
    t_start = default_t_start(sde) if t_start is None else float(t_start)
    t_end = default_t_end(sde) if t_end is None else float(t_end)
    evaluations = 0
    if reference is None:
        cap = DEFAULT_MAX_NFE if reference_max_nfe is None else reference_max_nfe
        ref_sol = solve(model, x.to(torch.float64), sde, method="adaptive", t_start=t_start, t_end=t_end,
                        prediction=prediction, options={"rtol": reference_rtol, "atol": reference_rtol,
                                                        "max_nfe": cap})
        reference, evaluations = ref_sol.x, ref_sol.nfe
    elif not isinstance(reference, torch.Tensor) or reference.shape != x.shape:
        raise ValueError(f"reference must be a tensor shaped like x {tuple(x.shape)}")
    ref = reference.to(torch.float64).reshape(len(x), -1)
    if not bool(torch.isfinite(ref).all()):
        raise ValueError("reference holds NaN or inf: the held-out check needs a finite exact solution")

    def errors(meth: Method, g: Any) -> torch.Tensor:
        try:
            ends = {"t_start": t_start, "t_end": t_end} if g is None else {}
            out = solve(model, x, sde, method=meth, nfe=nfe, grid=g, prediction=prediction, **ends).x
        except NumericalError:
            return torch.full((len(x),), math.inf, dtype=torch.float64)
        e = (out.to(torch.float64).reshape(len(x), -1) - ref).pow(2).mean(1).sqrt()
        return torch.where(torch.isfinite(e), e, torch.full_like(e, math.inf))

    ec, eb = errors(m, grid), errors(b, baseline_grid)
    evaluations += 2 * nfe
    med_c, med_b = float(ec.median()), float(eb.median())
    ratio = med_c / med_b if med_b > 0 else (1.0 if med_c == 0 else math.inf)
    logr = torch.log(ec.clamp_min(1e-300)) - torch.log(eb.clamp_min(1e-300))
    se = float(logr.std() / math.sqrt(len(x))) if bool(torch.isfinite(logr).all()) else math.inf
    return HeldoutCheck(candidate=m.name, baseline=b.name, nfe=int(nfe), draws=len(x), error=med_c,
                        baseline_error=med_b, ratio=ratio, log_ratio_se=se, tolerance=float(tolerance),
                        passed=bool(ratio <= 1 + tolerance), evaluations=evaluations)


def _check_method(method: str | Method | None, nfe: int, sde: LinearSDE | None = None, dim: int | None = None
                  ) -> Integrator:
    """The method to tune or key: by default the one ``solve`` runs without a method for ``nfe`` on this SDE and
    data size (``dim`` elements per sample), so that a calibrated grid serves a plain ``sample(..., grid=...)``."""
    m = get_integrator(default_method(nfe, sde=sde, dim=dim)[0] if method is None else method)
    if not isinstance(m, Integrator) or m.stochastic:
        raise ValueError(f"optimize_grid tunes the grid of a deterministic plan-based method (an Integrator such as "
                         f"{DEFAULT_METHOD!r}); {m.name!r} chooses its own steps or is stochastic")
    return m


def _lam(sde: LinearSDE, t: torch.Tensor) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return -np.log(sde.rho(t.to(torch.float64)).numpy())


@torch.no_grad()
def optimize_grid(model: Model, x: torch.Tensor, sde: LinearSDE, *, method: str | Method | None = None, nfe: int,
                  t_start: float | None = None, t_end: float | None = None, prediction: str = "eps",
                  reference: torch.Tensor | None = None, reference_rtol: float = 1e-7, max_solves: int = 200,
                  reference_max_nfe: int | None = None, heldout: torch.Tensor | None = None,
                  on_failure: str = "raise",
                  return_info: bool = False) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
    """A decreasing float64 tensor of ``steps + 1`` times (steps = what ``method`` spends ``nfe`` evaluations on)
    from ``t_start`` (default ``sde.t_max``) to ``t_end`` (default ``sde.t_min``) that minimises the method's error on
    the calibration batch ``x`` (states at t_start) against the exact ODE solution; pass it as ``grid=`` to
    :func:`ei_toolkit.solve` / ``sample`` with the same method and model (see the module docstring).

    ``method`` defaults to the sampler's default for ``nfe``, this SDE and x's size per sample
    (:func:`ei_toolkit.sampling.default_method`).
    ``reference``: the exact solution at t_end for ``x`` if you have it; otherwise it is computed once by method
    ``"adaptive"`` at ``reference_rtol`` with at most ``reference_max_nfe`` evaluations (default
    ``max(10000, max_solves * nfe)``: adaptive's default cap, or what the optimiser may spend if more; rtol 1e-7
    takes 250-300 on the mixtures and about 2500 on the shipped float32 digits model); a reference with a non-finite
    row is refused. ``max_solves`` bounds the
    optimiser's solves (each ``nfe`` model evaluations on the batch).
    With ``return_info=True`` returns ``(grid, info)``: the objective at the method's default grid for this SDE
    (the grid ``solve`` uses without ``grid=``; its name is ``default_grid``) and at the result (``loss_default``,
    ``loss``: mean log RMS error per trajectory), the grid it started from, and the model
    evaluations spent (``nfe_reference``, ``nfe_optimiser``, ``solves``).

    ``heldout``: draws at t_start that are not in ``x``; the grid found is then compared with the method's default
    grid on them (:func:`heldout_check`, its report in ``info["heldout"]``, its evaluations in
    ``info["nfe_heldout"]``) and, if it does worse, ``on_failure="raise"`` raises :class:`HeldoutCheckFailed` and
    ``"fallback"`` warns (UserWarning) and returns the default grid.
    """
    from scipy.optimize import minimize

    if not isinstance(sde, LinearSDE):
        raise TypeError(f"sde must be a scalar ei_toolkit.LinearSDE (grids are tuned in log rho); got "
                        f"{type(sde).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 1 or x.shape[0] < 1:
        raise ValueError("x must be a floating-point tensor with a batch dimension first (the calibration batch)")
    m = _check_method(method, nfe, sde, x[0].numel())
    steps = m.steps_for_nfe(nfe)
    if on_failure not in ("raise", "fallback"):
        raise ValueError(f"on_failure must be 'raise' or 'fallback'; got {on_failure!r}")
    if heldout is not None and (not isinstance(heldout, torch.Tensor) or heldout.shape[1:] != x.shape[1:]
                                or heldout.shape[0] < 2):
        raise ValueError(f"heldout must be a tensor of at least 2 draws shaped like x's {tuple(x.shape[1:])}")
    if isinstance(max_solves, bool) or not isinstance(max_solves, int) or max_solves < 1:
        raise ValueError(f"max_solves must be a positive integer; got {max_solves!r}")
    if reference_max_nfe is None:
        reference_max_nfe = max(DEFAULT_MAX_NFE, max_solves * nfe)
    if isinstance(reference_max_nfe, bool) or not isinstance(reference_max_nfe, int) or reference_max_nfe < 2:
        raise ValueError(f"reference_max_nfe must be an integer >= 2 or None; got {reference_max_nfe!r}")
    # the grids' first time: where solve starts, t_terminal (infinite noise) if the SDE has one
    first = default_t_start(sde) if t_start is None else float(t_start)
    t_start = min(first, float(sde.t_max))  # the grids are laid from the last finite time, then moved to first
    t_end = default_t_end(sde) if t_end is None else float(t_end)
    if not sde.t0 <= t_end < t_start <= sde.t_max:
        raise ValueError(f"need sde.t0 <= t_end < t_start <= sde.t_max; got t_start={t_start}, t_end={t_end}")
    ends = torch.tensor([t_start, t_end], dtype=torch.float64)
    to_zero = not float(sde.rho(ends[1])) > 0
    if to_zero and not (t_end < sde.t_min < t_start):
        raise ValueError("a grid ending at rho = 0 keeps its last step from sde.t_min, which must lie inside "
                         "(t_end, t_start)")
    t_cap = sde.t_min if to_zero else t_end
    lam0, lam1 = _lam(sde, torch.tensor([t_start, t_cap], dtype=torch.float64))
    # increments of lam that are tuned: to rho = 0, the grid's steps - 1 finite ones and the gap from its last finite
    # point to t_min (dropped: that point steps into the data), so the last finite point is tuned too, above t_min
    free = steps

    info: dict[str, Any] = {"method": m.name, "nfe": nfe, "steps": steps, "solves": 0}
    if reference is None:
        ref_sol = solve(model, x.to(torch.float64), sde, method="adaptive", t_start=first, t_end=t_end,
                        prediction=prediction, options={"rtol": reference_rtol, "atol": reference_rtol,
                                                        "max_nfe": reference_max_nfe})
        reference, info["nfe_reference"] = ref_sol.x, ref_sol.nfe
    else:
        if not isinstance(reference, torch.Tensor) or reference.shape != x.shape:
            raise ValueError(f"reference must be a tensor shaped like x {tuple(x.shape)}")
        info["nfe_reference"] = 0
    ref = reference.to(torch.float64).reshape(len(x), -1)
    bad_rows = (~torch.isfinite(ref).all(1)).nonzero().flatten().tolist()
    if bad_rows:
        raise ValueError(f"reference: rows {bad_rows[:10]} hold NaN or inf (of {len(ref)}); every trajectory needs a "
                         "finite exact solution, or the loss is NaN")

    def grid_of(theta: np.ndarray) -> torch.Tensor:
        w = np.exp(theta - theta.max())
        lam = lam0 + np.concatenate([[0.0], np.cumsum(w / w.sum())]) * (lam1 - lam0)
        t = sde.t_of_rho(torch.from_numpy(np.exp(-lam)))
        t[0], t[-1] = first, t_cap
        return torch.cat([t[:steps], torch.tensor([t_end], dtype=torch.float64)]) if to_zero else t

    def theta_of(grid: torch.Tensor) -> np.ndarray:
        grid = torch.cat([torch.tensor([t_start], dtype=torch.float64), grid[1:].to(torch.float64)])
        lam = np.append(_lam(sde, grid[:steps]), lam1) if to_zero else _lam(sde, grid)
        return np.log(np.maximum(np.diff(lam), 1e-12 * (lam1 - lam0)))

    def loss(grid: torch.Tensor) -> float:
        if info["solves"] >= max_solves:
            raise _Budget
        if not bool((grid[1:] < grid[:-1]).all()):
            return math.inf
        info["solves"] += 1
        out = solve(model, x, sde, method=m, grid=grid, nfe=nfe, prediction=prediction).x
        err = (out.to(torch.float64).reshape(len(x), -1) - ref).pow(2).mean(1).sqrt()
        value = float(torch.log(err + 1e-12).mean())
        return value if math.isfinite(value) else math.inf  # NaN would compare false everywhere

    # the grid solve() uses without grid= (EMSAdams: quadratic_t for VP, uniform_logrho for EDM / VE), not the class
    # attribute: loss_default is the error the user would get without calibration
    _, default_name = m.times(SolveRequest(evaluator=None, x=x, sde=sde, t_start=t_start, t_end=t_end, nfe=nfe))
    info["default_grid"] = default_name
    starts = [default_name, *[g for g in _STARTS if g != default_name]]
    scored = []
    for name in starts:
        try:
            g = _moved(time_grid(sde, name, steps, t_start, t_end), first)
        except ValueError:
            continue
        if free > 1:  # in the parameterisation (the identity up to round-off)
            g = grid_of(theta_of(g))
        try:
            scored.append((loss(g), name, g))
        except _Budget:  # max_solves smaller than the number of starting grids
            break
    info["loss_default"] = scored[0][0] if scored and scored[0][1] == default_name else math.nan
    if not scored or not math.isfinite(min(s[0] for s in scored)):
        raise NumericalError(f"optimize_grid: {m.name} gave a non-finite error on every starting grid "
                             f"({', '.join(starts)}); the model or the calibration batch is not usable")
    best_loss, best_name, best_grid = min(scored, key=lambda s: s[0])
    info["start"] = best_name
    best = {"loss": best_loss, "grid": best_grid}
    if free > 1:
        def objective(theta: np.ndarray) -> float:
            g = grid_of(theta)
            v = loss(g)
            if v < best["loss"]:
                best["loss"], best["grid"] = v, g
            return v

        theta0 = theta_of(best_grid)
        if free > 3:  # first the shape: log-increments tilted and bent along the grid (2 parameters, a quarter of
            # the budget), then every increment: Nelder-Mead alone moves little in many dimensions
            u = (np.arange(free) + 0.5) / free - 0.5
            basis = np.stack([u, u * u - 1.0 / 12.0], 1)
            with contextlib.suppress(_Budget):
                minimize(lambda ab: objective(theta0 + basis @ ab), np.zeros(2), method="Nelder-Mead",
                         options={"initial_simplex": np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]]),
                                  "maxfev": max(max_solves // 4, 1), "xatol": 1e-2, "fatol": 1e-4})
            theta0 = theta_of(best["grid"])
        simplex = np.vstack([theta0, theta0[None, :] + 0.5 * np.eye(free)])
        with contextlib.suppress(_Budget):
            minimize(objective, theta0, method="Nelder-Mead",
                     options={"initial_simplex": simplex, "maxfev": max_solves, "xatol": 1e-3, "fatol": 1e-4})
    info["loss"] = best["loss"]
    info["nfe_optimiser"] = info["solves"] * nfe
    grid = best["grid"].clone()
    if heldout is not None:
        default = _moved(time_grid(sde, default_name, steps, t_start, t_end), first)
        report = heldout_check(model, heldout, sde, method=m, nfe=nfe, grid=grid, baseline_grid=default,
                               prediction=prediction, t_start=first, t_end=t_end, reference_rtol=reference_rtol,
                               reference_max_nfe=reference_max_nfe)
        info["heldout"], info["nfe_heldout"] = report, report.evaluations
        if not report.passed:
            if on_failure == "raise":
                raise HeldoutCheckFailed(f"optimize_grid: the calibrated grid is worse than the default grid "
                                         f"{default_name!r} on the held-out draws ({report.describe()}); calibrate "
                                         "on more draws, or pass on_failure='fallback'", report)
            warnings.warn(f"optimize_grid: the calibrated grid is worse than the default grid {default_name!r} on "
                          f"the held-out draws ({report.describe()}); returning the default grid", UserWarning,
                          stacklevel=2)
            grid = default.clone()
    return (grid, info) if return_info else grid


# ---------------------------------------------------------------------------------------------------------------
# saving and loading


def _digest(obj: Any) -> str:
    return hashlib.sha256(repr(obj).encode()).hexdigest()[:32]


def grid_key(model: Any, sde: LinearSDE, method: str | Method | None, nfe: int, dim: int | None = None
             ) -> dict[str, Any]:
    """The key a saved grid is valid for: model id, SDE (its class and a digest of its derivation and window),
    method (name and a digest of its configuration; None: the default for ``nfe``, this SDE and ``dim`` elements per
    sample, as :func:`optimize_grid` chooses it) and NFE."""
    m = _check_method(method, nfe, sde, dim)
    m.steps_for_nfe(nfe)
    return {"model": model_id(model), "sde": f"{type(sde).__name__}:{_digest(sde.key)}", "method": m.name,
            "method_config": _digest(m.key), "nfe": int(nfe)}


GRID_MAX_BYTES = 1 << 20
"""A grid file larger than this (1 MiB) is refused before it is read."""


def _grid_sha256(key: dict[str, Any], times: list[float]) -> str:
    """The digest of a grid file's content: its key and its times (as JSON with sorted keys, exact floats)."""
    return hashlib.sha256(json.dumps({"key": key, "times": times}, sort_keys=True).encode()).hexdigest()


def save_grid(path: str | Path, grid: torch.Tensor, *, model: Any, sde: LinearSDE, method: str | Method | None = None,
              nfe: int, dim: int | None = None) -> Path:
    """Write ``grid`` (decreasing times) with its key (:func:`grid_key`) and the digest of both as a small JSON file
    (through a temporary file of a random name, then renamed); returns the path."""
    key = grid_key(model, sde, method, nfe, dim)
    t = torch.as_tensor(grid, dtype=torch.float64).flatten()
    _check_times(t, key, _check_method(method, nfe, sde, dim), sde, str(path))
    times = [float(v) for v in t]
    doc = {"format": GRID_FORMAT, "version": GRID_VERSION, "key": key, "times": times,
           "sha256": _grid_sha256(key, times)}
    path = Path(path)
    write_new(path, lambda f: f.write((json.dumps(doc, indent=1) + "\n").encode()))
    return path


def load_grid(path: str | Path, *, model: Any, sde: LinearSDE, method: str | Method | None = None,
              nfe: int, t_start: float | None = None, t_end: float | None = None, dim: int | None = None
              ) -> torch.Tensor:
    """The grid saved at ``path`` for exactly this (model, SDE, method, NFE); a ValueError naming the file otherwise:
    every key field that differs (a grid tuned for one model or method is not valid for another), a file that is not
    a regular file of at most :data:`GRID_MAX_BYTES` or not JSON, times that are not strictly decreasing inside the
    SDE's domain or do not fit ``nfe``, content that does not match its digest (an edited file). With ``t_start`` /
    ``t_end`` its ends must be those."""
    path = Path(path)
    where = f"grid file {str(path)!r}"
    try:
        doc = read_json(path, "grid file", max_bytes=GRID_MAX_BYTES)
    except FileNotFoundError:
        raise ValueError(f"{where}: no such file") from None
    except ValueError as e:
        raise ValueError(f"{path} is not a saved grid: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != GRID_FORMAT or not isinstance(doc.get("key"), dict):
        raise ValueError(f"{where} is not a saved ei_toolkit grid (expected format {GRID_FORMAT!r})")
    if doc.get("version") != GRID_VERSION:
        raise ValueError(f"{where}: unsupported grid file version {doc.get('version')!r} (expected {GRID_VERSION})")
    want = grid_key(model, sde, method, nfe, dim)
    have = doc["key"]
    diff = [f"{k}: saved {have.get(k)!r}, requested {v!r}" for k, v in want.items() if have.get(k) != v]
    if diff:
        raise ValueError(f"the grid in {path} was saved for another configuration; refusing it ("
                         + "; ".join(diff) + ")")
    times = doc.get("times")
    if not isinstance(times, list) or not all(isinstance(v, float | int) and not isinstance(v, bool)
                                              for v in times):
        raise ValueError(f"{where}: 'times' must be a list of numbers")
    if len(times) > 100_000:
        raise ValueError(f"{where}: {len(times)} times; a grid holds at most 100000")
    try:
        values = [float(v) for v in times]
    except OverflowError:
        raise ValueError(f"{where}: 'times' holds a number out of range") from None
    if doc.get("sha256") != _grid_sha256(have, values):
        raise ValueError(f"{where} was edited or is corrupt: its content does not match its digest (sha256); "
                         "calibrate the grid again")
    t = torch.tensor(values, dtype=torch.float64)
    _check_times(t, want, _check_method(method, nfe, sde, dim), sde, where)
    for name, end, got in (("t_start", t_start, values[0]), ("t_end", t_end, values[-1])):
        if end is not None and got != float(end):
            raise ValueError(f"{where}: the grid runs from {values[0]!r} to {values[-1]!r}; {name}={end!r} requested")
    return t


def _check_times(t: torch.Tensor, key: dict[str, Any], m: Integrator, sde: LinearSDE, where: str) -> None:
    if t.numel() < 2 or not bool(torch.isfinite(t).all()) or not bool((t[1:] < t[:-1]).all()):
        raise ValueError(f"{where}: a grid must hold at least 2 finite, strictly decreasing times")
    if not (float(t[-1]) >= sde.t0 and (float(t[0]) <= sde.t_max or float(t[0]) == getattr(sde, "t_terminal", None))):
        raise ValueError(f"{where}: the grid runs from {float(t[0])!r} to {float(t[-1])!r}, outside the SDE's domain "
                         f"[{sde.t0!r}, {sde.t_max!r}]")
    steps = m.steps_for_nfe(key["nfe"])
    if t.numel() != steps + 1:
        raise ValueError(f"{where}: {t.numel()} times do not fit nfe={key['nfe']} for {m.name!r} ({steps + 1} times "
                         "expected)")
