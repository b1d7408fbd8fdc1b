"""Qwen2-VL and Qwen2.5-VL (``qwen2_vl``, ``qwen2_5_vl``): dynamic grid, M-RoPE positions."""

from __future__ import annotations

import math

import torch

from ..geometry import GridGeometry
from .base import Adapter, PreparedBatch


class Qwen2VLAdapter(Adapter):
    """Qwen2(.5)-VL: the image is resized to multiples of patch x merge; one token per merged 2x2 patch block."""

    family = "qwen2_vl"
    model_types = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl", "qwen3_vl_moe")
    default_template = "<|vision_start|><|image_pad|><|vision_end|>{phrase}"
    image_placeholder = "<|image_pad|>"
    vision_modules = ("visual",)
    description = "Qwen2-VL / Qwen2.5-VL / Qwen3-VL; dynamic grid from image_grid_thw / merge size; M-RoPE"

    @property
    def merge_size(self) -> int:
        """Patches merged per token along each side."""
        return int(self.model.config.vision_config.spatial_merge_size)

    @property
    def max_input_side(self) -> int | None:
        """The side of a square holding the processor's pixel budget (``size["longest_edge"]``, a pixel count:
        3584 for Qwen2.5-VL's 12.8 M), so that reducing a large image on load never costs the model tokens."""
        budget = self.image_size_setting("longest_edge")
        return math.isqrt(budget) + 1 if budget else None

    def geometry(self, image_size: tuple[int, int], inputs: dict[str, torch.Tensor], index: int) -> GridGeometry:
        """The processor resizes the whole image (no pad, no crop) to the grid's pixel size."""
        _, grid_h, grid_w = (int(v) for v in inputs["image_grid_thw"][index])
        rows, cols = grid_h // self.merge_size, grid_w // self.merge_size
        return GridGeometry.squashed(rows, cols, image_size)

    def position_ids(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """M-RoPE position ids ``[3, B, L]`` over the full sequences (never the model's stored rope_deltas)."""
        rope_inputs = {k: inputs[k] for k in ("mm_token_type_ids", "image_grid_thw", "attention_mask") if k in inputs}
        positions, _ = self.model.model.get_rope_index(inputs["input_ids"], **rope_inputs)
        return positions

    def prefix_inputs(self, batch: PreparedBatch, length: int) -> dict[str, torch.Tensor]:
        """Sample 0's prefix with its image and explicit M-RoPE positions."""
        out = super().prefix_inputs(batch, length)
        positions = batch.extras.get("position_ids")
        if positions is None:
            positions = batch.extras["position_ids"] = self.position_ids(batch.inputs)
        out["position_ids"] = positions[:, :1, :length]
        if "mm_token_type_ids" in batch.inputs:
            out["mm_token_type_ids"] = batch.inputs["mm_token_type_ids"][:1, :length]
        return out

    def suffix_inputs(self, batch: PreparedBatch, length: int) -> dict[str, torch.Tensor]:
        """Every sample's suffix with its slice of the full M-RoPE positions."""
        out = super().suffix_inputs(batch, length)
        positions = batch.extras.get("position_ids")
        if positions is None:
            positions = batch.extras["position_ids"] = self.position_ids(batch.inputs)
        out["position_ids"] = positions[:, :, length:]
        if "mm_token_type_ids" in batch.inputs:
            out["mm_token_type_ids"] = batch.inputs["mm_token_type_ids"][:, length:]
        return out

    def slice_suffix(self, suffix: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
        """As the base, with the M-RoPE ``position_ids`` ``[axes, B, S]`` sliced on their batch axis."""
        out = super().slice_suffix({k: v for k, v in suffix.items() if k != "position_ids"}, start, stop)
        return {**out, "position_ids": suffix["position_ids"][:, start:stop]}

    def image_inputs(self, inputs: dict[str, torch.Tensor], sample: int) -> dict[str, torch.Tensor]:
        """Sample ``sample``'s patch rows of the flattened ``pixel_values`` and its grid."""
        grids = inputs["image_grid_thw"]
        counts = grids.prod(dim=1)
        start = int(counts[:sample].sum())
        stop = start + int(counts[sample])
        return {"pixel_values": inputs["pixel_values"][start:stop], "image_grid_thw": grids[sample : sample + 1]}
