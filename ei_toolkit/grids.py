"""Time grids for sampling: small named functions, freely combined with any integrator.

Each returns a float64 CPU tensor of ``steps + 1`` strictly monotone times from ``t_start`` to ``t_end`` in the
SDE's own units: decreasing for sampling (noise to data), increasing for inversion (data to noise, the same
formulas with the ends swapped) (fractional times for discrete schedules: there is no rounding, so no duplicate
timesteps at any step count). A power law with exponent k in a variable v (t or rho),
v_i = (v_start^(1/k) + i/N (v_end^(1/k) - v_start^(1/k)))^k, gives ``uniform_t`` (k=1), ``quadratic_t``
(k=2, the DEIS default for tAB), ``uniform_rho`` (k=1 in rho) and ``karras`` (k=7 in rho, Karras et al.
2022); ``uniform_logrho`` is uniform in log rho (docs/math.md section 4). The flow-matching schedules (uniform in
sigma, SD3's and Flux's shifts: Esser et al. 2024) are ``uniform_sigma``, ``sd3_shift`` and :func:`shifted` with any
shift, for every scalar SDE (docs/flow.md). Matrix (gDDIM) SDEs have no scalar
rho: they take the grids in t (:data:`T_GRIDS`) or explicit times.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from .errors import NumericalError

if TYPE_CHECKING:
    from .sde import LinearSDE

GridFn = Callable[..., torch.Tensor]


def _power(v0: float, v1: float, steps: int, k: float) -> torch.Tensor:
    i = torch.arange(steps + 1, dtype=torch.float64) / steps
    a, b = v0 ** (1.0 / k), v1 ** (1.0 / k)
    v = (a + i * (b - a)) ** k
    v[0], v[-1] = v0, v1  # exact ends
    return v


def _in_rho(sde: LinearSDE, rho: torch.Tensor, t_start: float, t_end: float) -> torch.Tensor:
    t = sde.t_of_rho(rho)
    t[0], t[-1] = t_start, t_end
    return t


def _offset(sde: LinearSDE) -> float:
    """Power laws in t need nonnegative times: measure t from the data time t0 (-1 for DiscreteVP)."""
    return sde.t0


def uniform_t(sde: LinearSDE, steps: int, t_start: float, t_end: float) -> torch.Tensor:
    """Uniform in t."""
    return _power(t_start, t_end, steps, 1.0)


def quadratic_t(sde: LinearSDE, steps: int, t_start: float, t_end: float, k: float = 2.0) -> torch.Tensor:
    """Power law in t - t0 with exponent k (2: the DEIS paper's grid for tAB)."""
    o = _offset(sde)
    return _power(t_start - o, t_end - o, steps, k) + o


def uniform_rho(sde: LinearSDE, steps: int, t_start: float, t_end: float) -> torch.Tensor:
    """Uniform in rho = sigma / alpha."""
    r = sde.rho(torch.tensor([t_start, t_end], dtype=torch.float64))
    return _in_rho(sde, _power(r[0].item(), r[1].item(), steps, 1.0), t_start, t_end)


def karras(sde: LinearSDE, steps: int, t_start: float, t_end: float, p: float = 7.0) -> torch.Tensor:
    """Power law in rho with exponent p (Karras et al. 2022, p = 7)."""
    r = sde.rho(torch.tensor([t_start, t_end], dtype=torch.float64))
    return _in_rho(sde, _power(r[0].item(), r[1].item(), steps, p), t_start, t_end)


def uniform_logrho(sde: LinearSDE, steps: int, t_start: float, t_end: float) -> torch.Tensor:
    """Uniform in log rho (the half-log-SNR lambda = -log rho of DPM-Solver). To the data time (rho = 0),
    the first steps - 1 steps are uniform in log rho down to rho(sde.t_min) and the last goes to rho = 0; from the
    data time (an inversion started at rho = 0) the first step goes to rho(sde.t_min), the others are uniform."""
    r = sde.rho(torch.tensor([t_start, t_end], dtype=torch.float64))
    if r[0] > 0 and r[1] > 0:
        lr = torch.linspace(r[0].log().item(), r[1].log().item(), steps + 1, dtype=torch.float64)
        return _in_rho(sde, lr.exp(), t_start, t_end)
    if steps == 1:
        return torch.tensor([t_start, t_end], dtype=torch.float64)
    lo, hi = min(t_start, t_end), max(t_start, t_end)
    if not lo < sde.t_min < hi:
        raise ValueError("uniform_logrho to or from rho = 0 needs the data time and sde.t_min < the other end")
    if r[1] == 0:
        inner = uniform_logrho(sde, steps - 1, t_start, sde.t_min)
        return torch.cat([inner, torch.tensor([t_end], dtype=torch.float64)])
    inner = uniform_logrho(sde, steps - 1, sde.t_min, t_end)
    return torch.cat([torch.tensor([t_start], dtype=torch.float64), inner])


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's time shift (Esser et al. 2024, eq. 23): sigma' = s sigma / (1 + (s - 1) sigma), for sigma in [0, 1]
    (the rectified-flow sigma = t). In rho = sigma / (1 - sigma) it is rho' = s rho: a translation by log s in
    log rho."""
    _check_shift(shift)
    return shift * sigma / (1 + (shift - 1) * sigma)


def flux_shift(mu: float, time_shift_type: str = "exponential") -> float:
    """The static shift s equivalent to Flux's dynamic shift by ``mu`` (diffusers' ``time_shift``):
    ``"exponential"``, sigma' = e^mu / (e^mu + (1 / sigma - 1)), is s = e^mu; ``"linear"``,
    sigma' = mu / (mu + (1 / sigma - 1)), is s = mu."""
    if isinstance(mu, bool) or not isinstance(mu, (int, float)) or mu != mu or abs(mu) == float("inf"):
        raise ValueError(f"mu must be a finite number; got {mu!r}")
    if time_shift_type == "exponential":
        return _check_shift(math.exp(mu))
    if time_shift_type == "linear":
        return _check_shift(float(mu))
    raise ValueError(f"time_shift_type must be 'exponential' or 'linear'; got {time_shift_type!r}")


