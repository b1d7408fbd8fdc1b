"""The grid -> pixel geometry matches what each processor actually did, on non-square images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from localize.geometry import GridGeometry
from localize.models import VLM
from localize.testing import tiny_llava


def _coordinate_image(width: int, height: int) -> Image.Image:
    """Red = x, green = y (both < 256), so a processed pixel tells where it came from."""
    xs, ys = np.meshgrid(np.arange(width), np.arange(height))
    return Image.fromarray(np.stack([xs, ys, np.zeros_like(xs)], -1).astype(np.uint8))


def _unnormalize(values: np.ndarray, image_processor) -> np.ndarray:
    mean = np.asarray(image_processor.image_mean)[:, None]
    std = np.asarray(image_processor.image_std)[:, None]
    return (values * std + mean) * 255.0


def _cell_means(pixels: np.ndarray, vlm, rows: int, cols: int, cell: int) -> np.ndarray:
    """``[rows, cols, 3]`` mean decoded (x, y, 0) of each ``cell``-pixel block of a ``[3, H, W]`` processed image."""
    values = _unnormalize(pixels.reshape(3, -1), vlm.processor.image_processor).reshape(3, rows, cell, cols, cell)
    return values.mean(axis=(2, 4)).transpose(1, 2, 0)


def _check_cells(geometry: GridGeometry, cell_means: np.ndarray, width: int, height: int) -> int:
    """cell_means[r, c] = (x, y) decoded from the cell's processed pixels; compare with the cell box centre."""
    checked = 0
    for row in range(geometry.rows):
        for col in range(geometry.cols):
            x0, y0, x1, y1 = geometry.cell_box(row, col)
            if x0 < 1 or y0 < 1 or x1 > width - 1 or y1 > height - 1:
                continue  # cells touching padding or the border mix in the fill colour
            cx, cy = (x0 + x1) / 2 - 0.5, (y0 + y1) / 2 - 0.5  # pixel-centre coordinates
            assert abs(cell_means[row, col, 0] - cx) < 1.0, (row, col)
            assert abs(cell_means[row, col, 1] - cy) < 1.0, (row, col)
            checked += 1
    return checked


@pytest.mark.parametrize("pad", [True, False])
@pytest.mark.parametrize("size", [(200, 120), (90, 180)])
def test_llava_cells_map_to_their_source_region(size, pad):
    vlm = VLM(*tiny_llava(image_size=96, patch_size=8, pad_to_square=pad))
    width, height = size
    image = _coordinate_image(width, height)
    batch = vlm.adapter.prepare([image], ["the dog"])
    geometry = batch.geometries[0]
    rows, cols = geometry.rows, geometry.cols
    cell_means = _cell_means(batch.inputs["pixel_values"][0].numpy(), vlm, rows, cols, 8)
    assert _check_cells(geometry, cell_means, width, height) > rows * cols // 4
    if pad:
        assert geometry.x_scale == pytest.approx(geometry.y_scale)
    else:  # center crop cuts the long side: some pixels map to no cell
        heat = geometry.to_image(np.ones((rows, cols)))
        assert heat.min() == 0.0 and heat.max() == 1.0


@pytest.mark.parametrize("size", [(200, 120), (90, 181), (64, 64)])
def test_deepseek_vl_cells_map_to_their_source_region(size):
    """DeepSeek-VL: longest side to the canvas, the other rounded, centred pad; every interior cell decodes to itself."""
    from localize.testing import tiny_deepseek_vl

    vlm = VLM(*tiny_deepseek_vl(image_size=96, patch_size=8))
    width, height = size
    batch = vlm.adapter.prepare([_coordinate_image(width, height)], ["the dog"])
    geometry = batch.geometries[0]
    assert len(batch.image_positions[0]) == geometry.rows * geometry.cols == 144  # tokens in input_ids == cells
    rows, cols = geometry.rows, geometry.cols
    cell_means = _cell_means(batch.inputs["pixel_values"][0].numpy(), vlm, rows, cols, 8)
    assert _check_cells(geometry, cell_means, width, height) > rows * cols // 4
    assert geometry.x_scale == pytest.approx(geometry.y_scale, rel=0.02)  # aspect kept (up to the rounding)


