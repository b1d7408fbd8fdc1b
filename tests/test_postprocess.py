"""Maps -> box/mask with known geometry: blobs land at their pixels on non-square images, largest hull wins."""

from __future__ import annotations

import numpy as np
import pytest

from localize.errors import InputError
from localize.geometry import GridGeometry
from localize.postprocess import GroundingSettings, maps_to_grounding, smooth_maps

RAW = GroundingSettings(sigma=0.0)  # no smoothing: exact cell boundaries

# 640x480 image on LLaVA's 24x24 grid: padded to 640x640, 80 px above and below (cells of 80/3 px).
LLAVA = GridGeometry(rows=24, cols=24, image_size=(640, 480), x_scale=640 / 24, y_scale=640 / 24, y_offset=-80.0)
# Qwen resizes a 640x480 image to a 16x12 token grid (40 px cells), no padding.
QWEN = GridGeometry(rows=12, cols=16, image_size=(640, 480), x_scale=40.0, y_scale=40.0)


def _blob(geometry: GridGeometry, rows: slice, cols: slice, value: float = 1.0) -> np.ndarray:
    grid = np.zeros((1, geometry.rows, geometry.cols), np.float32)
    grid[0, rows, cols] = value
    return grid


@pytest.mark.parametrize("geometry", [LLAVA, QWEN], ids=["llava-pad", "qwen-resize"])
def test_one_blob_gives_its_box_in_original_pixels(geometry):
    rows, cols = slice(5, 9), slice(3, 10)
    out = maps_to_grounding(_blob(geometry, rows, cols), geometry, GroundingSettings(sigma=0.0, mask_mode="component"))
    x0, y0, _, _ = geometry.cell_box(rows.start, cols.start)
    _, _, x1, y1 = geometry.cell_box(rows.stop - 1, cols.stop - 1)
    # Bilinear upsampling between cell centres moves the mean-threshold edge by under half a cell.
    tolerance = 0.5 * max(geometry.x_scale, geometry.y_scale)
    np.testing.assert_allclose(out.box, (x0, y0, x1, y1), atol=tolerance)
    assert out.mask.shape == out.heatmap.shape == (480, 640)
    ys, xs = np.nonzero(out.mask)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == tuple(int(v) for v in out.box)
    assert out.score > 0.9


def test_blob_in_padding_is_dropped():
    grid = _blob(LLAVA, slice(0, 2), slice(0, 24))  # rows 0-1 lie entirely in the top padding (y < 0)
    grid[0, 10:12, 10:12] = 0.5
    out = maps_to_grounding(grid, LLAVA, RAW)
    assert out.box[1] >= 0 and out.box[3] <= 480
    assert out.box[0] > 200  # the visible blob, not the padding row


def test_larger_hull_wins_over_higher_peak():
    grid = np.zeros((1, 12, 16), np.float32)
    grid[0, 1:3, 1:3] = 5.0  # small, strong
    grid[0, 6:11, 8:15] = 1.0  # large, weak
    out = maps_to_grounding(grid, QWEN, RAW)
    np.testing.assert_allclose(out.box, (8 * 40, 6 * 40, 15 * 40, 11 * 40), atol=20)


def test_heads_are_summed():
    grid = np.zeros((2, 12, 16), np.float32)
    grid[0, 2:5, 2:5] = 1.0
    grid[1, 2:5, 2:5] = 1.0
    grid[1, 8:10, 12:14] = 1.5  # only one head: weaker than the two-head sum
    out = maps_to_grounding(grid, QWEN, GroundingSettings(sigma=0.0, threshold=0.8))
    np.testing.assert_allclose(out.box, (80, 80, 200, 200), atol=20)


def test_smoothing_spreads_and_can_be_disabled():
    grid = _blob(QWEN, slice(5, 6), slice(7, 8))[0]
    np.testing.assert_array_equal(smooth_maps(grid, 7, 0.0), grid)
    smoothed = smooth_maps(grid, 7, 1.0)
    assert smoothed[5, 7] < 1.0 and smoothed[5, 8] > 0 and smoothed[4, 7] > 0
    assert smoothed.sum() == pytest.approx(1.0, rel=1e-4)
    raw = maps_to_grounding(grid[None], QWEN, RAW)
    blurred = maps_to_grounding(grid[None], QWEN, GroundingSettings(sigma=1.0))
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])  # noqa: E731
    assert area(blurred.box) > area(raw.box)


def test_scaled_smoothing_follows_the_grid():
    settings = GroundingSettings(kernel=7, sigma=1.0, scale_to_grid=True)
    assert settings.smoothing_for(24, 24) == (7, 1.0)
    assert settings.smoothing_for(8, 8) == (3, pytest.approx(1 / 3))
    assert GroundingSettings().smoothing_for(8, 8) == (7, 1.0)


def test_flat_map_has_no_location():
    out = maps_to_grounding(np.ones((1, 12, 16), np.float32), QWEN)
    assert out.box == (0.0, 0.0, 640.0, 480.0) and not out.mask.any() and out.score == 0.0


def test_bad_settings_and_shapes():
    with pytest.raises(InputError):
        GroundingSettings(kernel=4)
    with pytest.raises(InputError):
        maps_to_grounding(np.zeros((1, 5, 5)), QWEN)