def stretch_to_terminal(sigma: torch.Tensor, shift_terminal: float) -> torch.Tensor:
    """diffusers' ``shift_terminal`` (LTX-Video, Wan): 1 - sigma scaled so that the last sigma becomes
    ``shift_terminal``: sigma' = 1 - (1 - sigma) (1 - shift_terminal) / (1 - sigma[-1]). Applied to the model's
    sigmas (the final 0 of the data excluded)."""
    if not 0 < float(shift_terminal) < 1:
        raise ValueError(f"shift_terminal must lie in (0, 1); got {shift_terminal!r}")
    one_minus = 1 - sigma
    return 1 - one_minus * ((1 - shift_terminal) / one_minus[-1])


def _check_shift(shift: float) -> float:
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not 0 < shift < float("inf"):
        raise ValueError(f"shift must be a finite positive number; got {shift!r}")
    return float(shift)


def shifted(sde: LinearSDE, steps: int, t_start: float, t_end: float, shift: float = 1.0) -> torch.Tensor:
    """Flow-matching schedules as a grid for any scalar SDE: uniform in u = rho / (1 + rho) (the sigma of the
    rectified flow with the same rho; t itself for :class:`~ei_toolkit.RectifiedFlow`), then every rho multiplied by
    ``shift`` (SD3's shift, :func:`shift_sigma`; ``shift=1`` is FlowMatchEulerDiscreteScheduler's uniform sigmas).
    The ends are exact: the uniform grid runs between the ends' rho / shift. To or from rho = 0 (the data) it is
    uniform down to u = 0, like the flow schedulers' last step to sigma = 0."""
    _check_shift(shift)
    r = sde.rho(torch.tensor([t_start, t_end], dtype=torch.float64)) / shift
    u = r / (1 + r)
    ui = _power(u[0].item(), u[1].item(), steps, 1.0)
    return _in_rho(sde, shift * ui / (1 - ui), t_start, t_end)


def uniform_sigma(sde: LinearSDE, steps: int, t_start: float, t_end: float) -> torch.Tensor:
    """:func:`shifted` with shift 1: uniform in sigma for rectified flow (FlowMatchEulerDiscreteScheduler, shift 1)."""
    return shifted(sde, steps, t_start, t_end, 1.0)


