"""Random-weight models of the supported architectures, built offline from configs.

Used by the tests, the benchmarks and the shapes-world model. Nothing here downloads: tokenizers are word-level
and built programmatically, image processors are constructed from their settings.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors

DEFAULT_WORDS: tuple[str, ...] = tuple(
    [
        "the",
        "a",
        "an",
        "red",
        "blue",
        "green",
        "yellow",
        "black",
        "white",
        "circle",
        "square",
        "triangle",
        "left",
        "right",
        "top",
        "bottom",
        "middle",
        "center",
        "of",
        "on",
        "in",
        "at",
        "above",
        "below",
        "near",
        "next",
        "to",
        "big",
        "small",
        "large",
        "tiny",
        "man",
        "woman",
        "dog",
        "cat",
        "person",
        "car",
        "tree",
        "leftmost",
        "rightmost",
        "biggest",
        "smallest",
        "is",
        "what",
        "color",
        "shape",
        "where",
    ]
)

LLAVA_SPECIALS = ("<unk>", "<pad>", "<s>", "</s>", "<image>")
QWEN_SPECIALS = (
    "<unk>",
    "<pad>",
    "<|endoftext|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def word_tokenizer(words: Iterable[str], specials: Sequence[str], bos: str | None = None, **special_kwargs):
    """A word-level fast tokenizer over ``specials + words`` (whitespace split; unknown words -> ``<unk>``)."""
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for token in [*specials, *words]:
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bos is not None:
        backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, vocab[bos])])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", bos_token=bos, **special_kwargs
    )


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


def _qwen_tokenizer(words: Iterable[str]):
    """The word tokenizer with the Qwen-VL image / video placeholders registered."""
    return word_tokenizer(
        words,
        QWEN_SPECIALS,
        eos_token="<|endoftext|>",
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
        },
    )


def _mrope_section(frequencies: int) -> list[int]:
    """M-RoPE's (temporal, height, width) split of a head's rotary frequencies, about 1/4, 3/8, 3/8."""
    section = [max(frequencies // 4, 1), (frequencies - max(frequencies // 4, 1)) // 2]
    return [*section, frequencies - sum(section)]


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
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = _qwen_tokenizer(words)
    ids = tokenizer.convert_tokens_to_ids
    section = _mrope_section((hidden // heads) // 2)
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
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=hidden * 2,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section},
            bos_token_id=None,
            eos_token_id=ids("<|endoftext|>"),
            pad_token_id=tokenizer.pad_token_id,
        ),
        bos_token_id=None,
        eos_token_id=ids("<|endoftext|>"),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    image_processor = Qwen2VLImageProcessor(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor()
    )
    return model, processor


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

    tokenizer = _qwen_tokenizer(words)
    ids = tokenizer.convert_tokens_to_ids
    head_dim = hidden // heads
    section = _mrope_section(head_dim // 2)
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
    section = _mrope_section(hidden // heads // 4)  # rotary on half of each head (partial_rotary_factor 0.5)
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

    tokenizer = word_tokenizer(
        words, (*LLAVA_SPECIALS, "<image_placeholder>"), bos="<s>", eos_token="</s>",
        extra_special_tokens={"image_token": "<image_placeholder>"},
    )  # fmt: skip
    config = DeepseekVLConfig(
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
        image_token_id=tokenizer.convert_tokens_to_ids("<image_placeholder>"),
    )  # fmt: skip
    torch.manual_seed(seed)
    model = DeepseekVLForConditionalGeneration(config).eval()
    image_processor = DeepseekVLImageProcessor(size={"height": image_size, "width": image_size})
    tokens = (image_size // patch_size) ** 2
    processor = DeepseekVLProcessor(image_processor=image_processor, tokenizer=tokenizer, num_image_tokens=tokens)
    return model, processor


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
