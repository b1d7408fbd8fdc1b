"""Random-weight models of the supported architectures, built offline from configs: one module per family, as
``localize/adapters/``.

Used by the tests, the benchmarks and the shapes-world model. Nothing here downloads: tokenizers are word-level
and built programmatically, image processors are constructed from their settings.
"""

from .deepseek_vl import tiny_deepseek_vl, tiny_deepseek_vl_hybrid
from .gemma3 import tiny_gemma3
from .glm4v import tiny_glm4v
from .idefics3 import tiny_idefics3
from .internvl import tiny_aya_vision, tiny_internvl
from .llava import tiny_llava
from .llava_next import tiny_llava_next, tiny_llava_onevision
from .mistral3 import tiny_mistral3
from .molmo2 import tiny_molmo2
from .paligemma import tiny_paligemma
from .qwen2_vl import tiny_qwen2_5_vl, tiny_qwen2_vl, tiny_qwen3_vl
from .tokenizers import DEFAULT_WORDS, LLAVA_SPECIALS, QWEN_SPECIALS, normalize_words, word_tokenizer

__all__ = [
    "DEFAULT_WORDS",
    "LLAVA_SPECIALS",
    "QWEN_SPECIALS",
    "tiny_aya_vision",
    "tiny_deepseek_vl",
    "tiny_deepseek_vl_hybrid",
    "tiny_gemma3",
    "tiny_glm4v",
    "tiny_idefics3",
    "tiny_internvl",
    "tiny_llava",
    "tiny_llava_next",
    "tiny_llava_onevision",
    "tiny_mistral3",
    "tiny_molmo2",
    "tiny_paligemma",
    "tiny_qwen2_5_vl",
    "tiny_qwen2_vl",
    "tiny_qwen3_vl",
    "normalize_words",
    "word_tokenizer",
]
