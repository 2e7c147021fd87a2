"""A small flow-matching (rectified-flow) velocity model of scikit-learn's 8x8 digits (Liu et al. 2022, "Flow
straight and fast"; Lipman et al. 2022, "Flow matching for generative modeling"), trained by
``examples/train_digits_flow.py`` on the same split and scaling as the digits eps-model; its weights ship with the
package (``digits_flow.pt``). Sample it with ``ei.sample(model, z, ei.RectifiedFlow(), prediction="flow")``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .digits import DigitsEps, check_digits_input, load_shipped

WEIGHTS = Path(__file__).with_name("digits_flow.pt")
TIME_SCALE = 1000.0  # t = sigma in [0, 1] is embedded as 1000 t, the timestep diffusers' flow pipelines pass


def flow_matching_loss(model: nn.Module, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The rectified-flow / conditional flow-matching loss |v_hat(x_t, t) - (z - x0)|^2 (mean over all entries) for
    t ~ U[0, 1], z ~ N(0, I) and x_t = (1 - t) x0 + t z: the path of ``ei.RectifiedFlow()``, whose time t = sigma
    is what the model is conditioned on. ``generator`` fixes t and z (held-out evaluation)."""
    t = torch.rand(x0.shape[0], generator=generator, dtype=x0.dtype).to(x0.device)
    z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    tt = t.view(-1, *([1] * (x0.dim() - 1)))
    xt = (1 - tt) * x0 + tt * z
    return (model(xt, t) - (z - x0)).pow(2).mean()


class DigitsFlow(DigitsEps):
    """v(x, t) = dx/dt for x of shape (B, 1, 8, 8) in [-1, 1] and t = sigma in [0, 1] (``ei.RectifiedFlow``'s time:
    x_t = (1 - t) x0 + t z, v = z - x0). The network of :class:`DigitsEps` (an MLP with a sinusoidal time embedding
    in every hidden layer, about 0.3 M parameters) with t embedded as 1000 t."""

    def embed(self, t: torch.Tensor) -> torch.Tensor:
        return super().embed(t.to(self.inp.weight.dtype) * TIME_SCALE)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The velocity in x's dtype, computed in the weights' dtype (float32 as shipped)."""
        check_digits_input(x, t, "DigitsFlow")
        return super().forward(x, t)


def load_digits_flow_model(device: str | torch.device = "cpu") -> DigitsFlow:
    """The shipped, trained digits velocity model (eval mode)."""
    return load_shipped(DigitsFlow(), WEIGHTS, "train_digits_flow.py", device)
