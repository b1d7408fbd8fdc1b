"""A random-weight Molmo2 (ViT, attention-pooling adapter, Qwen3-style LM) and its processor."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .tokenizers import DEFAULT_WORDS, LLAVA_SPECIALS, word_tokenizer

MOLMO2_MARKERS = (
    "<im_patch>", "<im_col>", "<im_start>", "<low_res_im_start>", "<im_end>", "<im_low>",
    "<frame_start>", "<frame_end>", "<|image|>", "<|video|>",
)  # fmt: skip


def tiny_molmo2(
    *,
    words: Iterable[str] = DEFAULT_WORDS,
    crop: int = 64,
    patch_size: int = 8,
    margins: int = 1,
    max_crops: int = 6,
    vision_hidden: int = 32,
    hidden: int = 64,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    seed: int = 0,
):
    """A random-weight ``Molmo2ForConditionalGeneration`` and its ``Molmo2Processor``: ``crop``-pixel crops of
    ``patch_size`` patches overlapping by ``margins`` patches a side, up to ``max_crops``, pooled 2 x 2."""
    from transformers import (
        Molmo2ForConditionalGeneration,
        Molmo2ImageProcessor,
        Molmo2Processor,
        Molmo2VideoProcessor,
    )

    tokenizer = word_tokenizer(
        words,
        (*LLAVA_SPECIALS, *MOLMO2_MARKERS),
        bos="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": "<|image|>", "video_token": "<|video|>"},
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(MOLMO2_MARKERS)})  # matched inside words
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in MOLMO2_MARKERS}
    config = _config(ids, len(tokenizer), crop, patch_size, vision_hidden, hidden, layers, heads, kv_heads)
    torch.manual_seed(seed)
    model = Molmo2ForConditionalGeneration(config).eval()
    image_processor = Molmo2ImageProcessor(
        size={"height": crop, "width": crop},
        patch_size=patch_size,
        max_crops=max_crops,
        overlap_margins=[margins, margins],
        pooling_size=[2, 2],
    )
    video_processor = Molmo2VideoProcessor(size={"height": crop, "width": crop}, patch_size=patch_size)
    processor = Molmo2Processor(image_processor=image_processor, video_processor=video_processor, tokenizer=tokenizer)
    return model, processor


def _config(
    ids: dict[str, int], vocab_size: int, crop: int, patch_size: int, vision_hidden: int, hidden: int, layers: int,
    heads: int, kv_heads: int,
):  # fmt: skip
    """The ``Molmo2Config`` of :func:`tiny_molmo2` (ViT, attention-pooling adapter, LM; marker ids in ``ids``)."""
    from transformers import Molmo2AdapterConfig, Molmo2Config, Molmo2TextConfig, Molmo2VisionConfig

    vision = Molmo2VisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=vision_hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=vision_hidden // 2,
        image_size=[crop, crop],
        patch_size=patch_size,
    )
    adapter = Molmo2AdapterConfig(
        vision_feature_layer=[-1],
        hidden_size=vision_hidden,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=vision_hidden // 2,
        intermediate_size=hidden * 2,
        text_hidden_size=hidden,
    )
    text = Molmo2TextConfig(
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        vocab_size=vocab_size,
        additional_vocab_size=0,
        num_hidden_layers=layers,
        intermediate_size=hidden * 2,
        max_position_embeddings=8192,
    )
    config = Molmo2Config(
        vision_config=vision,
        adapter_config=adapter,
        text_config=text,
        image_start_token_id=ids["<im_start>"],
        low_res_image_start_token_id=ids["<low_res_im_start>"],
        image_end_token_id=ids["<im_end>"],
        image_patch_id=ids["<im_patch>"],
        frame_start_token_id=ids["<frame_start>"],
        frame_end_token_id=ids["<frame_end>"],
    )
    return config
