"""A random-weight Mistral 3 (Pixtral tower) and its processor."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .tokenizers import DEFAULT_WORDS, LLAVA_SPECIALS, word_tokenizer


def tiny_mistral3(
    *,
    words: Iterable[str] = DEFAULT_WORDS,
    patch_size: int = 8,
    longest_edge: int = 96,
    hidden: int = 64,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    seed: int = 0,
):
    """A random-weight ``Mistral3ForConditionalGeneration`` (Pixtral tower, 2x2 patch merger, Mistral LM) and its
    ``PixtralProcessor`` (aspect-kept resize to multiples of ``2 * patch_size``, ``[IMG_BREAK]`` after each row)."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, PixtralImageProcessor, PixtralProcessor

    specials = (*LLAVA_SPECIALS, "[IMG]", "[IMG_BREAK]", "[IMG_END]")
    tokenizer = word_tokenizer(
        words, specials, bos="<s>", eos_token="</s>", extra_special_tokens={"image_token": "[IMG]"}
    )
    config = Mistral3Config(
        vision_config=dict(
            model_type="pixtral", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            head_dim=16, image_size=longest_edge, patch_size=patch_size,
        ),
        text_config=dict(
            model_type="mistral", vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads,
            max_position_embeddings=4096, sliding_window=None, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
        spatial_merge_size=2,
        vision_feature_layer=-1,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = Mistral3ForConditionalGeneration(config).eval()
    image_processor = PixtralImageProcessor(
        size={"longest_edge": longest_edge}, patch_size={"height": patch_size, "width": patch_size}
    )
    processor = PixtralProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size, spatial_merge_size=2
    )
    return model, processor
