"""The shapes world: every expression picks exactly one object; deterministic; disjoint splits; boxes = masks."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from benchmarks import shapes
from benchmarks.data import GroundingSample

KEYS = {"leftmost": (0, 1), "rightmost": (0, -1), "topmost": (1, 1), "bottommost": (1, -1)}


def _tiny_trial_args(**options):
    """``train_shapes`` arguments of a tiny model (64-pixel images, 8 x 8 patches, 2 packed expressions), with
    ``options`` added or overriding."""
    base = dict(
        batch_size=2, steps=10, image_size=64, patch_size=8, vision_hidden=16, vision_layers=1, hidden=16,
        layers=2, heads=2, seed=0, pack=2,
    )  # fmt: skip
    return argparse.Namespace(**{**base, **options})


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
    from benchmarks import train_shapes

    args = _tiny_trial_args(batch_size=6, pack=pack)
    _, processor = train_shapes.build_model(args)
    inputs, labels, _ = train_shapes.make_batch(processor, 3, args)
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


def test_finer_position_bins_for_training_trials():
    from benchmarks import train_shapes

    scene, _ = shapes.sample_scene(shapes.scene_seed("val", 3), 3, 128)
    obj = scene.objects[0]
    coarse, fine = shapes.answer_for(obj, 128).split(), shapes.answer_for(obj, 128, position_bins=16).split()
    assert int(fine[0][1:]) // 2 == int(coarse[0][1:]) and fine[2:] == coarse[2:]
    assert {"x15", "y15"} <= set(shapes.vocabulary(16)) and "x8" not in shapes.VOCABULARY
    args = _tiny_trial_args(batch_size=4, position_bins=16)
    _, processor = train_shapes.build_model(args)
    for split in ("train", "val"):
        inputs, labels, _ = train_shapes.make_batch(processor, 1, args, split=split)
        words = processor.tokenizer.decode(labels[labels != -100]).split()
        assert words and processor.tokenizer.unk_token not in words
        per_row = 2 if split == "train" else 4  # validation packs 4 expressions per scene
        assert len(words) == 6 * per_row * labels.shape[0]  # (x y size color shape </s>) per packed expression


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
    target among all of them; the dataset asks only about RefCOCO-sized targets, training about any."""
    from benchmarks import train_shapes

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
    args = _tiny_trial_args(batch_size=4, clutter=8)
    _, processor = train_shapes.build_model(args)
    _, labels, _ = train_shapes.make_batch(processor, 1, args)
    assert processor.tokenizer.unk_token not in processor.tokenizer.decode(labels[labels != -100]).split()


def test_shaded_training_labels_and_random_isolation():
    """``train_shapes --shaded``: the labels start at the shade word; ``--isolate-probability``: a share of the steps,
    deterministic in the step."""
    from benchmarks import train_shapes

    args = _tiny_trial_args(batch_size=4, steps=400, shaded=True, isolate_probability=0.3)
    _, processor = train_shapes.build_model(args)
    inputs, labels, scenes = train_shapes.make_batch(processor, 1, args)
    words = processor.tokenizer.decode(labels[labels != -100]).split()
    answers = [w for w in words if w != "</s>"]
    assert len(answers) == 6 * 2 * labels.shape[0] and answers[0] in shapes.SHADE_WORDS
    assert all(o.shade is not None for scene in scenes for o in scene.objects)
    drawn = [train_shapes.isolating(step, args) for step in range(400)]
    assert drawn == [train_shapes.isolating(step, args) for step in range(400)]
    assert 0.2 < np.mean(drawn) < 0.4
    assert not any(train_shapes.isolating(step, argparse.Namespace(**{**vars(args), "isolate_probability": 0.0}))
                   for step in range(50))  # fmt: skip


