"""PaliGemma v1 / v2 (``paligemma``): SigLIP tokens first, then ``<bos>``, the prompt and ``\\n``; a prefix-LM."""

from __future__ import annotations

import torch

from ..geometry import GridGeometry
from .base import Adapter


class PaliGemmaAdapter(Adapter):
    """PaliGemma: the image is squashed to the tower's square input (16 x 16 tokens at 224 px, 32 x 32 at 448 px).

    The whole prompt (image and text) is one bidirectional block (``token_type_ids`` 0), so an image key depends on
    the phrase after it: no prefix reuse. The processor ends the prompt with ``\\n``: the phrase's last word is the
    second-to-last token, the default query.
    """

    family = "paligemma"
    model_types = ("paligemma",)
    default_template = "{phrase}"  # the processor writes the <image> tokens, <bos> and the closing \n itself
    vision_modules = ("vision_tower", "multi_modal_projector")
    attention_doc = "SDPA + recorded query rows; the family's eager attention where logits are softcapped (v2)"
    description = "PaliGemma v1/v2 (SigLIP + Gemma/Gemma 2, softcap); squash to a square; prefix-LM: no prefix reuse"
    prefix_reuse = False
    query_offset = 1
    answer_token_type = 1  # the answer is the causal suffix after the bidirectional prefix

    @property
    def fixed_grid(self) -> tuple[int, int]:
        """One grid for every image."""
        return self.vision_grid_side, self.vision_grid_side

    def geometry(self, image_size: tuple[int, int], inputs: dict[str, torch.Tensor], index: int) -> GridGeometry:
        """The whole image is resized (squashed) onto the square grid."""
        side = self.vision_grid_side
        return GridGeometry.squashed(side, side, image_size)
