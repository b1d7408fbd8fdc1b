"""LLaVA-NeXT (``llava_next``, LLaVA-1.6): a base view of the whole image squashed onto one tile, then a hi-res
grid of tiles stitched over the image, cut back to the image by ``unpad_image``, one ``image_newline`` per row.

Layout (transformers ``LlavaNextModel.pack_image_features``): the ``<image>`` token expands to ``g*g`` base tokens,
then ``rows x (cols + 1)`` hi-res tokens, the last of each row the newline (all carry the image token id). The
hi-res view grounds: the image is resized with its aspect kept to fit the best pinpoint (``select_best_resolution``,
sides rounded up), padded centred to it, and split into tiles of ``g x g`` patches; the stitched feature grid is
cut symmetrically to the image's aspect in feature space. Both views are affine per axis.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch

from ..errors import UnsupportedModelError
from ..geometry import GridGeometry
from .base import Adapter, ImageView


class LlavaNextAdapter(Adapter):
    """LLaVA-NeXT: views ``hi-res`` (tiles stitched over the image, newlines dropped) and ``base`` (squashed)."""

    family = "llava_next"
    model_types = ("llava_next",)
    default_template = "<image>\n{phrase}"
    image_placeholder = "<image>"
    vision_modules = ("vision_tower", "multi_modal_projector")
    view_names = ("hi-res", "base")
    description = (
        "LLaVA-NeXT (CLIP + Mistral/Vicuna); base 24x24 view + hi-res tiles stitched, unpadded, newline per row"
    )

    # The feature strategy under which the base view is exactly ``g x g`` tokens (CLIP's CLS dropped).
    base_strategy: ClassVar[str] = "default"

    def __init__(self, model: torch.nn.Module, processor: Any, template: str | None = None) -> None:
        super().__init__(model, processor, template)
        strategy = getattr(model.config, "vision_feature_select_strategy", self.base_strategy)
        if strategy != self.base_strategy:
            raise UnsupportedModelError(
                f"{self.family}: vision_feature_select_strategy {strategy!r} is not supported ({self.base_strategy!r})"
            )

    @property
    def image_token_id(self) -> int:
        """Id of ``<image>``: every base, hi-res and newline token of the expanded block."""
        config = self.model.config
        token = getattr(config, "image_token_id", None)
        return int(token if token is not None else config.image_token_index)

    @property
    def max_input_side(self) -> int | None:
        """The largest pinpoint side, where it exceeds the toolkit's reduction (OneVision's 2304 px)."""
        return max(max(pair) for pair in self.pinpoints)

    @property
    def pinpoints(self) -> list[list[int]]:
        """The (height, width) canvases the hi-res view may use (the processor's ``image_grid_pinpoints``)."""
        return [list(map(int, pair)) for pair in self.processor.image_processor.image_grid_pinpoints]

    @property
    def tile_side(self) -> int:
        """Pixels per tile side (the vision tower's input)."""
        return int(self.model.config.vision_config.image_size)

    def views(self, inputs: dict[str, torch.Tensor], index: int, image_size: tuple[int, int]) -> tuple[ImageView, ...]:
        """The hi-res grid (newline column dropped), then the base view."""
        positions = self.image_token_positions(inputs, index)
        base_cells = self.vision_grid_side**2
        hires = self.geometry(image_size, inputs, index)
        rest = positions[base_cells:]
        if rest.numel() != hires.rows * (hires.cols + 1):
            raise RuntimeError(
                f"sample {index}: {rest.numel()} hi-res image tokens for a {hires.rows}x{hires.cols} grid plus "
                "newlines; the processor and model config disagree"
            )
        grid = rest.view(hires.rows, hires.cols + 1)[:, : hires.cols].flatten()
        base = GridGeometry.squashed(self.vision_grid_side, self.vision_grid_side, image_size)
        return ImageView(grid, hires, "hi-res"), ImageView(positions[:base_cells], base, "base")

    def geometry(self, image_size: tuple[int, int], inputs: dict[str, torch.Tensor], index: int) -> GridGeometry:
        """The hi-res grid: cells of the stitched tiles, cut to the image, through the pad and resize."""
        return hires_geometry(image_size, self.pinpoints, self.tile_side, self.vision_grid_side)

    def image_inputs(self, inputs: dict[str, torch.Tensor], sample: int) -> dict[str, torch.Tensor]:
        """The sample's tiles (padded to the batch's count) and its ``image_sizes`` (which say how many are real)."""
        return {
            "pixel_values": inputs["pixel_values"][sample : sample + 1],
            "image_sizes": inputs["image_sizes"][sample : sample + 1],
        }


class LlavaOnevisionAdapter(LlavaNextAdapter):
    """LLaVA-OneVision: LLaVA-NeXT's layout on a SigLIP tower (no CLS; base 27x27 at 384 px), and a hi-res grid over
    ``anyres_max_N`` tiles' worth of cells bilinearly downsampled (``pack_image_features``), still affine."""

    family = "llava_onevision"
    model_types = ("llava_onevision",)
    base_strategy = "full"
    description = (
        "LLaVA-OneVision (SigLIP + Qwen2); base 27x27 + hi-res tiles stitched, unpadded, downsampled past 9 tiles"
    )

    def geometry(self, image_size: tuple[int, int], inputs: dict[str, torch.Tensor], index: int) -> GridGeometry:
        """LLaVA-NeXT's hi-res grid, bilinearly downsampled when it holds over 1.1^2 x ``N`` tiles of cells."""
        grid = super().geometry(image_size, inputs, index)
        tiles = int(str(self.model.config.vision_aspect_ratio).removeprefix("anyres_max_"))
        ratio = math.sqrt(grid.rows * grid.cols / (tiles * self.vision_grid_side**2))
        if ratio <= 1.1:
            return grid
        rows, cols = int(grid.rows // ratio), int(grid.cols // ratio)
        # align_corners=False: output cell i spans input cells [i * s, (i + 1) * s) with s = input / output size
        return dataclasses.replace(
            grid, rows=rows, cols=cols, x_scale=grid.x_scale * grid.cols / cols, y_scale=grid.y_scale * grid.rows / rows
        )

    def image_inputs(self, inputs: dict[str, torch.Tensor], sample: int) -> dict[str, torch.Tensor]:
        """As LLaVA-NeXT, plus ``batch_num_images`` (one image per prompt: tiled)."""
        return {
            **super().image_inputs(inputs, sample),
            "batch_num_images": inputs["batch_num_images"][sample : sample + 1],
        }


def hires_geometry(image_size: tuple[int, int], pinpoints: list[list[int]], tile: int, cells: int) -> GridGeometry:
    """Geometry of LLaVA-NeXT's unpadded hi-res grid for an image of ``image_size`` (w, h): ``tile``-pixel tiles
    of ``cells x cells`` features over the best pinpoint canvas (the processor's resize and centred pad, then the
    model's ``unpad_image``, which rounds in feature space)."""
    from transformers.image_processing_utils import select_best_resolution

    width, height = image_size
    canvas_h, canvas_w = select_best_resolution((height, width), pinpoints)
    new_w, new_h = _fit(width, height, canvas_w, canvas_h)
    paste_x, paste_y = (canvas_w - new_w) // 2, (canvas_h - new_h) // 2
    rows, cols = canvas_h // tile * cells, canvas_w // tile * cells
    cut_rows = cut_cols = 0
    if width / height > cols / rows:
        cut_rows = (rows - int(round(height * (cols / width), 7))) // 2
    else:
        cut_cols = (cols - int(round(width * (rows / height), 7))) // 2
    cell = tile / cells  # canvas pixels per cell
    sx, sy = width / new_w, height / new_h  # resized -> original pixels
    return GridGeometry(
        rows=rows - 2 * cut_rows,
        cols=cols - 2 * cut_cols,
        image_size=(width, height),
        x_scale=cell * sx,
        y_scale=cell * sy,
        x_offset=(cut_cols * cell - paste_x) * sx,
        y_offset=(cut_rows * cell - paste_y) * sy,
    )


def _fit(width: int, height: int, canvas_w: int, canvas_h: int) -> tuple[int, int]:
    """(w, h) of the image resized into the canvas with its aspect kept, the short side rounded up
    (``get_patch_output_size``)."""
    scale_w, scale_h = canvas_w / width, canvas_h / height
    if scale_w < scale_h:
        return canvas_w, min(math.ceil(height * scale_w), canvas_h)
    return min(math.ceil(width * scale_h), canvas_w), canvas_h
