"""Model loading: aliases, local directories, in-memory pairs, and the errors a user can act on."""

from __future__ import annotations

import json

import pytest

from localize.cli import main
from localize.errors import UnknownModelError, UnsupportedModelError
from localize.models import ALIASES, VLM, load_model, resolve_spec
from localize.testing import tiny_llava, tiny_qwen2_5_vl


def test_aliases_resolve():
    assert resolve_spec("llava-1.5-7b") == "llava-hf/llava-1.5-7b-hf"
    assert resolve_spec("qwen2.5-vl-3b") == ALIASES["qwen2.5-vl-3b"]
    assert resolve_spec("someone/some-model") == "someone/some-model"


def test_unknown_alias_suggests_near_names():
    with pytest.raises(UnknownModelError, match="llava-1.5-7b"):
        resolve_spec("llava-1.5-7")


def test_offline_hub_says_how_to_pass_a_directory(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnknownModelError, match="local-dir"):
        load_model("llava-hf/llava-1.5-7b-hf")


def test_unsupported_model_type_lists_supported(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(
        LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    ).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="llava"):
        load_model(str(tmp_path))


@pytest.mark.parametrize("factory", [tiny_llava, tiny_qwen2_5_vl])
def test_local_directory_round_trip(tmp_path, factory, noise_image):
    model, processor = factory()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), dtype="float32", device="cpu")
    assert isinstance(loaded, VLM) and loaded.model_type == model.config.model_type
    in_memory = load_model((model, processor))
    a = loaded.capture(noise_image, ["the red circle"])[0].maps
    b = in_memory.capture(noise_image, ["the red circle"])[0].maps
    if model.config.model_type == "llava":
        assert loaded.processor.image_processor.do_pad  # LLaVA-1.5's pad-to-square
    assert a.shape == b.shape
    assert (a - b).abs().max() < 1e-5
    assert loaded.info()["num_layers"] == model.config.text_config.num_hidden_layers


def test_llava_loads_with_the_official_pad_to_square(tmp_path, noise_image):
    """The adapter loads its family: a ``llava-hf`` processor that centre-crops is rebuilt to pad to square (LLaVA-1.5's
    ``expand2square``), unless the user keeps the hub's preprocessing."""
    model, processor = tiny_llava(pad_to_square=False)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    official = load_model(str(tmp_path), device="cpu")
    as_shipped = load_model(str(tmp_path), device="cpu", official_preprocessing=False)
    assert official.processor.image_processor.do_pad and not as_shipped.processor.image_processor.do_pad
    padded = official.capture(noise_image, ["the dog"])[0].geometry
    cropped = as_shipped.capture(noise_image, ["the dog"])[0].geometry
    assert padded.y_offset < 0 and cropped.x_offset > 0  # 180 x 100: pad above and below vs cut the sides


def test_cli_version_and_models(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert "localize" in capsys.readouterr().out
    assert main(["models", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["aliases"]["llava-1.5-7b"] == "llava-hf/llava-1.5-7b-hf"
    assert {"llava", "qwen2_5_vl", "qwen2_vl"} <= {t for f in listing["families"] for t in f["model_types"]}
