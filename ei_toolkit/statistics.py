"""Empirical model statistics for :class:`~ei_toolkit.integrators.ems.EMSAdams` (DPM-Solver-v3's idea, Zheng et al.
2023; docs/math.md section 4.11): along the calibration batch's ODE trajectories, on nodes uniform in
lam = -log rho,

* l = tr(sigma d eps / dx) / d, the mean linear response of sigma eps to x (Hutchinson's estimator with Rademacher
  probes and central differences of the model), so that f = sigma eps - l x depends on x as little as possible;
* s, b: the least-squares fit f' ~ s f + b over the batch (s a scalar, b shaped like one sample), f' the
  derivative along the trajectories (second-order differences in lam); s is shrunk towards 0 (ridge,
  :data:`RIDGE`) where f is negligible next to sigma eps, as for Gaussian data.

Their own error (issue 26): a bootstrap over the draws (each draw's trajectory, probes and differences are kept, so
resampling costs no model evaluation) gives the variance of l, s and b at each node, and each is shrunk towards the
plain eps or x0 form by the James-Stein weight (1 - variance / squared deviation)+ (docs/math.md section 4.11):
with few or noisy draws EMS tends to its base method, with many clean draws it keeps the fitted values.
:func:`check_statistics` compares EMS with that base method on held-out draws and refuses or falls back.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch

from .errors import NumericalError, positive_int
from .files import model_id as _model_id
from .grids import time_grid
from .integrators.ems import BASES, EMSAdams, ModelStatistics, _sde_tag
from .integrators.kernels import half_lambda
from .model import Model, ModelEvaluator
from .sde import LinearSDE

RIDGE = 1e-6
"""Regularisation of the fit f' ~ s f + b, relative to the spread of sigma eps over the batch."""
MIN_DRAWS = 64
"""Fewer calibration draws than this without a tolerance get a UserWarning (the issue's failure was at 64)."""
DEFAULT_TOLERANCE = 0.05
"""The statistics' relative bootstrap error (:func:`relative_error`) above which a UserWarning names it."""
_FIRST_CHUNK = 64  # draws before the first convergence check (tolerance=)


def base_tables(sde: LinearSDE, lam: np.ndarray, base: str) -> tuple[np.ndarray, np.ndarray]:
    """(l, s) of the plain form ``base`` at the nodes ``lam``: (0, dlog sigma/dlam) for "eps", (1, dlog alpha/dlam)
    for "x0" (b = 0 for both). Exactly: dlog alpha/dlam = F / (dlam/dt) with dlam/dt = -rho'/rho, and
    dlog sigma/dlam = dlog alpha/dlam - 1 (sigma = alpha rho, lam = -log rho)."""
    if base not in BASES:
        raise ValueError(f"base must be one of {BASES}; got {base!r}")
    lam = np.asarray(lam, dtype=np.float64)
    rho = torch.from_numpy(np.exp(-lam))
    t = sde.t_of_rho(rho)
    dlog_alpha = (sde.drift(t) * rho / -sde.drho_dt(t)).to(torch.float64).numpy()
    return np.full_like(lam, 0.0 if base == "eps" else 1.0), dlog_alpha - (1.0 if base == "eps" else 0.0)


KEEP = 0.5
"""A table keeps its fitted values where its James-Stein weight (1 - variance / squared deviation)+ is at least
this (the deviation from the base form at least the noise), and takes the base form's otherwise: a pretest
estimator, not the partial shrinkage, because EMS is far more sensitive to a biased s than to a noisy one
(docs/math.md section 4.11)."""


def _weight(dev2: np.ndarray, var: np.ndarray) -> np.ndarray:
    """The positive-part James-Stein weight (1 - var / dev2)+ (0 where the deviation is 0), snapped to 1 where it
    is at least :data:`KEEP` and to 0 below."""
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(dev2 > 0, 1.0 - var / np.where(dev2 > 0, dev2, 1.0), 0.0)
    return np.where(w >= KEEP, 1.0, 0.0)


def _table_weight(dev: np.ndarray, var: np.ndarray) -> np.ndarray:
    """One James-Stein weight for a whole scalar table (its nodes the coordinates), repeated per node."""
    return np.full(dev.shape, float(_weight(np.asarray((dev * dev).sum()), np.asarray(var.sum()))))


