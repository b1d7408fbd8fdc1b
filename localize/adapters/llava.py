"""LLaVA-1.5 family (``model_type == "llava"``): CLIP patch grid, pad-to-square or resize + center-crop."""

from __future__ import annotations

from typing import Any

import torch

from ..geometry import GridGeometry
from .base import Adapter


class LlavaAdapter(Adapter):
    """LLaVA / LLaVA-1.5: one fixed grid (image_size / patch_size per side) of image tokens."""

    family = "llava"
    model_types = ("llava",)
    # The official code's plain form: the image, then the referring expression; the query is its last token.
    default_template = "<image>\n{phrase}"
    image_placeholder = "<image>"
    vision_modules = ("vision_tower", "multi_modal_projector")
    description = "LLaVA-1.5 (CLIP ViT + Llama/Vicuna); fixed square grid; pad-to-square or resize+center-crop"

    @property
    def image_token_id(self) -> int:
        """Id of ``<image>`` after the processor expanded it to one token per patch."""
        config = self.model.config
        token = getattr(config, "image_token_id", None)
        return int(token if token is not None else config.image_token_index)

    def image_token_positions(self, inputs: dict[str, torch.Tensor], index: int) -> torch.Tensor:
        """Image-token indices; with the ``full`` feature strategy the CLS token comes first and is dropped."""
        positions = super().image_token_positions(inputs, index)
        if getattr(self.model.config, "vision_feature_select_strategy", "default") == "full":
            positions = positions[1:]
        return positions

    @classmethod
    def official_processor(cls, processor: Any) -> Any:
        """LLaVA-1.5's ``expand2square``: the hub's ``llava-hf`` processors resize and centre-crop instead, so the
        image processor is rebuilt with the same settings plus ``do_pad=True`` (centred pad to square)."""
        from transformers import LlavaImageProcessor

        image_processor = processor.image_processor
        if getattr(image_processor, "do_pad", None) is not True:
            settings = {
                k: v
                for k, v in image_processor.to_dict().items()
                if not k.startswith("_") and k != "image_processor_type"
            }
            processor.image_processor = LlavaImageProcessor(**{**settings, "do_pad": True})
        return processor

    @property
    def fixed_grid(self) -> tuple[int, int]:
        """One grid for every image."""
        return self.vision_grid_side, self.vision_grid_side

    def geometry(self, image_size: tuple[int, int], inputs: dict[str, torch.Tensor], index: int) -> GridGeometry:
        """Follow the image processor: optional pad-to-square (centred), resize, center crop."""
        rows, cols = self.fixed_grid
        settings = _processor_settings(self.processor.image_processor)
        width, height = image_size
        pad_x = pad_y = 0
        canvas_w, canvas_h = width, height
        if settings["do_pad"] and width != height:
            side = max(width, height)
            pad_x, pad_y = (side - width) // 2, (side - height) // 2
            canvas_w = canvas_h = side
        new_w, new_h = canvas_w, canvas_h
        if settings["do_resize"]:
            new_w, new_h = _resized_size(canvas_w, canvas_h, settings["size"])
        crop_w, crop_h, left, top = new_w, new_h, 0, 0
        if settings["do_center_crop"]:
            crop_h, crop_w = settings["crop_size"]
            top, left = int((new_h - crop_h) / 2.0), int((new_w - crop_w) / 2.0)
        sx, sy = canvas_w / new_w, canvas_h / new_h  # resized -> canvas
        return GridGeometry(
            rows=rows,
            cols=cols,
            image_size=(width, height),
            x_scale=crop_w / cols * sx,
            y_scale=crop_h / rows * sy,
            x_offset=left * sx - pad_x,
            y_offset=top * sy - pad_y,
        )


def _processor_settings(image_processor: Any) -> dict[str, Any]:
    """The resize/pad/crop settings of a CLIP-style or LLaVA image processor."""
    size = getattr(image_processor, "size", None) or {}
    crop = getattr(image_processor, "crop_size", None) or {}
    size = dict(size) if not isinstance(size, int) else {"shortest_edge": size}
    crop = dict(crop) if not isinstance(crop, int) else {"height": crop, "width": crop}
    return {
        "do_pad": bool(getattr(image_processor, "do_pad", False)),
        "do_resize": bool(getattr(image_processor, "do_resize", True)),
        "do_center_crop": bool(getattr(image_processor, "do_center_crop", False)),
        "size": size,
        "crop_size": (int(crop.get("height", 0)), int(crop.get("width", 0))),
    }


def _resized_size(width: int, height: int, size: dict[str, Any]) -> tuple[int, int]:
    """(w, h) after the processor's resize (``shortest_edge`` keeps the aspect ratio, truncating the long side)."""
    if size.get("shortest_edge"):
        short_target = int(size["shortest_edge"])
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = short_target, int(short_target * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)
    if size.get("height") and size.get("width"):
        return int(size["width"]), int(size["height"])
    raise ValueError(f"unsupported image processor size setting {size}")