def test_isolated_local_image_tokens_for_training_trials():
    """``--vision-feature-layer -2 --isolate-image-tokens``: with one CLIP layer the projector reads the patch
    embeddings, and in the language model an image token attends to no other image token, so changing one patch
    changes only that image token and the text after the image."""
    import torch

    from benchmarks import train_shapes

    args = _tiny_trial_args(vision_feature_layer=-2, isolate_image_tokens=0.5)
    model, processor = train_shapes.build_model(args)
    model.eval()
    assert train_shapes.isolating(4, args) and not train_shapes.isolating(5, args)
    inputs, _, _ = train_shapes.make_batch(processor, 0, args)
    assert inputs["attention_mask"].dim() == 4
    image = inputs["input_ids"][0] == processor.tokenizer.convert_tokens_to_ids("<image>")
    changed = dict(inputs, pixel_values=inputs["pixel_values"].clone())
    changed["pixel_values"][0, :, :8, :8] += 1.0  # the first patch only
    with torch.no_grad():
        before = model(**inputs, output_hidden_states=True).hidden_states[-1][0]
        after = model(**changed, output_hidden_states=True).hidden_states[-1][0]
    moved = (before - after).abs().amax(-1) > 1e-5
    first = int(image.nonzero()[0])
    assert moved[first] and not moved[image].sum() > 1  # only the changed patch's own token among image tokens
    assert moved[~image].any()  # text after the image sees it
    # Without isolation the later image tokens see the change through causal attention.
    plain = dict(inputs, attention_mask=torch.ones_like(inputs["input_ids"]))
    with torch.no_grad():
        before = model(**plain, output_hidden_states=True).hidden_states[-1][0]
        after = model(**dict(changed, attention_mask=plain["attention_mask"]), output_hidden_states=True).hidden_states[
            -1
        ][0]
    assert ((before - after).abs().amax(-1) > 1e-5)[image].sum() > 1


def test_patch_attribute_labels_and_training_run_resume(tmp_path, capsys):
    """``--patch-attributes``: each patch is labelled with the object covering it (else background), the auxiliary
    loss is logged, and a rerun with more steps resumes from the checkpoint, read-outs included."""
    import json

    import torch

    from benchmarks import train_shapes

    scene, _ = shapes.sample_scene(shapes.scene_seed("val", 5), 3, 64)
    labels = train_shapes.patch_attribute_labels([scene], 8)
    assert labels.shape == (1, 3, 64)
    background = (len(shapes.COLORS), len(shapes.SHAPES), len(shapes.SIZE_WORDS))
    for obj in scene.objects:
        cx, cy = (int(c) // 8 for c in obj.center)
        expected = (list(shapes.COLORS).index(obj.color), shapes.SHAPES.index(obj.shape), obj.size_class)
        assert tuple(labels[0, :, cy * 8 + cx].tolist()) == expected
    covered = np.zeros(64, dtype=bool)
    for obj in scene.objects:
        covered |= obj.mask.reshape(8, 8, 8, 8).mean(axis=(1, 3)).reshape(-1) >= 0.5
    assert (labels[0, :, ~covered].T == torch.tensor(background)).all()

    small = [
        "--batch-size", "4", "--pack", "2", "--image-size", "64", "--vision-hidden", "16", "--hidden", "16",
        "--layers", "2", "--heads", "2", "--threads", "1", "--save-every", "1", "--eval-every", "100",
        "--patch-attributes", "1.0",
    ]  # fmt: skip
    out = tmp_path / "run"
    assert train_shapes.main(["--out", str(out), "--steps", "2", *small]) == 0
    assert (out / "checkpoint" / "patch_heads.safetensors").exists()
    assert train_shapes.main(["--out", str(out), "--steps", "2", *small]) == 0  # resumes, read-outs included
    assert "resumed at step 2" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="other settings"):
        train_shapes.main(["--out", str(out), "--steps", "2", *small[:-1], "0.5"])
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records][:2] == [1, 2] and all(r["patch_loss"] > 0 for r in records)
    assert all(0.0 <= records[1][f"patch_{name}_acc"] <= 1.0 for name in ("colour", "shape", "size"))
    from safetensors.torch import load_file

    shipped = load_file(out / "model" / "model.safetensors")
    assert shipped and not any(key.startswith("heads.") for key in shipped)  # the read-outs are never saved


