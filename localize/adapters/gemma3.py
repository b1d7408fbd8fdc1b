"""Gemma 3 (``gemma3``): SigLIP patches average-pooled to 16 x 16 soft tokens over the image squashed to 896²;
the image block attends to itself bidirectionally (``token_type_ids``); sliding-window and global layers."""

from __future__ import annotations

import torch

from ..geometry import GridGeometry
from .base import Adapter, PreparedBatch


class Gemma3Adapter(Adapter):
    """Gemma 3: ``mm_tokens_per_image`` soft tokens, ``sqrt`` of it per side, between ``<start_of_image>`` and
    ``<end_of_image>``; the grid is ``config.image_token_id`` (the processor's ``image_token_id`` is the begin
    marker)."""

    family = "gemma3"
    model_types = ("gemma3",)
    default_template = "<start_of_image>{phrase}"
    image_placeholder = "<start_of_image>"
    vision_modules = ("vision_tower", "multi_modal_projector")
    description = "Gemma 3 (SigLIP + Gemma 3); squash to a square, patches pooled to 16x16; bidirectional image block"

    @property
    def fixed_grid(self) -> tuple[int, int]:
        """One pooled grid for every image."""
        side = round(int(self.model.config.mm_tokens_per_image) ** 0.5)
        return side, side

    def geometry(self, image_size: tuple[int, int], inputs: dict[str, torch.Tensor], index: int) -> GridGeometry:
        """The whole image is squashed onto the pooled square grid."""
        return GridGeometry.squashed(*self.fixed_grid, image_size)

    def processor_images(self, images) -> list:
        """One list of images per prompt, as ``Gemma3Processor`` requires (F7)."""
        return [[image] for image in images]

    def prefix_inputs(self, batch: PreparedBatch, length: int) -> dict[str, torch.Tensor]:
        """Sample 0's prefix with its ``token_type_ids``: without them the image block would be causal (F5)."""
        out = super().prefix_inputs(batch, length)
        out["token_type_ids"] = batch.inputs["token_type_ids"][:1, :length]
        return out