def sd3_shift(sde: LinearSDE, steps: int, t_start: float, t_end: float) -> torch.Tensor:
    """:func:`shifted` with shift 3, Stable Diffusion 3's default (Esser et al. 2024)."""
    return shifted(sde, steps, t_start, t_end, 3.0)


GRIDS: dict[str, GridFn] = {
    "uniform_t": uniform_t,
    "quadratic_t": quadratic_t,
    "uniform_rho": uniform_rho,
    "uniform_logrho": uniform_logrho,
    "karras": karras,
    "uniform_sigma": uniform_sigma,
    "sd3_shift": sd3_shift,
}
T_GRIDS = ("uniform_t", "quadratic_t")  # the grids that need no rho (all that matrix SDEs take)


HIGH_DIM = 512
"""Data of this many elements per sample or more (16 x 16 RGB and up) get the defaults measured on large data
(:data:`ei_toolkit.sampling.DEFAULTS_BY_NFE_HIGH_DIM`): the trained image-patch UNets (768) want their steps at high
noise where the digits models (64) and the mixtures (2-256) want them near the data (benchmarks/results/default.md)."""


def vp_or_logrho(sde: LinearSDE | None) -> str:
    """``quadratic_t`` for a variance-preserving schedule (alpha(t_max) < 1/2, or no SDE given), else
    ``uniform_logrho``: for VE / EDM, whose t is sigma, quadratic_t crowds the steps at the smallest sigmas."""
    vp = sde is None or float(sde.alpha(torch.tensor(sde.t_max, dtype=torch.float64))) < 0.5
    return "quadratic_t" if vp else "uniform_logrho"


def time_grid(sde: LinearSDE, grid: str | torch.Tensor, steps: int, t_start: float, t_end: float,
              **options: float) -> torch.Tensor:
    """The grid ``grid`` (a name from :data:`GRIDS`, or an explicit tensor of times) with ``steps`` steps.

    Raises a clear error for an unknown name, and a :class:`NumericalError` if the result is not strictly
    monotone from ``t_start`` to ``t_end`` (which no built-in grid produces, at any step count). An explicit grid
    may run either way: decreasing (sampling) or increasing (inversion).
    """
    matrix = bool(getattr(sde, "is_matrix", False))
    if isinstance(grid, torch.Tensor) or not isinstance(grid, str):
        t = torch.as_tensor(grid, dtype=torch.float64).flatten().cpu()
        if t.numel() < 2:
            raise ValueError(f"an explicit grid needs at least 2 times; got {t.numel()}")
        _check_monotone(t, "an explicit grid", ValueError, increasing=bool(t[-1] > t[0]))
        lo, hi = (sde.t_min if matrix else sde.t0), sde.t_max
        first, last = float(t.min()), float(t.max())
        if last > hi + 1e-12 or first < lo - 1e-12:
            raise ValueError(f"grid times must lie in the SDE's domain [{lo:g}, {hi:g}]; got [{first:g}, {last:g}]")
        return t
    if grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}; valid grids: {', '.join(GRIDS)} (or an explicit tensor of times)")
    if matrix and grid not in T_GRIDS:
        raise ValueError(f"grid {grid!r} needs the scalar rho, which a matrix SDE has not; valid grids for matrix "
                         f"SDEs: {', '.join(T_GRIDS)} (or an explicit tensor of times)")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps!r}")
    t = GRIDS[grid](sde, steps, t_start, t_end, **options)
    _check_monotone(t, f"the {grid} grid with {steps} steps", increasing=t_end > t_start)
    return t


def _check_monotone(t: torch.Tensor, what: str, error: type[Exception] = NumericalError, *,
                    increasing: bool = False) -> None:
    if not torch.isfinite(t).all():
        raise error(f"{what} contains non-finite times: {t.tolist()}")
    d = t[1:] - t[:-1]
    bad = d <= 0 if increasing else d >= 0
    if bad.any():
        i = int(bad.nonzero()[0])
        raise error(f"{what} must be strictly {'increasing' if increasing else 'decreasing'} (no duplicates); "
                    f"times {i} and {i + 1} are {t[i].item()!r} and {t[i + 1].item()!r}")
