"""16x16 RGB patches of the two natural photographs scikit-learn ships inside its package (``china.jpg`` and
``flower.jpg``, 427 x 640, through ``sklearn.datasets.load_sample_images``, which reads them with Pillow; no
download), scaled to [-1, 1], as the shipped patch models were trained on them.

Split by image region, so no held-out pixel is ever in a training patch: in each image the columns left of
:data:`SPLIT_COLUMN` (480 of 640) are the training region, the 160 columns right of it the held-out region. Training
draws random 16x16 crops from the training region with random horizontal flips (augmentation only in training,
:func:`random_patches`); the held-out set is the fixed, non-overlapping 16x16 tiling of the held-out regions
(2 x 26 x 10 = 520 patches, :func:`patch_split`). The held-out columns are mostly sky and the flower's flat
background, so held-out patches are smoother and more often uniform than training patches (their std over all
pixels is 0.73 against the training tiles' 0.65). scikit-learn and Pillow are extras
(``pip install 'ei_toolkit[bench]'``)."""

from __future__ import annotations

import numpy as np
import torch

PATCH = 16
SPLIT_COLUMN = 480  # columns [0, 480) train, [480, 640) held out, in each 427 x 640 image


def sample_images() -> list[torch.Tensor]:
    """scikit-learn's two sample photographs as (3, 427, 640) float32 tensors in [-1, 1]."""
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        raise ImportError("the patch data come with scikit-learn, which is not installed: "
                          "pip install 'ei_toolkit[bench]'") from None
    try:
        images = load_sample_images().images
    except ImportError as exc:  # scikit-learn reads the JPEGs with Pillow
        raise ImportError(f"the patch data need Pillow to read scikit-learn's sample images ({exc}): "
                          "pip install 'ei_toolkit[bench]'") from None
    return [torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1)).astype(np.float32) / 127.5 - 1)
            for im in images]


def regions() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(training regions, held-out regions): the columns left and right of :data:`SPLIT_COLUMN` of each image."""
    images = sample_images()
    return [im[:, :, :SPLIT_COLUMN] for im in images], [im[:, :, SPLIT_COLUMN:] for im in images]


def tiles(region: torch.Tensor, stride: int = PATCH) -> torch.Tensor:
    """Every 16x16 patch of ``region`` (3, H, W) with its corner on the ``stride`` grid, row by row: (N, 3, 16, 16)."""
    p = region.unfold(1, PATCH, stride).unfold(2, PATCH, stride)  # (3, nh, nw, 16, 16)
    return p.permute(1, 2, 0, 3, 4).reshape(-1, 3, PATCH, PATCH).contiguous()


def random_patches(train_regions: list[torch.Tensor], n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` random training patches (n, 3, 16, 16): an image, a crop position anywhere in its training region and a
    horizontal flip with probability 1/2, all drawn from ``generator``."""
    which = torch.randint(len(train_regions), (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.empty(n, 3, PATCH, PATCH)
    for i in range(n):
        r = train_regions[int(which[i])]
        top = int(torch.randint(r.shape[1] - PATCH + 1, (1,), generator=generator))
        left = int(torch.randint(r.shape[2] - PATCH + 1, (1,), generator=generator))
        out[i] = r[:, top:top + PATCH, left:left + PATCH]
    out[flip] = out[flip].flip(-1)
    return out


def patch_split(train_stride: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) patches as (N, 3, 16, 16) tensors in [-1, 1], deterministic and unflipped: the training
    regions tiled with stride ``train_stride`` (overlapping patches; 2 x 52 x 59 = 6136 at stride 8) and the
    held-out regions' non-overlapping tiling (520 patches)."""
    train, held = regions()
    return (torch.cat([tiles(r, train_stride) for r in train]), torch.cat([tiles(r) for r in held]))
