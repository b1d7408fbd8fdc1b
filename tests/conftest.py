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


@pytest.fixture(params=["llava", "qwen2_5_vl"])
def tiny_vlm(request, tiny_llava_vlm, tiny_qwen_vlm):
    """Each supported family in turn."""
    return {"llava": tiny_llava_vlm, "qwen2_5_vl": tiny_qwen_vlm}[request.param]


@pytest.fixture
def noise_image():
    """A non-square (180x100) random RGB image."""
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((100, 180, 3)) * 255).astype(np.uint8))
