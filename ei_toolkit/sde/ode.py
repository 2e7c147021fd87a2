"""The probability-flow ODE of a linear SDE for a given eps-model, in the original and the rho frame.

``eps_model(x, t)`` takes a batch ``x`` (batch first) and a 1-D tensor ``t`` of the batch size, in the
SDE's own time units, and returns a tensor shaped like ``x``. The returned callables follow torchdiffeq's
``func(t, y)`` convention.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .linear import LinearSDE

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def batch_time(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A scalar time broadcast to the 1-D batch of ``x``, in ``x``'s dtype and device."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.reshape(()).expand(x.shape[0]) if t.ndim == 0 or t.numel() == 1 else t


def probability_flow(sde: LinearSDE, eps_model: EpsModel) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """dx/dt = F(t) x + G(t)^2 / (2 sigma(t)) eps(x, t): the lambda = 0 member of MATH.md section 2."""

    def func(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        g = sde.diffusion(t)
        return sde.drift(t) * x + g * g / (2 * sde.sigma(t)) * eps_model(x, batch_time(t, x))

    return func


def rho_flow(sde: LinearSDE, eps_model: EpsModel) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """dy/drho = eps(alpha(t) y, t) with t = t(rho) and y = x / alpha (MATH.md section 3)."""

    def func(rho: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rho = torch.as_tensor(rho, dtype=y.dtype, device=y.device)
        t = sde.t_of_rho(rho)
        return eps_model(sde.alpha(t) * y, batch_time(t, y))

    return func
