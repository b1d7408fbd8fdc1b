"""Random-weight PaliGemma (v1: Gemma LM; v2: Gemma 2 LM with logit softcap) and processors."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .tokenizers import DEFAULT_WORDS, LLAVA_SPECIALS, word_tokenizer

# PaliGemma 2's language model: Gemma 2, logits capped at 50 (F2), every other layer a sliding window of 8 here.
_GEMMA2_TEXT = {"model_type": "gemma2", "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
                "query_pre_attn_scalar": 16, "sliding_window": 8}  # fmt: skip


def tiny_paligemma(
    *,
    version: int = 1,
    softcap: float = 50.0,
    words: Iterable[str] = DEFAULT_WORDS,
    image_size: int = 48,
    patch_size: int = 8,
    hidden: int = 64,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 1,
    seed: int = 0,
):
    """A random-weight ``PaliGemmaForConditionalGeneration`` (v1: SigLIP + Gemma; ``version=2``: Gemma 2 with its
    attention-logit softcap and sliding-window layers; a prefix-LM) and its
    ``PaliGemmaProcessor`` (image squashed to ``image_size``; the prompt is ``<image>``s, ``<bos>``, text, ``\\n``)."""
    from transformers import (
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
    )

    specials = (*LLAVA_SPECIALS, "\n")
    extra = {"image_token": "<image>", "newline_token": "\n"}  # special, so split out before whitespace splitting
    tokenizer = word_tokenizer(words, specials, eos_token="</s>", extra_special_tokens=extra)
    tokenizer.add_special_tokens({"bos_token": "<s>"})  # the processor writes it after the image tokens
    config = PaliGemmaConfig(
        vision_config=dict(
            model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, image_size=image_size, patch_size=patch_size, projection_dim=hidden,
        ),
        text_config={
            "model_type": "gemma", "vocab_size": len(tokenizer), "hidden_size": hidden, "intermediate_size": hidden * 2,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
            "head_dim": hidden // heads, "max_position_embeddings": 4096, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
            **({**_GEMMA2_TEXT, "attn_logit_softcapping": softcap} if version == 2 else {}),
        },
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        projection_dim=hidden,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(config).eval()
    image_processor = SiglipImageProcessor(size={"height": image_size, "width": image_size})
    image_processor.image_seq_length = (image_size // patch_size) ** 2
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return model, processor
