"""Idefics3 and SmolVLM (``idefics3``, ``smolvlm``): the image resized to whole tiles (longest edge to the
processor's size, each side rounded up to a tile multiple: a squash), split row-major into tiles, each
pixel-shuffled to ``s x s`` tokens, then a global view of the whole image squashed to one tile.

The block is ``<fake_token_around_image><row_i_col_j><image> x S`` per tile, ``\\n`` after each tile row, then
``\\n<fake_token_around_image><global-img><image> x S<fake_token_around_image>``; an image that fits one tile is
only the global part. The processor returns no rows / cols, so they are read from the ``<row_i_col_j>`` tokens.
The ``tiles`` view stitches the tiles into one grid over the whole image (a permutation of positions) and grounds;
``global`` is its own view.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from PIL import Image

from ..geometry import GridGeometry
from .base import Adapter, ImageView

MAX_TILES_PER_SIDE = 6  # the processors' <row_i_col_j> vocabulary


class Idefics3Adapter(Adapter):
    """Idefics3: views ``tiles`` (stitched; present when the image is split) and ``global`` (squashed)."""

    family = "idefics3"
    model_types = ("idefics3",)
    default_template = "<image>\n{phrase}"
    image_placeholder = "<image>"
    vision_modules = ("vision_model", "connector")
    view_names = ("tiles", "global")
    description = "Idefics3 (SigLIP + Llama); tiles with <row_i_col_j> markers stitched, global view kept"

    @property
    def max_input_side(self) -> int | None:
        """The processor's longest edge (4 x 364 = 1456 px for Idefics3): images up to it reach the model whole."""
        return self.image_size_setting("longest_edge")

    @property
    def tokens_per_tile(self) -> int:
        """Image tokens per tile (and for the global view): the processor's ``image_seq_len``."""
        return int(self.processor.image_seq_len)

    @functools.cached_property
    def _tile_markers(self) -> dict[int, tuple[int, int]]:
        """Token id of each ``<row_i_col_j>`` -> (i, j), 1-based."""
        tokenizer = self.tokenizer
        markers = {}
        for row in range(1, MAX_TILES_PER_SIDE + 1):
            for col in range(1, MAX_TILES_PER_SIDE + 1):
                token_id = tokenizer.convert_tokens_to_ids(f"<row_{row}_col_{col}>")
                if token_id is not None and token_id != tokenizer.unk_token_id:
                    markers[int(token_id)] = (row, col)
        return markers

    def tiling(self, inputs: dict[str, torch.Tensor], index: int) -> tuple[int, int]:
        """(rows, cols) of tiles in sample ``index``, from its last ``<row_i_col_j>`` marker; (0, 0): not split."""
        found = [self._tile_markers[t] for t in inputs["input_ids"][index].tolist() if t in self._tile_markers]
        return found[-1] if found else (0, 0)

    def views(self, inputs: dict[str, torch.Tensor], index: int, image_size: tuple[int, int]) -> tuple[ImageView, ...]:
        """The tiles stitched into one grid (when split), then the global view."""
        positions = self.image_token_positions(inputs, index)
        rows, cols = self.tiling(inputs, index)
        per_tile, side = self.tokens_per_tile, math.isqrt(self.tokens_per_tile)
        if positions.numel() != (rows * cols + 1) * per_tile:
            raise RuntimeError(
                f"sample {index}: {positions.numel()} image tokens for {rows}x{cols} tiles + a global view of "
                f"{per_tile}; the processor and model config disagree"
            )
        whole = ImageView(positions[rows * cols * per_tile :], GridGeometry.squashed(side, side, image_size), "global")
        if rows * cols == 0:
            return (whole,)
        tiles = positions[: rows * cols * per_tile].view(rows, cols, side, side).permute(0, 2, 1, 3).flatten()
        return ImageView(tiles, GridGeometry.squashed(rows * side, cols * side, image_size), "tiles"), whole

    def geometry(self, image_size: tuple[int, int], inputs: dict[str, torch.Tensor], index: int) -> GridGeometry:
        """The grounding view's geometry: the stitched tiles, or the global view of an unsplit image."""
        rows, cols = self.tiling(inputs, index)
        side = math.isqrt(self.tokens_per_tile)
        return GridGeometry.squashed(max(rows, 1) * side, max(cols, 1) * side, image_size)

    def processor_images(self, images: Sequence[Image.Image]) -> list:
        """One list per prompt (SmolVLM's processor does not split a flat list by prompt)."""
        return [[image] for image in images]

    def image_inputs(self, inputs: dict[str, torch.Tensor], sample: int) -> dict[str, torch.Tensor]:
        """The sample's tiles (padded to the batch's count with all-zero images the model drops) and pixel mask."""
        keys = [k for k in ("pixel_values", "pixel_attention_mask") if k in inputs]
        return {key: inputs[key][sample : sample + 1] for key in keys}


class SmolVLMAdapter(Idefics3Adapter):
    """SmolVLM / SmolVLM2: Idefics3's layout and markers on a SmolLM language model."""

    family = "smolvlm"
    model_types = ("smolvlm",)
    description = "SmolVLM / SmolVLM2 (SigLIP + SmolLM); Idefics3's tiles with <row_i_col_j> markers, global view kept"
