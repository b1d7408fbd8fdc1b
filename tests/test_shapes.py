"""The shapes world: every expression picks exactly one object; deterministic; disjoint splits; boxes = masks."""

from __future__ import annotations

import numpy as np
import pytest

from localize.data import shapes
from localize.data.sample import GroundingSample

KEYS = {"leftmost": (0, 1), "rightmost": (0, -1), "topmost": (1, 1), "bottommost": (1, -1)}


def _tiny_config(**options):
    """A tiny ``ShapesTrainConfig`` (64-pixel images, 8 x 8 patches, 2 packed expressions), ``options`` overriding."""
    from localize.benchmarks.shapes_tiny.config import ShapesTrainConfig

    base = dict(
        batch_size=2, steps=10, image_size=64, patch_size=8, vision_hidden=16, vision_layers=1, hidden=16,
        layers=2, heads=2, seed=0, pack=2,
    )  # fmt: skip
    return ShapesTrainConfig(**{**base, **options})


def _matches(obj: shapes.ShapeObject, words: list[str]) -> bool:
    """An independent reading of a noun group: [color] (shape | object)."""
    *color, noun = words
    return (not color or obj.color == color[0]) and (noun == "object" or obj.shape == noun)


def _referents(scene: shapes.Scene, text: str) -> list[int]:
    """Objects the expression describes, read independently of the grammar's generator."""
    objs = scene.objects
    margin = scene.image_size / 16.0
    words = text.split()[1:]  # drop "the"
    for rel in shapes.RELATIONS:
        token = f" {rel} the "
        if token in f" {' '.join(words)} ":
            head, anchor = " ".join(words).split(f" {rel} the ")
            anchors = [k for k, o in enumerate(objs) if _matches(o, anchor.split())]
            assert len(anchors) == 1, text
            k = anchors[0]
            return [
                i
                for i, o in enumerate(objs)
                if i != k and _matches(o, head.split()) and shapes._relation_holds(rel, o, objs[k], margin)
            ]
    if words[0] in KEYS or words[0] in ("biggest", "smallest"):
        group = [i for i, o in enumerate(objs) if _matches(o, words[1:])]
        if words[0] in KEYS:
            axis, sign = KEYS[words[0]]
            values = sorted((sign * objs[i].center[axis], i) for i in group)
            return [values[0][1]] if values[1][0] - values[0][0] >= margin else []
        sign = -1 if words[0] == "biggest" else 1
        values = sorted((sign * objs[i].size_class, i) for i in group)
        return [values[0][1]] if values[0][0] < values[1][0] else []
    return [i for i, o in enumerate(objs) if _matches(o, words)]


@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_every_expression_picks_exactly_its_target(difficulty):
    kinds = set()
    for seed in range(40):
        scene, expressions = shapes.sample_scene(seed, difficulty, 128)
        assert expressions
        for expression in expressions:
            assert _referents(scene, expression.text) == [expression.target], expression.text
            kinds.add(expression.kind)
    expected = {1: {"attribute"}, 2: {"attribute", "superlative"}, 3: {"attribute", "superlative", "relation"}}
    assert kinds == expected[difficulty]


def test_samples_are_deterministic_and_consistent():
    data = shapes.ShapesDataset("val", size=12, difficulty=3)
    for index in (0, 5, 11):
        a, b = data[index], data[index]
        assert isinstance(a, GroundingSample) and a.sample_id == b.sample_id and a.expression == b.expression
        np.testing.assert_array_equal(np.asarray(a.image), np.asarray(b.image))
        mask = a.mask()
        ys, xs = np.nonzero(mask)
        assert a.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert a.answer.split()[-1] in shapes.SHAPES and set(a.answer.split()) <= set(shapes.VOCABULARY)
        assert set(a.expression.split()) <= set(shapes.VOCABULARY)


def test_splits_are_disjoint_seed_ranges():
    seeds = {split: {shapes.scene_seed(split, i) for i in range(100)} for split in ("train", "val", "test")}
    assert not (seeds["train"] & seeds["val"]) and not (seeds["val"] & seeds["test"])
    assert shapes.ShapesDataset("train", size=3)[0].sample_id != shapes.ShapesDataset("test", size=3)[0].sample_id
    with pytest.raises(ValueError):
        shapes.ShapesDataset("dev")


