"""A small class-conditional eps-model for the 8x8 digits of scikit-learn, trained with label dropout for
classifier-free guidance (Ho & Salimans, "Classifier-Free Diffusion Guidance", 2022) by
``examples/train_digits_cond.py`` on the DDPM linear schedule (betas 1e-4..0.02, 1000 steps); its weights ship
with the package (``digits_cond_eps.pt``), so nothing is downloaded.

>>> model = digits_cond_model()                       # model(x, t, y): y in 0..9, or NULL_LABEL (unconditional)
>>> guided = guided_digits_model(model, labels, 4.0)  # model(x, t) for ei.sample: uncond + 4 (cond - uncond)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..diffusion.guidance import classifier_free_guidance
from .digits import check_digits_input, load_shipped, time_embedding

WEIGHTS = Path(__file__).with_name("digits_cond_eps.pt")
NUM_CLASSES = 10
NULL_LABEL = NUM_CLASSES  # the "no label" token the model was trained with (label dropout)


class DigitsCondEps(nn.Module):
    """eps(x, t, y) for x of shape (B, 1, 8, 8) in [-1, 1], t the DDPM timestep (float) and y the class (B,) in
    0..9 or :data:`NULL_LABEL` (``y=None``: unconditional). An MLP on the 64 pixels with a sinusoidal time
    embedding plus a learned label embedding added to every hidden layer (about 0.3 M parameters). It computes
    in its parameters' dtype (float32 as shipped; ``.double()`` gives the same function in float64, smooth enough
    for a tight reference ODE solve) and returns x's dtype."""

    def __init__(self, hidden: int = 256, depth: int = 4, emb: int = 64) -> None:
        super().__init__()
        self.emb = emb
        self.time = nn.Sequential(nn.Linear(emb, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.label = nn.Embedding(NUM_CLASSES + 1, hidden)
        self.inp = nn.Linear(64, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, hidden))
                                    for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, 64))

    def embed(self, t: torch.Tensor) -> torch.Tensor:
        return time_embedding(t, self.emb, self.inp.weight.dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        check_digits_input(x, t, "DigitsCondEps")
        b = x.shape[0]
        y = torch.full((b,), NULL_LABEL, dtype=torch.long, device=x.device) if y is None else check_labels(y, b)
        h = self.inp(x.reshape(b, 64).to(self.inp.weight.dtype))
        e = self.time(self.embed(t.reshape(-1).expand(b))) + self.label(y.to(x.device))
        for block in self.blocks:
            h = h + block(h + e)
        return self.out(h).to(x.dtype).reshape(x.shape)


def check_labels(y: torch.Tensor, batch: int) -> torch.Tensor:
    """``y`` as a (batch,) long tensor of labels in 0..NULL_LABEL, or a clear error."""
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex():
        raise TypeError(f"y must be an integer tensor of class labels; got {getattr(y, 'dtype', type(y).__name__)}")
    y = y.reshape(-1)
    if y.numel() == 1:
        y = y.expand(batch)
    if y.numel() != batch:
        raise ValueError(f"y must hold one label per sample ({batch}) or a single label; got {y.numel()}")
    if bool(((y < 0) | (y > NULL_LABEL)).any()):
        raise ValueError(f"labels must lie in 0..{NUM_CLASSES - 1} (or {NULL_LABEL} for no label); got "
                         f"{sorted(set(y.tolist()))}")
    return y.long()


def digits_cond_model(device: str | torch.device = "cpu") -> DigitsCondEps:
    """The shipped, trained class-conditional digits eps-model (eval mode)."""
    return load_shipped(DigitsCondEps(), WEIGHTS, "train_digits_cond.py", device)


def guided_digits_model(model: DigitsCondEps, labels: torch.Tensor | int, scale: float):
    """``model(x, t)`` with classifier-free guidance towards ``labels`` (one per sample, or one for all) at
    ``scale``: uncond + scale (cond - uncond), both branches in one batched forward
    (:func:`ei_toolkit.diffusion.classifier_free_guidance`). ``scale = 1`` is the conditional model."""
    y = torch.as_tensor(labels).reshape(-1)
    y = check_labels(y, y.numel())
    return classifier_free_guidance(model, y, torch.full_like(y, NULL_LABEL), scale)
