"""The shipped models by name: what the CLI's ``--model`` and the benchmarks need to load, sample and evaluate
one (its loader, forward process, prediction type, sample shape, data split, feature extractor)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ShippedModel:
    """One shipped model.

    ``load(device)`` returns the trained network ``model(x, t)`` in eval mode; ``sde()`` its forward process;
    ``prediction`` what it returns ("eps", "x0", "v", "score" or "flow"); ``shape`` one sample's shape;
    ``data()`` the (train, held-out) split it was trained on, scaled as it was trained (None when the data are
    not available); ``features`` the feature map of its Frechet distance, None if it has none; ``script`` the
    training script under examples/. ``levels``: the data are quantised to ``levels + 1`` values
    k / levels * 2 - 1 in [-1, 1] (16 for the digits' 17 grey levels, 255 for 8-bit images), which the likelihood
    command dequantises (None: not quantised, or unknown); ``noun`` what one sample is called in messages."""

    name: str
    description: str
    load: Callable[[torch.device | str], nn.Module]
    sde: Callable[[], object]
    prediction: str
    shape: tuple[int, ...]
    script: str
    data: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None
    features: Callable[[torch.Tensor], torch.Tensor] | None = None
    levels: int | None = None
    noun: str = "samples"


def _digits() -> ShippedModel:
    from ..metrics import digits_features
    from ..sde import DiscreteVP
    from .data import digits_split
    from .digits import load_digits_model

    return ShippedModel("digits", "eps-model of scikit-learn's 8x8 digits on the DDPM linear schedule",
                        load_digits_model, DiscreteVP.linear, "eps", (1, 8, 8), "train_digits.py",
                        digits_split, digits_features, levels=16, noun="digits")


def _digits_flow() -> ShippedModel:
    from ..metrics import digits_features
    from ..sde import RectifiedFlow
    from .data import digits_split
    from .digits_flow import load_digits_flow_model

    return ShippedModel("digits-flow", "velocity (flow-matching) model of scikit-learn's 8x8 digits on rectified flow",
                        load_digits_flow_model, RectifiedFlow, "flow", (1, 8, 8), "train_digits_flow.py",
                        digits_split, digits_features, levels=16, noun="digits")


def _patches(form: str) -> ShippedModel:
    from ..sde import DiscreteVP, RectifiedFlow
    from .patch_data import patch_split
    from .patches import load_patches_flow_model, load_patches_model

    if form == "eps":
        return ShippedModel("patches", "eps-model of 16x16 RGB patches of scikit-learn's sample photographs on the "
                            "DDPM linear schedule", load_patches_model, DiscreteVP.linear, "eps", (3, 16, 16),
                            "train_patches.py", patch_split, None, levels=255, noun="patches")
    return ShippedModel("patches-flow", "velocity (flow-matching) model of 16x16 RGB patches of scikit-learn's sample "
                        "photographs on rectified flow", load_patches_flow_model, RectifiedFlow, "flow", (3, 16, 16),
                        "train_patches.py", patch_split, None, levels=255, noun="patches")


_FACTORIES: dict[str, Callable[[], ShippedModel]] = {"digits": _digits, "digits-flow": _digits_flow,
                                                     "patches": lambda: _patches("eps"),
                                                     "patches-flow": lambda: _patches("flow")}


def register(name: str, factory: Callable[[], ShippedModel]) -> None:
    """Add a shipped model under ``name`` (a factory, so that importing the registry loads no weights)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string; got {name!r}")
    _FACTORIES[name] = factory


def model_names() -> tuple[str, ...]:
    """The names ``shipped_model`` accepts."""
    return tuple(_FACTORIES)


def shipped_model(name: str) -> ShippedModel:
    """The shipped model called ``name``; an unknown name gets a ValueError listing the valid ones."""
    if name not in _FACTORIES:
        close = difflib.get_close_matches(str(name), list(_FACTORIES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"model: unknown shipped model {name!r}{hint}; expected one of {', '.join(_FACTORIES)}")
    return _FACTORIES[name]()
