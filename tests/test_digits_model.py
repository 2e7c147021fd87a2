"""The shipped digits model: it loads, samples, and its samples look like digits to a classifier's features."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ei_toolkit as ei
from ei_toolkit.__main__ import main
from ei_toolkit.models import load_digits_model


def test_shipped_weights_load_and_sample(tmp_path, capsys):
    model = load_digits_model()
    sde = ei.DiscreteVP.linear()
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = ei.sample(model, x, sde, nfe=10, t_end=-1.0)
    assert out.shape == (16, 1, 8, 8) and torch.isfinite(out).all()
    assert out.abs().flatten().quantile(0.99) < 1.5  # data lives in [-1, 1]; 10 steps overshoot a little
    with torch.no_grad():
        clipped = ei.sample(model, x, sde, nfe=10, t_end=-1.0, clip_x0=1.0)
    assert clipped.abs().max() <= 1.0 + 1e-5
    png = tmp_path / "d.png"
    assert main(["sample", "--n", "8", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "NFE 10" in capsys.readouterr().out


def test_samples_are_closer_to_held_out_digits_than_noise_is():
    pytest.importorskip("sklearn")
    sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
    from train_digits import digits_split

    train, held = digits_split()
    model, sde = load_digits_model(), ei.DiscreteVP.linear()
    x = torch.randn(400, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = ei.sample(model, x, sde, nfe=20, t_end=-1.0)

    def mean_nn_dist(a, b):  # mean distance to the nearest held-out digit
        return torch.cdist(a.reshape(len(a), -1), b.reshape(len(b), -1)).min(1).values.mean().item()

    d_model = mean_nn_dist(out, held)
    d_train = mean_nn_dist(train[:400], held)
    d_noise = mean_nn_dist(x.clamp(-1, 1), held)
    assert d_model < 1.5 * d_train < d_noise, (d_model, d_train, d_noise)
    assert np.isfinite(d_model)
