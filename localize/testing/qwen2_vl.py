"""Random-weight Qwen2-VL / Qwen2.5-VL / Qwen3-VL models and their processors (M-RoPE)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .tokenizers import DEFAULT_WORDS, qwen_tokenizer


def mrope_section(frequencies: int) -> list[int]:
    """M-RoPE's (temporal, height, width) split of a head's rotary frequencies, about 1/4, 3/8, 3/8."""
    section = [max(frequencies // 4, 1), (frequencies - max(frequencies // 4, 1)) // 2]
    return [*section, frequencies - sum(section)]


def _qwen2_text(tokenizer, hidden: int, layers: int, heads: int, kv_heads: int) -> dict:
    """The text side and token ids of a Qwen2-VL / Qwen2.5-VL config (M-RoPE over half of each head)."""
    ids = tokenizer.convert_tokens_to_ids
    section = mrope_section((hidden // heads) // 2)
    text = dict(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section},
        bos_token_id=None, eos_token_id=ids("<|endoftext|>"), pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return dict(
        text_config=text, bos_token_id=None, eos_token_id=ids("<|endoftext|>"), image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )  # fmt: skip


def _qwen2_processor(processor_class: type, tokenizer, min_pixels: int, max_pixels: int):
    """A Qwen2-VL / Qwen2.5-VL processor: 14-px patches merged 2 x 2, the pixel budget given."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    return processor_class(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor()
    )


def tiny_qwen2_vl(
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
    """A random-weight ``Qwen2VLForConditionalGeneration`` (full-attention vision tower, no window) and its
    ``Qwen2VLProcessor``."""
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLProcessor,
    )

    tokenizer = qwen_tokenizer(words)
    config = Qwen2VLConfig(
        vision_config=dict(
            depth=2, embed_dim=32, hidden_size=hidden, mlp_ratio=2, num_heads=2, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2,
        ),
        **_qwen2_text(tokenizer, hidden, layers, heads, kv_heads),
    )  # fmt: skip
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    return model, _qwen2_processor(Qwen2VLProcessor, tokenizer, min_pixels, max_pixels)


def tiny_qwen2_5_vl(
    *,
    words: Iterable[str] = DEFAULT_WORDS,
    vision_hidden: int = 32,
    vision_depth: int = 2,
    hidden: int = 64,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    min_pixels: int = 56 * 56,
    max_pixels: int = 28 * 28 * 64,
    seed: int = 0,
):
    """A random-weight ``Qwen2_5_VLForConditionalGeneration`` and its ``Qwen2_5_VLProcessor``."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
    )

    tokenizer = qwen_tokenizer(words)
    config = Qwen2_5_VLConfig(
        vision_config=dict(
            depth=vision_depth,
            hidden_size=vision_hidden,
            intermediate_size=vision_hidden * 2,
            num_heads=2,
            out_hidden_size=hidden,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,
            fullatt_block_indexes=[vision_depth - 1],
        ),
        **_qwen2_text(tokenizer, hidden, layers, heads, kv_heads),
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    return model, _qwen2_processor(Qwen2_5_VLProcessor, tokenizer, min_pixels, max_pixels)


def tiny_qwen3_vl(
    *,
    words: Iterable[str] = DEFAULT_WORDS,
    hidden: int = 64,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    min_pixels: int = 128 * 128,
    max_pixels: int = 32 * 32 * 64,
    seed: int = 0,
):
    """A random-weight ``Qwen3VLForConditionalGeneration`` (16-px patches, deepstack) and its ``Qwen3VLProcessor``."""
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    tokenizer = qwen_tokenizer(words)
    ids = tokenizer.convert_tokens_to_ids
    head_dim = hidden // heads
    section = mrope_section(head_dim // 2)
    config = Qwen3VLConfig(
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden, patch_size=16,
            spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64, deepstack_visual_indexes=[0],
        ),
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section,
                             "mrope_interleaved": True},
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )  # fmt: skip
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).eval()
    image_processor = Qwen2VLImageProcessor(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=16, merge_size=2, temporal_patch_size=2
    )
    video_processor = Qwen3VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2)
    processor = Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor)
    return model, processor
