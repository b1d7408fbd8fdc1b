"""Random-weight DeepSeek-VL models (the paper's Table 1 family: SigLIP + Llama, and the hybrid with a SAM
high-res branch) and their processors."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .tokenizers import DEFAULT_WORDS, LLAVA_SPECIALS, word_tokenizer

IMAGE_TOKEN = "<image_placeholder>"


def _shared_parts(words: Iterable[str], image_size: int, patch_size: int, hidden: int, layers: int, heads: int,
                  kv_heads: int) -> tuple:  # fmt: skip
    """The tokenizer and the config pieces both DeepSeek-VL variants share (SigLIP tower, Llama LM, image id)."""
    tokenizer = word_tokenizer(
        words,
        (*LLAVA_SPECIALS, IMAGE_TOKEN),
        bos="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
    config = dict(
        vision_config=dict(
            model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, image_size=image_size, patch_size=patch_size,
        ),
        text_config=dict(
            model_type="llama", vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
            max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
    )  # fmt: skip
    return tokenizer, config


def tiny_deepseek_vl(
    *,
    words: Iterable[str] = DEFAULT_WORDS,
    image_size: int = 48,
    patch_size: int = 8,
    hidden: int = 64,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    seed: int = 0,
):
    """A random-weight ``DeepseekVLForConditionalGeneration`` (SigLIP tower + Llama LM, the paper's DeepSeek-VL) and
    its ``DeepseekVLProcessor`` (longest side to ``image_size``, centred pad to square)."""
    from transformers import (
        DeepseekVLConfig,
        DeepseekVLForConditionalGeneration,
        DeepseekVLImageProcessor,
        DeepseekVLProcessor,
    )

    tokenizer, parts = _shared_parts(words, image_size, patch_size, hidden, layers, heads, kv_heads)
    torch.manual_seed(seed)
    model = DeepseekVLForConditionalGeneration(DeepseekVLConfig(**parts)).eval()
    image_processor = DeepseekVLImageProcessor(size={"height": image_size, "width": image_size})
    tokens = (image_size // patch_size) ** 2
    processor = DeepseekVLProcessor(image_processor=image_processor, tokenizer=tokenizer, num_image_tokens=tokens)
    return model, processor


def tiny_deepseek_vl_hybrid(
    *,
    words: Iterable[str] = DEFAULT_WORDS,
    image_size: int = 48,
    patch_size: int = 8,
    high_res_size: int = 96,
    hidden: int = 64,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    seed: int = 0,
):
    """A random-weight ``DeepseekVLHybridForConditionalGeneration`` (SigLIP + a SAM ViT-B-style high-res branch on
    the same square canvas, + Llama) and its ``DeepseekVLHybridProcessor`` (longest side to ``high_res_size``,
    centred pad, that square resized to ``image_size`` for the low-res branch)."""
    from transformers import (
        DeepseekVLHybridConfig,
        DeepseekVLHybridForConditionalGeneration,
        DeepseekVLHybridImageProcessor,
        DeepseekVLHybridProcessor,
    )

    tokenizer, parts = _shared_parts(words, image_size, patch_size, hidden, layers, heads, kv_heads)
    high_res = dict(
        model_type="sam_vision_model", hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
        image_size=high_res_size, patch_size=16, window_size=3, global_attn_indexes=[1], mlp_dim=64, num_pos_feats=16,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = DeepseekVLHybridForConditionalGeneration(DeepseekVLHybridConfig(**parts, high_res_vision_config=high_res))
    image_processor = DeepseekVLHybridImageProcessor(
        size={"height": image_size, "width": image_size},
        high_res_size={"height": high_res_size, "width": high_res_size},
    )
    tokens = (image_size // patch_size) ** 2
    processor = DeepseekVLHybridProcessor(image_processor=image_processor, tokenizer=tokenizer, num_image_tokens=tokens)
    return model.eval(), processor
