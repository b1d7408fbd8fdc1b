"""Model-family adapters, chosen by the config's ``model_type``."""

from __future__ import annotations

from ..errors import UnsupportedModelError
from .base import Adapter, ImageView, PreparedBatch
from .deepseek_vl import DeepseekVLAdapter, DeepseekVLHybridAdapter
from .gemma3 import Gemma3Adapter
from .glm4v import Glm4vAdapter
from .idefics3 import Idefics3Adapter, SmolVLMAdapter
from .internvl import AyaVisionAdapter, InternVLAdapter
from .llava import LlavaAdapter
from .llava_next import LlavaNextAdapter, LlavaOnevisionAdapter
from .mistral3 import Mistral3Adapter
from .molmo2 import Molmo2Adapter
from .paligemma import PaliGemmaAdapter
from .qwen2_vl import Qwen2VLAdapter

ADAPTERS: tuple[type[Adapter], ...] = (
    LlavaAdapter,
    LlavaNextAdapter,
    LlavaOnevisionAdapter,
    Qwen2VLAdapter,
    Glm4vAdapter,
    DeepseekVLAdapter,
    DeepseekVLHybridAdapter,
    InternVLAdapter,
    AyaVisionAdapter,
    Idefics3Adapter,
    SmolVLMAdapter,
    Mistral3Adapter,
    Molmo2Adapter,
    PaliGemmaAdapter,
    Gemma3Adapter,
)


def supported_model_types() -> list[str]:
    """Every ``model_type`` some adapter serves."""
    return sorted(t for adapter in ADAPTERS for t in adapter.model_types)


def adapter_for(model_type: str) -> type[Adapter]:
    """The adapter class serving ``model_type``; UnsupportedModelError listing the supported ones otherwise."""
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise UnsupportedModelError(
        f"no adapter for model_type {model_type!r}; supported: {', '.join(supported_model_types())}"
    )


__all__ = [
    "ADAPTERS",
    "Adapter",
    "AyaVisionAdapter",
    "DeepseekVLAdapter",
    "DeepseekVLHybridAdapter",
    "Gemma3Adapter",
    "Glm4vAdapter",
    "Idefics3Adapter",
    "ImageView",
    "InternVLAdapter",
    "LlavaAdapter",
    "LlavaNextAdapter",
    "LlavaOnevisionAdapter",
    "Mistral3Adapter",
    "Molmo2Adapter",
    "PaliGemmaAdapter",
    "PreparedBatch",
    "Qwen2VLAdapter",
    "SmolVLMAdapter",
    "adapter_for",
    "supported_model_types",
]