def relative_error(l_std: np.ndarray, s_std: np.ndarray, b_std: np.ndarray, fp_rms: float) -> float:
    """The statistics' error as one figure: the largest of the RMS over nodes of the bootstrap std of l and of s
    (both dimensionless, O(1) in the plain forms) and of b's (per element) relative to the RMS of f', the quantity b
    models. Falls like 1/sqrt(draws)."""
    rb = float(np.sqrt(np.mean(b_std**2))) / fp_rms if fp_rms > 0 else 0.0
    return max(float(np.sqrt(np.mean(l_std**2))), float(np.sqrt(np.mean(s_std**2))), rb)


def _per_draw(model: Model, x: torch.Tensor, sde: LinearSDE, grid: torch.Tensor, prediction: str, probes: int,
              step: float, gen: torch.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the draws ``x``: sigma eps and the states on the nodes, (nodes + 1, n, d) float64, and each draw's
    Hutchinson estimate of l, (nodes + 1, n). ``len(grid) - 1`` batch evaluations for the trajectories and
    ``len(grid) * (1 + 2 probes)`` for the rest."""
    from .sampling import solve

    states = solve(model, x, sde, method="logrhoab3", grid=grid, prediction=prediction, trajectory=True,
                   dtype=torch.float64).trajectory
    evaluator = ModelEvaluator(model, sde, prediction, model_dtype=x.dtype)
    eps_fn = evaluator.bind(grid, states[0])
    sigma = sde.sigma(grid).numpy()
    n, d = len(x), states[0][0].numel()
    se, tr = [], []
    for k in range(len(grid)):
        xk = states[k]
        eps = eps_fn(xk, k).to(torch.float64)
        delta = step * float(xk.pow(2).mean().sqrt().clamp_min(1e-12))
        acc = torch.zeros(n, dtype=torch.float64)
        for _ in range(probes):
            v = torch.randint(0, 2, xk.shape, generator=gen).to(xk) * 2 - 1
            diff = eps_fn(xk + delta * v, k).to(torch.float64) - eps_fn(xk - delta * v, k).to(torch.float64)
            acc += (v * diff).reshape(n, -1).sum(1) / (2 * delta)
        tr.append((sigma[k] * acc / probes / d).numpy())
        se.append((sigma[k] * eps).reshape(n, -1).numpy())
    evaluator.check()
    xs = states.reshape(len(grid), n, -1).numpy()
    return np.stack(se), xs, np.stack(tr)


def _slopes(f: np.ndarray, fp: np.ndarray, se: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, ...]:
    """For each row of bootstrap ``counts`` (R, n): s (nodes, R) of the ridge least-squares fit f' ~ s f + b and
    the weighted means of f and f' (nodes, R, d)."""
    n = f.shape[1]
    fbar, pbar, sebar = (np.matmul(counts, a) / n for a in (f, fp, se))
    sfp = np.einsum("kn,rn->kr", (f * fp).sum(2), counts) - n * (fbar * pbar).sum(2)
    sff = np.einsum("kn,rn->kr", (f * f).sum(2), counts) - n * (fbar * fbar).sum(2)
    spread = np.einsum("kn,rn->kr", (se * se).sum(2), counts) - n * (sebar * sebar).sum(2)
    den = sff + RIDGE * np.maximum(spread, 0.0)
    s = np.where(den > 0, sfp / np.where(den > 0, den, 1.0), 0.0)
    return s, fbar, pbar


def _fit(se: np.ndarray, xs: np.ndarray, tr: np.ndarray, lam: np.ndarray, base: tuple[np.ndarray, np.ndarray] | None,
         boot: int, rng: np.random.Generator) -> dict[str, Any]:
    """l, s, b from the per-draw quantities; with ``boot`` resamples their bootstrap std, shrunk towards ``base``
    ((l, s) of the plain form) in turn: l, then s fitted with the shrunk l, then b with both (docs/math.md 4.11)."""
    k, n, d = se.shape
    ones = np.ones((1, n))
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=boot).astype(np.float64) if boot else None
    out: dict[str, Any] = {}
    l_hat = tr.mean(1)
    l_var = (tr @ counts.T / n).var(1, ddof=1) if boot else np.zeros(k)
    # l and s: one weight per table (a scalar per node is too little for a stable weight); b: one per node, over
    # its d elements; b is always the least-squares intercept given the l and s kept
    wl = _table_weight(l_hat - base[0], l_var) if base is not None else np.ones(k)
    l_use = l_hat if base is None else np.where(wl == 1.0, l_hat, base[0])
    f = se - l_use[:, None, None] * xs
    fp = np.gradient(f, lam, axis=0, edge_order=2)
    s1, fbar1, pbar1 = _slopes(f, fp, se, ones)
    s_hat = s1[:, 0]
    if boot:
        s_r, fbar_r, pbar_r = _slopes(f, fp, se, counts)
        s_var = s_r.var(1, ddof=1)
    else:
        s_var = np.zeros(k)
    ws = _table_weight(s_hat - base[1], s_var) if base is not None else np.ones(k)
    s_use = s_hat if base is None else np.where(ws == 1.0, s_hat, base[1])
    b_hat = pbar1[:, 0] - s_use[:, None] * fbar1[:, 0]
    b_tr = (pbar_r - s_use[:, None, None] * fbar_r).var(1, ddof=1).sum(1) if boot else np.zeros(k)
    wb = _weight((b_hat * b_hat).sum(1), b_tr) if base is not None else np.ones(k)
    out.update(l=l_use, s=s_use, b=wb[:, None] * b_hat, l_std=np.sqrt(l_var), s_std=np.sqrt(s_var),
               b_std=np.sqrt(b_tr / d), weights=np.stack([wl, ws, wb]))
    out["error"] = relative_error(out["l_std"], out["s_std"], out["b_std"], float(np.sqrt(np.mean(fp * fp))))
    return out