@pytest.mark.parametrize("pack", [1, 3])
def test_training_labels_are_the_answers_after_each_expression(pack):
    from localize.benchmarks.shapes_tiny.batches import make_batch
    from localize.benchmarks.shapes_tiny.model import build_model

    config = _tiny_config(batch_size=6, pack=pack)
    _, processor = build_model(config)
    inputs, labels, _ = make_batch(processor, 3, config)
    tokenizer = processor.tokenizer
    for row, lab in zip(inputs["input_ids"], labels):
        text = tokenizer.decode(row[row != tokenizer.pad_token_id][1:]).replace("<image>", "").split()
        pairs = " ".join(text).split(" </s>")[:-1]
        assert len(pairs) == pack
        expected = []
        for pair in pairs:
            words = pair.split()
            start = next(i for i, w in enumerate(words) if w.startswith("x") and w[1:].isdigit())
            expected += words[start:] + ["</s>"]
            assert len(words[start:]) == 5  # x y size color shape
        assert tokenizer.decode(lab[lab != -100]).split() == expected


def test_finer_position_bins_of_the_world():
    scene, _ = shapes.sample_scene(shapes.scene_seed("val", 3), 3, 128)
    obj = scene.objects[0]
    coarse, fine = shapes.answer_for(obj, 128).split(), shapes.answer_for(obj, 128, position_bins=16).split()
    assert int(fine[0][1:]) // 2 == int(coarse[0][1:]) and fine[2:] == coarse[2:]
    assert {"x15", "y15"} <= set(shapes.vocabulary(16)) and "x8" not in shapes.VOCABULARY


def test_shaded_world_hides_each_objects_shade_in_a_noisy_texture():
    """``shaded``: the same objects as the plain scene; each object's brightness, relative to the plain scene, varies
    from cell to cell but averages to its shade level over the object, and the answer names the shade first."""
    for seed in range(6):
        plain = shapes.render_scene(seed, 3, 128)
        shaded = shapes.render_scene(seed, 3, 128, shaded=True)
        assert [(o.shape, o.color, o.box) for o in plain.objects] == [(o.shape, o.color, o.box) for o in shaded.objects]
        ratio = np.asarray(shaded.image, dtype=float).sum(2) / np.maximum(
            np.asarray(plain.image, dtype=float).sum(2), 1
        )
        for obj in shaded.objects:
            level = shapes.SHADE_LEVELS[obj.shade]
            assert abs(ratio[obj.mask].mean() - level) < 0.05  # up to clipping and 8-bit rounding
            cells = obj.mask.reshape(16, 8, 16, 8).all(axis=(1, 3))
            per_cell = ratio.reshape(16, 8, 16, 8).mean(axis=(1, 3))[cells]
            assert per_cell.std() > 0.1  # one cell does not tell the shade
            answer = shapes.answer_for(obj, 128).split()
            assert (
                answer[0] == shapes.SHADE_WORDS[obj.shade]
                and answer[1:] == shapes.answer_for(plain.objects[shaded.objects.index(obj)], 128).split()
            )
        assert all(o.shade is None for o in plain.objects)
    sample = shapes.ShapesDataset("test", size=2, shaded=True)[1]
    assert sample.answer.split()[0] in shapes.SHADE_WORDS
    assert set(sample.answer.split()) <= set(shapes.vocabulary(shaded=True)) and "dim" not in shapes.VOCABULARY


def test_cluttered_world_adds_little_objects_and_asks_only_about_big_ones():
    """``clutter``: the plain scene's objects, then little ones in the free space; expressions single out their
    target among all of them; the dataset asks only about RefCOCO-sized targets."""
    little_targets = 0
    for seed in range(20):
        plain = shapes.render_scene(seed, 3, 128)
        scene = shapes.render_scene(seed, 3, 128, clutter=8)
        n = len(plain.objects)
        assert [(o.shape, o.color, o.box) for o in scene.objects[:n]] == [
            (o.shape, o.color, o.box) for o in plain.objects
        ]
        little = scene.objects[n:]
        assert little and all(o.size_class == -1 and o.size_word == shapes.CLUTTER_WORD for o in little)
        lo, hi = (f * 128 for f in shapes.CLUTTER_FRACTIONS)
        assert all(lo - 1 <= max(o.box[2] - o.box[0], o.box[3] - o.box[1]) <= hi + 1 for o in little)
        assert np.sum([o.mask for o in scene.objects], axis=0).max() == 1  # none overlap
        for expression in shapes.scene_expressions(scene):
            assert _referents(scene, expression.text) == [expression.target], expression.text
            little_targets += scene.objects[expression.target].size_class < 0
    assert little_targets > 0
    data = shapes.ShapesDataset("test", size=20, clutter=8)
    for sample in data:
        assert sample.meta["objects"][sample.meta["target"]]["size"] != shapes.CLUTTER_WORD
        assert len(sample.meta["objects"]) > 4
    assert shapes.CLUTTER_WORD not in shapes.VOCABULARY


