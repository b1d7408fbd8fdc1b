"""Shared fixtures: tiny random-weight models of each supported family, built offline once per session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

FIXTURE_DIR = Path(__file__).resolve().parent / "data" / "refcoco-fixture"  # copied in: the suite needs nothing outside


@pytest.fixture(scope="session")
def tiny_llava_vlm():
    """A tiny LLaVA (GQA: 4 query heads, 2 KV heads) wrapped in a VLM handle."""
    from localize.models import VLM
    from localize.testing import tiny_llava

    return VLM(*tiny_llava())


@pytest.fixture(scope="session")
def tiny_qwen_vlm():
    """A tiny Qwen2.5-VL (GQA) wrapped in a VLM handle."""
    from localize.models import VLM
    from localize.testing import tiny_qwen2_5_vl

    return VLM(*tiny_qwen2_5_vl())


@pytest.fixture(scope="session")
def tiny_qwen2_vlm():
    """A tiny Qwen2-VL (GQA, full-attention vision tower) wrapped in a VLM handle."""
    from localize.models import VLM
    from localize.testing import tiny_qwen2_vl

    return VLM(*tiny_qwen2_vl())


@pytest.fixture(scope="session")
def tiny_qwen3_vlm():
    """A tiny Qwen3-VL (GQA, deepstack, 16-px patches) wrapped in a VLM handle."""
    from localize.models import VLM
    from localize.testing import tiny_qwen3_vl

    return VLM(*tiny_qwen3_vl())


@pytest.fixture(scope="session")
def tiny_glm4v_vlm():
    """A tiny GLM-4.1V (GQA, partial rotary M-RoPE) wrapped in a VLM handle."""
    from localize.models import VLM
    from localize.testing import tiny_glm4v

    return VLM(*tiny_glm4v())


@pytest.fixture(scope="session")
def tiny_deepseek_vlm():
    """A tiny DeepSeek-VL (SigLIP + Llama, GQA) wrapped in a VLM handle."""
    from localize.models import VLM
    from localize.testing import tiny_deepseek_vl

    return VLM(*tiny_deepseek_vl())


@pytest.fixture(scope="session")
def tiny_deepseek_hybrid_vlm():
    """A tiny DeepSeek-VL hybrid (SigLIP + SAM high-res branch on the same canvas + Llama) in a VLM handle."""
    from localize.models import VLM
    from localize.testing import tiny_deepseek_vl_hybrid

    return VLM(*tiny_deepseek_vl_hybrid())


@pytest.fixture(scope="session")
def tiny_mistral3_vlm():
    """A tiny Mistral 3 (Pixtral + 2x2 merger + Mistral LM, GQA) wrapped in a VLM handle."""
    from localize.models import VLM
    from localize.testing import tiny_mistral3

    return VLM(*tiny_mistral3())


@pytest.fixture(scope="session")
def tiny_paligemma_vlm():
    """A tiny PaliGemma v1 (SigLIP + Gemma, multi-query attention, a prefix-LM) wrapped in a VLM handle."""
    from localize.models import VLM
    from localize.testing import tiny_paligemma

    return VLM(*tiny_paligemma())


@pytest.fixture(scope="session")
def tiny_gemma3_vlm():
    """A tiny Gemma 3 (sliding window 8 below a global layer, bidirectional image block) wrapped in a VLM handle."""
    from localize.models import VLM
    from localize.testing import tiny_gemma3

    return VLM(*tiny_gemma3())


@pytest.fixture(scope="session")
def tiny_paligemma2_vlm():
    """A tiny PaliGemma 2 (Gemma 2: logit softcap 50, sliding-window layers) wrapped in a VLM handle."""
    from localize.models import VLM
    from localize.testing import tiny_paligemma

    return VLM(*tiny_paligemma(version=2))


@pytest.fixture(scope="session")
def tiny_llava_next_vlm():
    """A tiny LLaVA-NeXT (48-px tiles of 6x6 patches, LLaVA-1.6's pinpoints in tiles) wrapped in a VLM handle."""
    from localize.models import VLM
    from localize.testing import tiny_llava_next

    return VLM(*tiny_llava_next())


@pytest.fixture(scope="session")
def tiny_llava_onevision_vlm():
    """A tiny LLaVA-OneVision (SigLIP, 48-px tiles, 1-6 tiles a side, downsampled past 9 tiles) in a VLM handle."""
    from localize.models import VLM
    from localize.testing import tiny_llava_onevision

    return VLM(*tiny_llava_onevision())


@pytest.fixture(scope="session")
def tiny_internvl_vlm():
    """A tiny InternVL (96-px tiles of 6x6 tokens after pixel shuffle, up to 6 tiles + thumbnail) in a VLM handle."""
    from localize.models import VLM
    from localize.testing import tiny_internvl

    return VLM(*tiny_internvl())


@pytest.fixture(scope="session")
def tiny_idefics3_vlm():
    """A tiny Idefics3 (96-px tiles of 6x6 tokens after the 2x pixel shuffle, longest edge 4 tiles) in a VLM handle."""
    from localize.models import VLM
    from localize.testing import tiny_idefics3

    return VLM(*tiny_idefics3())


@pytest.fixture(scope="session")
def tiny_smolvlm_vlm():
    """A tiny SmolVLM (Idefics3's layout, SmolVLM's processor and model classes) in a VLM handle."""
    from localize.models import VLM
    from localize.testing import tiny_idefics3

    return VLM(*tiny_idefics3(smolvlm=True))


@pytest.fixture(scope="session")
def tiny_aya_vision_vlm():
    """A tiny Aya Vision (InternVL-style 96-px tiles with TILE markers, Cohere2 LM with 64-token sliding windows)."""
    from localize.models import VLM
    from localize.testing import tiny_aya_vision

    return VLM(*tiny_aya_vision())


@pytest.fixture(scope="session")
def tiny_molmo2_vlm():
    """A tiny Molmo2 (64-px crops overlapping by one 8-px patch, up to 6, pooled 2x2; low-res view) in a VLM handle."""
    from localize.models import VLM
    from localize.testing import tiny_molmo2

    return VLM(*tiny_molmo2())


FAMILY_FIXTURES = {
    "llava": "tiny_llava_vlm",
    "llava_next": "tiny_llava_next_vlm",
    "llava_onevision": "tiny_llava_onevision_vlm",
    "qwen2_vl": "tiny_qwen2_vlm",
    "qwen2_5_vl": "tiny_qwen_vlm",
    "qwen3_vl": "tiny_qwen3_vlm",
    "glm4v": "tiny_glm4v_vlm",
    "internvl": "tiny_internvl_vlm",
    "aya_vision": "tiny_aya_vision_vlm",
    "molmo2": "tiny_molmo2_vlm",
    "idefics3": "tiny_idefics3_vlm",
    "smolvlm": "tiny_smolvlm_vlm",
    "deepseek_vl": "tiny_deepseek_vlm",
    "deepseek_vl_hybrid": "tiny_deepseek_hybrid_vlm",
    "mistral3": "tiny_mistral3_vlm",
    "paligemma": "tiny_paligemma_vlm",
    "paligemma2": "tiny_paligemma2_vlm",
    "gemma3": "tiny_gemma3_vlm",
}


@pytest.fixture(params=list(FAMILY_FIXTURES))
def tiny_vlm(request):
    """Each supported family in turn (the conformance suite: tests/test_capture.py, tests/test_geometry.py)."""
    return request.getfixturevalue(FAMILY_FIXTURES[request.param])


@pytest.fixture
def noise_image():
    """A non-square (180x100) random RGB image."""
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((100, 180, 3)) * 255).astype(np.uint8))
