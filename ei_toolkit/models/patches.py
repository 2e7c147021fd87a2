"""A small UNet (Ronneberger et al. 2015, "U-Net: convolutional networks for biomedical image segmentation", in the
form DDPM uses: Ho et al. 2020, "Denoising diffusion probabilistic models") for 16x16 RGB patches of scikit-learn's
two sample photographs (:mod:`ei_toolkit.models.patch_data`), shipped in two forms, both trained by
``examples/train_patches.py``:

- ``patches_eps.pt``: eps-prediction on the DDPM linear schedule (``ei.DiscreteVP.linear()``, betas 1e-4..0.02,
  1000 steps), conditioned on the DDPM timestep 0..999 as the digits model is;
- ``patches_flow.pt``: velocity prediction v = z - x0 on the rectified-flow path x_t = (1 - t) x0 + t z
  (``ei.RectifiedFlow()``, ``prediction="flow"``; Liu et al. 2022, "Flow straight and fast"; Lipman et al. 2022,
  "Flow matching for generative modeling"), conditioned on t = sigma in [0, 1] (embedded as 1000 t).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .digits import load_shipped, time_embedding
from .digits_flow import TIME_SCALE, flow_matching_loss

EPS_WEIGHTS = Path(__file__).with_name("patches_eps.pt")
FLOW_WEIGHTS = Path(__file__).with_name("patches_flow.pt")
SHAPE = (3, 16, 16)


def check_patch_input(x: torch.Tensor, t: torch.Tensor | None, model: str) -> None:
    """A clear ValueError unless ``x`` is a batch of 16x16 RGB patches (B, 3, 16, 16) and ``t`` holds one time or
    one per sample."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != SHAPE:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{model}: x must have shape (batch, 3, 16, 16), 16x16 RGB patches; got {got}")
    if t is not None:
        n = t.numel() if isinstance(t, torch.Tensor) else 1
        if n not in (1, x.shape[0]):
            raise ValueError(f"{model}: t must hold one time or one per sample ({x.shape[0]}); got {n} times")


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, plus the time embedding, GroupNorm-SiLU-conv, and a residual (1x1 conv when the width
    changes)."""

    def __init__(self, c_in: int, c_out: int, c_time: int, groups: int = 8) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(c_time, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.time(e)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class PatchUNet(nn.Module):
    """eps(x, t) or v(x, t) for x (B, 3, 16, 16) in [-1, 1]: a UNet on two resolutions (16x16 at ``widths[0]``
    channels, 8x8 at ``widths[1]``), residual blocks with GroupNorm and SiLU, a sinusoidal time embedding of
    ``time_scale`` t through an MLP added in every block, a skip connection across the 8x8 level (0.23 M
    parameters as shipped; most of the width sits at 8x8, where a convolution costs a quarter as much).
    ``time_scale`` is 1 for the DDPM timestep (eps form) and 1000 for t = sigma in [0, 1] (flow form). It computes
    in its parameters' dtype and returns x's dtype. ``input_skip`` adds x to the output (the eps form): at high
    noise eps is nearly x, and x0 = (x - sigma eps) / alpha multiplies the error of eps by 1 / alpha (156 at the
    DDPM linear schedule's last step), which the network alone learnt too coarsely in the training budget."""

    def __init__(self, widths: tuple[int, int] = (16, 64), emb: int = 64, time_scale: float = 1.0,
                 input_skip: bool = False) -> None:
        super().__init__()
        self.input_skip = input_skip
        (c1, c2), ct = widths, 128
        self.emb, self.time_scale = emb, float(time_scale)
        self.time = nn.Sequential(nn.Linear(emb, ct), nn.SiLU(), nn.Linear(ct, ct))
        self.inp = nn.Conv2d(3, c1, 3, padding=1)
        self.down1 = ResBlock(c1, c1, ct)
        self.down = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.mid1 = ResBlock(c2, c2, ct)
        self.mid2 = ResBlock(c2, c2, ct)
        self.up = nn.ConvTranspose2d(c2, c1, 2, stride=2)
        self.up1 = ResBlock(2 * c1, c1, ct)
        self.up2 = ResBlock(c1, c1, ct)
        self.out = nn.Sequential(nn.GroupNorm(8, c1), nn.SiLU(), nn.Conv2d(c1, 3, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_patch_input(x, t, type(self).__name__)
        dtype = self.inp.weight.dtype
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        e = self.time(time_embedding(t.to(dtype) * self.time_scale, self.emb, dtype))
        h1 = self.down1(self.inp(x.to(dtype)), e)
        h = self.mid2(self.mid1(self.down(h1), e), e)
        h = self.up2(self.up1(torch.cat([self.up(h), h1], 1), e), e)
        out = self.out(h)
        return (out + x.to(dtype) if self.input_skip else out).to(x.dtype)


def ddpm_eps_loss(model: nn.Module, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The DDPM loss (Ho et al. 2020) |eps_hat(x_t, n) - eps|^2 (mean over all entries) on the linear schedule:
    n uniform in 0..999, x_t = alpha_n x0 + sigma_n eps. ``generator`` fixes n and eps (held-out evaluation)."""
    n = torch.randint(0, 1000, (x0.shape[0],), generator=generator)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    alpha, sigma = (s[n] for s in _ddpm_table())
    shape = (-1, *([1] * (x0.dim() - 1)))
    xt = alpha.to(x0).view(shape) * x0 + sigma.to(x0).view(shape) * eps
    return (model(xt, n.to(x0)) - eps).pow(2).mean()


@functools.cache
def _ddpm_table() -> tuple[torch.Tensor, torch.Tensor]:
    """alpha_n and sigma_n, n = 0..999, of ``ei.DiscreteVP.linear()`` (float64)."""
    from ..sde import DiscreteVP

    return DiscreteVP.linear().alpha_sigma(torch.arange(1000, dtype=torch.float64))


def patches_model(form: str) -> PatchUNet:
    """An untrained PatchUNet for ``form`` "eps" (DDPM timestep) or "flow" (t = sigma)."""
    if form not in ("eps", "flow"):
        raise ValueError(f"form must be 'eps' or 'flow'; got {form!r}")
    return PatchUNet(time_scale=1.0, input_skip=True) if form == "eps" else PatchUNet(time_scale=TIME_SCALE)


def load_patches_model(device: str | torch.device = "cpu") -> PatchUNet:
    """The shipped, trained patch eps-model on the DDPM linear schedule (eval mode)."""
    return load_shipped(patches_model("eps"), EPS_WEIGHTS, "train_patches.py --form eps", device)


def load_patches_flow_model(device: str | torch.device = "cpu") -> PatchUNet:
    """The shipped, trained patch velocity model on ``ei.RectifiedFlow()`` (eval mode)."""
    return load_shipped(patches_model("flow"), FLOW_WEIGHTS, "train_patches.py --form flow", device)


LOSSES = {"eps": ddpm_eps_loss, "flow": flow_matching_loss}


@torch.no_grad()
def held_out_loss(model: nn.Module, form: str, x0: torch.Tensor, repeats: int = 4, seed: int = 0,
                  batch: int = 512) -> float:
    """The training loss of ``form`` ("eps": :func:`ddpm_eps_loss`, "flow": :func:`flow_matching_loss`) of ``model``
    on the data ``x0`` (any shape), averaged over ``repeats`` draws of time and noise per sample from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(repeats):
        for i in range(0, len(x0), batch):
            part = x0[i:i + batch]
            total += float(LOSSES[form](model, part, gen)) * len(part)
    return total / (repeats * len(x0))
