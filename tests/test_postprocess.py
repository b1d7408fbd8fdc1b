"""maps -> box / mask / heatmap post-processing (localize.postprocess)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from localize.errors import InputError
from localize.geometry import GridGeometry
from localize.postprocess import GroundingSettings, maps_to_grounding, smooth_maps

SHARP = GroundingSettings(sigma=0.0, threshold=0.5)  # no smoothing, cut halfway up the bilinear ramps: cell edges


def llava_pad(width: int = 640, height: int = 480, grid: int = 24) -> GridGeometry:
    """LLaVA pad-to-square: one scale, the short side centred in the square."""
    scale = max(width, height) / grid
    return GridGeometry(
        grid, grid, (width, height), scale, scale, -(max(width, height) - width) / 2, -(max(width, height) - height) / 2
    )


def qwen_resize(width: int = 500, height: int = 300, rows: int = 20, cols: int = 30) -> GridGeometry:
    """Qwen resize: independent scales, no offsets."""
    return GridGeometry(rows, cols, (width, height), width / cols, height / rows)


def blob_maps(geometry: GridGeometry, rows: slice, cols: slice, k: int = 3, value: float = 1.0) -> np.ndarray:
    maps = np.zeros((k, geometry.rows, geometry.cols), dtype=np.float32)
    maps[:, rows, cols] = value
    return maps


def cells_box(geometry: GridGeometry, rows: slice, cols: slice) -> np.ndarray:
    x0, y0 = geometry.grid_to_pixel(cols.start, rows.start)
    x1, y1 = geometry.grid_to_pixel(cols.stop, rows.stop)
    return np.array([x0, y0, x1, y1], dtype=np.float64)


@pytest.mark.parametrize("geometry", [llava_pad(), qwen_resize()], ids=["llava-pad", "qwen-resize"])
def test_one_blob_gives_its_box_in_original_pixels(geometry: GridGeometry) -> None:
    rows, cols = slice(9, 13), slice(4, 9)
    expected = cells_box(geometry, rows, cols)
    result = maps_to_grounding(blob_maps(geometry, rows, cols), geometry, SHARP)
    np.testing.assert_allclose(result.box, expected, atol=1.0)
    assert result.mask.shape == result.heatmap.shape == (geometry.height, geometry.width)
    assert result.mask.dtype == bool and result.heatmap.dtype == np.float32
    assert result.heatmap.min() == 0.0 and result.heatmap.max() == pytest.approx(1.0)
    # The mask stays inside the box; a convex blob's hull is the blob itself.
    ys, xs = np.nonzero(result.mask)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == result.box
    assert result.score > 0.8  # the rest is the bilinear ramps' lower half, outside the cut
    assert maps_to_grounding(blob_maps(geometry, rows, cols), geometry).score > 0.95


@pytest.mark.parametrize("geometry", [llava_pad(), qwen_resize()], ids=["llava-pad", "qwen-resize"])
def test_default_settings_box_contains_blob_within_half_a_cell(geometry: GridGeometry) -> None:
    rows, cols = slice(9, 13), slice(4, 9)
    expected = cells_box(geometry, rows, cols)
    box = np.array(maps_to_grounding(blob_maps(geometry, rows, cols), geometry).box)
    # Smoothing + the mean threshold grow the box, but (sigma 1 cell) by less than two cells.
    margin = 2 * np.array([geometry.x_scale, geometry.y_scale] * 2)
    assert np.all(box[:2] <= expected[:2] + 1) and np.all(box[2:] >= expected[2:] - 1)
    assert np.all(np.abs(box - expected) <= margin)


def test_box_is_pixel_exact_with_integer_cells() -> None:
    geometry = GridGeometry(24, 24, (240, 240), 10.0, 10.0)
    result = maps_to_grounding(blob_maps(geometry, slice(7, 9), slice(3, 6), k=1), geometry, SHARP)
    assert result.box == (30.0, 70.0, 60.0, 90.0)  # continuous: columns 30..59 -> x0 = 30, x1 = 60
    # Bilinear corners fall below the cut, so the hull is the rectangle with its corners clipped.
    assert not result.mask[70:90, 30:60].all() and 0.9 * 600 < result.mask[70:90, 30:60].sum() < 600
    assert result.mask.sum() == result.mask[70:90, 30:60].sum()


def test_padding_cells_are_dropped() -> None:
    geometry = llava_pad()  # grid rows 0..2 are the top padding band (y < 0)
    maps = blob_maps(geometry, slice(0, 2), slice(2, 22), value=5.0)  # strong attention on padding only
    maps[:, 12:15, 10:14] = 1.0
    result = maps_to_grounding(maps, geometry, SHARP)
    np.testing.assert_allclose(result.box, cells_box(geometry, slice(12, 15), slice(10, 14)), atol=1.0)
    assert result.heatmap.shape == (480, 640)


def test_two_blobs_larger_hull_wins() -> None:
    geometry = qwen_resize()
    maps = blob_maps(geometry, slice(2, 4), slice(2, 4), value=3.0)  # small but hotter
    maps[:, 10:16, 12:20] = 1.0
    result = maps_to_grounding(maps, geometry, GroundingSettings(sigma=0.0))  # mean threshold keeps both blobs
    cell = np.array([geometry.x_scale, geometry.y_scale] * 2)
    assert np.all(np.abs(result.box - cells_box(geometry, slice(10, 16), slice(12, 20))) <= cell)
    assert 0.3 < result.score < 0.95  # the small blob holds the rest of the mass


def test_hull_not_pixel_count_decides_and_hull_mask_fills_it() -> None:
    geometry = GridGeometry(24, 24, (240, 240), 10.0, 10.0)
    maps = np.zeros((1, 24, 24), dtype=np.float32)
    maps[0, 2:8, 2:8] = 1.0  # solid 6x6: 36 cells
    maps[0, 12:22, 12:22] = 1.0
    maps[0, 13:21, 13:21] = 0.0  # hollow 10x10 ring: 36 cells, hull 100 cells
    hull = maps_to_grounding(maps, geometry, SHARP)
    assert hull.box == (120.0, 120.0, 220.0, 220.0)
    assert hull.mask[170, 170]  # ring interior filled by the hull
    component = maps_to_grounding(maps, geometry, GroundingSettings(sigma=0.0, threshold=0.5, mask_mode="component"))
    assert component.box == hull.box and not component.mask[170, 170] and component.mask[125, 170]
    binary = maps_to_grounding(maps, geometry, GroundingSettings(sigma=0.0, threshold=0.5, mask_mode="binary"))
    assert binary.mask[50, 50] and binary.mask[125, 170] and not binary.mask[50, 50 + 100]


def test_heads_are_summed() -> None:
    geometry = GridGeometry(12, 16, (640, 480), 40.0, 40.0)
    maps = np.zeros((2, 12, 16), np.float32)
    maps[:, 2:5, 2:5] = 1.0
    maps[1, 8:10, 12:14] = 1.5  # one head only: weaker than the two-head sum
    result = maps_to_grounding(maps, geometry, GroundingSettings(sigma=0.0, threshold=0.8))
    np.testing.assert_allclose(result.box, (80, 80, 200, 200), atol=20)


def test_smooth_maps_sigma_zero_is_identity_and_sigma_one_matches_cv2_kernel() -> None:
    maps = np.zeros((2, 24, 24), dtype=np.float32)
    maps[0, 12, 12] = 1.0
    maps[1, 5, 7] = 2.0
    np.testing.assert_array_equal(smooth_maps(maps, 7, 0.0), maps)
    smoothed = smooth_maps(maps, 7, 1.0)
    kernel = cv2.getGaussianKernel(7, 1.0)
    np.testing.assert_allclose(smoothed[0, 9:16, 9:16], kernel @ kernel.T, atol=1e-6)
    np.testing.assert_allclose(smoothed.sum(axis=(1, 2)), [1.0, 2.0], atol=1e-5)  # interior: mass preserved
    assert smooth_maps(maps[0], 7, 1.0).shape == (24, 24)


def test_smoothing_on_grows_a_single_cell_and_removes_its_blockiness() -> None:
    geometry = GridGeometry(24, 24, (240, 240), 10.0, 10.0)
    maps = np.zeros((1, 24, 24), dtype=np.float32)
    maps[0, 12, 12] = 1.0
    sharp = maps_to_grounding(maps, geometry, GroundingSettings(sigma=0.0))
    smooth = maps_to_grounding(maps, geometry, GroundingSettings(sigma=1.0))
    width = lambda box: box[2] - box[0]  # noqa: E731
    assert width(smooth.box) > width(sharp.box)
    # Without smoothing the bilinear map of a single cell is a pyramid reaching zero one cell away.
    assert sharp.heatmap[125, 145] == 0.0 and smooth.heatmap[125, 145] > 0.0


def test_scale_to_grid() -> None:
    settings = GroundingSettings(scale_to_grid=True)
    assert settings.smoothing_for(24, 24) == (7, 1.0)
    assert settings.smoothing_for(48, 32) == (9, pytest.approx(32 / 24))
    assert settings.smoothing_for(12, 12) == (5, 0.5)
    assert settings.smoothing_for(8, 8) == (3, pytest.approx(1 / 3))
    assert settings.smoothing_for(4, 4)[0] == 1
    assert GroundingSettings(scale_to_grid=False).smoothing_for(48, 48) == (7, 1.0)
    assert GroundingSettings(sigma=0.0, scale_to_grid=True).smoothing_for(48, 48)[1] == 0.0


@pytest.mark.parametrize("fill", [0.0, 1.0, np.nan])
def test_uninformative_maps_give_whole_image_and_empty_mask(fill: float) -> None:
    geometry = llava_pad()
    result = maps_to_grounding(np.full((2, 24, 24), fill, dtype=np.float32), geometry)
    assert result.box == (0.0, 0.0, 640.0, 480.0)
    assert result.mask.shape == (480, 640) and not result.mask.any()
    assert result.heatmap.shape == (480, 640) and not result.heatmap.any()
    assert result.score == 0.0
    assert maps_to_grounding(np.zeros((0, 24, 24)), geometry).score == 0.0


def test_bad_inputs() -> None:
    geometry = llava_pad()
    with pytest.raises(InputError):
        maps_to_grounding(np.zeros((1, 23, 24)), geometry)
    with pytest.raises(InputError):
        GroundingSettings(kernel=6)
    with pytest.raises(InputError):
        GroundingSettings(threshold="median")
    with pytest.raises(InputError):
        GroundingSettings(threshold=1.5)
    with pytest.raises(InputError):
        GroundingSettings(mask_mode="polygon")
    assert GroundingSettings().to_dict() == {
        "kernel": 7,
        "sigma": 1.0,
        "scale_to_grid": True,
        "threshold": "mean",
        "mask_mode": "hull",
        "view": "default",
    }


def test_torch_maps_and_overlay_rendering(tmp_path) -> None:
    import torch
    from PIL import Image

    from localize.viz import render_gallery, render_overlay

    geometry = qwen_resize()
    maps = blob_maps(geometry, slice(9, 13), slice(4, 9))
    result = maps_to_grounding(torch.from_numpy(maps).to(torch.bfloat16), geometry)
    assert result.box == maps_to_grounding(maps, geometry).box
    image = np.full((geometry.height, geometry.width, 3), 120, dtype=np.uint8)
    figure = render_overlay(
        image,
        result.heatmap,
        result.box,
        result.mask,
        "the thing on the left",
        path=tmp_path / "one.png",
        points=[(100, 150, 1), (10, 10, 0)],
        title="score 0.9",
        target_box=(60, 130, 160, 210),
        target_mask=result.mask,
    )
    assert isinstance(figure, Image.Image) and figure.width == geometry.width and figure.height > geometry.height
    assert (tmp_path / "one.png").is_file()
    gallery = render_gallery(
        [figure, {"image": image[:40, :60], "box": (5, 5, 30, 30), "phrase": "tiny"}] * 3,
        tmp_path / "gallery.png",
        cols=4,
        cell_width=200,
    )
    assert gallery.width == 4 * 200 + 5 * 8 and (tmp_path / "gallery.png").is_file()
    assert render_gallery([], None).size[0] > 0


def test_hull_mask_is_the_pixel_centres_inside_the_corner_hull() -> None:
    """The filled hull equals a brute-force half-plane test of every pixel centre against the hull of the
    component's pixel corners, contains the component, and stays in its box (random blobs)."""
    from scipy import ndimage

    from localize.postprocess import _corner_hull, _hull_mask

    rng = np.random.default_rng(3)
    for _ in range(60):
        h, w = rng.integers(1, 60, 2)
        blob = ndimage.gaussian_filter(rng.random((h, w)), rng.uniform(0.5, 5))
        labels, count = ndimage.label(blob > np.quantile(blob, rng.uniform(0.5, 0.95)), np.ones((3, 3)))
        if count == 0:
            continue
        component = labels == 1
        rows, cols = ndimage.find_objects(labels)[0]
        crop = component[rows, cols]
        hull = _corner_hull(crop).astype(float)
        ys, xs = np.mgrid[: crop.shape[0], : crop.shape[1]] + 0.5
        edges = np.roll(hull, -1, axis=0) - hull
        cross = edges[:, 0, None, None] * (ys - hull[:, 1, None, None]) - edges[:, 1, None, None] * (
            xs - hull[:, 0, None, None]
        )
        inside = (cross >= -1e-9).all(0) | (cross <= 1e-9).all(0)
        mask = _hull_mask(crop)
        np.testing.assert_array_equal(mask, inside)
        assert mask[crop].all()
