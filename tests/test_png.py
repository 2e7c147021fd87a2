"""The PNG grids of ei-toolkit sample, written with Pillow: read back, the pixels are the grid's, grayscale or RGB."""

import numpy as np
import pytest
import torch
from PIL import Image

from ei_toolkit.png import image_grid, write_png


def test_a_grayscale_grid_reads_back_pixel_for_pixel(tmp_path):
    images = torch.linspace(-1, 1, 5 * 8 * 8).reshape(5, 1, 8, 8)
    grid = image_grid(images, cols=3, scale=2, pad=1)
    assert grid.shape == ((2 * 9 + 1) * 2, (3 * 9 + 1) * 2)
    path = write_png(tmp_path / "sub" / "g.png", grid)  # missing parents are created
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "L" and im.size == (grid.shape[1], grid.shape[0])
        pixels = np.asarray(im)
    np.testing.assert_array_equal(pixels, (grid * 255).round().to(torch.uint8).numpy())
    # tile 4 (row 1, column 1) holds image 4, upscaled; the padding and the empty sixth tile are white
    top, left = (1 + 9) * 2, (1 + 9) * 2
    expected = ((images[4, 0] + 1) / 2 * 255).round().repeat_interleave(2, 0).repeat_interleave(2, 1)
    np.testing.assert_array_equal(pixels[top:top + 16, left:left + 16], expected.to(torch.uint8).numpy())
    assert (pixels[:2] == 255).all() and (pixels[top:top + 16, (1 + 2 * 9) * 2:] == 255).all()


def test_an_rgb_grid_reads_back_pixel_for_pixel(tmp_path):
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    grid = image_grid(images, cols=2, scale=1)
    assert grid.shape == (2 * 17 + 1, 2 * 17 + 1, 3)
    with Image.open(write_png(tmp_path / "c.png", grid)) as im:
        assert im.mode == "RGB"
        pixels = np.asarray(im)
    np.testing.assert_array_equal(pixels, (grid * 255).round().to(torch.uint8).numpy())
    np.testing.assert_array_equal(pixels[1:17, 18:34], ((images[1] + 1) / 2 * 255).round().to(torch.uint8)
                                  .permute(1, 2, 0).numpy())


def test_values_are_clamped_and_bad_shapes_named(tmp_path):
    with Image.open(write_png(tmp_path / "x.png", torch.tensor([[-1.0, 0.5, 2.0]]))) as im:
        assert np.asarray(im).tolist() == [[0, 128, 255]]
    with pytest.raises(ValueError, match=r"\(H, W\) grayscale or \(H, W, 3\) RGB"):
        write_png(tmp_path / "y.png", torch.zeros(2, 2, 2))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\) or \(N, 3, H, W\)"):
        image_grid(torch.zeros(2, 2, 4, 4))
