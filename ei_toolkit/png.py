"""A minimal grayscale PNG writer (no imaging dependency), and image grids."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import torch


def write_png(path: str | Path, image: torch.Tensor) -> Path:
    """Write a 2-D tensor with values in [0, 1] as an 8-bit grayscale PNG."""
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D (H, W); got shape {tuple(image.shape)}")
    data = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    h, w = data.shape
    raw = b"".join(b"\x00" + bytes(row.tolist()) for row in data)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path


def image_grid(images: torch.Tensor, cols: int = 8, scale: int = 4, pad: int = 1) -> torch.Tensor:
    """(N, 1, H, W) images in [-1, 1] -> one (rows*(H+pad), cols*(W+pad)) image in [0, 1], upscaled."""
    x = (images[:, 0].float().clamp(-1, 1) + 1) / 2
    n, h, w = x.shape
    rows = -(-n // cols)
    grid = torch.ones(rows * (h + pad) + pad, cols * (w + pad) + pad)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = x[i]
    return grid.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
