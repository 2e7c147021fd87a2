"""How much a plan amplifies round-off in the model's input and output (issue 10: low precision).

A plan is linear in the model's evaluations, but the evaluations depend on the state, so round-off injected at one
evaluation feeds every later one. The gain is measured on Gaussian surrogate data N(0, s^2 I) for the scales
s in :data:`DATA_SCALES` (s = 0 is a point mass, the sharpest data; s ~ 1 is data with the spread of normalised
images, where the flow no longer contracts perturbations), whose exact eps and x0 are linear in x: with the model's
output perturbed by d_k at evaluation k (in the model's own parameterisation, eps, x0, v or score, converted to what
the plan consumes: an eps error becomes an x0 error sigma / alpha times larger, docs/math.md section 7), the gain is
max_s sum_k |d x_end / d d_k|, one reverse pass over the plan in float64 for all scales at once (cached per plan and
prediction). A stable plan has a gain of order 1; plans that extrapolate over long steps (multistep methods on
``uniform_rho``, t-polynomials on the steep end of the cosine schedule, one huge Runge-Kutta step) reach 10^2..10^7,
and their result then depends on the last bits of a half-precision model's input and output. On the 2-D mixtures of
the fuzz benchmark the gain predicts the measured half-precision error within a factor of about two.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any

import torch

from ..errors import NumericalError, RoundoffWarning
from ..model import to_eps, to_x0
from .base import Plan

UNIT_ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8, torch.float32: 2.0**-24, torch.float64: 2.0**-53}
TOLERANCE = 0.5
"""The largest estimated round-off error accepted, relative to unit-scale data (eps and x0 are O(1)): beyond it
the result would be noise, and :func:`check_roundoff` raises."""
WARN_GAIN = 64.0
"""Gains above this (but within :data:`TOLERANCE`) give a :class:`RoundoffWarning`: the model's rounding, not the
integrator, then limits the accuracy."""
DATA_SCALES = (0.0, 0.1, 0.5, 1.0)

_GAINS: weakref.WeakKeyDictionary[Plan, dict[str, float]] = weakref.WeakKeyDictionary()


def _output_to_target(prediction: str, target: str, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """d(target) / d(model output) at fixed x: the slope of model.py's conversion, which is affine in the output
    (docs/math.md section 7). A score is O(|eps| / sigma) and rounded relative to that size, so its perturbation is
    counted in eps units (the slope times 1 / sigma)."""
    slope = (to_eps if target == "eps" else to_x0)(prediction, torch.ones_like(alpha), torch.zeros_like(alpha),
                                                   alpha, sigma)
    return slope / sigma if prediction == "score" else slope


def roundoff_gain(plan: Plan, sde: Any, prediction: str = "eps") -> float:
    """max over :data:`DATA_SCALES` of sum_k |d x_end / d d_k| (module docstring); cached per plan object."""
    hit = _GAINS.get(plan, {}).get(prediction)
    if hit is not None:
        return hit
    times = plan.eval_times.to(torch.float64)
    alpha, sigma = sde.alpha(times), sde.sigma(times)
    scales = torch.tensor(DATA_SCALES, dtype=torch.float64)
    var = alpha[:, None] ** 2 * scales**2 + sigma[:, None] ** 2  # [K, S]: the surrogate's marginal variance
    x0_target = getattr(plan, "target", "eps") == "x0"
    slope = (alpha[:, None] * scales**2 if x0_target else sigma[:, None]) / var  # eps = slope x or x0 = slope x
    factor = _output_to_target(prediction, "x0" if x0_target else "eps", alpha, sigma)
    d = torch.zeros(len(times), len(DATA_SCALES), dtype=torch.float64, requires_grad=True)
    x = torch.zeros(len(DATA_SCALES), dtype=torch.float64)

    def fn(y: torch.Tensor, k: int) -> torch.Tensor:
        return y * slope[k] + factor[k] * d[k]

    with torch.enable_grad():
        out = plan.run(x, fn, noise=lambda i, y: torch.zeros_like(y))
        (grad,) = torch.autograd.grad(out.sum(), d, allow_unused=True)
    gain = 0.0 if grad is None else float(grad.abs().sum(0).max())
    if gain != gain:  # NaN: treat as unbounded
        gain = float("inf")
    _GAINS.setdefault(plan, {})[prediction] = gain
    return gain


def check_roundoff(plan: Plan, sde: Any, model_dtype: torch.dtype, method: str, grid: str, nfe: int,
                   prediction: str = "eps") -> float | None:
    """Raise :class:`NumericalError` naming the method and grid when ``model_dtype``'s round-off, amplified by the
    plan, is estimated to exceed :data:`TOLERANCE` of the data scale; warn (:class:`RoundoffWarning`) when the gain
    exceeds :data:`WARN_GAIN`. Returns the gain (None where it is not checked: float64, matrix SDEs)."""
    u = UNIT_ROUNDOFF.get(model_dtype)
    if u is None or model_dtype == torch.float64 or getattr(sde, "is_matrix", False):
        return None
    if any(isinstance(c, torch.Tensor) for c in plan.coefficients()):
        return None
    gain = roundoff_gain(plan, sde, prediction)
    dtype = str(model_dtype).removeprefix("torch.")
    wider = "x.double()" if model_dtype == torch.float32 else "x.float()"
    other = "quadratic_t" if grid == "uniform_logrho" else "uniform_logrho"  # a grid other than the one in use
    if u * gain > TOLERANCE:
        raise NumericalError(
            f"{method} on the {grid} grid with nfe={nfe} amplifies the {dtype} round-off of the model's input and "
            f"output about {gain:.2g}-fold (estimated error {u * gain:.2g} of the data scale): the result would be "
            f"noise. Use more steps, another grid (e.g. {other}) or method, or call the model in a wider "
            f"dtype ({wider})")
    if gain > WARN_GAIN:
        warnings.warn(RoundoffWarning(
            f"{method} on the {grid} grid with nfe={nfe} amplifies the {dtype} round-off of the model's input and "
            f"output about {gain:.2g}-fold: expect errors of about {u * gain:.2g} of the data scale from rounding "
            f"alone. More steps, another grid (e.g. {other}) or method, or a wider model dtype ({wider}) avoids it"),
            stacklevel=4)
    return gain
