"""Train the tiny shapes-world LLaVA from scratch: seeded, resumable, CPU-sized.

    python -m localize.benchmarks.shapes_tiny.train_base --out runs/shapes --steps 3000 [--threads 2] [--seed 0]

The model is a plain ``LlavaForConditionalGeneration`` built from a config (a shallow CLIP vision tower whose
position embedding is a frozen 2-D sin-cos table, so image tokens stay local, and a small Llama), with a word-level
tokenizer over the world's vocabulary: it goes through the toolkit's ordinary ``llava`` adapter.

Objective: next-token loss on the answer only. The prompt is the toolkit's default LLaVA prompt
``<image>\\n{expression}``, followed by the answer ``x{col} y{row} {size} {color} {shape}`` and ``</s>``: the
expression's last token (the query the localization heads are read from) must predict the referred object's fine
position, so nothing is answered without finding the object; no coordinates are ever read at inference.
Curriculum: difficulty 1 scenes for the first fifth of the steps, 2 for the next two fifths, then 3.

Options for trials (benchmarks/SHAPES_TRIALS.md), all off by default: ``--pack`` (several expressions after one
image), ``--position-bins`` (a finer answer grid), ``--isolate-image-tokens`` (for a fraction of the steps no image
token attends to another in the language model, so the scene cannot be gathered into a few tokens),
``--vision-feature-layer -2`` (the projector reads the patch embeddings: local image tokens),
``--isolate-probability`` (the same, on a random share of the steps throughout, so the model learns to answer under
both masks), ``--shaded`` (objects carry a noisy brightness texture whose class, named first in the answer, only
an average over the whole object tells),
``--query-reads-probability`` (on a random share of the steps only the positions that predict answer words read
image tokens, which see only their grid neighbours: the query token must find the object itself),
``--clutter`` (little objects beside the RefCOCO-sized ones: mostly 9-11 candidates per scene, meant to be too many
to read all at once and decode), ``--attention-dropout`` (a head that reads one or two image tokens loses them
often) and ``--patch-attributes`` (an auxiliary per-patch loss: linear read-outs of the covering object's colour,
shape and size from the features the projector reads, standing in for a pretrained CLIP whose patches carry their
object; not text-only, so never used for the shipped model, and the read-outs are not saved with it),
``--head-dim`` (narrower language-model heads, as LLaVA's 128 of 4096), ``--text-steps`` (the language model first
learns the task on scenes described in words, "x3 y5 big red circle ...", standing where the image will be: its
own pretraining, as LLaVA's language model arrives pretrained; ``--text-clutter`` adds little objects to those
scenes only; ``--text-order attributes-first`` writes each object's position after its attributes, so the answer
follows the expression's words as in a copy; ``--text-kinds`` asks only some kinds of expression) and
``--align-steps`` (then the first image steps train only the vision tower and projector, LLaVA's alignment stage).

Checkpoints (``OUT/checkpoint``: weights as safetensors, optimizer state read back with ``weights_only=True``) are
written every ``--save-every`` steps; rerunning the same command resumes. The final model and processor are
saved with ``save_pretrained`` to ``OUT/model``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from localize.data import shapes


def sincos_2d(side: int, dim: int) -> torch.Tensor:
    """``[side * side, dim]`` 2-D sin-cos position table (half the channels for x, half for y)."""
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    ys, xs = torch.meshgrid(
        torch.arange(side, dtype=torch.float32), torch.arange(side, dtype=torch.float32), indexing="ij"
    )
    out = [
        torch.sin(xs.flatten()[:, None] * omega),
        torch.cos(xs.flatten()[:, None] * omega),
        torch.sin(ys.flatten()[:, None] * omega),
        torch.cos(ys.flatten()[:, None] * omega),
    ]
    table = torch.cat(out, dim=1)
    return torch.nn.functional.pad(table, (0, dim - table.shape[1]))


def _world(args: argparse.Namespace) -> tuple[bool, int]:
    """The world options of a trial: (``shaded``, ``clutter``)."""
    return getattr(args, "shaded", False), getattr(args, "clutter", 0)


def _text_clutter(args: argparse.Namespace) -> int:
    """Little objects per scene of the ``--text-steps`` (``--text-clutter``, else the world's ``--clutter``)."""
    text_clutter = getattr(args, "text_clutter", None)
    return _world(args)[1] if text_clutter is None else text_clutter


def build_model(args: argparse.Namespace):
    """The untrained model and processor (seeded)."""
    from localize.testing import tiny_llava

    shaded, clutter = _world(args)
    model, processor = tiny_llava(
        words=shapes.vocabulary(
            getattr(args, "position_bins", shapes.POSITION_BINS), shaded, clutter > 0 or _text_clutter(args) > 0
        ),
        image_size=args.image_size,
        patch_size=args.patch_size,
        vision_hidden=args.vision_hidden,
        vision_layers=args.vision_layers,
        vision_heads=4,
        hidden=args.hidden,
        layers=args.layers,
        heads=args.heads,
        kv_heads=args.heads,
        head_dim=getattr(args, "head_dim", None),
        intermediate=args.hidden * 2,
        vision_feature_layer=getattr(args, "vision_feature_layer", -1),
        seed=args.seed,
    )
    embeddings = model.model.vision_tower.embeddings
    side = args.image_size // args.patch_size
    with torch.no_grad():
        table = torch.zeros_like(embeddings.position_embedding.weight)
        table[1:] = sincos_2d(side, table.shape[1])  # row 0 is the CLS token
        embeddings.position_embedding.weight.copy_(table)
    embeddings.position_embedding.weight.requires_grad_(False)
    # Attention dropout in the language model (training only): a head that reads one or two image tokens loses them
    # often, one that reads many tokens of the same object does not.
    dropout = float(getattr(args, "attention_dropout", 0.0))
    model.config.text_config.attention_dropout = dropout
    for layer in model.model.language_model.layers:
        layer.self_attn.attention_dropout = dropout
    return model.train(), processor


def difficulty_at(step: int, steps: int, warm: bool = False) -> int:
    """Easy-first curriculum: 1, then 2, then 3 (``warm``, a continued model: 2 for the first half, then 3)."""
    if warm:
        return 2 if step < steps // 2 else 3
    return 1 if step < steps // 5 else 2 if step < 3 * steps // 5 else 3


def _packed_scenes(step: int, args: argparse.Namespace, split: str = "train") -> list[tuple[int, shapes.Scene, list]]:
    """The (seed, scene, expressions) of each image of a packed step (validation: difficulty 3, every kind;
    training: the kinds ``--image-kinds`` names)."""
    n_images = max(1, args.batch_size // args.pack)
    difficulty = difficulty_at(step, args.steps, bool(getattr(args, "init", None))) if split == "train" else 3
    kinds = getattr(args, "image_kinds", None) if split == "train" else None
    out = []
    for i in range(n_images):
        seed = shapes.scene_seed(split, step * n_images + i)
        out.append((seed, *shapes.sample_scene(seed, difficulty, args.image_size, *_world(args), kinds=kinds)))
    return out


def patch_attribute_labels(scenes: list[shapes.Scene], patch_size: int) -> torch.Tensor:
    """``[images, 3, patches]`` class labels of every patch: the colour, shape and size class of the object covering
    at least half of it, or the last class of each (background) -- targets of ``--patch-attributes``."""
    from localize.geometry import GridGeometry

    classes = (len(shapes.COLORS), len(shapes.SHAPES), len(shapes.SIZE_WORDS))
    colors = list(shapes.COLORS)
    rows = []
    for scene in scenes:
        side = scene.image_size // patch_size
        grid = GridGeometry(side, side, (scene.image_size, scene.image_size), float(patch_size), float(patch_size))
        labels = torch.tensor(classes)[:, None].repeat(1, side * side)
        for obj in scene.objects:
            inside = torch.from_numpy(grid.mask_to_grid(obj.mask).reshape(-1) >= 0.5)
            attributes = (colors.index(obj.color), shapes.SHAPES.index(obj.shape), obj.size_class)
            for k, value in enumerate(attributes):
                labels[k, inside] = value
        rows.append(labels)
    return torch.stack(rows)


class PatchAttributeHeads(torch.nn.Module):
    """Linear read-outs of colour, shape and size class (each + background) from every patch feature the projector
    reads: a stand-in for a pretrained CLIP whose patches carry their object (``--patch-attributes``; trial only,
    never saved with the model)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        sizes = (len(shapes.COLORS), len(shapes.SHAPES), len(shapes.SIZE_WORDS))
        self.heads = torch.nn.ModuleList(torch.nn.Linear(dim, n + 1) for n in sizes)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the three attributes; ``features`` ``[B, P, dim]``, ``labels`` ``[B, 3, P]``."""
        losses = [
            torch.nn.functional.cross_entropy(head(features).flatten(0, 1), labels[:, k].flatten())
            for k, head in enumerate(self.heads)
        ]
        return torch.stack(losses).mean()


def _pack_expressions(seed: int, scene: shapes.Scene, expressions: list, pack: int) -> list[shapes.Expression]:
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


def _with_answers(expressions: list[shapes.Expression], scene: shapes.Scene, args: argparse.Namespace) -> str:
    """Each expression followed by its answer and ``</s>``, all joined by spaces."""
    bins = getattr(args, "position_bins", shapes.POSITION_BINS)
    answers = [shapes.answer_for(scene.objects[e.target], args.image_size, bins) for e in expressions]
    return " ".join(f"{e.text} {answer} </s>" for e, answer in zip(expressions, answers))


def _answer_positions(words: list[str], bins: int) -> list[int]:
    """Indices of the answer words among ``words``: each answer runs from its first word (the shade word, else the x
    position) to its ``</s>``."""
    starts = {f"x{i}" for i in range(bins)} | set(shapes.SHADE_WORDS)
    positions, in_answer = [], False
    for j, word in enumerate(words):
        in_answer = in_answer or word in starts
        if in_answer:
            positions.append(j)
        in_answer = in_answer and word != "</s>"
    return positions


def _packed_texts(step: int, args: argparse.Namespace, split: str = "train") -> tuple[list[shapes.Scene], list[str]]:
    """Scenes and texts of a packed step: ``--pack`` expressions (distinct targets) after each scene's image
    (validation: difficulty 3)."""
    scenes, texts = [], []
    for seed, scene, expressions in _packed_scenes(step, args, split):
        scenes.append(scene)
        texts.append("<image>\n" + _with_answers(_pack_expressions(seed, scene, expressions, args.pack), scene, args))
    return scenes, texts


TEXT_SCENE_OFFSET = 500_000_000  # text scenes use the upper half of each split's seed range, images the lower
TEXT_MIX_OFFSET = 10_000_000  # --text-mix steps draw their scenes from here on, after any text stage's


def _described(obj: shapes.ShapeObject, args: argparse.Namespace) -> str:
    """One object in a text step's scene: its answer's words, or with ``--text-order attributes-first`` the same
    words with the position last ("tiny green circle x6 y1"), so an expression's words come right before the
    answer's first word, as in a copy ("induction") pattern."""
    words = shapes.answer_for(obj, args.image_size, getattr(args, "position_bins", shapes.POSITION_BINS)).split()
    if getattr(args, "text_order", "positions-first") == "attributes-first":
        words = words[:-5] + words[-3:] + words[-5:-3]  # (shade) size colour shape, then x y
    return " ".join(words)


def words_per_object(args: argparse.Namespace) -> int:
    """How many words :func:`_described` spends on one object (the same for every object of a world)."""
    scene, _ = shapes.sample_scene(shapes.scene_seed("val", 0), 1, args.image_size, _world(args)[0])
    return len(_described(scene.objects[0], args).split())


def text_rows(step: int, args: argparse.Namespace, split: str = "train", size: int | None = None) -> list[tuple]:
    """The rows of text step ``step`` (``--text-steps``), each ``(text, description words, targets)``: the scene
    described in words where the image would be, then ``--pack`` expressions with their answers; ``targets`` are
    the described objects (in description order) the expressions refer to. Scenes are at difficulty 3 and disjoint
    from the image steps'."""
    n_scenes = max(1, (size or args.batch_size) // max(1, args.pack))
    rows = []
    for i in range(n_scenes):
        seed = shapes.scene_seed(split, TEXT_SCENE_OFFSET + step * n_scenes + i)
        scene, expressions = shapes.sample_scene(
            seed, 3, args.image_size, _world(args)[0], _text_clutter(args), kinds=getattr(args, "text_kinds", None)
        )
        order = [int(k) for k in np.random.default_rng([seed, 29]).permutation(len(scene.objects))]
        description = " ".join(_described(scene.objects[k], args) for k in order)
        chosen = _pack_expressions(seed, scene, expressions, max(1, args.pack))
        targets = [order.index(e.target) for e in chosen]
        rows.append((f"{description} \n " + _with_answers(chosen, scene, args), len(description.split()), targets))
    return rows


def make_text_batch(
    tokenizer,
    step: int,
    args: argparse.Namespace,
    split: str = "train",
    size: int | None = None,
    rows: list[tuple] | None = None,
):
    """Inputs and labels of text step ``step`` (:func:`text_rows`, or ``rows`` already built from them; answers
    labelled as in :func:`make_batch`)."""
    bins = getattr(args, "position_bins", shapes.POSITION_BINS)
    rows = text_rows(step, args, split, size) if rows is None else rows
    inputs = dict(tokenizer([text for text, _, _ in rows], return_tensors="pt", padding=True))
    labels = torch.full_like(inputs["input_ids"], -100)
    for b, (text, described, _) in enumerate(rows):
        for j in _answer_positions(text.split()[described:], bins):
            position = 1 + described + j  # after <s> and the description
            labels[b, position] = inputs["input_ids"][b, position]
    return inputs, labels


def _causal_allowed(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``[batch, T, T]`` booleans: which key each query position may attend to under the ordinary causal and
    padding mask."""
    length = input_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    return causal[None] & attention_mask.bool()[:, None, :]


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The ``[batch, 1, T, T]`` additive mask of ``allowed``; every row keeps itself (padding rows stay finite)."""
    allowed = allowed | torch.eye(allowed.shape[-1], dtype=torch.bool)[None]
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def isolation_mask(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, image_id: int, dtype: torch.dtype
) -> torch.Tensor:
    """A ``[batch, 1, T, T]`` additive mask: causal and padding as usual, except that an image token attends to no
    other image token, so the language model cannot gather the scene into a few image tokens and a text token can
    only learn about an object by attending to that object's own tokens."""
    is_image = input_ids == image_id
    image_pairs = is_image[:, :, None] & is_image[:, None, :]
    return _additive(_causal_allowed(input_ids, attention_mask) & ~image_pairs, dtype)


def query_reads_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    image_id: int,
    side: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """A ``[batch, 1, T, T]`` additive mask in which only the positions that predict an answer word (each
    expression's last token and the answer's own words) read image tokens: the expression's other words see text
    only, and an image token sees only the image tokens of its 3 x 3 grid neighbourhood (causally). The one route
    from the image to the first answer word is then the query token's own attention on image tokens. ``side``: the
    patch grid's side (every image's tokens in raster order)."""
    is_image = input_ids == image_id
    readers = torch.zeros_like(is_image)
    readers[:, :-1] = labels[:, 1:] != -100  # position p predicts the token at p + 1
    allowed = _causal_allowed(input_ids, attention_mask)
    text_only = ~readers & ~is_image  # the expression's other words (and the prompt's)
    allowed &= ~(text_only[:, :, None] & is_image[:, None, :])
    for b in range(input_ids.shape[0]):
        where = is_image[b].nonzero().flatten()
        if len(where) != side * side:
            raise ValueError(f"row {b} holds {len(where)} image tokens, not a {side} x {side} grid")
        cell = torch.arange(len(where))
        rows, cols = cell // side, cell % side
        near = ((rows[:, None] - rows[None]).abs() <= 1) & ((cols[:, None] - cols[None]).abs() <= 1)
        allowed[b, where[:, None], where[None]] &= near
    return _additive(allowed, dtype)


def _drawn(step: int, args: argparse.Namespace, probability: float, stream: int) -> bool:
    """A draw with ``probability``, deterministic in the run's seed, the step and the option's ``stream``."""
    return bool(probability) and bool(np.random.default_rng([args.seed, step, stream]).random() < probability)


def query_reading(step: int, args: argparse.Namespace) -> bool:
    """Whether training step ``step`` uses :func:`query_reads_mask` (a draw deterministic in the step under
    ``--query-reads-probability``)."""
    return _drawn(step, args, getattr(args, "query_reads_probability", 0.0), stream=43)


def text_mixed(image_step: int, args: argparse.Namespace) -> bool:
    """Whether image step ``image_step`` also trains on a text step (``--text-mix``; never while the language
    model is held for alignment)."""
    if image_step < getattr(args, "align_steps", 0):
        return False
    return _drawn(image_step, args, getattr(args, "text_mix", 0.0), stream=47)


def isolating(step: int, args: argparse.Namespace) -> bool:
    """Whether training step ``step`` isolates image tokens in the language model (``--isolate-image-tokens``, or a
    draw deterministic in the step under ``--isolate-probability``)."""
    if step < getattr(args, "isolate_image_tokens", 0.0) * args.steps:
        return True
    return _drawn(step, args, getattr(args, "isolate_probability", 0.0), stream=41)


def make_batch(
    processor,
    step: int,
    args: argparse.Namespace,
    split: str = "train",
    size: int | None = None,
    isolate: bool | None = None,
    query_reads: bool | None = None,
):
    """Inputs, labels (answers + eos only) and what was drawn (the samples, or with packing the scenes) of training
    step ``step`` (deterministic in the step). ``isolate`` / ``query_reads``: use :func:`isolation_mask` /
    :func:`query_reads_mask` (default: as ``--isolate-*`` / ``--query-reads-probability`` say for a training step;
    never for val)."""
    size = size or args.batch_size
    bins = getattr(args, "position_bins", shapes.POSITION_BINS)
    pack = getattr(args, "pack", 1) if split == "train" else 1
    drawn: list = []
    if split != "train" and bins != shapes.POSITION_BINS:  # the dataset's answers use the default bins
        drawn, texts = _packed_texts(step, argparse.Namespace(**{**vars(args), "pack": 4, "batch_size": size}), split)
        images = [scene.image for scene in drawn]
    elif pack > 1:
        drawn, texts = _packed_texts(step, args)
        images = [scene.image for scene in drawn]
    else:
        difficulty = difficulty_at(step, args.steps, bool(getattr(args, "init", None))) if split == "train" else 3
        shaded, clutter = _world(args)
        data = shapes.ShapesDataset(
            split,
            size=shapes.SPLIT_CAPACITY - 1,
            difficulty=difficulty,
            image_size=args.image_size,
            shaded=shaded,
            clutter=clutter,
        )
        drawn = [data[step * size + i] for i in range(size)]
        images = [s.image for s in drawn]
        texts = [f"<image>\n{s.expression} {s.answer} </s>" for s in drawn]
    inputs = processor(images=images, text=texts, return_tensors="pt", padding=True)
    labels = torch.full_like(inputs["input_ids"], -100)
    tokenizer = processor.tokenizer
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    for b, text in enumerate(texts):
        first = int((inputs["input_ids"][b] == image_id).nonzero().max()) + 1  # words follow the image tokens
        for j in _answer_positions(text.split("\n", 1)[1].split(), bins):
            labels[b, first + j] = inputs["input_ids"][b, first + j]
    inputs = dict(inputs)
    if query_reads if query_reads is not None else split == "train" and query_reading(step, args):
        side = args.image_size // args.patch_size
        inputs["attention_mask"] = query_reads_mask(
            inputs["input_ids"], inputs["attention_mask"], labels, image_id, side, torch.float32
        )
    elif isolating(step, args) if isolate is None and split == "train" else bool(isolate):
        inputs["attention_mask"] = isolation_mask(
            inputs["input_ids"], inputs["attention_mask"], image_id, torch.float32
        )
    return inputs, labels, drawn


def _cosine(step: int, steps: int) -> float:
    """Linear warm-up over a thirtieth of ``steps``, then cosine decay to zero."""
    return min(1.0, (step + 1) / max(1, steps // 30)) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / steps)))


def rate_multipliers(step: int, args: argparse.Namespace) -> tuple[float, float]:
    """(language model, vision side) learning-rate factors at ``step``: the ``--text-steps`` train the language
    model alone on their own schedule, the first ``--align-steps`` image steps the vision side alone, then both
    follow the image steps' schedule (as in a run without text steps)."""
    image_step = step - getattr(args, "text_steps", 0)
    if image_step < 0:
        return _cosine(step, args.text_steps), 0.0
    rate = _cosine(image_step, args.steps)
    return (0.0 if image_step < getattr(args, "align_steps", 0) else rate), rate


@torch.no_grad()
def evaluate(
    model,
    processor,
    args: argparse.Namespace,
    batches: int = 4,
    isolate: bool = False,
    query_reads: bool = False,
    text: bool = False,
) -> dict:
    """Answer accuracy on validation scenes (difficulty 3), teacher-forced: exact answers, token accuracy, and the
    accuracy of each answer field (first word, second, ...); ``isolate`` / ``query_reads``: under the isolation /
    query-reads mask (the training steps'); ``text``: on scenes described in words (``--text-steps``)."""
    model.eval()
    correct = exact = total = rows = 0
    field_hits: dict[int, list[bool]] = {}
    for k in range(batches):
        if text:
            inputs, labels = make_text_batch(processor.tokenizer, k, args, split="val", size=32)
        else:
            inputs, labels, _ = make_batch(
                processor, k, args, split="val", size=32, isolate=isolate, query_reads=query_reads
            )
        logits = model(**inputs).logits[:, :-1]
        target = labels[:, 1:]
        hit = (logits.argmax(-1) == target) | (target == -100)
        exact += int(hit.all(1).sum())
        rows += int(hit.shape[0])
        correct += int(((logits.argmax(-1) == target) & (target != -100)).sum())
        total += int((target != -100).sum())
        for row_hit, row_target in zip(hit.tolist(), (target != -100).tolist()):
            field = 0
            for is_hit, labelled in zip(row_hit, row_target):
                field = field + 1 if labelled else 0  # answers are contiguous labelled runs
                if labelled:
                    field_hits.setdefault(field - 1, []).append(is_hit)
    model.train()
    fields = [round(float(np.mean(field_hits[f])), 3) for f in sorted(field_hits)]
    return {"answer_exact": exact / rows, "token_acc": correct / total, "field_acc": fields}


@torch.no_grad()
def patch_attribute_accuracy(
    model, processor, patch_heads: PatchAttributeHeads, args: argparse.Namespace, scenes: int = 96
) -> dict[str, float]:
    """How well the ``--patch-attributes`` read-outs name each object patch's colour, shape and size class on
    validation scenes (difficulty 3): whether the patches the projector reads carry their object."""
    drawn = [
        shapes.sample_scene(shapes.scene_seed("val", i), 3, args.image_size, *_world(args))[0] for i in range(scenes)
    ]
    labels = patch_attribute_labels(drawn, args.patch_size)
    pixels = processor.image_processor([scene.image for scene in drawn], return_tensors="pt")["pixel_values"]
    was_training = model.training
    model.eval()
    outputs = model.model.vision_tower(pixels, output_hidden_states=True)
    model.train(was_training)
    features = outputs.hidden_states[args.vision_feature_layer][:, 1:]
    result = {}
    for k, name in enumerate(("colour", "shape", "size")):
        on_object = labels[:, k] != patch_heads.heads[k].out_features - 1
        hits = patch_heads.heads[k](features).argmax(-1) == labels[:, k]
        result[f"patch_{name}_acc"] = round(float(hits[on_object].float().mean()), 4)
    return result


def _kinds(value: str) -> list[str]:
    """A comma-separated list of expression kinds (``--text-kinds`` / ``--image-kinds``), sorted."""
    kinds = sorted(value.split(","))
    unknown = sorted(set(kinds) - set(shapes.KIND_DIFFICULTY))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown kinds {unknown}; expected some of {sorted(shapes.KIND_DIFFICULTY)}")
    return kinds


def main(argv: list[str] | None = None) -> int:
    """Train (or resume) and save the model."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--pack", type=int, default=1, help="expressions packed after each training image")
    parser.add_argument("--init", default=None, help="start from this model (a train_shapes OUT/model or checkpoint)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--vision-lr", type=float, default=3e-4)
    parser.add_argument("--image-size", type=int, default=shapes.DEFAULT_IMAGE_SIZE)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--vision-hidden", type=int, default=128)
    parser.add_argument("--vision-layers", type=int, default=1)
    parser.add_argument(
        "--vision-feature-layer",
        type=int,
        default=-1,
        help="CLIP hidden state fed to the projector (LLaVA-1.5: -2; with one CLIP layer, -2 = the patch embeddings)",
    )
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument(
        "--head-dim",
        type=int,
        default=None,
        help="the language model's per-head width (default hidden / heads; narrower heads can carry less of the "
        "scene at once)",
    )
    trial = parser.add_argument_group("trial options", "benchmarks/SHAPES_TRIALS.md; all off by default")
    trial.add_argument(
        "--position-bins", type=int, default=shapes.POSITION_BINS, help="answer position bins per axis (needs --pack)"
    )
    trial.add_argument(
        "--isolate-image-tokens",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="for this fraction of the steps, image tokens attend to no other image token in the language model",
    )
    trial.add_argument(
        "--isolate-probability",
        type=float,
        default=0.0,
        metavar="P",
        help="isolate image tokens (as --isolate-image-tokens) on a random share P of all steps",
    )
    trial.add_argument(
        "--query-reads-probability",
        type=float,
        default=0.0,
        metavar="P",
        help="on a random share P of the steps only the positions that predict answer words read image tokens, and "
        "an image token sees only its 3 x 3 neighbourhood (on those steps it replaces --isolate-*)",
    )
    trial.add_argument(
        "--shaded",
        action="store_true",
        help="a shaded world: objects carry a noisy brightness texture whose class the answer names first",
    )
    trial.add_argument(
        "--clutter",
        type=int,
        default=0,
        metavar="N",
        help="a cluttered world: up to N little objects beside the RefCOCO-sized ones (packed steps refer to any "
        "object, unpacked ones, like the benchmarks, to RefCOCO-sized ones)",
    )
    trial.add_argument(
        "--attention-dropout", type=float, default=0.0, help="attention dropout in the language model while training"
    )
    trial.add_argument(
        "--patch-attributes",
        type=float,
        default=0.0,
        metavar="WEIGHT",
        help="add WEIGHT x a per-patch loss reading the covering object's colour, shape and size from the features "
        "the projector reads (a stand-in for a pretrained CLIP; needs --pack >= 2)",
    )
    trial.add_argument(
        "--text-steps",
        type=int,
        default=0,
        help="first train the language model this many steps on scenes described in words (its 'pretraining'), "
        "then --steps image steps",
    )
    trial.add_argument(
        "--text-clutter",
        type=int,
        default=None,
        metavar="N",
        help="little objects in the text steps' scenes (default: --clutter); words are cheap, so scenes in words can "
        "hold many more candidates than the images",
    )
    trial.add_argument(
        "--text-order",
        choices=("positions-first", "attributes-first"),
        default="positions-first",
        help="how the text steps describe an object: as its answer (x y size colour shape), or attributes first "
        "(size colour shape x y)",
    )
    trial.add_argument(
        "--text-kinds",
        type=_kinds,
        default=None,
        metavar="KINDS",
        help="the text steps ask only expressions of these kinds (comma-separated: attribute, superlative, "
        "relation; a scene with none is drawn again)",
    )
    trial.add_argument(
        "--image-kinds",
        type=_kinds,
        default=None,
        metavar="KINDS",
        help="the image training steps ask only expressions of these kinds (as --text-kinds; validation asks every "
        "kind; needs --pack >= 2)",
    )
    trial.add_argument(
        "--text-mix",
        type=float,
        default=0.0,
        metavar="P",
        help="on a random share P of the image steps after alignment, add the loss of a text step (fresh scenes in "
        "words, as --text-* describe them), so the language model keeps its text skill as the images train",
    )
    trial.add_argument(
        "--align-steps",
        type=int,
        default=0,
        help="the first image steps train only the vision tower and projector (LLaVA's alignment stage)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save-every", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=250)
    args = parser.parse_args(argv)
    if args.position_bins != shapes.POSITION_BINS and args.pack < 2:
        parser.error("--position-bins other than the world's needs --pack >= 2 (answers are built per scene)")
    if args.patch_attributes and args.pack < 2:
        parser.error("--patch-attributes needs --pack >= 2 (labels are built per scene)")
    if args.patch_attributes and args.clutter:
        parser.error("--patch-attributes has no size class for --clutter's little objects")
    if args.clutter < 0:
        parser.error("--clutter must be >= 0")
    if args.image_kinds and args.pack < 2:
        parser.error("--image-kinds needs --pack >= 2 (expressions are drawn per scene)")
    if not 0.0 <= args.text_mix <= 1.0:
        parser.error("--text-mix must be in [0, 1]")
    if args.text_steps < 0 or not 0 <= args.align_steps <= args.steps:
        parser.error("--text-steps must be >= 0 and --align-steps in [0, --steps] (all: an alignment-only run)")

    from safetensors.torch import load_file, save_file

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, processor = build_model(args)
    if args.init:
        init = Path(args.init)
        weights = init / "model.safetensors"
        result = model.load_state_dict(load_file(weights), strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise SystemExit(f"{weights} does not match the model: {result.missing_keys or result.unexpected_keys}")
        print(f"initialised from {weights}", flush=True)
    vision = [p for n, p in model.named_parameters() if p.requires_grad and ("vision_tower" in n or "projector" in n)]
    language = [
        p for n, p in model.named_parameters() if p.requires_grad and not ("vision_tower" in n or "projector" in n)
    ]
    groups = [
        {"params": language, "lr": args.lr, "weight_decay": 0.01},
        {"params": vision, "lr": args.vision_lr, "weight_decay": 0.1},
    ]
    patch_heads, captured = None, {}
    if args.patch_attributes:
        patch_heads = PatchAttributeHeads(args.vision_hidden)
        groups.append({"params": list(patch_heads.parameters()), "lr": args.lr, "weight_decay": 0.0})
        layer = args.vision_feature_layer

        def keep_features(module, inputs, output) -> None:
            captured["features"] = output.hidden_states[layer][:, 1:]  # the patches the projector reads (no CLS)

        model.model.vision_tower.register_forward_hook(keep_features)
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.98))
    text_steps, total_steps = args.text_steps, args.text_steps + args.steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        [lambda s: rate_multipliers(s, args)[0]] + [lambda s: rate_multipliers(s, args)[1]] * (len(groups) - 1),
    )
    checkpoint = out / "checkpoint"
    start = 0
    if (checkpoint / "state.json").exists():
        state = json.loads((checkpoint / "state.json").read_text())
        # checkpoints from before --pack / --position-bins existed
        saved_args = {
            "pack": 1,
            "init": None,
            "position_bins": shapes.POSITION_BINS,
            "isolate_image_tokens": 0.0,
            "vision_feature_layer": -1,
            "attention_dropout": 0.0,
            "patch_attributes": 0.0,
            "isolate_probability": 0.0,
            "shaded": False,
            "query_reads_probability": 0.0,
            "clutter": 0,
            "head_dim": None,
            "text_steps": 0,
            "align_steps": 0,
            "text_clutter": None,
            "text_order": "positions-first",
            "text_kinds": None,
            "image_kinds": None,
            "text_mix": 0.0,
            **state["args"],
        }
        if saved_args != {k: v for k, v in vars(args).items() if k not in ("threads",)}:
            raise SystemExit(f"{checkpoint} was written with other settings; use another --out")
        model.load_state_dict(load_file(checkpoint / "model.safetensors"), strict=False)
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
        schedule.load_state_dict(torch.load(checkpoint / "schedule.pt", weights_only=True))
        if patch_heads is not None:
            patch_heads.load_state_dict(load_file(checkpoint / "patch_heads.safetensors"))
        start = state["step"]
        print(f"resumed at step {start}", flush=True)
    log = (out / "log.jsonl").open("a")
    began = time.time()
    for step in range(start, total_steps):
        image_step = step - text_steps  # image steps run as in a run without text steps
        if image_step < 0:
            inputs, labels = make_text_batch(processor.tokenizer, step, args)
        else:
            inputs, labels, drawn = make_batch(processor, image_step, args)
        loss = model(**inputs, labels=labels).loss
        total, extra = loss, {}
        if patch_heads is not None and image_step >= 0:
            patch_loss = patch_heads(captured.pop("features"), patch_attribute_labels(drawn, args.patch_size))
            total = loss + args.patch_attributes * patch_loss
            extra["patch_loss"] = round(patch_loss.item(), 4)
        if image_step >= 0 and text_mixed(image_step, args):
            text_inputs, text_labels = make_text_batch(processor.tokenizer, TEXT_MIX_OFFSET + image_step, args)
            text_loss = model(**text_inputs, labels=text_labels).loss
            total = total + text_loss
            extra["text_loss"] = round(text_loss.item(), 4)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        trained = [*model.parameters(), *(patch_heads.parameters() if patch_heads is not None else ())]
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        schedule.step()
        record = {
            "step": step + 1,
            "loss": round(loss.item(), 4),
            **extra,
            "difficulty": 3 if image_step < 0 else difficulty_at(image_step, args.steps, bool(args.init)),
            "seconds": round(time.time() - began, 1),
        }
        if image_step < 0:
            record["phase"] = "text"
        if (step + 1) % args.eval_every == 0 or step + 1 in (text_steps, total_steps):
            if image_step < 0:
                record.update({f"text_{k}": v for k, v in evaluate(model, processor, args, text=True).items()})
            else:
                phase = image_step < args.isolate_image_tokens * args.steps  # the fixed phase, not random draws
                record.update(evaluate(model, processor, args, isolate=phase))
                if args.query_reads_probability:
                    masked = evaluate(model, processor, args, query_reads=True)
                    record.update({f"query_reads_{k}": v for k, v in masked.items()})
                if text_steps or args.text_mix:  # does the text skill survive the image steps?
                    in_words = evaluate(model, processor, args, batches=2, text=True)
                    record.update({f"text_{k}": v for k, v in in_words.items()})
            if patch_heads is not None and image_step >= 0:
                record.update(patch_attribute_accuracy(model, processor, patch_heads, args))
        log.write(json.dumps(record) + "\n")
        log.flush()
        if (step + 1) % 25 == 0 or "answer_exact" in record or "text_answer_exact" in record:
            print(json.dumps(record), flush=True)
        if (step + 1) % args.save_every == 0 or step + 1 == total_steps:
            checkpoint.mkdir(exist_ok=True)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, checkpoint / "model.safetensors")
            torch.save(optimizer.state_dict(), checkpoint / "optimizer.pt")
            torch.save(schedule.state_dict(), checkpoint / "schedule.pt")
            if patch_heads is not None:
                save_file(patch_heads.state_dict(), checkpoint / "patch_heads.safetensors")
            saved = {"step": step + 1, "args": {k: v for k, v in vars(args).items() if k not in ("threads",)}}
            (checkpoint / "state.json").write_text(json.dumps(saved))
    model.eval()
    model.config.text_config.attention_dropout = 0.0  # a training regulariser, not part of the shipped model
    model.save_pretrained(out / "model")
    processor.save_pretrained(out / "model")
    print(f"saved {out / 'model'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
