"""scikit-learn's 8x8 digits (shipped inside scikit-learn; no download) as the shipped models were trained on them:
images (N, 1, 8, 8) scaled to [-1, 1], a fixed 80 % / 20 % split (seed 0). scikit-learn is an extra
(``pip install 'ei_toolkit[bench]'``)."""

from __future__ import annotations

import numpy as np
import torch


def labelled_split(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, held-out images, held-out labels); images (N, 1, 8, 8) in [-1, 1], a fixed
    80 % / 20 % split (seed 0)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the digits data come with scikit-learn, which is not installed: "
                          "pip install 'ei_toolkit[bench]'") from None
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0 * 2 - 1).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    idx = torch.from_numpy(np.random.default_rng(seed).permutation(len(x)))
    cut = int(0.8 * len(x))
    return x[idx[:cut]], y[idx[:cut]], x[idx[cut:]], y[idx[cut:]]


def digits_split(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) digits as (N, 1, 8, 8) tensors in [-1, 1]."""
    train, _, held, _ = labelled_split(seed)
    return train, held