@pytest.mark.parametrize("size", [(200, 120), (90, 181), (16, 250)])
def test_deepseek_vl_hybrid_cells_map_to_their_source_region_in_both_branches(size):
    """DeepSeek-VL hybrid: the grid lies over the high-res canvas (longest side to ``high_res_size``, centred pad);
    the low-res view is that square resized, and the SAM branch's pixels sit under the same cells. (16 x 250 hits
    ``min_size``: its short side is 14 px on the high-res canvas, not 12; too narrow for an interior cell.)"""
    from localize.testing import tiny_deepseek_vl_hybrid

    vlm = VLM(*tiny_deepseek_vl_hybrid(image_size=96, patch_size=8, high_res_size=192))
    width, height = size
    batch = vlm.adapter.prepare([_coordinate_image(width, height)], ["the dog"])
    geometry = batch.geometries[0]
    assert len(batch.image_positions[0]) == geometry.rows * geometry.cols == 144
    processor = vlm.processor.image_processor
    checked = _check_cells(
        geometry, _cell_means(batch.inputs["pixel_values"][0].numpy(), vlm, 12, 12, 8), width, height
    )
    clamped = min(size) * 192 / max(size) < processor.min_size
    assert checked > 144 // 8 or clamped
    high = batch.inputs["high_res_pixel_values"][0].numpy().reshape(3, -1)
    mean, std = (np.asarray(v)[:, None] for v in (processor.high_res_image_mean, processor.high_res_image_std))
    high = ((high * std + mean) * 255.0).reshape(3, 12, 16, 12, 16).mean(axis=(2, 4)).transpose(1, 2, 0)
    assert _check_cells(geometry, high, width, height) == checked
    if clamped:  # the 14 resized pixels hold the whole width
        assert geometry.x_scale * 12 == pytest.approx(width * 192 / processor.min_size)


