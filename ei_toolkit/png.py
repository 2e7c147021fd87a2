"""Image grids of samples, written as PNG files with Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_png(path: str | Path, image: torch.Tensor) -> Path:
    """Write ``image`` with values in [0, 1] as an 8-bit PNG: (H, W) grayscale or (H, W, 3) RGB."""
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3)):
        raise ValueError(f"image must be (H, W) grayscale or (H, W, 3) RGB; got shape {tuple(image.shape)}")
    data = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(data)).save(path, format="PNG", optimize=True)  # uint8: L or RGB
    return path


def image_grid(images: torch.Tensor, cols: int = 8, scale: int = 4, pad: int = 1) -> torch.Tensor:
    """(N, C, H, W) images in [-1, 1], C = 1 or 3 -> one image in [0, 1] of ``rows`` x ``cols`` tiles separated by
    ``pad`` white pixels and upscaled ``scale`` times: (rows*(H+pad)+pad, cols*(W+pad)+pad) for C = 1, with a last
    axis of 3 for C = 3."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1, H, W) or (N, 3, H, W); got shape {tuple(images.shape)}")
    x = ((images.detach().float().clamp(-1, 1) + 1) / 2).cpu().permute(0, 2, 3, 1)  # (N, H, W, C)
    n, h, w, c = x.shape
    rows = -(-n // cols)
    grid = torch.ones(rows * (h + pad) + pad, cols * (w + pad) + pad, c)
    for i in range(n):
        r, k = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + k * (w + pad)
        grid[top:top + h, left:left + w] = x[i]
    grid = grid.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    return grid[..., 0] if c == 1 else grid
