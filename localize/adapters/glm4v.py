"""GLM-4.1V / GLM-4.5V (``glm4v``, ``glm4v_moe``): Qwen2-VL's grid and M-RoPE behind GLM's image markers."""

from __future__ import annotations

from .qwen2_vl import Qwen2VLAdapter


class Glm4vAdapter(Qwen2VLAdapter):
    """GLM-4V: smart-resize to multiples of 28 px, one token per merged 2x2 patch block, M-RoPE positions."""

    family = "glm4v"
    model_types = ("glm4v", "glm4v_moe")
    default_template = "<|begin_of_image|><|image|><|end_of_image|>{phrase}"
    image_placeholder = "<|image|>"
    vision_modules = ("visual",)
    description = "GLM-4.1V / GLM-4.5V; dynamic grid from image_grid_thw / merge size; M-RoPE (as Qwen2-VL)"