def test_probe_reports_baselines_oracle_and_object_choice_by_kind():
    """``shapes_probe`` on a tiny untrained model: the oracle recovers the targets, and the best head's object choice
    is broken down by expression kind over every scene with more than one object."""
    from benchmarks import shapes_probe, train_shapes
    from localize.models import VLM

    args = _tiny_trial_args(batch_size=4, image_size=128)
    model, processor = train_shapes.build_model(args)
    result = shapes_probe.probe(VLM(model.eval(), processor, spec="tiny"), 0, 24, heads_spec="L1 H0,L1 H1")
    assert result["acc@0.5"]["oracle"] >= 0.8 and result["acc@0.5"]["whole_image"] == 0.0
    by_kind = result["best_object_choice_by_kind"]
    test = shapes.ShapesDataset("test", size=24)
    assert sum(k["n"] for k in by_kind.values()) == sum(len(s.meta["objects"]) > 1 for s in test)
    assert set(by_kind) <= {"attribute", "colour", "superlative", "relation"}
    assert all(0.0 <= k["object_choice"] <= 1.0 and 0.25 <= k["chance"] <= 1 / 2 for k in by_kind.values())
    assert all(0.0 < head["target_preference"] < np.inf for head in result["per_head_top5"])
    # A cluttered world: object choice among all objects, and among the RefCOCO-sized ones (those asked about).
    cluttered = shapes_probe.probe(VLM(model.eval(), processor, spec="tiny"), 0, 12, heads_spec="L1 H0", clutter=8)
    assert cluttered["acc@0.5"]["oracle"] >= 0.8
    assert cluttered["object_choice_chance"] < 0.2 < 0.25 <= cluttered["object_choice_referable_chance"] <= 0.5


def test_build_runs_discovery_and_fine_tuning_on_the_default_thread_count(tmp_path, monkeypatch):
    """``build_shapes_tiny`` trains on ``--threads`` threads, then gives discovery and fine-tuning torch's default
    again (the shipped fine-tune ran on both cores), and skips every step whose output is on disk."""
    from pathlib import Path

    import torch

    import localize.cli
    from benchmarks import build_shapes_tiny, train_shapes

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
    monkeypatch.setattr(localize.cli, "main", fake_localize)
    try:
        build_shapes_tiny.build(tmp_path / "work", threads=1)
        assert calls == [("train", 1), ("train", 1), ("discover", default), ("finetune", default)]
        build_shapes_tiny.build(tmp_path / "work", threads=1)
        assert len(calls) == 4  # everything on disk: nothing reruns
    finally:
        torch.set_num_threads(default)


