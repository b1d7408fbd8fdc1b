"""Molmo2 (``molmo2``): a low-res view of the whole image squashed onto one crop, then a hi-res view of
overlapping crops of a canvas the image is squashed onto, both pooled 2 x 2 by attention over patch features.

Layout (``Molmo2Processor.replace_image_token``): ``<low_res_im_start>`` + rows of ``<im_patch>`` (each row ended
by ``<im_col>``) + ``<im_end>``, then ``<im_start>`` + the hi-res rows + ``<im_end>``; ``image_grids`` gives both
pooled grids. The crops overlap by margins that the processor drops, so the hi-res patches tile the canvas exactly
once (row-major); pooling pads the patch grid with centred -1 cells. The hi-res view grounds. Image tokens attend
to each other bidirectionally in the prefill, given ``mm_token_type_ids`` (F5).
"""

from __future__ import annotations

import math

import torch

from ..geometry import GridGeometry
from .base import Adapter, ImageView, PreparedBatch


class Molmo2Adapter(Adapter):
    """Molmo2: views ``hi-res`` (the pooled canvas of overlapping crops) and ``low-res`` (the pooled squash)."""

    family = "molmo2"
    model_types = ("molmo2",)
    default_template = "<|image|>\n{phrase}"
    image_placeholder = "<|image|>"
    vision_modules = ("vision_tower", "multi_modal_projector")
    view_names = ("hi-res", "low-res")
    description = (
        "Molmo2 (SigLIP-style ViT + attention pooling + Qwen3/OLMo); overlapping crops pooled 2x2, low-res view"
    )

    def _settings(self) -> tuple[int, int, list[int], int, tuple[int, int]]:
        """(crop, patch, overlap margins, max crops, pooling) of the image processor."""
        processor = self.processor.image_processor
        pool_h, pool_w = (int(v) for v in processor.pooling_size)
        margins = [int(v) for v in processor.overlap_margins]
        return (
            int(processor.size["height"]),
            int(processor.patch_size),
            margins,
            int(processor.max_crops),
            (pool_h, pool_w),
        )

    @property
    def max_input_side(self) -> int | None:
        """The longest canvas the crops can cover (``max_crops`` windows in a row plus the margins)."""
        crop, patch, margins, max_crops, _ = self._settings()
        window = crop - sum(margins) * patch
        return max_crops * window + sum(margins) * patch

    def views(self, inputs: dict[str, torch.Tensor], index: int, image_size: tuple[int, int]) -> tuple[ImageView, ...]:
        """The hi-res grid, then the low-res one (``<im_col>`` separators are not image tokens)."""
        positions = self.image_token_positions(inputs, index)
        low_rows, low_cols, rows, cols = (int(v) for v in inputs["image_grids"][index])
        low = low_rows * low_cols
        if positions.numel() != low + rows * cols:
            raise RuntimeError(
                f"sample {index}: {positions.numel()} image tokens for a {low_rows}x{low_cols} low-res and a "
                f"{rows}x{cols} hi-res grid; the processor and model config disagree"
            )
        crop, patch, _, _, pool = self._settings()
        low_res = _pooled_geometry(crop, crop, patch, pool, image_size)
        return (
            ImageView(positions[low:], self.geometry(image_size, inputs, index), "hi-res"),
            ImageView(positions[:low], low_res, "low-res"),
        )

    def geometry(self, image_size: tuple[int, int], inputs: dict[str, torch.Tensor], index: int) -> GridGeometry:
        """The hi-res grid: the pooled patches of the canvas (``compute_crop_geometry``) the image is squashed onto."""
        from transformers.models.molmo2.image_processing_molmo2 import compute_crop_geometry

        crop, patch, margins, max_crops, pool = self._settings()
        width, height = image_size
        _, _, canvas_h, canvas_w = compute_crop_geometry(height, width, max_crops, margins, crop, patch)
        return _pooled_geometry(canvas_w, canvas_h, patch, pool, image_size)

    def prefix_inputs(self, batch: PreparedBatch, length: int) -> dict[str, torch.Tensor]:
        """Sample 0's prefix with its ``mm_token_type_ids``: without them the image block would be causal (F5)."""
        out = super().prefix_inputs(batch, length)
        out["mm_token_type_ids"] = batch.inputs["mm_token_type_ids"][:1, :length]
        return out

    def image_inputs(self, inputs: dict[str, torch.Tensor], sample: int) -> dict[str, torch.Tensor]:
        """Sample ``sample``'s crops and pooling rows of the batch's flat tensors, its pooling indices re-based to
        its own crops (the processor numbers patches across the batch)."""
        crops, grids = inputs["image_num_crops"], inputs["image_grids"]
        tokens = grids[:, 0] * grids[:, 1] + grids[:, 2] * grids[:, 3]
        first_crop, first_token = int(crops[:sample].sum()), int(tokens[:sample].sum())
        patches_per_crop = inputs["pixel_values"].shape[1]
        pooling = inputs["image_token_pooling"][first_token : first_token + int(tokens[sample])]
        return {
            "pixel_values": inputs["pixel_values"][first_crop : first_crop + int(crops[sample])],
            "image_token_pooling": torch.where(pooling >= 0, pooling - first_crop * patches_per_crop, pooling),
            "image_grids": grids[sample : sample + 1],
            "image_num_crops": crops[sample : sample + 1],
        }


def _pooled_geometry(
    canvas_w: int, canvas_h: int, patch: int, pool: tuple[int, int], image_size: tuple[int, int]
) -> GridGeometry:
    """The image squashed onto a ``canvas_w x canvas_h`` canvas of ``patch``-pixel patches, pooled ``pool`` with the
    patch grid padded centred (``arange_for_pooling``)."""
    width, height = image_size
    (pool_h, pool_w), (patches_h, patches_w) = pool, (canvas_h // patch, canvas_w // patch)
    rows, cols = math.ceil(patches_h / pool_h), math.ceil(patches_w / pool_w)
    pad_top, pad_left = (rows * pool_h - patches_h) // 2, (cols * pool_w - patches_w) // 2
    sx, sy = width / canvas_w, height / canvas_h
    return GridGeometry(
        rows=rows,
        cols=cols,
        image_size=(width, height),
        x_scale=pool_w * patch * sx,
        y_scale=pool_h * patch * sy,
        x_offset=-pad_left * patch * sx,
        y_offset=-pad_top * patch * sy,
    )
