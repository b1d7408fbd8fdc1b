"""Training and validation batches of the shapes world: prompt ``<image>\\n{expression}``, labels on the answers.

Each expression is followed by its answer ``x{col} y{row} {size} {color} {shape}`` and ``</s>``; only the answers
are labelled, so the expression's last token (the query the localization heads are read from) must predict the
referred object's position. Every batch is deterministic in its step.
"""

from __future__ import annotations

import numpy as np
import torch

from localize.data import shapes

from .config import ShapesTrainConfig


def difficulty_at(step: int, steps: int, warm: bool = False) -> int:
    """Easy-first curriculum: 1, then 2, then 3 (``warm``, a continued model: 2 for the first half, then 3)."""
    if warm:
        return 2 if step < steps // 2 else 3
    return 1 if step < steps // 5 else 2 if step < 3 * steps // 5 else 3


def packed_scenes(step: int, config: ShapesTrainConfig) -> list[tuple[int, shapes.Scene, list]]:
    """The (seed, scene, expressions) of each image of a packed training step."""
    n_images = max(1, config.batch_size // config.pack)
    difficulty = difficulty_at(step, config.steps, bool(config.init))
    out = []
    for i in range(n_images):
        seed = shapes.scene_seed("train", step * n_images + i)
        out.append((seed, *shapes.sample_scene(seed, difficulty, config.image_size)))
    return out


def pack_expressions(seed: int, scene: shapes.Scene, expressions: list, pack: int) -> list[shapes.Expression]:
    """``pack`` expressions about distinct targets of ``scene`` (repeats when it has fewer objects)."""
    rng = np.random.default_rng([seed, scene.difficulty, 23])
    chosen, targets = [], set()
    for j in rng.permutation(len(expressions)):
        if expressions[j].target not in targets:
            chosen.append(expressions[j])
            targets.add(expressions[j].target)
    # Fill up to ``pack`` with repeats of other expressions when the scene has fewer objects.
    rest = [e for e in expressions if e not in chosen]
    chosen += [rest[k] for k in rng.permutation(len(rest))[: max(0, pack - len(chosen))]]
    return chosen[:pack]


def with_answers(expressions: list[shapes.Expression], scene: shapes.Scene, image_size: int) -> str:
    """Each expression followed by its answer and ``</s>``, all joined by spaces."""
    answers = [shapes.answer_for(scene.objects[e.target], image_size) for e in expressions]
    return " ".join(f"{e.text} {answer} </s>" for e, answer in zip(expressions, answers))


def answer_positions(words: list[str]) -> list[int]:
    """Indices of the answer words among ``words``: each answer runs from its x position to its ``</s>``."""
    starts = {f"x{i}" for i in range(shapes.POSITION_BINS)}
    positions, in_answer = [], False
    for j, word in enumerate(words):
        in_answer = in_answer or word in starts
        if in_answer:
            positions.append(j)
        in_answer = in_answer and word != "</s>"
    return positions


def _texts(step: int, config: ShapesTrainConfig, split: str, size: int) -> tuple[list, list, list[str]]:
    """(drawn, images, texts) of a step: packed scenes (training with ``pack`` > 1), else dataset samples."""
    if split == "train" and config.pack > 1:
        drawn, texts = [], []
        for seed, scene, expressions in packed_scenes(step, config):
            drawn.append(scene)
            chosen = pack_expressions(seed, scene, expressions, config.pack)
            texts.append("<image>\n" + with_answers(chosen, scene, config.image_size))
        return drawn, [scene.image for scene in drawn], texts
    difficulty = difficulty_at(step, config.steps, bool(config.init)) if split == "train" else 3
    data = shapes.ShapesDataset(
        split, size=shapes.SPLIT_CAPACITY - 1, difficulty=difficulty, image_size=config.image_size
    )
    drawn = [data[step * size + i] for i in range(size)]
    return drawn, [s.image for s in drawn], [f"<image>\n{s.expression} {s.answer} </s>" for s in drawn]


def make_batch(processor, step: int, config: ShapesTrainConfig, split: str = "train", size: int | None = None):
    """Inputs, labels (answers + eos only) and what was drawn (the samples, or with packing the scenes) of step
    ``step`` of ``split`` (validation: difficulty 3, one expression per image)."""
    size = size or config.batch_size
    drawn, images, texts = _texts(step, config, split, size)
    inputs = processor(images=images, text=texts, return_tensors="pt", padding=True)
    labels = torch.full_like(inputs["input_ids"], -100)
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    for b, text in enumerate(texts):
        first = int((inputs["input_ids"][b] == image_id).nonzero().max()) + 1  # words follow the image tokens
        for j in answer_positions(text.split("\n", 1)[1].split()):
            labels[b, first + j] = inputs["input_ids"][b, first + j]
    return dict(inputs), labels, drawn
