"""Random-weight Idefics3 and SmolVLM models (SigLIP-style tower, pixel-shuffle connector, Llama LM) and processors."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .configs import small_text, small_vision
from .tokenizers import DEFAULT_WORDS, LLAVA_SPECIALS, word_tokenizer

MARKERS = ("<fake_token_around_image>", "<global-img>", "<end_of_utterance>", "<video>")
TILE_MARKERS = tuple(f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7))


def tiny_idefics3(
    *,
    words: Iterable[str] = DEFAULT_WORDS,
    smolvlm: bool = False,
    tile: int = 96,
    patch_size: int = 8,
    max_side_tiles: int = 4,
    vision_hidden: int = 32,
    hidden: int = 64,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    seed: int = 0,
):
    """A random-weight ``Idefics3ForConditionalGeneration`` (``smolvlm``: ``SmolVLMForConditionalGeneration``) and
    its processor: the longest edge resized to ``max_side_tiles`` tiles of ``tile`` pixels, each tile
    ``(tile / patch_size / 2)^2`` tokens after the 2x pixel shuffle."""
    import transformers
    from transformers import LlamaConfig

    family = "SmolVLM" if smolvlm else "Idefics3"
    parts = {name: getattr(transformers, f"{family}{name}") for name in
             ("Config", "VisionConfig", "ForConditionalGeneration", "ImageProcessor", "Processor")}  # fmt: skip
    tokenizer = word_tokenizer(
        words,
        (*LLAVA_SPECIALS, *MARKERS, *TILE_MARKERS),
        eos_token="<end_of_utterance>",
        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
    )
    size = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": [*MARKERS, *TILE_MARKERS]})  # matched inside words
    assert len(tokenizer) == size  # already in the vocabulary: no new ids
    vision = small_vision(parts["VisionConfig"], vision_hidden, tile, patch_size)
    text = small_text(LlamaConfig, tokenizer, hidden, layers, heads, kv_heads)
    config = parts["Config"](
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = parts["ForConditionalGeneration"](config).eval()
    image_processor = parts["ImageProcessor"](
        size={"longest_edge": tile * max_side_tiles}, max_image_size={"longest_edge": tile}, do_image_splitting=True
    )
    per_tile = (tile // patch_size // 2) ** 2
    extra = {}
    if smolvlm:
        extra["video_processor"] = transformers.SmolVLMVideoProcessor(
            size={"longest_edge": tile}, max_image_size={"longest_edge": tile}
        )
    processor = parts["Processor"](
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=per_tile, **extra
    )
    return model, processor
