"""A random-weight LLaVA-NeXT and its processor (tiles of ``image_size`` pixels, pinpoints scaled from 336 px)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .configs import small_text, small_vision
from .tokenizers import DEFAULT_WORDS, LLAVA_SPECIALS, word_tokenizer

# LLaVA-1.6's pinpoints ((h, w) multiples of the 336-px tile), in tiles.
PINPOINT_TILES = ((1, 2), (2, 1), (2, 2), (1, 3), (3, 1))


def tiny_llava_next(
    *,
    words: Iterable[str] = DEFAULT_WORDS,
    image_size: int = 48,
    patch_size: int = 8,
    vision_hidden: int = 32,
    hidden: int = 64,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    seed: int = 0,
):
    """A random-weight ``LlavaNextForConditionalGeneration`` (CLIP tower + Llama LM) and its ``LlavaNextProcessor``:
    ``image_size``-pixel tiles of ``(image_size / patch_size)^2`` patches, LLaVA-1.6's pinpoints in tiles."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    tokenizer = word_tokenizer(
        words, LLAVA_SPECIALS, bos="<s>", eos_token="</s>", extra_special_tokens={"image_token": "<image>"}
    )
    vision = small_vision(CLIPVisionConfig, vision_hidden, image_size, patch_size, projection_dim=vision_hidden)
    text = small_text(LlamaConfig, tokenizer, hidden, layers, heads, kv_heads, bos_token_id=tokenizer.bos_token_id)
    pinpoints = [[rows * image_size, cols * image_size] for rows, cols in PINPOINT_TILES]
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return model, processor


def tiny_llava_onevision(
    *,
    words: Iterable[str] = DEFAULT_WORDS,
    image_size: int = 48,
    patch_size: int = 8,
    vision_hidden: int = 32,
    hidden: int = 64,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    max_tiles: int = 9,
    seed: int = 0,
):
    """A random-weight ``LlavaOnevisionForConditionalGeneration`` (SigLIP tower + Qwen2 LM) and its processor:
    OneVision's pinpoints (1-6 tiles a side) in ``image_size``-pixel tiles, ``anyres_max_{max_tiles}``."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )

    tokenizer = word_tokenizer(
        words,
        (*LLAVA_SPECIALS, "<video>"),
        eos_token="</s>",
        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
    )
    vision = small_vision(SiglipVisionConfig, vision_hidden, image_size, patch_size)
    text = small_text(Qwen2Config, tokenizer, hidden, layers, heads, kv_heads)
    pinpoints = [[rows * image_size, cols * image_size] for rows in range(1, 7) for cols in range(1, 7)]
    aspect = f"anyres_max_{max_tiles}"
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        vision_aspect_ratio=aspect,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    image_processor = LlavaOnevisionImageProcessor(
        size={"height": image_size, "width": image_size}, image_grid_pinpoints=pinpoints
    )
    processor = LlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=LlavaOnevisionVideoProcessor(size={"height": image_size, "width": image_size}),
        num_image_tokens=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio=aspect,
    )
    return model, processor
