"""Fine-tuning: losses, targets, λ schedule, the training forward, LoRA gradients, resume, export (tiny models)."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch
from localize.finetune.attention import build_training_batch, forward_with_attention
from localize.finetune.command import add_arguments, run
from localize.finetune.losses import attention_loss, kl_attention_loss, lambda_schedule, where_to_look_loss
from localize.finetune.targets import sample_target, target_grid
from localize.finetune.train import (
    TrainConfig,
    add_lora,
    answer_for,
    batch_indices,
    enable_gradient_checkpointing,
    train,
)
from PIL import Image

from localize.data.sample import GroundingSample
from localize.geometry import GridGeometry
from localize.models import VLM
from localize.testing import tiny_llava

HEADS = [(2, 1), (3, 0)]


def _samples() -> list[GroundingSample]:
    rng = np.random.default_rng(0)
    specs = [
        ("the red circle", (10, 10, 60, 50)),
        ("the blue square on the left", (100, 40, 170, 95)),
        ("a dog", (0, 50, 90, 100)),
        ("the big car", (120, 0, 180, 40)),
    ]
    out = []
    for i, (expression, box) in enumerate(specs):
        image = Image.fromarray((rng.random((100, 180, 3)) * 255).astype(np.uint8))
        out.append(
            GroundingSample(str(i), image, expression, box, (180, 100), answer=expression.split()[-1], dataset="t")
        )
    return out


def _config(tmp_path, **kw) -> TrainConfig:
    base = dict(
        model="tiny",
        heads=HEADS,
        out=str(tmp_path),
        steps=6,
        batch_size=2,
        lora_r=4,
        lr=5e-3,
        save_every=0,
        progress=False,
        export=False,
    )
    base.update(kw)
    return TrainConfig(**base)


# -- losses, targets, schedule -------------------------------------------------------------------------------------
def test_identical_map_and_target_give_zero():
    target = torch.rand(2, 5, 7)
    assert where_to_look_loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
    assert where_to_look_loss(3.0 * target, target).item() == pytest.approx(0.0, abs=1e-6)  # scale-invariant
    assert kl_attention_loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_attention_loss(0.2 * target, target).item() == pytest.approx(0.0, abs=1e-6)  # attention renormalized


def test_orthogonal_map_gives_one_and_kl_stays_finite():
    attn, target = torch.zeros(4, 4), torch.zeros(4, 4)
    attn[:2], target[2:] = 1.0, 1.0
    assert where_to_look_loss(attn, target).item() == pytest.approx(1.0, abs=1e-6)
    kl = kl_attention_loss(attn, target)
    assert math.isfinite(kl.item()) and kl.item() > 10  # eps-safe, but large
    half = torch.zeros(4, 4)
    half[2:] = 1.0
    # cells with no target mass do not count: attention covering the target and more costs log(2)
    assert kl_attention_loss(torch.ones(4, 4), half).item() == pytest.approx(math.log(2), abs=1e-5)


def test_combine_modes():
    target = torch.zeros(3, 3)
    target[0, 0] = 1.0
    good, bad = target.clone(), torch.zeros(3, 3)
    bad[2, 2] = 1.0
    maps = torch.stack([good, bad])
    assert attention_loss(maps, target, "where-to-look", "per-head").item() == pytest.approx(0.5, abs=1e-6)
    assert attention_loss(maps, target, "where-to-look", "mean").item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)
    assert attention_loss(maps[:1], target, "kl", "mean").item() == pytest.approx(0.0, abs=1e-6)


def test_target_grid_of_a_mask_on_a_non_square_image(tiny_llava_vlm, noise_image):
    # 180x100 padded to 180x180 (40 px above and below), 6x6 grid of 30 px cells.
    geometry = tiny_llava_vlm.adapter.prepare([noise_image], ["a dog"]).geometries[0]
    assert geometry == GridGeometry(6, 6, (180, 100), 30.0, 30.0, 0.0, -40.0)
    mask = np.zeros((100, 180), dtype=bool)
    mask[:, :90] = True  # left half of the image
    expected = np.zeros((6, 6), dtype=np.float32)
    expected[[1, 4], :3] = 20 / 30  # rows half in the padding
    expected[[2, 3], :3] = 1.0
    np.testing.assert_allclose(target_grid(geometry, mask, normalize=False), expected, atol=1e-6)
    normalized = target_grid(geometry, mask)
    np.testing.assert_allclose(normalized, expected / expected.sum(), atol=1e-6)
    # no mask: the box gives the same grid; smoothing keeps a distribution and spreads it
    sample = GroundingSample("s", noise_image, "a dog", (0, 0, 90, 100), (180, 100))
    np.testing.assert_allclose(sample_target(sample, geometry).numpy(), normalized, atol=1e-6)
    smooth = sample_target(sample, geometry, sigma=1.0)
    assert smooth.sum().item() == pytest.approx(1.0, abs=1e-5) and smooth[2, 3] > 0
    # an object smaller than a cell still gives a target: its centre cell
    tiny = target_grid(geometry, box=(100, 50, 100.5, 50.5))
    assert tiny.sum() == pytest.approx(1.0) and tiny[3, 3] > 0


def test_curriculum_lambda():
    values = [lambda_schedule("curriculum", p, base=2.0) for p in (0, 1 / 3, 1 / 2, 2 / 3, 1)]
    assert values == pytest.approx([2.0, 2.0, 1.0, 0.0, 0.0])
    assert lambda_schedule("constant", 0.9, base=0.5) == 0.5


def test_answers_and_data_order():
    sample = _samples()[0]
    assert answer_for(sample) == "circle"
    sample.answer, sample.meta = None, {"category": "person"}
    assert answer_for(sample) == "person" and answer_for(sample, "expression") == "the red circle"
    assert batch_indices(3, 5, 2, seed=1) == batch_indices(3, 5, 2, seed=1)
    epoch = [i for step in range(5) for i in batch_indices(step, 5, 1, seed=1)]
    assert sorted(epoch) == list(range(5))


# -- the training forward ------------------------------------------------------------------------------------------
def test_training_maps_equal_capture(tiny_vlm, noise_image):
    phrases = ["the red circle", "a dog"]
    reference = tiny_vlm.capture(noise_image, phrases, HEADS, reuse_prefix=False)
    batch = build_training_batch(tiny_vlm.adapter, [noise_image] * 2, phrases, ["circle", "dog"])
    with torch.no_grad():
        ntp, maps = forward_with_attention(tiny_vlm.model, batch, HEADS)
    assert math.isfinite(ntp.item())
    for got, ref in zip(maps, reference):
        torch.testing.assert_close(got, ref.maps, atol=1e-5, rtol=1e-4)
    assert (batch.labels != -100).sum(1).tolist() == [2, 2]  # answer word + EOS
    spans = build_training_batch(tiny_vlm.adapter, [noise_image] * 2, phrases, ["x", "y"], query="expression")
    assert spans.query_mask.sum(1).tolist() == [3, 2]
    assert spans.query_positions[:, 2].tolist() == batch.query_positions[:, 0].tolist()


def test_gradients_reach_only_lora(noise_image):
    vlm = VLM(*tiny_llava())
    model = add_lora(vlm.model, layers=[0, 1, 2, 3], r=4)
    model.train()
    batch = build_training_batch(vlm.adapter, [noise_image] * 2, ["the red circle", "a dog"], ["circle", "dog"])
    target = torch.zeros(6, 6)
    target[2:4, :3] = 1.0
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for step in range(2):  # at first lora_B is zero, so lora_A gets no gradient; after one step both do
        optimizer.zero_grad(set_to_none=True)
        ntp, maps = forward_with_attention(model, batch, HEADS)
        (ntp + sum(attention_loss(m, target) for m in maps)).backward()
        if step == 0:
            optimizer.step()
    for name, p in model.named_parameters():
        assert p.requires_grad == ("lora_" in name), name
        assert (p.grad is not None) == ("lora_" in name), name
        if "lora_" in name:
            assert "language_model" in name and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_lora_vision_adapts_the_vision_side_too(family, noise_image):
    from localize.testing import tiny_qwen2_5_vl

    vlm = VLM(*(tiny_llava() if family == "llava" else tiny_qwen2_5_vl()))
    model = add_lora(vlm.model, layers=[2, 3], r=4, vision_modules=vlm.adapter.vision_modules)
    lora = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n for n in lora)
    vision = [n for n in lora if any(m in n.split(".") for m in vlm.adapter.vision_modules)]
    language = [n for n in lora if "language_model" in n]
    assert vision and language and len(vision) + len(language) == len(lora)
    assert not any(f"layers.{i}." in n for n in language for i in (0, 1))  # LM layers outside ``layers`` untouched
    if family == "llava":  # the projector's linear layers too
        assert any("multi_modal_projector" in n for n in vision)
    with pytest.raises(Exception, match="no linear layer"):
        add_lora(VLM(*tiny_llava()).model, layers=[2], r=4, vision_modules=("no_such_module",))


def test_gradient_checkpointing_gives_the_same_gradients(noise_image):
    grads = []
    for checkpointing in (False, True):
        vlm = VLM(*tiny_llava())
        if checkpointing:
            enable_gradient_checkpointing(vlm.model)
        model = add_lora(vlm.model, layers=[0, 1, 2], r=4, dropout=0.0)
        model.train()
        batch = build_training_batch(vlm.adapter, [noise_image], ["the red circle"], ["circle"])
        _, maps = forward_with_attention(model, batch, HEADS[:1])
        attention_loss(maps[0], torch.eye(6)).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-4)


# -- training runs -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["where-to-look", "kl"])
def test_thirty_steps_lower_the_attention_loss(tmp_path, loss):
    config = _config(
        tmp_path, loss=loss, schedule="constant", steps=30, batch_size=4, lora_r=8, warmup=0, lr_scheduler="constant"
    )
    result = train(config, vlm=tiny_llava(), dataset=_samples())  # 4 samples, batch 4: one fixed batch
    first, last = result.log[0], result.log[-1]
    assert last["att"] <= 0.7 * first["att"], (first, last)
    assert all(math.isfinite(r["ntp"]) for r in result.log)
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == 30 and (tmp_path / "loss_curve.png").stat().st_size > 0


def test_resumed_run_ends_with_the_same_weights(tmp_path):
    from safetensors.torch import load_file

    settings = dict(steps=6, save_every=3, lora_dropout=0.1, warmup=0.3)  # dropout: the RNG state must be restored
    full = train(_config(tmp_path / "full", **settings), vlm=tiny_llava(), dataset=_samples())

    class Interrupt(Exception):
        pass

    def stop(record):
        if record["step"] == 4:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(_config(tmp_path / "cut", **settings), vlm=tiny_llava(), dataset=_samples(), on_step=stop)
    assert [p.name for p in (tmp_path / "cut/checkpoints").iterdir()] == ["step-0000003"]
    resumed = train(_config(tmp_path / "cut", resume=True, **settings), vlm=tiny_llava(), dataset=_samples())
    assert [r["step"] for r in resumed.log] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in resumed.log] == [r["loss"] for r in full.log]
    a = load_file(tmp_path / "full/checkpoints/step-0000006/adapter_model.safetensors")
    b = load_file(tmp_path / "cut/checkpoints/step-0000006/adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key
    with pytest.raises(Exception, match="other settings"):
        train(_config(tmp_path / "cut", resume=True, **{**settings, "lr": 1e-3}), vlm=tiny_llava(), dataset=_samples())


def test_cli_run_exports_a_model_that_loads(tmp_path):
    from localize.heads import load_heads

    import localize
    from localize.data.shapes import VOCABULARY, ShapesDataset

    model, processor = tiny_llava(words=VOCABULARY)
    model.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--model", str(tmp_path / "base"), "--heads", "L2 H1,L3 H0", "--data", "shapes", "--limit", "4"]
    argv += ["--steps", "3", "--batch-size", "2", "--lr", "1e-2", "--save-every", "2", "--out", str(tmp_path / "run")]
    assert run(parser.parse_args([*argv, "--no-progress"])) == 0
    out = tmp_path / "run"
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and log[-1]["lambda"] == 0.0  # curriculum: last third is NTP only
    assert (out / "loss_curve.png").is_file() and (out / "adapter/adapter_config.json").is_file()

    vlm = localize.load_model(str(out / "merged"))
    heads = load_heads(out / "merged/heads.json").heads
    assert heads == HEADS
    sample = ShapesDataset(split="val", size=1)[0]
    maps = vlm.capture(sample.image, [sample.expression], heads)
    assert maps[0].maps.shape == (2, 6, 6) and torch.isfinite(maps[0].maps).all()
    merged = dict(vlm.model.named_parameters())
    name = "model.language_model.layers.2.self_attn.q_proj.weight"
    assert not torch.equal(merged[name], dict(model.named_parameters())[name])  # LoRA was merged in
    name = "model.language_model.layers.3.mlp.down_proj.weight"
    assert not torch.equal(merged[name], dict(model.named_parameters())[name])
    from localize.cli import main as localize_main  # `--model OUT` of a fine-tuning run loads OUT/merged

    image = tmp_path / "scene.png"
    sample.image.save(image)
    assert localize_main(["ground", str(image), sample.expression, "--model", str(out), "--device", "cpu"]) == 0
    assert localize.load(str(out)).heads == tuple(HEADS)


def test_shapes_training_data_is_fresh_for_every_drawn_sample(tmp_path):
    from localize.finetune.train import open_training_data

    assert len(open_training_data(_config(tmp_path, data="shapes", steps=400, batch_size=4), world=2)) == 3200
    assert len(open_training_data(_config(tmp_path, data="shapes", steps=10, batch_size=4))) == 1000
    assert len(open_training_data(_config(tmp_path, data="shapes", steps=400, batch_size=4, limit=64))) == 64
