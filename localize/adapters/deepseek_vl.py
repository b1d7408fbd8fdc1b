"""DeepSeek-VL (``deepseek_vl``; Table 1 of Kang et al.): one square grid of SigLIP patches
over the image resized so its longest side fills the canvas and centred on a square pad."""

from __future__ import annotations

import torch

from ..geometry import GridGeometry
from .base import Adapter


class DeepseekVLAdapter(Adapter):
    """DeepSeek-VL: ``image_size / patch_size`` tokens per side (24 x 24 at 384 px). (``deepseek_vl_hybrid`` adds a
    high-res SAM branch on the same canvas, so the geometry would be the same; it is not served until its
    ``high_res_pixel_values`` are passed through and a tiny hybrid passes the conformance suite.)"""

    family = "deepseek_vl"
    model_types = ("deepseek_vl",)
    default_template = "<image_placeholder>\n{phrase}"
    vision_modules = ("vision_model", "aligner")
    description = "DeepSeek-VL (SigLIP + Llama); longest side to the canvas, centred pad to square"

    def geometry(self, image_size: tuple[int, int], inputs: dict[str, torch.Tensor], index: int) -> GridGeometry:
        """The processor's resize (longest side -> canvas, the other rounded) and centred pad, undone per axis."""
        side = self.vision_grid_side
        canvas = int(self.processor.image_processor.size["height"])
        width, height = image_size
        scale = canvas / max(width, height)
        new_w, new_h = max(round(width * scale), 1), max(round(height * scale), 1)
        pad_x, pad_y = (canvas - new_w) // 2, (canvas - new_h) // 2
        fx, fy = width / new_w, height / new_h  # resized pixels -> original pixels
        return GridGeometry(
            rows=side, cols=side, image_size=(width, height), x_scale=canvas / side * fx, y_scale=canvas / side * fy,
            x_offset=-pad_x * fx, y_offset=-pad_y * fy,
        )  # fmt: skip
