"""The KLAL trainer (benchmarks/shapes_tiny/train.py): its loss, its query positions, a short run and export."""

from __future__ import annotations

import json

import torch
from localize.benchmarks.shapes_tiny import train


def _rows(cells: int = 4, keys: int = 8):
    targets = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    return [(torch.tensor([keys - 1]), torch.arange(1, 1 + cells), targets)]


def _attention(image_rows: torch.Tensor, keys: int = 8) -> torch.Tensor:
    """[1, H, T, T] attentions whose last query row puts ``image_rows[h]`` on keys 1-4 and the rest on key 0."""
    heads = image_rows.shape[0]
    attention = torch.zeros(1, heads, keys, keys)
    attention[0, :, keys - 1, 1:5] = image_rows
    attention[0, :, keys - 1, 0] = 1 - image_rows.sum(-1)
    return attention


def test_klal_loss_is_zero_at_the_target_and_penalises_the_sink():
    on_target = _attention(torch.tensor([[0.475, 0.475, 0.0, 0.0]]))  # rest_mass 0.05 on the sink
    loss, mass = train.klal_loss([on_target], _rows(), (0,), rest_mass=0.05)
    assert abs(loss.item()) < 1e-5 and abs(mass - 0.95) < 1e-6
    # The same shape over the image, but most mass on the sink: renormalising would score it 0, this does not.
    on_sink = _attention(torch.tensor([[0.1, 0.1, 0.0, 0.0]]))
    assert train.klal_loss([on_sink], _rows(), (0,), rest_mass=0.05)[0].item() > 1.0
    floor = _attention(torch.tensor([[0.4, 0.4, 0.075, 0.075]]))
    assert train.klal_loss([floor], _rows(), (0,), rest_mass=0.05)[0].item() > 0.1  # mass on other cells costs


def test_head_average_versus_per_head():
    # Two heads, each on one half of the target: their average is the target, neither head is.
    split = _attention(torch.tensor([[0.95, 0.0, 0.0, 0.0], [0.0, 0.95, 0.0, 0.0]]))
    averaged = train.klal_loss([split], _rows(), (0,), rest_mass=0.05)[0].item()
    per_head = train.klal_loss([split], _rows(), (0,), rest_mass=0.05, per_head=True)[0].item()
    assert averaged < 1e-5 < 0.5 < per_head


def test_batch_queries_sit_on_each_expressions_last_token(tmp_path):
    from localize.models import VLM

    cfg = train.KlalTrainConfig(out=str(tmp_path), batch_size=4, pack=2, hidden=32, vision_hidden=32)
    model, processor = train.build_model(cfg.model_config())
    vlm = VLM(model, processor)
    drawn = train.scene_batch(0, cfg)
    inputs, labels, rows = train.make_batch(vlm, drawn, cfg)
    tokens = processor.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0].tolist())
    (queries, image_positions, targets), (_, chosen) = rows[0], drawn[0]
    assert len(image_positions) == 256 and targets.shape == (len(chosen), 256)
    assert torch.allclose(targets.sum(-1), torch.ones(len(chosen)))
    for q, expression in zip(queries.tolist(), chosen):
        assert tokens[q] == expression.text.split()[-1] and labels[0, q] == -100 and labels[0, q + 1] != -100
        assert tokens[q + 1].startswith("x")
    varied = train.KlalTrainConfig(out=str(tmp_path), batch_size=4, pack=2, varied=1.0)
    drawn = train.scene_batch(0, varied)
    assert any(scene.image.size[0] != scene.image.size[1] for scene, _ in drawn)  # padded to square by the processor
    _, _, rows = train.make_batch(vlm, drawn, varied)
    for (_, _, targets), (_, chosen) in zip(rows, drawn):
        assert torch.allclose(targets.sum(-1), torch.ones(len(chosen)))


def test_a_short_run_trains_resumes_and_exports(tmp_path):
    cfg = dict(out=str(tmp_path / "run"), steps=2, batch_size=4, pack=2, hidden=32, vision_hidden=32, save_every=1)
    model_dir = train.train(train.KlalTrainConfig(**cfg))
    assert (model_dir / "model.safetensors").exists()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(r["kl"] > 0 for r in log)
    train.train(train.KlalTrainConfig(**cfg))  # resumes at the end: no new steps
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 2
    exported = train.export(tmp_path / "run" / "checkpoint", tmp_path / "exported")
    assert (exported / "config.json").exists()
