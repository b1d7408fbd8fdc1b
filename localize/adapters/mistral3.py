"""Mistral 3 / Mistral Small 3.1 (``mistral3``): the Pixtral tower's grid, merged 2x2, rows separated by
``[IMG_BREAK]`` tokens that are left out of the grid."""

from __future__ import annotations

import torch

from ..geometry import GridGeometry
from .base import Adapter


class Mistral3Adapter(Adapter):
    """Mistral 3: the image is resized (aspect kept, sides rounded up to multiples of patch x merge) and fully
    covered by ``image_sizes / (patch x merge)`` tokens; only the ``[IMG]`` tokens are grid cells."""

    family = "mistral3"
    model_types = ("mistral3",)
    default_template = "[IMG]{phrase}"
    image_placeholder = "[IMG]"
    vision_modules = ("vision_tower", "multi_modal_projector")
    description = "Mistral 3 (Pixtral + Mistral); aspect-kept resize to 28-px multiples; [IMG_BREAK] rows dropped"

    @property
    def max_input_side(self) -> int | None:
        """Pixtral's longest edge (1540 px for Mistral Small 3.1): images up to it reach the model whole."""
        return self.image_size_setting("longest_edge")

    def geometry(self, image_size: tuple[int, int], inputs: dict[str, torch.Tensor], index: int) -> GridGeometry:
        """The whole image is resized onto the grid: one cell = ``image / grid`` pixels per axis."""
        step = int(self.processor.patch_size) * int(self.model.config.spatial_merge_size)
        height, width = (int(v) for v in inputs["image_sizes"][index])
        rows, cols = height // step, width // step
        return GridGeometry.squashed(rows, cols, image_size)

    def image_inputs(self, inputs: dict[str, torch.Tensor], sample: int) -> dict[str, torch.Tensor]:
        """Pixel values (padded to the batch's largest image) and the sample's ``image_sizes``."""
        return {
            "pixel_values": inputs["pixel_values"][sample : sample + 1],
            "image_sizes": inputs["image_sizes"][sample : sample + 1],
        }
