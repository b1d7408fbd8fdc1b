"""Measure a shapes-world model the way issue 7 asks: discovered heads vs baselines vs the pipeline's ceiling.

    python -m localize.benchmarks.shapes_tiny.probe MODEL_DIR [--discover 200 | --heads auto] [--test 500] [--json out.json]

MODEL_DIR is a ``save_pretrained`` directory, or a ``train_base`` checkpoint directory (exported first).
Discovery runs the toolkit's own ``localize.heads.discover`` on validation scenes; REC Acc@0.5 is then measured on test
scenes for the top-k heads (the paper's pipeline, smoothing scaled to the grid), the mean of all heads' maps, the
oracle (the target mask downsampled to the grid through the same step), and trivial boxes: the whole image, the
largest object, a random object, a centred box of median target size. Per head: how often its peak cell is on the
target vs on a random other object, its own Acc@0.5, and its target lift (share of its image attention on the target
divided by the target's share of the grid; 1 = no preference), and its object choice (how often the object its
attention is densest on is the target; chance is printed beside it), for the best such head also per expression
kind, and its target preference (attention per cell of the target's box over that on the other objects' boxes,
median over scenes: a head that attends to every object scores ~1, one that picks the referred object much more).
The trial-only modes (``--text``, ``--shaded``, ``--clutter``) ran at commit ``d0015a8`` (TRIALS.md).
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

BOXES = ("heads", "mean_all_heads", "oracle", "whole_image", "largest_object", "random_object", "center_box")
BASELINES = ("whole_image", "largest_object", "random_object", "center_box")


def trial_settings(path: str) -> dict:
    """The ``train_base`` settings a checkpoint directory was written with (empty for an alias or model)."""
    state = Path(path) / "state.json"
    return json.loads(state.read_text())["args"] if state.exists() else {}


def load_for_probe(path: str, settings: dict):
    """A VLM from an alias or model directory, or from a ``train_base`` checkpoint built from its ``settings``."""
    from localize.models import VLM, load_model

    if not settings:
        return load_model(path, device="cpu", dtype="float32")
    from safetensors.torch import load_file

    from .config import ShapesTrainConfig
    from .model import build_model

    model, processor = build_model(ShapesTrainConfig.from_settings(settings))
    model.load_state_dict(load_file(Path(path) / "model.safetensors"), strict=False)
    return VLM(model.eval(), processor, spec=path)


class _Tally:
    """Per-box IoUs and per-head measures collected over the test scenes."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.ious: dict[str, list[float]] = {k: [] for k in BOXES}
        self.sizes: list[tuple[float, float]] = []
        # per head: peak cell on the target / on a random other object, own Acc@0.5, lift, object choice, preference
        self.head: dict[str, dict[tuple[int, int], list]] = {
            k: {} for k in ("peak_target", "peak_other", "acc", "lift", "choice", "preference")
        }
        self.chance: list[float] = []  # per scene with >= 2 objects: 1 / objects
        self.kinds: list[str] = []  # per scene with >= 2 objects: its expression kind ("colour": "the <colour> object")

    def add(self, key: str, head: tuple[int, int], value) -> None:
        """Record one scene's ``key`` measure of ``head``."""
        self.head[key].setdefault(head, []).append(value)


