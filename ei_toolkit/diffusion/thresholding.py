"""Clipping and dynamic thresholding of the data prediction x0 (Saharia et al., "Imagen", 2022), applied
inside the eps -> x0 -> eps round trip so that every integrator can use it."""

from __future__ import annotations

import torch


def threshold_x0(x0: torch.Tensor, clip: float | None = None, dynamic: float | None = None,
                 max_value: float = 1.0) -> torch.Tensor:
    """Clamp x0 to [-clip, clip]; or, with ``dynamic`` = a percentile p in (0, 1), per sample
    s = max(max_value, quantile(|x0|, p)), x0 -> clamp(x0, -s, s) * max_value / s."""
    if dynamic is not None:
        flat = x0.reshape(x0.shape[0], -1).abs().float()
        s = torch.quantile(flat, dynamic, dim=1).clamp_min(max_value).to(x0.dtype)
        s = s.view(-1, *([1] * (x0.ndim - 1)))
        x0 = torch.maximum(torch.minimum(x0, s), -s) * (max_value / s)
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
    return x0


def check_threshold_args(clip_x0: float | None, dynamic_threshold: float | None) -> None:
    if clip_x0 is not None and (not isinstance(clip_x0, (int, float)) or clip_x0 <= 0):
        raise ValueError(f"clip_x0 must be a positive number; got {clip_x0!r}")
    if dynamic_threshold is not None and (not isinstance(dynamic_threshold, (int, float))
                                          or not 0 < dynamic_threshold < 1):
        raise ValueError(f"dynamic_threshold must be a percentile in (0, 1), e.g. 0.995; got {dynamic_threshold!r}")
