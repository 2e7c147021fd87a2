"""How much a plan amplifies round-off in the model's input and output (issue 10: low precision).

A plan is linear in the model's evaluations, but the evaluations depend on the state, so round-off injected at one
evaluation feeds every later one. The gain is measured on the sharpest data distribution, a point mass at 0, whose
exact eps is x / sigma (the largest Jacobian a data distribution without separated modes gives: d eps / dy = 1 / rho
in the y-frame, docs/math.md section 3): with e_k = x_k / sigma_k + d_k, the gain is sum_k |d x_end / d d_k|, one
reverse pass over the plan in float64 (cached per plan). The exact flow contracts towards the data, so a stable plan
has a gain of order rho_end log(rho_max / rho_end) (about 0.1 on the built-in SDEs); plans that extrapolate over
long steps (multistep methods on ``uniform_rho``, one huge Runge-Kutta step) reach 10^3..10^7, and their result then
depends on the last bits of a half-precision model's input and output.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from ..errors import NumericalError
from .base import Plan

UNIT_ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8, torch.float32: 2.0**-24, torch.float64: 2.0**-53}
TOLERANCE = 0.1
"""The largest estimated round-off error accepted, relative to unit-scale data (eps and x0 are O(1))."""

_GAINS: weakref.WeakKeyDictionary[Plan, float] = weakref.WeakKeyDictionary()


def roundoff_gain(plan: Plan, sde: Any) -> float:
    """sum_k |d x_end / d e_k| on the point-mass problem (module docstring); cached per plan object."""
    hit = _GAINS.get(plan)
    if hit is not None:
        return hit
    sigma = sde.sigma(plan.eval_times.to(torch.float64)).tolist()
    d = torch.zeros(len(sigma), dtype=torch.float64, requires_grad=True)
    x = torch.full((1,), float(sde.sigma(plan.grid[:1].to(torch.float64))), dtype=torch.float64)
    x0_target = getattr(plan, "target", "eps") == "x0"

    def eps_fn(y: torch.Tensor, k: int) -> torch.Tensor:
        return (y * 0 if x0_target else y / sigma[k]) + d[k]

    with torch.enable_grad():
        out = plan.run(x, eps_fn, noise=lambda i, y: torch.zeros_like(y))
        (grad,) = torch.autograd.grad(out.sum(), d, allow_unused=True)
    gain = 0.0 if grad is None else float(grad.abs().sum())
    if gain != gain:  # NaN: treat as unbounded
        gain = float("inf")
    _GAINS[plan] = gain
    return gain


def check_roundoff(plan: Plan, sde: Any, model_dtype: torch.dtype, method: str, grid: str, nfe: int) -> None:
    """Raise :class:`NumericalError` naming the method and grid when ``model_dtype``'s round-off, amplified by the
    plan, is estimated to exceed :data:`TOLERANCE` of the data scale. float64 is never checked."""
    u = UNIT_ROUNDOFF.get(model_dtype)
    if u is None or model_dtype == torch.float64 or getattr(sde, "is_matrix", False):
        return
    if any(isinstance(c, torch.Tensor) for c in plan.coefficients()):
        return
    gain = roundoff_gain(plan, sde)
    if u * gain > TOLERANCE:
        dtype = str(model_dtype).removeprefix("torch.")
        raise NumericalError(
            f"{method} on the {grid} grid with nfe={nfe} amplifies the {dtype} round-off of the model's input and "
            f"output about {gain:.2g}-fold (estimated error {u * gain:.2g} of the data scale): the result would be "
            f"noise. Use more steps, another grid (e.g. uniform_logrho) or method, or call the model in a wider "
            f"dtype ({'x.double()' if model_dtype == torch.float32 else 'x.float()'})")
