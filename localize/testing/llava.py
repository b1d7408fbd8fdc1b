"""A random-weight LLaVA-1.5 and its processor."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .tokenizers import DEFAULT_WORDS, LLAVA_SPECIALS, word_tokenizer


def tiny_llava(
    *,
    words: Iterable[str] = DEFAULT_WORDS,
    image_size: int = 48,
    patch_size: int = 8,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    vision_heads: int = 2,
    hidden: int = 64,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int | None = None,
    intermediate: int | None = None,
    pad_to_square: bool = True,
    vision_feature_layer: int = -1,
    seed: int = 0,
):
    """A random-weight ``LlavaForConditionalGeneration`` (CLIP tower + Llama LM) and its ``LlavaProcessor``
    (``vision_feature_layer``: the CLIP hidden state fed to the projector; LLaVA-1.5 uses -2; ``head_dim``: the
    language model's per-head width, ``hidden // heads`` unless given)."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaImageProcessor,
        LlavaProcessor,
    )

    tokenizer = word_tokenizer(
        words, LLAVA_SPECIALS, bos="<s>", eos_token="</s>", extra_special_tokens={"image_token": "<image>"}
    )
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=vision_hidden * 2,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate or hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim or hidden // heads,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    image_processor = LlavaImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_pad=pad_to_square,
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return model, processor
