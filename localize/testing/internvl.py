"""A random-weight InternVL (InternViT-style tower, pixel shuffle, Qwen2 LM) and its processor."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .configs import small_text, small_vision
from .tokenizers import DEFAULT_WORDS, LLAVA_SPECIALS, word_tokenizer

INTERNVL_MARKERS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>"}


def tiny_internvl(
    *,
    words: Iterable[str] = DEFAULT_WORDS,
    image_size: int = 96,
    patch_size: int = 8,
    vision_hidden: int = 32,
    hidden: int = 64,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    max_patches: int = 6,
    seed: int = 0,
):
    """A random-weight ``InternVLForConditionalGeneration`` and its ``InternVLProcessor``: ``image_size``-pixel
    tiles of ``(image_size / patch_size / 2)^2`` tokens, 1 to ``max_patches`` tiles plus a thumbnail."""
    from transformers import (
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
        InternVLVisionConfig,
        Qwen2Config,
    )

    specials = (*LLAVA_SPECIALS, *INTERNVL_MARKERS.values(), "<video>")
    tokenizer = word_tokenizer(
        words, specials, eos_token="</s>", extra_special_tokens={**INTERNVL_MARKERS, "video_token": "<video>"}
    )
    vision = small_vision(InternVLVisionConfig, vision_hidden, [image_size, image_size], [patch_size, patch_size])
    text = small_text(Qwen2Config, tokenizer, hidden, layers, heads, kv_heads)
    per_tile = (image_size // patch_size // 2) ** 2
    config = InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=per_tile,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config).eval()
    image_processor = _tile_processor(image_size, max_patches)
    processor = InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=InternVLVideoProcessor(size={"height": image_size, "width": image_size}),
        image_seq_length=per_tile,
    )
    return model, processor


AYA_MARKERS = ("<|START_OF_IMG|>", "<|END_OF_IMG|>", "<|IMG_PATCH|>", "<|IMG_LINE_BREAK|>", "TILE", "TILE_GLOBAL")


def tiny_aya_vision(
    *,
    words: Iterable[str] = DEFAULT_WORDS,
    image_size: int = 96,
    patch_size: int = 8,
    vision_hidden: int = 32,
    hidden: int = 64,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    sliding_window: int = 64,
    max_patches: int = 6,
    seed: int = 0,
):
    """A random-weight ``AyaVisionForConditionalGeneration`` (SigLIP tower, 2x pixel shuffle, Cohere2 LM: three
    sliding-window layers of ``sliding_window`` tokens below each global one) and its ``AyaVisionProcessor``."""
    from transformers import (
        AyaVisionConfig,
        AyaVisionForConditionalGeneration,
        AyaVisionProcessor,
        Cohere2Config,
        SiglipVisionConfig,
    )

    tile_names = tuple(f"TILE_{i}" for i in range(1, max_patches + 1))
    tokenizer = word_tokenizer(words, (*LLAVA_SPECIALS, *AYA_MARKERS, *tile_names), bos="<s>", eos_token="</s>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>", *AYA_MARKERS, *tile_names]})
    vision = small_vision(SiglipVisionConfig, vision_hidden, image_size, patch_size)
    text = small_text(
        Cohere2Config,
        tokenizer,
        hidden,
        layers,
        heads,
        kv_heads,
        sliding_window=sliding_window,
        bos_token_id=tokenizer.bos_token_id,
    )
    config = AyaVisionConfig(
        vision_config=vision,
        text_config=text,
        downsample_factor=2,
        image_token_index=tokenizer.convert_tokens_to_ids("<|IMG_PATCH|>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    torch.manual_seed(seed)
    model = AyaVisionForConditionalGeneration(config).eval()
    image_processor = _tile_processor(image_size, max_patches)
    processor = AyaVisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        img_size=image_size,
        downsample_factor=2,
    )
    return model, processor


def _tile_processor(image_size: int, max_patches: int):
    """GOT-OCR2's image processor as InternVL and Aya Vision use it: 1 to ``max_patches`` tiles (plus a thumbnail)."""
    from transformers import GotOcr2ImageProcessor

    size = {"height": image_size, "width": image_size}
    return GotOcr2ImageProcessor(size=size, crop_to_patches=True, min_patches=1, max_patches=max_patches)