def model_statistics(model: Model, x: torch.Tensor, sde: LinearSDE, *, nodes: int = 200, probes: int = 2,
                     t_start: float | None = None, t_end: float | None = None, prediction: str = "eps",
                     generator: torch.Generator | None = None, step: float = 1e-3,
                     model_id: str | None = None, bootstrap: int = 32, shrink: str | None = "x0",
                     tolerance: float | None = None) -> ModelStatistics:
    """Estimate l, s, b (module docstring) on ``nodes + 1`` nodes uniform in -log rho from ``t_start`` (default
    ``sde.t_max``) to ``t_end`` (default ``sde.t_min``), from the calibration draws ``x`` (states at t_start; a few
    hundred draws of the prior). Costs ``nodes`` batch evaluations for the trajectories (4-point exponential Adams,
    float64 state) and ``(nodes + 1) * (1 + 2 * probes)`` for the statistics, per draw used. ``step``: the
    central-difference step relative to the state's RMS, at least sqrt(eps) of ``x``'s dtype (below, the difference
    of the two evaluations is round-off: at a step under eps it is exactly 0). ``model_id``: what the statistics
    record as their model (default: :func:`ei_toolkit.grid_opt.model_id` of ``model``, the SHA-256 of an
    nn.Module's weights), checked by ``ModelStatistics.load(..., model=)``.

    Their error (no extra model evaluation): ``bootstrap`` resamples of the draws (0: none) give the std of each
    table per node and :func:`relative_error`; ``shrink`` ("x0", "eps" or None) shrinks each table towards that
    plain form by its James-Stein weight (docs/math.md section 4.11), so that EMS tends to its base method
    (:attr:`EMSAdams.base_method`) where the statistics are noise. ``tolerance``: add draws (64, then doubling, up
    to all of ``x``: ``x`` is the pool and the cap) until the relative error is at most this; without it all of
    ``x`` is used. A UserWarning names the error when it ends above ``tolerance`` (default
    :data:`DEFAULT_TOLERANCE`) and the number of draws when it is under :data:`MIN_DRAWS` without a tolerance.
    Returns :class:`ModelStatistics` (``.save(path)`` / ``ModelStatistics.load``)."""
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"sde must be a scalar ei_toolkit.LinearSDE; got {type(sde).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2 or x.shape[0] < 1:
        raise ValueError("x must be a floating-point tensor shaped (batch, *sample shape): the calibration batch")
    nodes = positive_int("nodes", nodes)
    probes = positive_int("probes", probes)
    if nodes < 4:
        raise ValueError(f"nodes must be at least 4 (the derivative along lam needs them); got {nodes}")
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0 < step < 1:
        raise ValueError(f"step must be a number in (0, 1); got {step!r}")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 0 or bootstrap == 1:
        raise ValueError(f"bootstrap must be 0 (no error estimate) or an integer >= 2 (resamples); got {bootstrap!r}")
    if shrink is not None and shrink not in BASES:
        raise ValueError(f"shrink must be one of {BASES} or None; got {shrink!r}")
    if shrink is not None and bootstrap == 0:
        raise ValueError("shrink needs the error estimate: pass bootstrap >= 2, or shrink=None")
    if tolerance is not None and (isinstance(tolerance, bool) or not isinstance(tolerance, (int, float))
                                  or not 0 < tolerance < math.inf):
        raise ValueError(f"tolerance must be a positive number or None; got {tolerance!r}")
    if tolerance is not None and bootstrap == 0:
        raise ValueError("tolerance needs the error estimate: pass bootstrap >= 2")
    floor = math.sqrt(torch.finfo(x.dtype).eps)
    if step < floor:
        raise ValueError(f"step={step!r} is below what {x.dtype} resolves: the central differences of the model would "
                         f"be round-off (0 for a step under eps); use step >= sqrt(eps) = {floor:.3g} (default 1e-3), "
                         "or a float64 calibration batch")
    recorded = _model_id(model) if model_id is None else _model_id(model_id)
    t_start = float(sde.t_max if t_start is None else t_start)
    t_end = float(sde.t_min if t_end is None else t_end)
    if not sde.t0 <= t_end < t_start <= sde.t_max:
        raise ValueError(f"need sde.t0 <= t_end < t_start <= sde.t_max; got t_start={t_start}, t_end={t_end}")
    grid = time_grid(sde, "uniform_logrho", nodes, t_start, t_end)
    lam = half_lambda(sde, grid)
    if not np.isfinite(lam).all():
        raise ValueError("the statistics need a finite log-SNR at both ends: t_end must have rho > 0 and t_start "
                         "rho < inf")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=gen)))
    total = int(x.shape[0])
    if bootstrap and total < 2:
        warnings.warn("model_statistics: 1 calibration draw cannot estimate the statistics' error; they are neither "
                      "bootstrapped nor shrunk (pass more draws)", UserWarning, stacklevel=2)
        bootstrap, shrink = 0, None
    base = base_tables(sde, lam, shrink) if shrink is not None else None
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    used = 0
    target = total if tolerance is None else min(total, _FIRST_CHUNK)
    with torch.no_grad():
        while True:
            parts.append(_per_draw(model, x[used:target], sde, grid, prediction, probes, step, gen))
            used = target
            se, xs, tr = (np.concatenate(p, axis=1) for p in zip(*parts, strict=True))
            fit = _fit(se, xs, tr, lam, base, bootstrap, rng)
            if tolerance is None or fit["error"] <= tolerance or used >= total:
                break
            target = min(total, 2 * used)
    if not all(np.isfinite(fit[n]).all() for n in ("l", "s", "b", "l_std", "s_std", "b_std")):
        raise NumericalError("model_statistics: the estimates are not finite (the model returned extreme values "
                             "along the calibration trajectories)")
    limit = DEFAULT_TOLERANCE if tolerance is None else tolerance
    if bootstrap and fit["error"] > limit:
        warnings.warn(f"model_statistics: relative bootstrap error {fit['error']:.3g} > {limit:g} with {used} draws "
                      f"(error ~ 1/sqrt(draws): about {used * (fit['error'] / limit) ** 2:.0f} draws would meet "
                      f"it){'; shrunk towards the ' + shrink + ' form' if shrink else ''}; pass more draws or "
                      "tolerance=", UserWarning, stacklevel=2)
    elif tolerance is None and used < MIN_DRAWS:
        warnings.warn(f"model_statistics: {used} calibration draws, fewer than {MIN_DRAWS}; the statistics may be "
                      "noisy (check them with ei_toolkit.statistics.check_statistics)", UserWarning, stacklevel=2)
    extra: dict[str, Any] = {}
    if bootstrap:
        extra = {"bootstrap": bootstrap, "error": fit["error"], "base": shrink,
                 **{n: torch.from_numpy(fit[n]) for n in ("l_std", "s_std", "b_std")},
                 "weights": torch.from_numpy(fit["weights"]) if shrink is not None else None}
    return ModelStatistics(lam=torch.from_numpy(lam.copy()), l=torch.from_numpy(fit["l"]), s=torch.from_numpy(fit["s"]),
                           b=torch.from_numpy(np.ascontiguousarray(fit["b"])).reshape(nodes + 1, *x.shape[1:]),
                           sde=_sde_tag(sde), samples=used, model=recorded, **extra)


