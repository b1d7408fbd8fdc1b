"""A random-weight GLM-4V and its processor."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .qwen2_vl import mrope_section
from .tokenizers import DEFAULT_WORDS, word_tokenizer

GLM_SPECIALS = (
    "<unk>",
    "<pad>",
    "<|endoftext|>",
    "<|begin_of_image|>",
    "<|image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|video|>",
    "<|end_of_video|>",
)


def tiny_glm4v(
    *,
    words: Iterable[str] = DEFAULT_WORDS,
    hidden: int = 64,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    min_pixels: int = 56 * 56,
    max_pixels: int = 28 * 28 * 64,
    seed: int = 0,
):
    """A random-weight ``Glm4vForConditionalGeneration`` (GLM-4.1V) and its ``Glm4vProcessor``."""
    from transformers import (
        Glm4vConfig,
        Glm4vForConditionalGeneration,
        Glm4vImageProcessor,
        Glm4vProcessor,
        Glm4vVideoProcessor,
    )

    tokenizer = word_tokenizer(
        words, GLM_SPECIALS, eos_token="<|endoftext|>",
        extra_special_tokens={
            "image_token": "<|image|>", "video_token": "<|video|>", "boi_token": "<|begin_of_image|>",
            "eoi_token": "<|end_of_image|>", "bov_token": "<|begin_of_video|>", "eov_token": "<|end_of_video|>",
        },
    )  # fmt: skip
    ids = tokenizer.convert_tokens_to_ids
    section = mrope_section(hidden // heads // 4)  # rotary on half of each head (partial_rotary_factor 0.5)
    config = Glm4vConfig(
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden, patch_size=14,
            image_size=56, spatial_merge_size=2, temporal_patch_size=2,
        ),
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section,
                             "partial_rotary_factor": 0.5},
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_id=ids("<|image|>"),
        video_token_id=ids("<|video|>"),
        image_start_token_id=ids("<|begin_of_image|>"),
        image_end_token_id=ids("<|end_of_image|>"),
        video_start_token_id=ids("<|begin_of_video|>"),
        video_end_token_id=ids("<|end_of_video|>"),
    )  # fmt: skip
    torch.manual_seed(seed)
    model = Glm4vForConditionalGeneration(config).eval()
    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    image_processor = Glm4vImageProcessor(size=size, patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = Glm4vProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=Glm4vVideoProcessor()
    )
    return model, processor
