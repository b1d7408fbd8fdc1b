"""End to end through each newer family's tiny model saved to disk: discover, ground, bench and two fine-tuning
steps run unchanged through its adapter (the conformance suite proper is tests/test_capture.py and
tests/test_geometry.py, parametrized over every family)."""

from __future__ import annotations

import json

import pytest

from localize.cli import main
from localize.data.shapes import VOCABULARY, ShapesDataset
from localize.headsfile import load_heads

FAMILIES = {  # conftest.FAMILY_FIXTURES' families: builder and its options
    "llava": ("tiny_llava", {}),
    "llava_next": ("tiny_llava_next", {}),
    "llava_onevision": ("tiny_llava_onevision", {}),
    "qwen2_vl": ("tiny_qwen2_vl", {}),
    "qwen2_5_vl": ("tiny_qwen2_5_vl", {}),
    "qwen3_vl": ("tiny_qwen3_vl", {}),
    "glm4v": ("tiny_glm4v", {}),
    "internvl": ("tiny_internvl", {}),
    "aya_vision": ("tiny_aya_vision", {}),
    "molmo2": ("tiny_molmo2", {}),
    "idefics3": ("tiny_idefics3", {}),
    "smolvlm": ("tiny_idefics3", {"smolvlm": True}),
    "deepseek_vl": ("tiny_deepseek_vl", {}),
    "deepseek_vl_hybrid": ("tiny_deepseek_vl_hybrid", {}),
    "mistral3": ("tiny_mistral3", {}),
    "paligemma": ("tiny_paligemma", {}),
    "paligemma2": ("tiny_paligemma", {"version": 2}),
    "gemma3": ("tiny_gemma3", {}),
}


def test_every_conformance_family_runs_end_to_end():
    from conftest import FAMILY_FIXTURES

    assert set(FAMILIES) == set(FAMILY_FIXTURES)


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_discover_ground_bench_finetune(family, tmp_path, capsys):
    import localize.testing

    builder, options = FAMILIES[family]
    model, processor = getattr(localize.testing, builder)(words=VOCABULARY, **options)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    heads = tmp_path / "heads.json"
    common = ["--device", "cpu", "--no-progress"]
    argv = ["discover", "--model", str(folder), "--data", "shapes", "--split", "val", "--samples", "4"]
    assert main([*argv, "--per-sample", "2", "--out", str(heads), *common]) == 0
    found = load_heads(heads)
    assert 1 <= len(found.heads) <= 3 and found.model_type == model.config.model_type and found.n_samples == 4

    sample = ShapesDataset(split="val", size=1)[0]
    image = tmp_path / "scene.png"
    sample.image.save(image)
    out = tmp_path / "ground.json"
    argv = ["ground", str(image), sample.expression, "--model", str(folder), "--heads", str(heads)]
    assert main([*argv, "--out", str(out), "--device", "cpu"]) == 0
    box = json.loads(out.read_text())["results"][0]["box"]
    assert 0 <= box[0] < box[2] <= sample.image_size[0] and 0 <= box[1] < box[3] <= sample.image_size[1]

    argv = ["bench", "--model", str(folder), "--heads", str(heads), "--data", "shapes", "--splits", "test"]
    assert main([*argv, "--limit", "3", "--gallery", "0", "--out", str(tmp_path / "bench"), *common]) == 0
    assert json.loads((tmp_path / "bench" / "summary.json").read_text())["total"]["n"] == 3

    argv = ["finetune", "--model", str(folder), "--heads", str(heads), "--data", "shapes", "--limit", "4"]
    assert main([*argv, "--steps", "2", "--batch-size", "2", "--out", str(tmp_path / "ft"), "--no-progress"]) == 0
    capsys.readouterr()
    assert (tmp_path / "ft" / "merged" / "heads.json").is_file()
