"""The shipped class-conditional digits model: it loads offline, has the right shapes, classifier-free guidance
changes its output as the formula says, and its guided samples are of the class asked for."""

import numpy as np
import pytest
import torch

import ei_toolkit as ei
from ei_toolkit.models import NULL_LABEL, digits_cond_model, guided_digits_model
from ei_toolkit.models.classifier import load_digits_classifier

SDE = ei.DiscreteVP.linear()


@pytest.fixture(scope="module")
def model():
    return digits_cond_model()


def test_loads_offline_with_the_right_shapes(model):
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.full((6,), 500.0)
    y = torch.arange(6)
    with torch.no_grad():
        out = model(x, t, y)
        uncond = model(x, t)
        flat = model(x.reshape(6, 64).double(), t, y)
    assert out.shape == (6, 1, 8, 8) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert flat.shape == (6, 64) and flat.dtype == torch.float64
    torch.testing.assert_close(uncond, model(x, t, torch.full((6,), NULL_LABEL)))
    assert not torch.allclose(out, uncond, atol=1e-3)  # the label matters
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.9"):
        model(x, t, torch.full((6,), 11))
    with pytest.raises(TypeError, match="integer tensor"):
        model(x, t, torch.zeros(6))


def test_guidance_is_uncond_plus_scale_times_the_difference(model):
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.full((5,), 300.0)
    y = torch.tensor([0, 3, 3, 7, 9])
    with torch.no_grad():
        cond, uncond = model(x, t, y), model(x, t)
        g1, g4 = guided_digits_model(model, y, 1.0)(x, t), guided_digits_model(model, y, 4.0)(x, t)
        g_one_label = guided_digits_model(model, 3, 4.0)(x, t)
    torch.testing.assert_close(g1, cond, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g4, uncond + 4.0 * (cond - uncond), rtol=1e-5, atol=1e-5)
    assert (g4 - g1).abs().max() > 1e-2
    torch.testing.assert_close(g_one_label[1:3], g4[1:3], rtol=1e-5, atol=1e-5)


def test_guided_samples_are_of_the_class_asked_for(model):
    """10 samples of each class at guidance scale 3 (20 model evaluations): the shipped classifier recognises the
    intended class, and each sample is closest to the mean of its class's real digits."""
    labels = torch.arange(10).repeat_interleave(10)
    x = torch.randn(100, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = ei.sample(guided_digits_model(model, labels, 3.0), x, SDE, nfe=20, t_end=SDE.t0, clip_x0=1.0)
        accuracy = (load_digits_classifier()(out).argmax(1) == labels).float().mean().item()
        unguided = ei.sample(lambda z, t: model(z, t), x, SDE, nfe=20, t_end=SDE.t0, clip_x0=1.0)
        chance = (load_digits_classifier()(unguided).argmax(1) == labels).float().mean().item()
    assert accuracy >= 0.9 and chance < 0.3, (accuracy, chance)
    sklearn = pytest.importorskip("sklearn.datasets")
    d = sklearn.load_digits()
    means = torch.from_numpy(np.stack([d.images[d.target == c].mean(0) for c in range(10)]) / 16.0 * 2 - 1)
    nearest = torch.cdist(out.reshape(100, 64).double(), means.reshape(10, 64)).argmin(1)
    assert (nearest == labels).float().mean().item() >= 0.8