@pytest.mark.parametrize("size", [(200, 120), (90, 181), (70, 50)])
def test_mistral3_cells_map_to_their_source_region(size):
    """Mistral 3 (Pixtral): aspect-kept resize to 16-px multiples here; [IMG_BREAK] tokens are not cells."""
    from localize.testing import tiny_mistral3

    vlm = VLM(*tiny_mistral3(patch_size=8, longest_edge=96))
    width, height = size
    batch = vlm.adapter.prepare([_coordinate_image(width, height)], ["the dog"])
    geometry = batch.geometries[0]
    rows, cols, p = geometry.rows, geometry.cols, 16
    breaks = int((batch.inputs["input_ids"][0] == vlm.processor.image_break_token_id).sum())
    assert len(batch.image_positions[0]) == rows * cols and breaks == rows - 1  # the last break is [IMG_END]
    cell_means = _cell_means(batch.inputs["pixel_values"][0].numpy()[:, : rows * p, : cols * p], vlm, rows, cols, p)
    assert _check_cells(geometry, cell_means, width, height) >= max(rows * cols // 4, 1)


@pytest.mark.parametrize("size", [(200, 120), (90, 181)])
def test_paligemma_cells_map_to_their_source_region(size):
    """PaliGemma: the image squashed to the square input; the default query is the phrase's last word, not ``\\n``."""
    from localize.testing import tiny_paligemma

    vlm = VLM(*tiny_paligemma(image_size=96, patch_size=8))
    width, height = size
    batch = vlm.adapter.prepare([_coordinate_image(width, height)], ["the dog"])
    geometry = batch.geometries[0]
    assert len(batch.image_positions[0]) == geometry.rows * geometry.cols == 144 and "labels" not in batch.inputs
    last = int(batch.last_positions[0])
    tokens = vlm.processor.tokenizer.convert_ids_to_tokens(batch.inputs["input_ids"][0, last - 1 : last + 1].tolist())
    assert tokens == ["dog", "\n"] and vlm.adapter.query_offset == 1
    rows, cols = geometry.rows, geometry.cols
    cell_means = _cell_means(batch.inputs["pixel_values"][0].numpy(), vlm, rows, cols, 8)
    assert _check_cells(geometry, cell_means, width, height) > rows * cols // 4


@pytest.mark.parametrize("size", [(200, 120), (90, 181)])
def test_gemma3_pooled_cells_map_to_their_source_region(size):
    """Gemma 3: squash to the square input, 2 x 2 patches average-pooled per soft token; the grid is the soft tokens
    (``config.image_token_id``), not the begin-of-image marker the processor calls its image token."""
    from localize.testing import tiny_gemma3

    vlm = VLM(*tiny_gemma3(image_size=96, patch_size=8, tokens_per_side=6))
    width, height = size
    batch = vlm.adapter.prepare([_coordinate_image(width, height)], ["the dog"])
    geometry = batch.geometries[0]
    assert len(batch.image_positions[0]) == geometry.rows * geometry.cols == 36
    assert vlm.processor.image_token_id != vlm.adapter.image_token_id
    rows, cols = geometry.rows, geometry.cols
    cell_means = _cell_means(batch.inputs["pixel_values"][0].numpy(), vlm, rows, cols, 16)
    assert _check_cells(geometry, cell_means, width, height) >= 5


@pytest.mark.parametrize("family", ["tiny_qwen_vlm", "tiny_qwen3_vlm", "tiny_glm4v_vlm"])
@pytest.mark.parametrize("size", [(200, 120), (110, 230)])
def test_qwen_cells_map_to_their_source_region(request, family, size):
    """Qwen2.5-VL, Qwen3-VL and GLM-4V: each token's patch pixels (the real processor's layout) lie in its cell."""
    vlm = request.getfixturevalue(family)
    width, height = size
    image = _coordinate_image(width, height)
    batch = vlm.adapter.prepare([image], ["the dog"])
    geometry = batch.geometries[0]
    assert len(batch.image_positions[0]) == geometry.rows * geometry.cols  # tokens in input_ids == grid cells
    processor = vlm.processor.image_processor
    merge, patch, temporal = processor.merge_size, processor.patch_size, processor.temporal_patch_size
    flat = (
        batch.inputs["pixel_values"]
        .numpy()
        .reshape(geometry.rows * geometry.cols, merge * merge, 3, temporal, patch, patch)
    )
    channels = flat.mean(axis=(1, 3, 4, 5))  # [tokens, 3]
    cell_means = _unnormalize(channels.T, processor).T.reshape(geometry.rows, geometry.cols, 3)
    assert geometry.rows != geometry.cols
    assert _check_cells(geometry, cell_means, width, height) >= max(geometry.rows * geometry.cols // 4, 5)


def test_mask_and_box_to_grid_area_average():
    geometry = GridGeometry(rows=2, cols=4, image_size=(8, 6), x_scale=2.0, y_scale=4.0, x_offset=0.0, y_offset=-1.0)
    mask = np.zeros((6, 8), bool)
    mask[0:2, 0:2] = True  # half of cell (0, 0): 2x2 of its 2x4 pixels
    grid = geometry.mask_to_grid(mask)
    assert grid[0, 0] == pytest.approx(0.5) and grid.sum() == pytest.approx(0.5)
    np.testing.assert_allclose(geometry.box_to_grid((0, 0, 2, 2)), grid, atol=1e-6)
    full = geometry.mask_to_grid(np.ones((6, 8), bool))
    np.testing.assert_allclose(full, [[0.75] * 4, [0.75] * 4])  # padding (1 px above, 1 below) counts as uncovered


def test_to_image_drops_padding_and_keeps_blocks():
    geometry = GridGeometry(rows=4, cols=4, image_size=(8, 4), x_scale=2.0, y_scale=2.0, x_offset=0.0, y_offset=-2.0)
    grid = np.arange(16, dtype=np.float32).reshape(4, 4)
    image = geometry.to_image(grid, interpolation="nearest")
    assert image.shape == (4, 8)
    np.testing.assert_array_equal(image[0, ::2], grid[1])  # row 1 is the first visible row
    np.testing.assert_array_equal(image[3, ::2], grid[2])


def _packed_cell_means(vlm, batch, cells: int, cell: int) -> np.ndarray:
    """Each LLaVA-NeXT / OneVision token's decoded source pixels: every tile's per-patch means laid out by the
    model's own ``pack_image_features`` (base view first, then the unpadded, possibly downsampled, hi-res grid,
    row-major, no newlines)."""
    tiles = batch.inputs["pixel_values"][0].numpy()
    means = np.stack([_cell_means(tile, vlm, cells, cells, cell).reshape(cells * cells, 3) for tile in tiles])
    features, sizes, model = [torch.from_numpy(means).float()], batch.inputs["image_sizes"], vlm.model.model
    if vlm.adapter.family == "llava_onevision":
        packed, _ = model.pack_image_features(features, sizes, None, vlm.model.config.vision_aspect_ratio)
    else:
        packed, _ = model.pack_image_features(features, sizes, "default", image_newline=None)
    return packed[0].numpy()  # one image


def _rectangle_image(width: int, height: int, box: tuple[int, int, int, int]) -> Image.Image:
    image = Image.new("RGB", (width, height), (40, 40, 40))
    ImageDraw.Draw(image).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=(250, 40, 40))
    return image


def _rectangle_round_trip(geometry: GridGeometry, red: np.ndarray, box: tuple[int, int, int, int]) -> None:
    """The cells whose processed pixels are mostly the rectangle, mapped back through ``geometry``, give the
    rectangle's box to within one cell on every side."""
    rows, cols = np.nonzero(red > 145)  # over half the cell is the rectangle (40 outside, 250 inside)
    found = (
        geometry.cell_box(0, cols.min())[0],
        geometry.cell_box(rows.min(), 0)[1],
        geometry.cell_box(0, cols.max())[2],
        geometry.cell_box(rows.max(), 0)[3],
    )
    limits = (geometry.x_scale, geometry.y_scale) * 2
    assert all(abs(f - b) <= limit for f, b, limit in zip(found, box, limits)), (found, box)


# Tilings (rows x cols of tiles) LLaVA-NeXT picks: 2x2 (wide, small square, near-square), 3x1 (tall), 1x3 (wide),
# 1x2, 2x1; OneVision (1-6 tiles a side, downsampled past 9 tiles of cells): 3x5, 6x3, 5x5 and 3x6 among them.
TILED_SIZES = [(200, 120), (60, 60), (130, 110), (90, 181), (30, 200), (250, 40), (100, 50), (50, 100), (250, 240)]
TILED_RECTANGLES = {
    "wide": ((200, 120), (70, 30, 140, 95)),
    "tall": ((90, 181), (20, 40, 70, 140)),
    "very wide": ((250, 40), (60, 5, 140, 35)),
    "2:1": ((100, 50), (30, 10, 75, 45)),
    "large": ((250, 240), (40, 90, 200, 160)),
}


@pytest.mark.parametrize("family", ["tiny_llava_next_vlm", "tiny_llava_onevision_vlm"])
@pytest.mark.parametrize("size", TILED_SIZES)
def test_llava_next_views_map_to_their_source_region(request, family, size):
    """LLaVA-NeXT / OneVision: both views' cells against the pixels the real processor gave each token (the
    model's own packing, unpadding and downsampling), on images that pick different pinpoints."""
    vlm = request.getfixturevalue(family)
    width, height = size
    batch = vlm.adapter.prepare([_coordinate_image(width, height)], ["the dog"])
    hires, base = batch.views[0]
    packed = _packed_cell_means(vlm, batch, cells=6, cell=8)
    assert len(packed) == 36 + hires.geometry.rows * hires.geometry.cols
    hires_means = packed[36:].reshape(hires.geometry.rows, hires.geometry.cols, 3)
    assert _check_cells(hires.geometry, hires_means, width, height) >= hires.geometry.rows * hires.geometry.cols // 4
    assert _check_cells(base.geometry, packed[:36].reshape(6, 6, 3), width, height) >= 4


@pytest.mark.parametrize("family", ["tiny_llava_next_vlm", "tiny_llava_onevision_vlm"])
@pytest.mark.parametrize("case", list(TILED_RECTANGLES))
def test_llava_next_rectangle_across_a_tile_border_round_trips(request, family, case):
    """A rectangle crossing tile borders comes back within one cell from the hi-res cells that show it."""
    vlm = request.getfixturevalue(family)
    size, box = TILED_RECTANGLES[case]
    batch = vlm.adapter.prepare([_rectangle_image(*size, box)], ["the dog"])
    hires = batch.views[0][0].geometry
    packed = _packed_cell_means(vlm, batch, cells=6, cell=8)
    _rectangle_round_trip(hires, packed[36:, 0].reshape(hires.rows, hires.cols), box)


def _view_means(sequence_positions: torch.Tensor, token_means: np.ndarray, view) -> np.ndarray:
    """``[rows, cols, 3]`` means of ``view``'s cells, from ``token_means`` given in sequence order of the image
    tokens at ``sequence_positions`` (how the model scatters its features)."""
    index = torch.searchsorted(sequence_positions, view.positions).numpy()
    return token_means[index].reshape(view.geometry.rows, view.geometry.cols, 3)


def _internvl_token_means(vlm, batch) -> tuple[torch.Tensor, np.ndarray]:
    """Each InternVL / Aya Vision image token's decoded source pixels: per-patch means of every tile through the
    model's own pixel shuffle (the 2 x 2 patches of a token averaged), tiles in the order the model scatters them."""
    tiles = batch.inputs["pixel_values"].numpy()
    vision = vlm.model.config.vision_config
    patches = _side(vision.image_size) // _side(vision.patch_size)
    cell = tiles.shape[-1] // patches
    means = torch.from_numpy(np.stack([_cell_means(tile, vlm, patches, patches, cell) for tile in tiles])).float()
    if vlm.adapter.family == "aya_vision":
        shuffled = vlm.model.model.multi_modal_projector.pixel_shuffle(means.reshape(len(tiles), -1, 3))
    else:
        shuffled = vlm.model.model.pixel_shuffle(means.contiguous(), scale_factor=0.5)
    tokens = shuffled.reshape(len(tiles), -1, 4, 3).mean(2).reshape(-1, 3).numpy()
    return vlm.adapter.image_token_positions(batch.inputs, 0), tokens


def _side(value) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def _idefics3_token_means(vlm, batch) -> tuple[torch.Tensor, np.ndarray]:
    """Each Idefics3 / SmolVLM image token's decoded source pixels: per-patch means of every tile (the global
    view last) through the connector's own ``pixel_shuffle``, in the order the model scatters them."""
    tiles = batch.inputs["pixel_values"][0].numpy()
    patches = vlm.model.config.vision_config.image_size // vlm.model.config.vision_config.patch_size
    cell = tiles.shape[-1] // patches
    means = np.stack([_cell_means(tile, vlm, patches, patches, cell).reshape(-1, 3) for tile in tiles])
    shuffled = vlm.model.model.connector.pixel_shuffle(torch.from_numpy(np.ascontiguousarray(means)).float(), 2)
    tokens = shuffled.reshape(len(tiles), -1, 4, 3).mean(2).reshape(-1, 3).numpy()
    return vlm.adapter.image_token_positions(batch.inputs, 0), tokens


def test_idefics3_an_unsplit_image_grounds_on_its_global_view(tiny_idefics3_vlm):
    """With splitting off the block is the global view alone, and it grounds."""
    vlm = tiny_idefics3_vlm
    processor = vlm.processor.image_processor
    processor.do_image_splitting = False
    try:
        batch = vlm.adapter.prepare([_coordinate_image(200, 120)], ["the dog"])
    finally:
        processor.do_image_splitting = True
    (view,) = batch.views[0]
    positions, tokens = _idefics3_token_means(vlm, batch)
    assert view.name == "global" and batch.geometries[0] == view.geometry
    assert _check_cells(view.geometry, _view_means(positions, tokens, view), 200, 120) >= 9


def _molmo2_token_means(vlm, batch) -> tuple[torch.Tensor, np.ndarray]:
    """Each Molmo2 image token's decoded source pixels: the mean of the patches its ``image_token_pooling`` row
    names (the processor's own crops, margins and pooling), rows in the order the model adds them."""
    pixels = batch.inputs["pixel_values"].numpy()  # [crops, patches, patch * patch * 3], channels last
    patch_means = pixels.reshape(-1, pixels.shape[-1] // 3, 3).mean(axis=1)  # [crops * patches, 3]
    patch_means = _unnormalize(patch_means.T, vlm.processor.image_processor).T
    pooling = batch.inputs["image_token_pooling"].numpy()
    valid = pooling >= 0
    tokens = (patch_means[np.where(valid, pooling, 0)] * valid[..., None]).sum(1) / valid.sum(1, keepdims=True)
    return vlm.adapter.image_token_positions(batch.inputs, 0), tokens


TOKEN_MEANS = {  # family -> each image token's decoded source pixels, laid out by the model's own code
    "tiny_internvl_vlm": _internvl_token_means,
    "tiny_aya_vision_vlm": _internvl_token_means,
    "tiny_idefics3_vlm": _idefics3_token_means,
    "tiny_smolvlm_vlm": _idefics3_token_means,
    "tiny_molmo2_vlm": _molmo2_token_means,
}
# Tilings picked (rows x cols): InternVL / Aya 2x3, 2x1, 1 (no thumbnail), 1x6, 6x1, 2x2; Idefics3 / SmolVLM 3x4,
# 4x2, 4x4, 1x4, 4x1, 4x4; Molmo2 crops of each shape.
VIEW_SIZES = [(200, 120), (90, 181), (60, 60), (250, 40), (40, 230), (150, 150)]


@pytest.mark.parametrize("family", list(TOKEN_MEANS))
@pytest.mark.parametrize("size", VIEW_SIZES)
def test_tiled_views_map_to_their_source_region(request, family, size):
    """InternVL, Aya Vision, Idefics3, SmolVLM, Molmo2: every view (stitched tiles or crops, thumbnail / global /
    low-res) against the pixels the real processor gave each token, in the order the model scatters them."""
    vlm = request.getfixturevalue(family)
    width, height = size
    batch = vlm.adapter.prepare([_coordinate_image(width, height)], ["the dog"])
    positions, tokens = TOKEN_MEANS[family](vlm, batch)
    views = batch.views[0]
    assert [v.name for v in views] == list(vlm.adapter.view_names[: len(views)])
    assert len(views) == 2 or (family in ("tiny_internvl_vlm", "tiny_aya_vision_vlm") and size == (60, 60))
    for view in views:
        means = _view_means(positions, tokens, view)
        assert _check_cells(view.geometry, means, width, height) >= view.geometry.rows * view.geometry.cols // 4


@pytest.mark.parametrize("family", list(TOKEN_MEANS))
@pytest.mark.parametrize("case", list(TILED_RECTANGLES))
def test_tiled_rectangle_across_tile_borders_round_trips(request, family, case):
    """A rectangle crossing tile (or crop) borders comes back within one cell from the grounding view's cells
    that show it."""
    vlm = request.getfixturevalue(family)
    size, box = TILED_RECTANGLES[case]
    batch = vlm.adapter.prepare([_rectangle_image(*size, box)], ["the dog"])
    positions, tokens = TOKEN_MEANS[family](vlm, batch)
    grounding = batch.views[0][0]
    _rectangle_round_trip(grounding.geometry, _view_means(positions, tokens, grounding)[..., 0], box)


@pytest.mark.parametrize(
    "family, side",
    [("tiny_idefics3_vlm", 384), ("tiny_internvl_vlm", 576), ("tiny_aya_vision_vlm", 576), ("tiny_molmo2_vlm", 304)],
)
def test_tiled_families_take_images_as_large_as_their_canvas(request, family, side):
    """The longest canvas each processor can use (Idefics3's longest edge, InternVL's / Aya's max_patches tiles in
    a row, Molmo2's max_crops windows): images up to it are not reduced on load."""
    assert request.getfixturevalue(family).adapter.max_input_side == side
