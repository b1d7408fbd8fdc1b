"""The small sub-configs the tiled families' tiny builders share: a 2-layer vision tower and a language model."""

from __future__ import annotations

from typing import Any


def small_vision(config_class: type, hidden: int, image_size: Any, patch_size: Any, **extra: Any) -> Any:
    """A vision tower config of ``hidden`` width: 2 layers, 2 heads, MLP 2x, ``image_size`` / ``patch_size``."""
    return config_class(
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        **extra,
    )


def small_text(config_class: type, tokenizer: Any, hidden: int, layers: int, heads: int, kv_heads: int, **extra: Any):
    """A language model config over ``tokenizer``'s vocabulary: ``layers`` x ``hidden``, ``heads`` query and
    ``kv_heads`` key/value heads, MLP 2x, its eos / pad ids (``extra``: the family's own settings)."""
    settings = dict(
        max_position_embeddings=8192, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    return config_class(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        **{**settings, **extra},
    )
