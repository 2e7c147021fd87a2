"""Every registered shipped model (ei_toolkit.models.registry): it loads, keeps the input's shape and dtype, names
the expected shape when given another, has learnt (its held-out training loss is well below an untrained network's)
and samples like its data with ei.sample at NFE 10; the patch data split is deterministic and spatially disjoint;
the training scripts of the flow and patch models are reproducible from --seed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ei_toolkit as ei
from ei_toolkit.models import registry
from ei_toolkit.models.digits import DigitsEps
from ei_toolkit.models.digits_flow import DigitsFlow
from ei_toolkit.models.patches import held_out_loss, patches_model

pytest.importorskip("sklearn")  # the data splits come from scikit-learn's bundled data
pytest.importorskip("PIL")  # scikit-learn reads its sample photographs with Pillow

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("digits", "digits-flow", "patches", "patches-flow")
UNTRAINED = {"digits": DigitsEps, "digits-flow": DigitsFlow, "patches": lambda: patches_model("eps"),
             "patches-flow": lambda: patches_model("flow")}
# Held-out loss (4 draws of time and noise per held-out sample, seed 0) as measured, trained / untrained:
#   digits 0.096 / 1.13, digits-flow 0.544 / 1.86, patches 0.0192 / 0.365 (the untrained eps UNet already adds x),
#   patches-flow 0.126 / 1.68.
# The bound is the trained network's loss times 1.25 (room for another torch build's weights), and each is
# below half of the untrained network's.
MAX_LOSS = {"digits": 0.12, "digits-flow": 0.68, "patches": 0.024, "patches-flow": 0.16}
# RMS over pixels of the error of the samples' per-pixel mean (NFE 10, 256 samples): measured 0.05 for digits and
# digits-flow (pure noise: 0.65), 0.14 for patches and 0.16 for patches-flow; the patch bound only rules out gross
# shifts (noise: 0.25), the checks of the spread and range below do the rest.
MAX_MEAN_ERR = {"digits": 0.15, "digits-flow": 0.15, "patches": 0.3, "patches-flow": 0.3}


def test_the_registry_lists_the_shipped_models():
    assert set(NAMES) <= set(registry.model_names())


@pytest.fixture(scope="module", params=NAMES)
def entry(request) -> registry.ShippedModel:
    return registry.shipped_model(request.param)


@pytest.fixture(scope="module")
def loaded(entry):
    return entry.load("cpu"), entry.data()[1]


def mid_time(sde) -> float:
    return 0.5 * (float(sde.t_min) + float(sde.t_max))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_model_keeps_the_shape_and_dtype(entry, loaded, dtype):
    model, _ = loaded
    assert not model.training
    x = torch.randn(3, *entry.shape, dtype=dtype)
    with torch.no_grad():
        out = model(x, torch.full((3,), mid_time(entry.sde()), dtype=dtype))
        one = model(x, torch.tensor(mid_time(entry.sde()), dtype=dtype))  # one time for the batch
    assert out.shape == x.shape and out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(one, out)


def test_a_wrong_shape_names_the_expected_one(entry, loaded):
    model, _ = loaded
    expected = f"(batch, {', '.join(map(str, entry.shape))})"
    for shape in ((2, 2, 5, 5), (2, *entry.shape[:-1])):
        with pytest.raises(ValueError, match="must have shape " + re.escape(expected)):
            model(torch.zeros(shape), torch.full((2,), mid_time(entry.sde())))


def test_the_model_has_learnt(entry, loaded):
    model, held = loaded
    form = "eps" if entry.prediction == "eps" else "flow"
    torch.manual_seed(0)
    untrained = UNTRAINED[entry.name]().eval()
    trained_loss, untrained_loss = held_out_loss(model, form, held), held_out_loss(untrained, form, held)
    assert trained_loss < MAX_LOSS[entry.name] < 0.5 * untrained_loss, (trained_loss, untrained_loss)


def test_samples_look_like_the_held_out_data(entry, loaded):
    model, held = loaded
    z = torch.randn(256, *entry.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = ei.sample(model, z, entry.sde(), prediction=entry.prediction, nfe=10)
    assert torch.isfinite(x).all()
    mean_err = float((x.mean(0) - held.mean(0)).pow(2).mean().sqrt())
    assert mean_err < MAX_MEAN_ERR[entry.name], mean_err
    # the spread: measured std(samples) / std(held-out) 0.98 (digits-flow), 0.83 (patches), 0.71 (patches-flow,
    # whose samples hold fewer flat white sky patches than the held-out columns); pure noise: 1.33 / 1.37
    ratio = float(x.std() / held.std())
    assert 0.5 < ratio < 1.25, ratio
    overshoot = float((x.abs() - 1).clamp(min=0).mean())  # the data lie in [-1, 1]; measured <= 0.018, noise 0.17
    assert overshoot < 0.05, overshoot


def test_the_patch_split_is_deterministic_and_spatially_disjoint():
    from ei_toolkit.models.patch_data import SPLIT_COLUMN, patch_split, random_patches, regions, sample_images

    train, held = patch_split()
    train2, held2 = patch_split()
    assert torch.equal(train, train2) and torch.equal(held, held2)
    assert train.shape[1:] == held.shape[1:] == (3, 16, 16) and len(held) == 2 * 26 * 10
    assert train.min() >= -1 and train.max() <= 1
    images = sample_images()
    assert torch.equal(held[0], images[0][:, :16, SPLIT_COLUMN:SPLIT_COLUMN + 16])  # tiles of the right-hand columns
    assert torch.equal(held[-1], images[1][:, 400:416, 624:640])
    train_regions, held_regions = regions()
    assert all(r.shape[2] == SPLIT_COLUMN for r in train_regions)
    assert all(h.shape[2] == images[0].shape[2] - SPLIT_COLUMN for h in held_regions)
    a = random_patches(train_regions, 64, torch.Generator().manual_seed(3))
    assert torch.equal(a, random_patches(train_regions, 64, torch.Generator().manual_seed(3)))
    # on coordinate images (channel 0: the row, 1: the column, 2: which image), every crop is a 16x16 window of
    # one region, mirrored left-right or not, and both occur
    coords = [torch.stack([*torch.meshgrid(torch.arange(20.0), torch.arange(30.0), indexing="ij"),
                           torch.full((20, 30), float(k))]) for k in range(2)]
    flips = set()
    for p in random_patches(coords, 200, torch.Generator().manual_seed(0)):
        rows, cols = p[0, :, 0], p[1, 0]
        assert torch.equal(p[0], rows[:, None].expand(16, 16)) and torch.equal(p[1], cols[None].expand(16, 16))
        assert torch.equal(rows, rows[0] + torch.arange(16.0)) and rows[-1] < 20
        flips.add(bool(cols[0] > cols[-1]))
        assert torch.equal(cols.sort().values, cols.min() + torch.arange(16.0)) and cols.max() < 30
        assert (p[2] == p[2, 0, 0]).all()
    assert flips == {False, True}


def train(script: str, args: list[str], out: Path) -> dict[str, torch.Tensor]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args, "--out", str(out)], cwd=out.parent,
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("script, args", [("train_digits_flow.py", []), ("train_patches.py", ["--form", "eps"]),
                                          ("train_patches.py", ["--form", "flow"])])
def test_a_training_script_is_reproducible_from_its_seed(script, args, tmp_path):
    short = [*args, "--steps", "3", "--batch", "4"]
    a = train(script, [*short, "--seed", "1"], tmp_path / "a.pt")
    b = train(script, [*short, "--seed", "1"], tmp_path / "b.pt")
    c = train(script, [*short, "--seed", "2"], tmp_path / "c.pt")
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt", "c.pt"]