# Measured with the trainer before its distillation (commit 9bd1df8, ``--threads 1``): the shipped recipe's path
# (packed, then continued from ``--init``) and the unpacked one give these losses step by step.
BEFORE_DISTILLING = {
    "packed": [3.8341, 3.8304, 3.8031],
    "continued": [3.7698, 3.8003, 3.7831],
    "unpacked": [3.8362, 3.8221],
}
TINY_RUN = [
    "--batch-size", "4", "--pack", "2", "--image-size", "64", "--vision-hidden", "16", "--hidden", "16",
    "--layers", "2", "--heads", "2", "--threads", "1", "--save-every", "2", "--eval-every", "2", "--no-progress",
]  # fmt: skip


def _losses(out) -> list[float]:
    from localize.runs import read_jsonl

    return [row["loss"] for row in read_jsonl(out / "log.jsonl")]


def test_training_run_gives_the_same_losses_and_resumes(tmp_path, capsys):
    """A few steps of a tiny run give the losses the trainer gave before its distillation; a rerun resumes, other
    settings are refused, and the model is saved with ``save_pretrained``."""
    from localize.benchmarks.shapes_tiny import train_base

    packed, continued, unpacked = tmp_path / "packed", tmp_path / "continued", tmp_path / "unpacked"
    assert train_base.main(["--out", str(packed), "--steps", "3", *TINY_RUN]) == 0
    assert _losses(packed) == BEFORE_DISTILLING["packed"]
    init = ["--init", str(packed / "checkpoint"), "--lr", "5e-4"]
    assert train_base.main(["--out", str(continued), "--steps", "3", *TINY_RUN, *init]) == 0
    assert _losses(continued) == BEFORE_DISTILLING["continued"]
    unpacked_run = [*TINY_RUN[:3], "1", *TINY_RUN[4:]]
    assert train_base.main(["--out", str(unpacked), "--steps", "2", *unpacked_run]) == 0
    assert _losses(unpacked) == BEFORE_DISTILLING["unpacked"]
    assert (packed / "model" / "config.json").is_file() and (packed / "model" / "tokenizer.json").exists()

    assert train_base.main(["--out", str(packed), "--steps", "3", *TINY_RUN, "--threads", "2"]) == 0
    assert "resumed at step 3" in capsys.readouterr().out
    assert len(_losses(packed)) == 3  # nothing more to train
    with pytest.raises(SystemExit, match=r"other settings \(lr: 0.001 there vs 0.002 now\)"):
        train_base.main(["--out", str(packed), "--steps", "3", *TINY_RUN, "--lr", "2e-3"])
    rows = [line for line in (packed / "log.jsonl").read_text().splitlines()]
    assert "answer_exact" in rows[1] and "answer_exact" in rows[2] and "answer_exact" not in rows[0]


def test_checkpoints_from_before_the_distillation_resume_when_their_trial_options_were_off(tmp_path):
    """A checkpoint whose state records the retired trial options resumes when they were off, and is refused when
    one was on (that run needs commit d0015a8)."""
    import json

    from localize.benchmarks.shapes_tiny import train_base
    from localize.benchmarks.shapes_tiny.config import RETIRED

    out = tmp_path / "run"
    assert train_base.main(["--out", str(out), "--steps", "2", *TINY_RUN]) == 0
    state_file = out / "checkpoint" / "state.json"
    state = json.loads(state_file.read_text())
    state["args"] = {**state["args"], **RETIRED, "out": "elsewhere", "threads": 4}
    del state["args"]["head_dim"]  # from before --head-dim existed
    state_file.write_text(json.dumps(state))
    assert train_base.main(["--out", str(out), "--steps", "2", *TINY_RUN]) == 0
    state["args"]["shaded"] = True
    state_file.write_text(json.dumps(state))
    with pytest.raises(SystemExit, match="shaded: True there vs None now"):
        train_base.main(["--out", str(out), "--steps", "2", *TINY_RUN])


def test_config_command_line_covers_every_field():
    from localize.benchmarks.shapes_tiny.config import ShapesTrainConfig, parse

    config = parse(["--out", "o", "--head-dim", "8", "--init", "x", "--vision-lr", "1.5e-4", "--no-progress"])
    assert config == ShapesTrainConfig(out="o", head_dim=8, init="x", vision_lr=1.5e-4, no_progress=True)
    assert parse(["--out", "o"]) == ShapesTrainConfig(out="o")
    assert set(config.settings()) == set(vars(config)) - {"out", "threads", "no_progress"}
    assert ShapesTrainConfig.from_settings({**config.settings(), "clutter": 0}) == ShapesTrainConfig(
        head_dim=8, init="x", vision_lr=1.5e-4
    )


