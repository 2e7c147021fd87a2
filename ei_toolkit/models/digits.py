"""A small eps-model for the 8x8 digits of scikit-learn, trained by ``examples/train_digits.py`` on the
DDPM linear schedule (betas 1e-4..0.02, 1000 steps); its weights ship with the package."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

WEIGHTS = Path(__file__).with_name("digits_eps.pt")


def time_embedding(t: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """The sinusoidal embedding (sin and cos of t times dim / 2 geometric frequencies) of the 1-D times t."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=dtype) / half)
    a = t.to(dtype)[:, None] * freqs[None]
    return torch.cat([a.sin(), a.cos()], 1)


def check_digits_input(x: torch.Tensor, t: torch.Tensor | None = None, model: str = "the digits model") -> None:
    """A clear ValueError unless ``x`` is a batch of 8x8 digits, (B, 1, 8, 8) or (B, 64), and ``t`` holds one time
    or one per sample."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or tuple(x.shape[1:]) not in ((1, 8, 8), (64,)):
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{model}: x must have shape (batch, 1, 8, 8) or (batch, 64), 8x8 digits; got {got}")
    if t is not None:
        n = t.numel() if isinstance(t, torch.Tensor) else 1
        if n not in (1, x.shape[0]):
            raise ValueError(f"{model}: t must hold one time or one per sample ({x.shape[0]}); got {n} times")


class DigitsEps(nn.Module):
    """eps(x, t) for x of shape (B, 1, 8, 8) in [-1, 1] and t the DDPM timestep (float): an MLP on the 64
    pixels with a sinusoidal time embedding added to every hidden layer (about 0.3 M parameters)."""

    def __init__(self, hidden: int = 256, depth: int = 4, emb: int = 64) -> None:
        super().__init__()
        self.emb = emb
        self.time = nn.Sequential(nn.Linear(emb, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(64, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, hidden))
                                    for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, 64))

    def embed(self, t: torch.Tensor) -> torch.Tensor:
        return time_embedding(t, self.emb, self.inp.weight.dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps in x's dtype, computed in the weights' dtype (float32 as shipped; ``model.double()`` for float64)."""
        check_digits_input(x, t, "DigitsEps")
        h = self.inp(x.reshape(x.shape[0], 64).to(self.inp.weight.dtype))
        e = self.time(self.embed(t.reshape(-1).expand(x.shape[0])))
        for block in self.blocks:
            h = h + block(h + e)
        return self.out(h).to(x.dtype).reshape(x.shape)


M = TypeVar("M", bound=nn.Module)


def load_shipped(model: M, weights: Path, script: str, device: str | torch.device = "cpu") -> M:
    """``model`` with the shipped state dict ``weights`` loaded, on ``device``, in eval mode; a missing file names
    the training script that writes it."""
    if not weights.exists():
        raise FileNotFoundError(f"{weights} is missing: run python examples/{script} --out {weights}")
    model.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
    return model.to(device).eval()


def load_digits_model(device: str | torch.device = "cpu") -> DigitsEps:
    """The shipped, trained digits eps-model (eval mode)."""
    return load_shipped(DigitsEps(), WEIGHTS, "train_digits.py", device)