def _boxes(tally: _Tally, sample, maps, heads: list, settings) -> np.ndarray:
    """Record the IoUs of the heads', mean map's, oracle's and trivial boxes; returns the oracle grid."""
    from localize.postprocess import maps_to_grounding

    target = sample.box
    chosen = maps.select(heads).numpy()
    tally.ious["heads"].append(box_iou(maps_to_grounding(chosen, maps.geometry, settings).box, target))
    mean_map = maps.maps.mean(0, keepdim=True).numpy()
    tally.ious["mean_all_heads"].append(box_iou(maps_to_grounding(mean_map, maps.geometry, settings).box, target))
    oracle = maps.geometry.mask_to_grid(sample.mask())[None]
    tally.ious["oracle"].append(box_iou(maps_to_grounding(oracle, maps.geometry, settings).box, target))
    width, height = sample.image_size
    tally.ious["whole_image"].append(box_iou((0, 0, width, height), target))
    objects = [o["box"] for o in sample.meta["objects"]]
    largest = max(objects, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
    tally.ious["largest_object"].append(box_iou(largest, target))
    tally.ious["random_object"].append(box_iou(objects[int(tally.rng.integers(len(objects)))], target))
    tally.sizes.append((target[2] - target[0], target[3] - target[1]))
    return oracle


def _per_head(tally: _Tally, sample, maps, oracle: np.ndarray, settings) -> None:
    """Record each head's peak, own box, lift, object choice and target preference on one scene."""
    from localize.postprocess import maps_to_grounding

    objects = [o["box"] for o in sample.meta["objects"]]
    goal = sample.meta["target"]
    others = [b for k, b in enumerate(objects) if k != goal]
    other = maps.geometry.box_to_grid(others[int(tally.rng.integers(len(others)))]) if others else None
    attention = maps.maps.numpy()
    share = (attention * oracle).sum((1, 2)) / np.maximum(attention.sum((1, 2)), 1e-9)
    area = float(oracle.mean())
    grids = [maps.geometry.box_to_grid(b) for b in objects]
    density = np.stack([(attention * g).sum((1, 2)) / max(float(g.sum()), 1e-9) for g in grids], axis=1)
    if len(objects) > 1:
        others_grid = np.max([g for k, g in enumerate(grids) if k != goal], axis=0)
        on_others = (attention * others_grid).sum((1, 2)) / max(float(others_grid.sum()), 1e-9)
        preference = density[:, goal] / np.maximum(on_others, 1e-12)
        tally.chance.append(1.0 / len(objects))
        words = sample.expression.split()
        colour_only = len(words) == 3 and words[1] in shapes.COLORS and words[2] == "object"
        tally.kinds.append("colour" if colour_only else sample.meta["kind"])
    rows, cols = np.unravel_index(maps.maps.flatten(1).argmax(1).numpy(), maps.grid)
    for i, head in enumerate(maps.heads):
        head = tuple(int(v) for v in head)
        tally.add("peak_target", head, bool(oracle[0, rows[i], cols[i]] >= 0.5))
        tally.add("peak_other", head, bool(other is not None and other[rows[i], cols[i]] >= 0.5))
        single = maps_to_grounding(maps.maps[i : i + 1].numpy(), maps.geometry, settings).box
        tally.add("acc", head, box_iou(single, sample.box) >= 0.5)
        tally.add("lift", head, float(share[i]) / max(area, 1e-9))
        if len(objects) > 1:
            tally.add("choice", head, int(density[i].argmax()) == goal)
            tally.add("preference", head, float(preference[i]))


def _summary(tally: _Tally, test, test_n: int) -> dict:
    """Acc@0.5 of every box (the centred box of median target size added here), per-head rows and by-kind choice."""
    w, h = np.median(np.asarray(tally.sizes), axis=0)
    for sample in (test[i] for i in range(test_n)):
        width, height = sample.image_size
        box = ((width - w) / 2, (height - h) / 2, (width + w) / 2, (height + h) / 2)
        tally.ious["center_box"].append(box_iou(box, sample.box))
    acc = {k: float(np.mean(np.asarray(v) >= 0.5)) for k, v in tally.ious.items()}
    measure = tally.head
    per_head = sorted(
        (
            {
                "head": list(h),
                "peak_on_target": float(np.mean(measure["peak_target"][h])),
                "peak_on_random_other": float(np.mean(measure["peak_other"][h])),
                "acc@0.5": float(np.mean(measure["acc"][h])),
                "target_lift": float(np.mean(measure["lift"][h])),
                "object_choice": float(np.mean(measure["choice"].get(h, [np.nan]))),
                "target_preference": float(np.median(measure["preference"].get(h, [np.nan]))),
            }
            for h in measure["peak_target"]
        ),
        key=lambda r: -r["target_lift"],
    )
    best_choice = max(per_head, key=lambda r: r["object_choice"])
    kinds = np.asarray(tally.kinds)
    by_kind = {
        kind: {
            "n": int((kinds == kind).sum()),
            "object_choice": float(np.mean(np.asarray(measure["choice"][tuple(best_choice["head"])])[kinds == kind])),
            "chance": float(np.mean(np.asarray(tally.chance)[kinds == kind])),
        }
        for kind in sorted(set(tally.kinds))
    }
    return {
        "per_head_top5": per_head[:5],
        "best_single_head_acc@0.5": max(r["acc@0.5"] for r in per_head),
        "best_object_choice": best_choice,
        "best_object_choice_by_kind": by_kind,  # "colour": "the <colour> object", which one colour match answers
        "object_choice_chance": float(np.mean(tally.chance)) if tally.chance else None,
        "acc@0.5": acc,
        "best_trivial": max(acc[k] for k in BASELINES),
    }


def probe(
    vlm, discover_n: int, test_n: int, top_k: int = 3, seed: int = 0, batch: int = 16, heads_spec: str | None = None
) -> dict:
    """Discovery on validation scenes (or the given ``heads_spec``: "auto", a heads file, "L2 H1,..."), then REC
    Acc@0.5 of the heads, baselines and the oracle on test scenes, and the per-head measures."""
    from localize.heads.discover import discover

    from localize.postprocess import GroundingSettings
    from localize.published import load_heads_for

    torch.manual_seed(seed)
    found = None
    if heads_spec is not None:
        heads = list(load_heads_for(vlm, heads_spec).heads)
    else:
        val = list(shapes.ShapesDataset("val", size=discover_n, difficulty=3))
        found = discover(vlm, val, top_k=top_k, progress=False, seed=seed)
        heads = list(found.heads)
    settings = GroundingSettings(scale_to_grid=True)
    test = shapes.ShapesDataset("test", size=test_n, difficulty=3)
    tally = _Tally(seed)
    for start in range(0, test_n, batch):
        samples = [test[i] for i in range(start, min(test_n, start + batch))]
        captured = vlm.capture([s.image for s in samples], [s.expression for s in samples])
        for sample, maps in zip(samples, captured):
            oracle = _boxes(tally, sample, maps, heads, settings)
            _per_head(tally, sample, maps, oracle, settings)
    return {
        **_summary(tally, test, test_n),
        "heads": [list(h) for h in heads],
        "frequency_of_heads": None
        if found is None
        else [float(found.heads_file.frequency[layer][head]) for layer, head in heads],
        "tau": None if found is None else found.heads_file.tau,
        "discover_samples": discover_n,
        "test_samples": test_n,
    }


def main(argv: list[str] | None = None) -> int:
    """Print the probe's numbers (and write them as JSON)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--discover", type=int, default=200, help="validation scenes for discovery")
    parser.add_argument("--test", type=int, default=500, help="test scenes for REC")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--heads", default=None, help='skip discovery: "auto", a heads file or "L2 H1,L3 H0"')
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    vlm = load_for_probe(args.model, trial_settings(args.model))
    result = probe(vlm, args.discover, args.test, args.top_k, heads_spec=args.heads)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