def test_probe_reports_baselines_oracle_and_object_choice_by_kind():
    """``shapes_probe`` on a tiny untrained model: the oracle recovers the targets, and the best head's object choice
    is broken down by expression kind over every scene with more than one object."""
    from localize.benchmarks.shapes_tiny import probe as shapes_probe
    from localize.benchmarks.shapes_tiny.model import build_model

    from localize.models import VLM

    model, processor = build_model(_tiny_config(batch_size=4, image_size=128))
    result = shapes_probe.probe(VLM(model.eval(), processor, spec="tiny"), 0, 24, heads_spec="L1 H0,L1 H1")
    assert result["acc@0.5"]["oracle"] >= 0.8 and result["acc@0.5"]["whole_image"] == 0.0
    by_kind = result["best_object_choice_by_kind"]
    test = shapes.ShapesDataset("test", size=24)
    assert sum(k["n"] for k in by_kind.values()) == sum(len(s.meta["objects"]) > 1 for s in test)
    assert set(by_kind) <= {"attribute", "colour", "superlative", "relation"}
    assert all(0.0 <= k["object_choice"] <= 1.0 and 0.25 <= k["chance"] <= 1 / 2 for k in by_kind.values())
    assert all(0.0 < head["target_preference"] < np.inf for head in result["per_head_top5"])


def test_build_runs_discovery_and_fine_tuning_on_the_default_thread_count(tmp_path, monkeypatch):
    """``build_shapes_tiny`` trains on ``--threads`` threads, then gives discovery and fine-tuning torch's default
    again (the shipped fine-tune ran on both cores), and skips every step whose output is on disk."""
    from pathlib import Path

    import torch
    from localize.benchmarks.shapes_tiny import build as build_shapes_tiny
    from localize.benchmarks.shapes_tiny import train as train_klal
    from localize.benchmarks.shapes_tiny import train_base as train_shapes

    import localize.cli

    default = torch.get_num_threads()
    calls = []

    def fake_train(argv):
        torch.set_num_threads(int(argv[argv.index("--threads") + 1]))
        model = Path(argv[argv.index("--out") + 1]) / "model"
        model.mkdir(parents=True)
        (model / "config.json").write_text("{}")
        calls.append(("train", torch.get_num_threads()))
        return 0

    def fake_localize(argv):
        calls.append((argv[0], torch.get_num_threads()))
        out = Path(argv[argv.index("--out") + 1])
        written = out / "merged" / "config.json" if argv[0] == "finetune" else out  # finetune's --out is a directory
        written.parent.mkdir(parents=True, exist_ok=True)
        written.write_text("{}")
        return 0

    monkeypatch.setattr(train_shapes, "main", fake_train)
    monkeypatch.setattr(train_klal, "main", fake_train)
    monkeypatch.setattr(localize.cli, "main", fake_localize)
    try:
        build_shapes_tiny.build(tmp_path / "work", threads=1)
        klal = [("train", 2), ("discover", default)]  # the supervised model trains on 2 threads, as shipped
        assert calls == [*klal, ("train", 1), ("train", 1), ("discover", default), ("finetune", default)]
        build_shapes_tiny.build(tmp_path / "work", threads=1)
        assert len(calls) == 6  # everything on disk: nothing reruns
    finally:
        torch.set_num_threads(default)


def test_varied_world_scenes():
    sizes, aspects = [], set()
    for i in range(30):
        scene, expressions = shapes.sample_scene(shapes.scene_seed("val", i), 3, 128, varied=True)
        again, _ = shapes.sample_scene(shapes.scene_seed("val", i), 3, 128, varied=True)
        assert np.array_equal(np.asarray(scene.image), np.asarray(again.image))  # deterministic
        width, height = scene.image.size
        assert max(width, height) == 128 and 0.7 <= width / height <= 1.4
        aspects.add(width == height)
        for obj in scene.objects:
            assert obj.mask.shape == (height, width) and obj.mask.any()
            ys, xs = np.nonzero(obj.mask)
            assert obj.box == (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
            sizes.append((obj.box[2] - obj.box[0]) / min(width, height))
        for e in expressions:
            col, row = (int(w[1:]) for w in shapes.answer_for(scene.objects[e.target], scene.image.size).split()[:2])
            cx, cy = scene.objects[e.target].center
            assert col == int(cx * 8 / width) and row == int(cy * 8 / height)  # binned on the canvas's own axes
    assert 0.24 <= min(sizes) and max(sizes) <= 0.51 and max(sizes) - min(sizes) > 0.15
    assert False in aspects  # non-square canvases occur
    plain, _ = shapes.sample_scene(shapes.scene_seed("val", 0), 3, 128)
    assert plain.image.size == (128, 128)  # the plain world is not affected


def test_varied_dataset_samples_are_non_square():
    data = shapes.ShapesDataset("test", size=12, varied=True)
    assert any(s.image.size[0] != s.image.size[1] for s in data)
    assert all(s.image_size == s.image.size for s in data)
