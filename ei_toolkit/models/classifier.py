"""A small classifier of scikit-learn's 8x8 digits whose penultimate features define the digits Frechet distance
(FD: the Frechet distance of Heusel et al. 2017, "GANs trained by a two time-scale update rule converge to a local
Nash equilibrium", with this classifier in place of Inception). Trained by ``examples/train_digits_classifier.py``
on the training split of ``examples/train_digits.py``; the weights and the feature statistics of the 360 held-out
digits ship with the package (``digits_classifier.pt``), so evaluation needs neither scikit-learn nor a download.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .digits import check_digits_input

CLASSIFIER_WEIGHTS = Path(__file__).with_name("digits_classifier.pt")
FEATURES = 64  # width of the penultimate layer


class DigitsClassifier(nn.Sequential):
    """x (B, 1, 8, 8) in [-1, 1] -> logits (B, 10); ``features`` is the 64-d ReLU output of the penultimate
    layer (the first five modules)."""

    def __init__(self) -> None:
        super().__init__(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, FEATURES), nn.ReLU(),
                         nn.Linear(FEATURES, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_digits_input(x, model="DigitsClassifier")
        return super().forward(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (float32, on the classifier's device)."""
        check_digits_input(x, model="DigitsClassifier")
        h = x.float()
        for layer in list(self)[:5]:
            h = layer(h)
        return h


def load_digits_classifier(device: str | torch.device = "cpu") -> DigitsClassifier:
    """The shipped, trained digits classifier (eval mode)."""
    net = DigitsClassifier()
    net.load_state_dict(_load()["state_dict"])
    return net.to(device).eval()


def held_out_statistics() -> tuple[torch.Tensor, torch.Tensor, int]:
    """(mean, covariance, count) of the shipped classifier's features over the 360 held-out digits, in float64
    (the covariance is the unbiased one plus 1e-6 I, as :func:`ei_toolkit.metrics.feature_statistics` computes)."""
    blob = _load()
    return blob["held_mean"], blob["held_cov"], int(blob["held_n"])


def _load() -> dict:
    if not CLASSIFIER_WEIGHTS.exists():
        raise FileNotFoundError(f"{CLASSIFIER_WEIGHTS} is missing: run python examples/train_digits_classifier.py "
                                f"--out {CLASSIFIER_WEIGHTS}")
    return torch.load(CLASSIFIER_WEIGHTS, map_location="cpu", weights_only=True)
