"""DeepSeek-VL (``deepseek_vl``; Table 1 of Kang et al.) and DeepSeek-VL hybrid (``deepseek_vl_hybrid``): one square
grid of SigLIP patches over the image resized so its longest side fills the canvas and centred on a square pad;
the hybrid adds a high-res SAM branch over the same canvas, merged token by token into the same grid."""

from __future__ import annotations

import torch

from ..geometry import GridGeometry
from .base import Adapter


class DeepseekVLAdapter(Adapter):
    """DeepSeek-VL: ``image_size / patch_size`` tokens per side (24 x 24 at 384 px)."""

    family = "deepseek_vl"
    model_types = ("deepseek_vl",)
    default_template = "<image_placeholder>\n{phrase}"
    image_placeholder = "<image_placeholder>"
    vision_modules = ("vision_model", "aligner")
    description = "DeepSeek-VL (SigLIP + Llama); longest side to the canvas, centred pad to square"

    @property
    def canvas_side(self) -> int:
        """Side of the square the image is resized and padded onto (the low-res ``size``)."""
        return int(self.processor.image_processor.size["height"])

    @property
    def fixed_grid(self) -> tuple[int, int]:
        """One grid for every image."""
        return self.vision_grid_side, self.vision_grid_side

    def geometry(self, image_size: tuple[int, int], inputs: dict[str, torch.Tensor], index: int) -> GridGeometry:
        """The processor's resize (longest side -> canvas, the other rounded, at least ``min_size``) and centred
        pad, undone per axis."""
        side, canvas = self.vision_grid_side, self.canvas_side
        min_size = int(getattr(self.processor.image_processor, "min_size", 1) or 1)
        width, height = image_size
        scale = canvas / max(width, height)
        new_w, new_h = max(round(width * scale), min_size), max(round(height * scale), min_size)
        pad_x, pad_y = (canvas - new_w) // 2, (canvas - new_h) // 2
        fx, fy = width / new_w, height / new_h  # resized pixels -> original pixels
        return GridGeometry(
            rows=side, cols=side, image_size=(width, height), x_scale=canvas / side * fx, y_scale=canvas / side * fy,
            x_offset=-pad_x * fx, y_offset=-pad_y * fy,
        )  # fmt: skip


class DeepseekVLHybridAdapter(DeepseekVLAdapter):
    """DeepSeek-VL hybrid (the 7B chat's SAM branch): the image goes onto a ``high_res_size`` square first (longest
    side, centred pad), and the low-res view is that square resized, so the grid is the low-res one over the
    high-res canvas; both branches' features are fused per cell before the language model."""

    family = "deepseek_vl_hybrid"
    model_types = ("deepseek_vl_hybrid",)
    vision_modules = (
        "vision_model",
        "high_res_vision_model",
        "high_res_vision_neck",
        "high_res_vision_proj",
        "aligner",
    )
    description = (
        "DeepSeek-VL hybrid (SigLIP + SAM high-res branch + Llama); longest side to the high-res canvas, centred pad"
    )

    @property
    def canvas_side(self) -> int:
        """Side of the high-res square the image is resized and padded onto (the low-res view is its resize)."""
        return int(self.processor.image_processor.high_res_size["height"])

    def image_inputs(self, inputs: dict[str, torch.Tensor], sample: int) -> dict[str, torch.Tensor]:
        """Both branches' pixels of one sample."""
        return {key: inputs[key][sample : sample + 1] for key in ("pixel_values", "high_res_pixel_values")}
