"""Classifier-free guidance (Ho & Salimans, 2022) as one model callable with one batched forward."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

ConditionalModel = Callable[..., torch.Tensor]


def _cat(a: Any, b: Any) -> Any:
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.shape[1:] != b.shape[1:]:
            raise ValueError("cond and uncond must be tensors of the same shape after the batch dimension; got "
                             f"{tuple(a.shape)} and {tuple(getattr(b, 'shape', ()))}")
        return torch.cat([a, b])
    if isinstance(a, dict):
        if not isinstance(b, dict) or a.keys() != b.keys():
            raise ValueError("cond and uncond must be dicts with the same keys")
        return {k: _cat(a[k], b[k]) for k in a}
    raise TypeError(f"conditions must be tensors or dicts of tensors; got {type(a).__name__}")


def _expand(c: Any, n: int) -> Any:
    if isinstance(c, torch.Tensor):
        return c if c.shape[0] == n else c.expand(n, *c.shape[1:])
    return {k: _expand(v, n) for k, v in c.items()}


def classifier_free_guidance(model: ConditionalModel, cond: Any, uncond: Any, scale: float,
                             cond_arg: str | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A ``model(x, t)`` returning uncond + scale * (cond - uncond), from ``model(x, t, c)`` (or
    ``model(x, t, **{cond_arg: c})``), evaluating both branches in ONE batched forward of twice the batch.

    ``cond`` / ``uncond`` are tensors (or dicts of tensors) with the batch first, or a batch of 1 that is
    broadcast. ``scale = 1`` is the conditional model; ``scale = 0`` the unconditional one. The returned model
    carries ``guidance_scale``, from which ``ei.sample`` picks its default under strong guidance.
    """
    if uncond is None:
        raise ValueError("classifier-free guidance needs an unconditional input (uncond), e.g. the empty-prompt "
                         "embedding or a null class label")
    if cond is None:
        raise ValueError("classifier-free guidance needs a condition (cond)")
    if not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a number; got {type(scale).__name__}")

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        c = _cat(_expand(uncond, n), _expand(cond, n))
        xx, tt = torch.cat([x, x]), torch.cat([t, t])
        out = model(xx, tt, **{cond_arg: c}) if cond_arg else model(xx, tt, c)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if hasattr(out, "sample") and not isinstance(out, torch.Tensor):  # diffusers output objects
            out = out.sample
        u, co = out.chunk(2)
        return u + scale * (co - u)

    guided.guidance_scale = float(scale)  # read by ei.sample's default (sampling.default_method)
    return guided