def base_statistics(stats: ModelStatistics, sde: LinearSDE, base: str | None = None) -> ModelStatistics:
    """The statistics of the plain form ``base`` (default: the one ``stats`` were shrunk towards, else "x0") on
    ``stats``' nodes: EMSAdams on them is its base method, for methods not registered (4 points + corrector)."""
    stats.check_sde(sde)
    base = base or stats.base or "x0"
    l0, s0 = base_tables(sde, stats.lam.numpy(), base)
    return ModelStatistics(lam=stats.lam, l=torch.from_numpy(l0), s=torch.from_numpy(s0),
                           b=torch.zeros_like(stats.b), sde=stats.sde, samples=stats.samples, model=stats.model)


def check_statistics(model: Model, statistics: ModelStatistics | EMSAdams, x: torch.Tensor, sde: LinearSDE, *,
                     nfe: int, points: int = 2, corrector: bool = True, grid: Any = None,
                     reference: torch.Tensor | None = None, on_failure: str = "raise", prediction: str = "eps",
                     tolerance: float = 0.0, reference_rtol: float = 1e-7) -> tuple[Any, Any]:
    """The held-out check of issue 26: EMS (``EMSAdams(statistics, points, corrector)``, or the given EMSAdams) on
    ``grid`` (default: its default grid) against its base method (:attr:`EMSAdams.base_method`, registered, on its
    default grid) at ``nfe``, from the held-out draws ``x`` (noise not used to fit the statistics), against a
    near-exact reference (``reference``, or method "adaptive" at ``reference_rtol``): see
    :func:`ei_toolkit.grid_opt.heldout_check`. Cost: the reference's evaluations plus 2 solves of ``nfe``, all on
    ``x``. Returns ``(method, report)``: the EMS method if it passed; if not, ``on_failure="raise"`` raises
    :class:`~ei_toolkit.grid_opt.HeldoutCheckFailed` and ``"fallback"`` warns (UserWarning) and returns the base
    method (a name of ``ei.INTEGRATORS``, or EMSAdams on :func:`base_statistics` where none is registered)."""
    from .grid_opt import HeldoutCheckFailed, heldout_check
    from .integrators import INTEGRATORS

    if on_failure not in ("raise", "fallback"):
        raise ValueError(f"on_failure must be 'raise' or 'fallback'; got {on_failure!r}")
    ems = statistics if isinstance(statistics, EMSAdams) else EMSAdams(statistics, points, corrector)
    name = ems.base_method
    base: Any = name if name in INTEGRATORS else EMSAdams(base_statistics(ems.statistics, sde), ems.points,
                                                          ems.corrector)
    report = heldout_check(model, x, sde, method=ems, nfe=nfe, grid=grid, baseline=base, reference=reference,
                           prediction=prediction, tolerance=tolerance, reference_rtol=reference_rtol)
    if report.passed:
        return ems, report
    if on_failure == "raise":
        raise HeldoutCheckFailed(f"check_statistics: {report.describe()}; the statistics make {ems.name} worse than "
                                 f"its base method {name}: estimate them from more draws, or pass "
                                 "on_failure='fallback'", report)
    warnings.warn(f"check_statistics: {report.describe()}; falling back to the base method {name}", UserWarning,
                  stacklevel=2)
    return base, report
