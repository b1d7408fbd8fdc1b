"""Measure a shapes-world model the way issue 7 asks: discovered heads vs baselines vs the pipeline's ceiling.

    python -m localize.benchmarks.shapes_tiny.probe MODEL_DIR [--discover 200 | --heads auto] [--test 500] [--json out.json]

MODEL_DIR is a ``save_pretrained`` directory, or a ``train_shapes`` checkpoint directory (exported first).
Discovery runs the toolkit's own ``localize.heads.discover`` on validation scenes; REC Acc@0.5 is then measured on test
scenes for the top-k heads (the paper's pipeline, smoothing scaled to the grid), the mean of all heads' maps, the
oracle (the target mask downsampled to the grid through the same step), and trivial boxes: the whole image, the
largest object, a random object, a centred box of median target size. Per head: how often its peak cell is on the
target vs on a random other object, its own Acc@0.5, and its target lift (share of its image attention on the target
divided by the target's share of the grid; 1 = no preference), and its object choice (how often the object its
attention is densest on is the target; chance is printed beside it; also among the RefCOCO-sized objects only, the
ones a ``clutter`` world asks about), for the best such head also per expression kind,
and its target preference (attention per cell of the target's box over that on the other objects' boxes, median over
scenes: a head that attends to every object scores ~1, one that picks the referred object much more).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from localize.benchmarks.metrics import box_iou

from localize.data import shapes


def trial_settings(path: str) -> dict:
    """The ``train_shapes`` arguments a checkpoint directory was written with (empty for an alias or model)."""
    state = Path(path) / "state.json"
    return json.loads(state.read_text())["args"] if state.exists() else {}


def load_for_probe(path: str, settings: dict):
    """A VLM from an alias or model directory, or from a ``train_shapes`` checkpoint built from its ``settings``."""
    from localize.models import VLM, load_model

    if not settings:
        return load_model(path, device="cpu", dtype="float32")
    from localize.benchmarks.shapes_tiny.train_base import build_model
    from safetensors.torch import load_file

    model, processor = build_model(argparse.Namespace(**settings))
    model.load_state_dict(load_file(Path(path) / "model.safetensors"), strict=False)
    return VLM(model.eval(), processor, spec=path)


def probe(
    vlm,
    discover_n: int,
    test_n: int,
    top_k: int = 3,
    seed: int = 0,
    batch: int = 16,
    heads_spec: str | None = None,
    shaded: bool = False,
    clutter: int = 0,
) -> dict:
    """Discovery on validation scenes (or the given ``heads_spec``: "auto", a heads file, "L2 H1,..."), then REC
    Acc@0.5 of the heads, baselines and the oracle on test scenes (``shaded``: of the shaded world; ``clutter``:
    with that many little objects, which the baselines' random object is not drawn from)."""
    from localize.heads.discover import discover

    from localize.postprocess import GroundingSettings, maps_to_grounding
    from localize.published import load_heads_for

    torch.manual_seed(seed)
    found = None
    if heads_spec is not None:
        heads = list(load_heads_for(vlm, heads_spec).heads)
    else:
        val = [s for s in shapes.ShapesDataset("val", size=discover_n, difficulty=3, shaded=shaded, clutter=clutter)]
        found = discover(vlm, val, top_k=top_k, progress=False, seed=seed)
        heads = list(found.heads)
    settings = GroundingSettings(scale_to_grid=True)
    test = shapes.ShapesDataset("test", size=test_n, difficulty=3, shaded=shaded, clutter=clutter)
    rng = np.random.default_rng(seed)
    ious: dict[str, list[float]] = {
        k: []
        for k in ("heads", "mean_all_heads", "oracle", "whole_image", "largest_object", "random_object", "center_box")
    }
    sizes = []
    # Per head: how often its peak cell lies on the target vs on another (random) object, and its own Acc@0.5.
    peak_target: dict[tuple[int, int], list[bool]] = {}
    peak_other: dict[tuple[int, int], list[bool]] = {}
    head_acc: dict[tuple[int, int], list[bool]] = {}
    # Lift: share of the head's image attention on the target / the target's share of the grid (1 = no preference).
    lift: dict[tuple[int, int], list[float]] = {}
    # Object choice: how often the object on which the head's attention is densest is the target (scenes with >= 2
    # objects; chance = the mean of 1 / objects).
    choice: dict[tuple[int, int], list[bool]] = {}
    preference: dict[tuple[int, int], list[float]] = {}
    chance: list[float] = []
    # The same among the RefCOCO-sized objects only (a ``clutter`` world's little objects are never asked about).
    choice_referable: dict[tuple[int, int], list[bool]] = {}
    chance_referable: list[float] = []
    choice_kinds: list[str] = []  # per scene with >= 2 objects: its expression kind ("colour" = "the <colour> object")
    for start in range(0, test_n, batch):
        samples = [test[i] for i in range(start, min(test_n, start + batch))]
        captured = vlm.capture([s.image for s in samples], [s.expression for s in samples])
        for sample, maps in zip(samples, captured):
            target = sample.box
            chosen = maps.select(heads).numpy()
            ious["heads"].append(box_iou(maps_to_grounding(chosen, maps.geometry, settings).box, target))
            mean_map = maps.maps.mean(0, keepdim=True).numpy()
            ious["mean_all_heads"].append(box_iou(maps_to_grounding(mean_map, maps.geometry, settings).box, target))
            oracle = maps.geometry.mask_to_grid(sample.mask())[None]
            ious["oracle"].append(box_iou(maps_to_grounding(oracle, maps.geometry, settings).box, target))
            width, height = sample.image_size
            ious["whole_image"].append(box_iou((0, 0, width, height), target))
            objects = [o["box"] for o in sample.meta["objects"]]
            largest = max(objects, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
            ious["largest_object"].append(box_iou(largest, target))
            referable = [k for k, o in enumerate(sample.meta["objects"]) if o["size"] != shapes.CLUTTER_WORD]
            ious["random_object"].append(box_iou(objects[referable[int(rng.integers(len(referable)))]], target))
            sizes.append((target[2] - target[0], target[3] - target[1]))
            others = [b for k, b in enumerate(objects) if k != sample.meta["target"]]
            other = maps.geometry.box_to_grid(others[int(rng.integers(len(others)))]) if others else None
            share = (maps.maps.numpy() * oracle).sum((1, 2)) / np.maximum(maps.maps.numpy().sum((1, 2)), 1e-9)
            area = float(oracle.mean())
            object_grids = [maps.geometry.box_to_grid(b) for b in objects]
            density = np.stack(
                [(maps.maps.numpy() * g).sum((1, 2)) / max(float(g.sum()), 1e-9) for g in object_grids], axis=1
            )
            if len(objects) > 1:
                others_grid = np.max([g for k, g in enumerate(object_grids) if k != sample.meta["target"]], axis=0)
                on_others = (maps.maps.numpy() * others_grid).sum((1, 2)) / max(float(others_grid.sum()), 1e-9)
                scene_preference = density[:, sample.meta["target"]] / np.maximum(on_others, 1e-12)
                chance.append(1.0 / len(objects))
                words = sample.expression.split()
                colour_only = len(words) == 3 and words[1] in shapes.COLORS and words[2] == "object"
                choice_kinds.append("colour" if colour_only else sample.meta["kind"])
            if len(referable) > 1:
                chance_referable.append(1.0 / len(referable))
            flat = maps.maps.flatten(1).argmax(1).numpy()
            rows, cols = np.unravel_index(flat, maps.grid)
            for i, head in enumerate(maps.heads):
                head = tuple(int(v) for v in head)
                peak_target.setdefault(head, []).append(bool(oracle[0, rows[i], cols[i]] >= 0.5))
                peak_other.setdefault(head, []).append(bool(other is not None and other[rows[i], cols[i]] >= 0.5))
                single = maps_to_grounding(maps.maps[i : i + 1].numpy(), maps.geometry, settings).box
                head_acc.setdefault(head, []).append(box_iou(single, target) >= 0.5)
                lift.setdefault(head, []).append(float(share[i]) / max(area, 1e-9))
                if len(objects) > 1:
                    choice.setdefault(head, []).append(int(density[i].argmax()) == sample.meta["target"])
                    preference.setdefault(head, []).append(float(scene_preference[i]))
                if len(referable) > 1:
                    densest = referable[int(density[i, referable].argmax())]
                    choice_referable.setdefault(head, []).append(densest == sample.meta["target"])
    w, h = np.median(np.asarray(sizes), axis=0)
    for sample in (test[i] for i in range(test_n)):
        width, height = sample.image_size
        box = ((width - w) / 2, (height - h) / 2, (width + w) / 2, (height + h) / 2)
        ious["center_box"].append(box_iou(box, sample.box))
    acc = {k: float(np.mean(np.asarray(v) >= 0.5)) for k, v in ious.items()}
    baselines = ("whole_image", "largest_object", "random_object", "center_box")
    per_head = sorted(
        (
            {
                "head": list(h),
                "peak_on_target": float(np.mean(peak_target[h])),
                "peak_on_random_other": float(np.mean(peak_other[h])),
                "acc@0.5": float(np.mean(head_acc[h])),
                "target_lift": float(np.mean(lift[h])),
                "object_choice": float(np.mean(choice.get(h, [np.nan]))),
                "object_choice_referable": float(np.mean(choice_referable.get(h, [np.nan]))),
                "target_preference": float(np.median(preference.get(h, [np.nan]))),
            }
            for h in peak_target
        ),
        key=lambda r: -r["target_lift"],
    )
    best_choice = max(per_head, key=lambda r: r["object_choice"])
    kinds = np.asarray(choice_kinds)
    by_kind = {
        kind: {
            "n": int((kinds == kind).sum()),
            "object_choice": float(np.mean(np.asarray(choice[tuple(best_choice["head"])])[kinds == kind])),
            "chance": float(np.mean(np.asarray(chance)[kinds == kind])),
        }
        for kind in sorted(set(choice_kinds))
    }
    return {
        "per_head_top5": per_head[:5],
        "best_single_head_acc@0.5": max(r["acc@0.5"] for r in per_head),
        "best_object_choice": best_choice,
        "best_object_choice_by_kind": by_kind,  # "colour": "the <colour> object", which one colour match answers
        "object_choice_chance": float(np.mean(chance)) if chance else None,
        "best_object_choice_referable": max(r["object_choice_referable"] for r in per_head),
        "object_choice_referable_chance": float(np.mean(chance_referable)) if chance_referable else None,
        "heads": [list(h) for h in heads],
        "frequency_of_heads": None
        if found is None
        else [float(found.heads_file.frequency[layer][head]) for layer, head in heads],
        "tau": None if found is None else found.heads_file.tau,
        "acc@0.5": acc,
        "best_trivial": max(acc[k] for k in baselines),
        "discover_samples": discover_n,
        "test_samples": test_n,
    }


@torch.no_grad()
def text_object_choice(vlm, settings: dict, batches: int = 4) -> dict:
    """For a model trained with ``--text-steps``: on validation scenes described in words, how often each head's
    attention at an expression's last token falls most on the target's description (against chance), the best such
    head's target preference (median over expressions of its attention on the target's words over the mean on
    another object's), and how often the first answer word (the column; in a shaded world the shade) is right:
    whether the language model selects in its attention in words."""
    from localize.benchmarks.shapes_tiny import train_base as train_shapes

    args = argparse.Namespace(**settings)
    model, tokenizer = vlm.model, vlm.processor.tokenizer
    per_object = train_shapes.words_per_object(args)
    layers, heads = vlm.num_layers, vlm.num_heads
    hits = np.zeros((layers, heads))
    chance, first_word_right, preferences = [], [], []
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")  # attention weights for every head
    try:
        for k in range(batches):
            rows = train_shapes.text_rows(k, args, split="val", size=32)
            inputs, labels = train_shapes.make_text_batch(tokenizer, k, args, rows=rows)
            out = model(**inputs, output_attentions=True)
            attention = torch.stack(out.attentions, 1)  # [batch, layers, heads, T, T]
            for b, (_, described, targets) in enumerate(rows):
                labelled = (labels[b] != -100).tolist()
                starts = [t for t in range(1, len(labelled)) if labelled[t] and not labelled[t - 1]]
                n_objects, rest = divmod(described, per_object)
                if rest:
                    raise ValueError(f"a description of {described} words is not {per_object} words per object")
                for start, target in zip(starts, targets):
                    on_words = attention[b, :, :, start - 1, 1 : 1 + described]  # the query reads the description
                    per_target = on_words.reshape(layers, heads, n_objects, per_object).sum(-1)
                    hits += (per_target.argmax(-1) == target).numpy()
                    others = (per_target.sum(-1) - per_target[..., target]) / max(1, n_objects - 1)
                    preferences.append((per_target[..., target] / others.clamp_min(1e-9)).numpy())
                    chance.append(1.0 / n_objects)
                    first_word_right.append(bool(out.logits[b, start - 1].argmax() == inputs["input_ids"][b, start]))
    finally:
        model.set_attn_implementation(previous)
    choice = hits / max(1, len(chance))
    best = np.unravel_index(choice.argmax(), choice.shape)
    preference = np.median(np.stack(preferences), 0) if preferences else np.zeros((layers, heads))
    return {
        "text_object_choice": [[round(float(c), 3) for c in row] for row in choice],
        "text_best_head": [int(best[0]), int(best[1])],
        "text_best_object_choice": float(choice.max()),
        "text_object_choice_chance": float(np.mean(chance)),
        "text_best_head_target_preference": float(preference[best]),
        "text_first_answer_word_acc": float(np.mean(first_word_right)),
        "text_expressions": len(chance),
    }


def main(argv: list[str] | None = None) -> int:
    """Print the probe's numbers (and write them as JSON)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--discover", type=int, default=200, help="validation scenes for discovery")
    parser.add_argument("--test", type=int, default=500, help="test scenes for REC")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--heads", default=None, help='skip discovery: "auto", a heads file or "L2 H1,L3 H0"')
    parser.add_argument("--shaded", action="store_true", help="scenes of the shaded world (train_shapes --shaded)")
    parser.add_argument(
        "--clutter",
        type=int,
        default=None,
        help="little objects per scene (train_shapes --clutter; default: the checkpoint's)",
    )
    parser.add_argument(
        "--text",
        action="store_true",
        help="also measure object choice on scenes in words (a train_shapes checkpoint; meaningful after "
        "--text-steps or --text-mix)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    trained = trial_settings(args.model)
    if args.text and not trained:
        parser.error("--text needs a train_shapes checkpoint (its settings describe the scenes in words)")
    vlm = load_for_probe(args.model, trained)
    result = probe(
        vlm,
        args.discover,
        args.test,
        args.top_k,
        heads_spec=args.heads,
        shaded=args.shaded or trained.get("shaded", False),
        clutter=trained.get("clutter", 0) if args.clutter is None else args.clutter,
    )
    if args.text:
        result.update(text_object_choice(vlm, trained))
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
