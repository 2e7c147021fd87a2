"""Noise sources for stochastic methods: ``noise(i, x)`` returns standard normal noise for step i shaped like x.

With one ``torch.Generator`` per sample (a list, as diffusers accepts), sample n's noise comes from generator n
alone, so a sample is the same whatever batch it is drawn in. A Brownian path over s = -rho lets stochastic DDIM and
a torchsde solve share one path (strong-convergence comparisons).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

NoiseFn = Callable[[int, torch.Tensor], torch.Tensor]


def check_generator(generator: object, batch: int) -> None:
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, (list, tuple)) and all(isinstance(g, torch.Generator) for g in generator):
        if len(generator) != batch:
            raise ValueError(f"generator: a list needs one torch.Generator per sample ({batch}); got {len(generator)}")
        return
    raise TypeError(f"generator must be a torch.Generator or a list of them (one per sample); got "
                    f"{type(generator).__name__}")


def gaussian_noise(generator: torch.Generator | Sequence[torch.Generator] | None) -> NoiseFn:
    """N(0, I) draws from ``generator`` (one, one per sample, or torch's global generator)."""
    if generator is None or isinstance(generator, torch.Generator):
        def draw(i: int, x: torch.Tensor) -> torch.Tensor:
            return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    else:
        gens = list(generator)

        def draw(i: int, x: torch.Tensor) -> torch.Tensor:
            if len(gens) != x.shape[0]:
                raise ValueError(f"generator: a list needs one torch.Generator per sample ({x.shape[0]}); got "
                                 f"{len(gens)}")
            return torch.stack([torch.randn(x.shape[1:], generator=g, dtype=x.dtype, device=g.device).to(x.device)
                                for g in gens])
    return draw


def brownian_noise(bm: Callable[[float, float], torch.Tensor], rho: torch.Tensor) -> NoiseFn:
    """Standard normal z_i from a Brownian path over s = -rho at the grid's rho values:
    z_i = (W(s_{i+1}) - W(s_i)) / sqrt(s_{i+1} - s_i)."""
    s = (-rho).tolist()

    def draw(i: int, x: torch.Tensor) -> torch.Tensor:
        return (bm(s[i], s[i + 1]) / math.sqrt(s[i + 1] - s[i])).reshape(x.shape).to(x.dtype)

    return draw
