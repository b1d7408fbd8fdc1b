"""A random-weight Gemma 3 (SigLIP + pooled 16x16 soft tokens) and its processor."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .tokenizers import DEFAULT_WORDS, LLAVA_SPECIALS, word_tokenizer


def tiny_gemma3(
    *,
    words: Iterable[str] = DEFAULT_WORDS,
    image_size: int = 64,
    patch_size: int = 8,
    tokens_per_side: int = 4,
    hidden: int = 64,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    sliding_window: int = 8,
    seed: int = 0,
):
    """A random-weight ``Gemma3ForConditionalGeneration`` (SigLIP, patches average-pooled to ``tokens_per_side``²,
    Gemma 3 LM with sliding-window layers of ``sliding_window`` and one global layer) and its ``Gemma3Processor``."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor

    specials = (*LLAVA_SPECIALS, "<start_of_image>", "<end_of_image>", "<image_soft_token>")
    extra = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    tokenizer = word_tokenizer(words, specials, bos="<s>", eos_token="</s>", extra_special_tokens=extra)
    ids = tokenizer.convert_tokens_to_ids
    config = Gemma3Config(
        vision_config=dict(
            model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, image_size=image_size, patch_size=patch_size,
        ),
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads,
            query_pre_attn_scalar=hidden // heads, max_position_embeddings=4096, sliding_window=sliding_window,
            layer_types=["sliding_attention"] * (layers - 1) + ["full_attention"],
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        mm_tokens_per_image=tokens_per_side**2,
        boi_token_index=ids("<start_of_image>"),
        eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"),
    )  # fmt: skip
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config).eval()
    image_processor = Gemma3ImageProcessor(size={"height": image_size, "width": image_size})
    processor = Gemma3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_length=tokens_per_side**2
    )
    return model, processor