def test_query_reads_mask_leaves_one_route_from_the_image_to_the_answer():
    """``--query-reads-probability``: on its steps only the positions that predict answer words see image tokens,
    and a changed patch reaches only its grid neighbours among image tokens (local, 2 layers: at most 2 cells away)."""
    import torch

    from benchmarks import train_shapes

    args = _tiny_trial_args(vision_feature_layer=-2, query_reads_probability=1.0)
    model, processor = train_shapes.build_model(args)
    model.eval()
    assert train_shapes.query_reading(3, args)
    inputs, labels, _ = train_shapes.make_batch(processor, 0, args)
    assert inputs["attention_mask"].dim() == 4
    image = inputs["input_ids"][0] == processor.tokenizer.convert_tokens_to_ids("<image>")
    readers = torch.zeros_like(image)
    readers[:-1] = labels[0, 1:] != -100
    changed = dict(inputs, pixel_values=inputs["pixel_values"].clone())
    changed["pixel_values"][0, :, 24:32, 24:32] += 1.0  # the patch at row 3, column 3 of the 8 x 8 grid
    with torch.no_grad():
        before = model(**inputs, output_hidden_states=True).hidden_states[-1][0]
        after = model(**changed, output_hidden_states=True).hidden_states[-1][0]
    moved = (before - after).abs().amax(-1) > 1e-5
    cells = image.nonzero().flatten()
    moved_cells = [(int(k) // 8, int(k) % 8) for k in (moved[cells]).nonzero().flatten()]
    assert (3, 3) in moved_cells and all(abs(r - 3) <= 2 and abs(c - 3) <= 2 for r, c in moved_cells)
    assert moved[readers].all()  # every query and answer position reads the image
    before_first_answer = torch.arange(len(image)) < int(readers.nonzero()[0])
    assert not moved[~image & before_first_answer].any()  # the expression's other words see no image token
    # On the steps it is not drawn for, the ordinary mask is used.
    plain_args = argparse.Namespace(**{**vars(args), "query_reads_probability": 0.0})
    assert train_shapes.make_batch(processor, 0, plain_args)[0]["attention_mask"].dim() == 2


def test_text_steps_describe_the_scene_in_words_and_alignment_holds_the_language_model(tmp_path):
    """``--text-steps``: the scene in words stands where the image would be, only the answers after it are
    labelled, and each answer copies its target's description; then ``--align-steps`` image steps move the vision
    side only, and the image steps draw the same scenes as a run without text steps."""
    import json

    from benchmarks import train_shapes

    args = _tiny_trial_args(batch_size=4)
    _, processor = train_shapes.build_model(args)
    tokenizer = processor.tokenizer
    inputs, labels = train_shapes.make_text_batch(tokenizer, 1, args)
    assert not (inputs["input_ids"] == tokenizer.unk_token_id).any()
    for row, lab in zip(inputs["input_ids"], labels):
        words = tokenizer.convert_ids_to_tokens(row[row != tokenizer.pad_token_id])[1:]
        first_expression = words.index("the")
        objects = [" ".join(words[k : k + 5]) for k in range(0, first_expression, 5)]
        assert first_expression == 5 * len(objects) and all(o.split()[0].startswith("x") for o in objects)
        answers = " ".join(tokenizer.convert_ids_to_tokens(lab[lab != -100])).split(" </s>")[:-1]
        assert len(answers) == 2 and all(a.strip() in objects for a in answers)  # a copy of one described object
    image_seeds = {seed for step in range(50) for seed, *_ in train_shapes._packed_scenes(step, args)}
    assert not image_seeds & {shapes.scene_seed("train", train_shapes.TEXT_SCENE_OFFSET + k) for k in range(100)}

    small = [
        "--batch-size", "4", "--pack", "2", "--image-size", "64", "--vision-hidden", "16", "--hidden", "16",
        "--layers", "2", "--heads", "2", "--threads", "1", "--save-every", "1", "--eval-every", "100",
    ]  # fmt: skip
    timed = _tiny_trial_args(steps=30, text_steps=20, align_steps=5)
    rates = [train_shapes.rate_multipliers(step, timed) for step in range(50)]
    assert all(vision == 0 and language > 0 for language, vision in rates[:20])  # text: the LM alone
    assert all(language == 0 and vision > 0 for language, vision in rates[20:25])  # alignment: the vision side
    plain = _tiny_trial_args(steps=30)
    assert rates[25:] == [(train_shapes.rate_multipliers(s, plain)[1],) * 2 for s in range(5, 30)]
    aligning_only = _tiny_trial_args(steps=30, align_steps=30)  # --align-steps = --steps: the LM never moves
    assert all(train_shapes.rate_multipliers(s, aligning_only)[0] == 0 for s in range(30))
    assert all(train_shapes.rate_multipliers(s, aligning_only)[1] > 0 for s in range(29))

    out = tmp_path / "run"
    assert train_shapes.main(["--out", str(out), "--steps", "2", "--text-steps", "2", *small]) == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r.get("phase") for r in records] == ["text", "text", None, None]
    assert "text_answer_exact" in records[1] and {"answer_exact", "text_answer_exact"} <= set(records[3])
    with pytest.raises(SystemExit):
        train_shapes.main(["--out", str(tmp_path / "bad"), "--steps", "2", "--align-steps", "3", *small])


def test_text_order_attributes_first_moves_each_objects_position_to_its_end():
    """``--text-order attributes-first`` describes the same scene with the same words per object, the position
    moved after the attributes; the answers and their labels do not change."""
    from benchmarks import train_shapes

    plain, reordered = _tiny_trial_args(batch_size=4), _tiny_trial_args(batch_size=4, text_order="attributes-first")
    for (text, described, targets), (text2, described2, targets2) in zip(
        train_shapes.text_rows(3, plain), train_shapes.text_rows(3, reordered)
    ):
        words, words2 = text.split(), text2.split()
        assert (described, targets, words[described:]) == (described2, targets2, words2[described:])
        for k in range(0, described, 5):
            x, y, *attributes = words[k : k + 5]
            assert words2[k : k + 5] == [*attributes, x, y] and x.startswith("x") and y.startswith("y")
    assert train_shapes.words_per_object(plain) == train_shapes.words_per_object(reordered) == 5
    assert train_shapes.words_per_object(_tiny_trial_args(shaded=True)) == 6  # the shade word first
    _, processor = train_shapes.build_model(plain)
    labels = [train_shapes.make_text_batch(processor.tokenizer, 3, a)[1] for a in (plain, reordered)]
    assert (labels[0] == labels[1]).all()


def test_text_kinds_keep_only_those_expressions():
    """``--text-kinds attribute`` asks only attribute expressions ("the red circle") in the text steps; an unknown
    kind is refused."""
    from benchmarks import train_shapes

    relation_or_superlative = {"above", "below", "left", "right", "leftmost", "rightmost", "topmost", "bottommost"}
    relation_or_superlative |= {"biggest", "smallest"}
    plain, attributes = _tiny_trial_args(batch_size=8), _tiny_trial_args(batch_size=8, text_kinds=["attribute"])

    def asked_words(args: argparse.Namespace) -> set[str]:
        """Every word of the expressions (not the answers) the first text steps ask."""
        texts = [text for step in range(4) for text, _, _ in train_shapes.text_rows(step, args)]
        return {w for text in texts for e in text.split("\n")[1].split("</s>")[:-1] for w in e.split()[:-5]}

    plain_words, attribute_words = asked_words(plain), asked_words(attributes)
    assert plain_words & relation_or_superlative and not attribute_words & relation_or_superlative
    with pytest.raises(SystemExit):
        train_shapes.main(["--out", "unused", "--text-kinds", "attribute,colour"])
    with pytest.raises(ValueError, match="asks none"):
        shapes.sample_scene(0, 1, 64, kinds=["relation"])  # relations start at difficulty 3


def test_image_kinds_and_text_mix(tmp_path):
    """``--image-kinds`` restricts the image training steps' expressions (validation keeps every kind);
    ``--text-mix P`` adds a text step's loss to about a share P of the image steps after alignment, on scenes no
    text stage draws."""
    import json

    from benchmarks import train_shapes

    def asked(args: argparse.Namespace, split: str) -> set[str]:
        return {
            e.kind for step in range(6) for _, _, exprs in train_shapes._packed_scenes(step, args, split) for e in exprs
        }

    plain, attributes = _tiny_trial_args(batch_size=8), _tiny_trial_args(batch_size=8, image_kinds=["attribute"])
    assert asked(plain, "train") > {"attribute"} and asked(attributes, "train") == {"attribute"}
    assert asked(attributes, "val") == asked(plain, "val") > {"attribute"}

    mixed = _tiny_trial_args(steps=400, align_steps=100, text_mix=0.25)
    draws = [train_shapes.text_mixed(step, mixed) for step in range(400)]
    assert not any(draws[:100]) and 0.15 < sum(draws[100:]) / 300 < 0.35
    assert not any(train_shapes.text_mixed(step, _tiny_trial_args(steps=400)) for step in range(400))

    small = [
        "--batch-size", "4", "--pack", "2", "--image-size", "64", "--vision-hidden", "16", "--hidden", "16",
        "--layers", "2", "--heads", "2", "--threads", "1", "--save-every", "1", "--eval-every", "100",
    ]  # fmt: skip
    out = tmp_path / "run"
    argv = ["--out", str(out), "--steps", "3", "--align-steps", "1", "--text-mix", "1", *small]
    assert train_shapes.main([*argv, "--image-kinds", "attribute"]) == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert ["text_loss" in r for r in records] == [False, True, True]
    for bad in (["--text-mix", "1.5"], ["--image-kinds", "colour"], ["--image-kinds", "attribute", "--pack", "1"]):
        with pytest.raises(SystemExit):
            train_shapes.main(["--out", str(tmp_path / "bad"), *bad])


def test_text_object_choice_reads_each_heads_attention_at_the_query():
    """A head whose attention at each expression's last token sits on its target's description scores 1, one
    reading the first described object scores about chance, and the first answer word's accuracy is the model's."""
    from types import SimpleNamespace

    import torch

    from benchmarks import shapes_probe, train_shapes

    args = _tiny_trial_args(text_steps=5, shaded=False, clutter=0, text_clutter=2)
    _, processor = train_shapes.build_model(args)
    layers, heads = 2, 2

    class Reader(torch.nn.Module):
        """Head (1, 0) reads the target's description at every query; all others the first described object."""

        config = SimpleNamespace(_attn_implementation="sdpa")

        def set_attn_implementation(self, name: str) -> None:
            self.config._attn_implementation = name

        def forward(self, input_ids, attention_mask, output_attentions):
            assert output_attentions and self.config._attn_implementation == "eager"
            batch, length = input_ids.shape
            attention = torch.zeros(batch, heads, length, length)
            attention[..., 1:6] = 0.2  # the first described object
            logits = torch.zeros(batch, length, 1 + int(input_ids.max()))
            logits[:, :-1].scatter_(-1, input_ids[:, 1:, None], 1.0)  # always predicts the next word
            step = self.calls
            self.calls += 1
            for b, (*_, targets) in enumerate(train_shapes.text_rows(step, args, "val", 32)):
                labelled = [t for t in range(length) if self.labels[step][b, t] != -100]
                starts = [t for t in labelled if t - 1 not in labelled]
                for start, target in zip(starts, targets):
                    attention[b, 0, start - 1] = 0
                    attention[b, 0, start - 1, 1 + 5 * target : 6 + 5 * target] = 0.2
            other = attention.clone()
            other[:, 0] = other[:, 1]
            return SimpleNamespace(attentions=(other, attention), logits=logits)

    reader = Reader()
    reader.calls = 0
    reader.labels = [train_shapes.make_text_batch(processor.tokenizer, k, args, "val", 32)[1] for k in range(2)]
    vlm = SimpleNamespace(model=reader, processor=processor, num_layers=layers, num_heads=heads)
    result = shapes_probe.text_object_choice(vlm, vars(args), batches=2)
    assert reader.config._attn_implementation == "sdpa"  # restored
    assert result["text_best_head"] == [1, 0] and result["text_best_object_choice"] == 1.0
    assert result["text_best_head_target_preference"] > 1e6  # it reads nothing but the target
    assert result["text_object_choice"][0][0] < 0.5 and result["text_object_choice"][1][1] < 0.5
    assert 0.1 < result["text_object_choice_chance"] < 0.34 and result["text_first_answer_word_acc"] == 1.0
    assert result["text_expressions"] == 2 * 16 * 2  # 2 batches x 16 scenes x 2 expressions


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
