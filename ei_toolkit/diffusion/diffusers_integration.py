"""diffusers integration (optional extra ``diffusers``): the SDE and model callable of a diffusers UNet and
scheduler config in one call (:class:`~ei_toolkit.diffusion.EIScheduler`, the drop-in scheduler, is in
:mod:`.scheduler`).

Timesteps stay in the model's units (0..N-1, fractional between integers); log alpha is interpolated
piecewise linearly between them, and the data sits at t = -1 (see :class:`~ei_toolkit.DiscreteVP`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..sde import DiscreteVP
from .guidance import classifier_free_guidance

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v", "flow_prediction": "flow"}


def _get(config: Any, key: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def sde_from_scheduler_config(config: Any) -> DiscreteVP:
    """A :class:`~ei_toolkit.DiscreteVP` from a diffusers scheduler (or its config): ``trained_betas``, or
    ``beta_schedule`` in {linear, scaled_linear, squaredcos_cap_v2} with beta_start, beta_end and
    num_train_timesteps; ``rescale_betas_zero_snr`` rescales it to zero terminal SNR (Lin et al. 2024)."""
    config = _get(config, "config", config) if not isinstance(config, Mapping) else config
    betas = _betas(config)
    rescale = _get(config, "rescale_betas_zero_snr", False)
    if not isinstance(rescale, bool):
        raise ValueError(f"rescale_betas_zero_snr must be True or False; got {rescale!r}")
    return DiscreteVP(betas, rescale_zero_snr=rescale)


def _betas(config: Any) -> np.ndarray:
    n = int(_get(config, "num_train_timesteps", 1000))
    trained = _get(config, "trained_betas")
    if trained is not None:
        return np.asarray(trained, dtype=np.float64)
    schedule = _get(config, "beta_schedule", "linear")
    b0, b1 = float(_get(config, "beta_start", 1e-4)), float(_get(config, "beta_end", 0.02))
    if schedule == "linear":
        betas = np.linspace(b0, b1, n, dtype=np.float64)
    elif schedule == "scaled_linear":
        betas = np.linspace(b0**0.5, b1**0.5, n, dtype=np.float64) ** 2
    elif schedule == "squaredcos_cap_v2":  # improved DDPM, betas capped at 0.999
        f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        betas = np.array([min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)])
    else:
        raise ValueError(f"unsupported beta_schedule {schedule!r}; supported: {', '.join(BETA_SCHEDULES)} or "
                         "trained_betas")
    return betas


def prediction_from_config(config: Any) -> str:
    """The ``prediction=`` of :func:`ei_toolkit.sample` for a scheduler config's ``prediction_type``."""
    config = _get(config, "config", config) if not isinstance(config, Mapping) else config
    p = _get(config, "prediction_type", "epsilon")
    if p not in PREDICTION_TYPES:
        raise ValueError(f"unsupported prediction_type {p!r}; supported: {', '.join(PREDICTION_TYPES)}")
    return PREDICTION_TYPES[p]


@dataclass
class DiffusersModel:
    """What :func:`from_diffusers` returns: pass ``sde``, ``model`` and ``prediction`` to ``ei.sample``."""

    sde: DiscreteVP
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    prediction: str

    def sample(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        from ..sampling import sample

        return sample(self.model, x, self.sde, prediction=self.prediction, **kwargs)


def unet_callable(unet: torch.nn.Module, **unet_kwargs: Any) -> Callable[..., torch.Tensor]:
    """``model(x, t[, cond])`` calling a diffusers UNet and returning its ``.sample``; checks the dtype."""
    try:
        model_dtype = next(unet.parameters()).dtype
    except StopIteration:  # pragma: no cover - a UNet has parameters
        model_dtype = None

    def model(x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        if model_dtype is not None and x.dtype != model_dtype:
            raise TypeError(f"the UNet's parameters are {model_dtype} but x is {x.dtype}; pass x in {model_dtype} "
                            f"(or convert the UNet with unet.to({model_dtype if x.dtype is None else x.dtype}))")
        kw = dict(unet_kwargs)
        if cond is not None:
            kw["encoder_hidden_states"] = cond
        return unet(x, t, **kw).sample

    return model


def from_diffusers(unet: torch.nn.Module, scheduler: Any, *, encoder_hidden_states: torch.Tensor | None = None,
                   negative_encoder_hidden_states: torch.Tensor | None = None, guidance_scale: float | None = None,
                   **unet_kwargs: Any) -> DiffusersModel:
    """The SDE, model callable and prediction type of a diffusers ``UNet2DModel`` / ``UNet2DConditionModel``
    and its scheduler (or scheduler config), in one call.

    For a conditional UNet pass ``encoder_hidden_states``; with ``guidance_scale`` also
    ``negative_encoder_hidden_states`` (the unconditional embedding): classifier-free guidance then runs as
    one batched forward per evaluation.
    """
    sde = sde_from_scheduler_config(scheduler)
    prediction = prediction_from_config(scheduler)
    base = unet_callable(unet, **unet_kwargs)
    if guidance_scale is not None:
        if encoder_hidden_states is None:
            raise ValueError("guidance_scale needs encoder_hidden_states (the condition)")
        if negative_encoder_hidden_states is None:
            raise ValueError("classifier-free guidance needs negative_encoder_hidden_states (the unconditional input)")
        model = classifier_free_guidance(base, encoder_hidden_states, negative_encoder_hidden_states, guidance_scale)
    elif encoder_hidden_states is not None:
        def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            c = encoder_hidden_states
            return base(x, t, c if c.shape[0] == x.shape[0] else c.expand(x.shape[0], *c.shape[1:]))
    else:
        def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return base(x, t)
    return DiffusersModel(sde=sde, model=model, prediction=prediction)

