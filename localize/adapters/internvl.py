"""InternVL 2.5 / 3 (``internvl``, the ``-hf`` checkpoints): the image squashed onto a canvas of whole tiles, tiles
sent row-major, each pixel-shuffled to ``s x s`` tokens, then a thumbnail of the whole image when there are
several tiles.

The processor drops ``num_patches``, so the tiling is recomputed as it chose it (GOT-OCR2's
``get_optimal_tiled_canvas`` on the image size, ``min_patches`` / ``max_patches``). Tokens arrive tile by tile;
the ``tiles`` view stitches them into one ``rows*s x cols*s`` grid over the whole image (a permutation of
positions), which grounds; ``thumbnail`` is the ``s x s`` squash. Both are plain squashes, so affine.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..geometry import GridGeometry
from .base import Adapter, ImageView


class InternVLAdapter(Adapter):
    """InternVL: views ``tiles`` (stitched over the image) and ``thumbnail`` (present when there are 2+ tiles)."""

    family = "internvl"
    model_types = ("internvl",)
    default_template = "<IMG_CONTEXT>\n{phrase}"
    image_placeholder = "<IMG_CONTEXT>"
    vision_modules = ("vision_tower", "multi_modal_projector")
    view_names = ("tiles", "thumbnail")
    description = "InternVL 2.5/3 (InternViT + Qwen2/InternLM); 448-px tiles stitched, thumbnail kept as its own view"

    @property
    def max_input_side(self) -> int | None:
        """The longest canvas the tiling can choose (``max_patches`` tiles in a row): images up to it reach the
        model whole."""
        processor = self.processor.image_processor
        if not getattr(processor, "crop_to_patches", False):
            return None
        return int(processor.size["width"]) * int(processor.max_patches)

    @property
    def tokens_per_tile(self) -> int:
        """Image tokens each tile becomes (``image_seq_length``: 256 for 448-px tiles, 14-px patches, shuffle 0.5)."""
        return int(self.model.config.image_seq_length)

    def tiling(self, image_size: tuple[int, int]) -> tuple[int, int, bool]:
        """(rows, cols, thumbnail) of tiles the image processor makes of an image of ``image_size`` (w, h)."""
        from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

        processor = self.processor.image_processor
        if not getattr(processor, "crop_to_patches", False):
            return 1, 1, False
        tile = (int(processor.size["height"]), int(processor.size["width"]))
        width, height = image_size
        cols, rows = get_optimal_tiled_canvas(
            (height, width), tile, int(processor.min_patches), int(processor.max_patches)
        )
        return rows, cols, rows * cols > 1

    def views(self, inputs: dict[str, torch.Tensor], index: int, image_size: tuple[int, int]) -> tuple[ImageView, ...]:
        """The tiles stitched into one grid, then the thumbnail when there is one."""
        positions = self.image_token_positions(inputs, index)
        rows, cols, thumbnail = self.tiling(image_size)
        per_tile, side = self.tokens_per_tile, math.isqrt(self.tokens_per_tile)
        if positions.numel() != (rows * cols + thumbnail) * per_tile:
            raise RuntimeError(
                f"sample {index}: {positions.numel()} image tokens for {rows}x{cols} tiles"
                f"{' + thumbnail' if thumbnail else ''} of {per_tile}; the processor and model config disagree"
            )
        tiles = positions[: rows * cols * per_tile].view(rows, cols, side, side).permute(0, 2, 1, 3).flatten()
        views = [ImageView(tiles, GridGeometry.squashed(rows * side, cols * side, image_size), "tiles")]
        if thumbnail:
            views.append(
                ImageView(
                    positions[rows * cols * per_tile :], GridGeometry.squashed(side, side, image_size), "thumbnail"
                )
            )
        return tuple(views)

    def geometry(self, image_size: tuple[int, int], inputs: dict[str, torch.Tensor], index: int) -> GridGeometry:
        """The stitched tiles: the whole image squashed onto ``rows*s x cols*s`` cells."""
        rows, cols, _ = self.tiling(image_size)
        side = math.isqrt(self.tokens_per_tile)
        return GridGeometry.squashed(rows * side, cols * side, image_size)

    def image_inputs(self, inputs: dict[str, torch.Tensor], sample: int) -> dict[str, torch.Tensor]:
        """Sample ``sample``'s tiles of the batch's flat ``pixel_values`` (counted from each sample's image tokens)."""
        counts = (inputs["input_ids"] == self.image_token_id).sum(dim=1) // self.tokens_per_tile
        start = int(counts[:sample].sum())
        return {"pixel_values": inputs["pixel_values"][start : start + int(counts[sample])]}

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """As the base, with the thumbnail's condition."""
        return {**super().describe(), "views_note": "thumbnail only when the image is cut into 2+ tiles"}


class AyaVisionAdapter(InternVLAdapter):
    """Aya Vision: InternVL's tiling (GOT-OCR2 tiles, row-major, then a global view) with ``TILE_i`` markers, each
    tile ``(img_size / (patch x downsample))^2`` ``<|IMG_PATCH|>`` tokens after the 2x pixel shuffle; a Cohere2 LM
    whose sliding-window layers see the image only within their window."""

    family = "aya_vision"
    model_types = ("aya_vision",)
    default_template = "<image>\n{phrase}"
    image_placeholder = "<image>"
    view_names = ("tiles", "global")
    description = (
        "Aya Vision (SigLIP + Cohere2); InternVL-style 364-px tiles with TILE markers stitched, global view kept"
    )

    @property
    def tokens_per_tile(self) -> int:
        """``<|IMG_PATCH|>`` tokens per tile: ``(img_size / patch_size)^2`` of the processor (patch x downsample)."""
        return (int(self.processor.img_size) // int(self.processor.patch_size)) ** 2

    @property
    def image_token_id(self) -> int:
        """Id of ``<|IMG_PATCH|>``, the token every tile's features replace."""
        return int(self.model.config.image_token_index)

    def views(self, inputs: dict[str, torch.Tensor], index: int, image_size: tuple[int, int]) -> tuple[ImageView, ...]:
        """InternVL's views, the thumbnail named ``global`` as Aya's markers call it."""
        views = super().views(inputs, index, image_size)
        return tuple(ImageView(v.positions, v.geometry, "global") if v.name == "thumbnail" else v for v in views)
