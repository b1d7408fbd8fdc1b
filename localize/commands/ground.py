"""``localize ground`` (image + phrase -> box, mask, JSON, overlay) and ``localize demo`` (a shapes scene)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from localize.errors import InputError, OutputError
from localize.files import check_output, write_output
from localize.images import EXAMPLES, example_image
from localize.options import add_grounding_arguments, localizer_from_args

DEFAULT_MODEL = "shapes-tiny"


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help=f"alias, hub id or local directory (default: {DEFAULT_MODEL})")
    parser.add_argument("--heads", default="auto", help='"auto", a heads file, or "L14 H24,L14 H13"')
    add_grounding_arguments(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``localize ground``."""
    parser.add_argument("inputs", nargs="+", metavar="IMAGE PHRASE", help="image file, then referring expression(s)"
                        " (several share one image prefix); with --example, phrases only")  # fmt: skip
    parser.add_argument(
        "--example", action="store_true",
        help=f"ground on a shipped example image ({EXAMPLES[0]}, or name one first: {', '.join(EXAMPLES[1:])})",
    )  # fmt: skip
    parser.add_argument("--noun-chunks", action="store_true", help="ground every noun chunk of one sentence (spaCy)")
    _add_model_arguments(parser)
    parser.add_argument("--out", default=None, help="result JSON (box, mask as COCO RLE, score, heads, settings)")
    parser.add_argument("--viz", default=None, help="overlay PNG (several phrases: a gallery)")


def build_localizer(args: argparse.Namespace):
    """A :class:`~localize.grounder.Localizer` from the shared model/heads/SAM/smoothing arguments."""
    return localizer_from_args(args, model=args.model or DEFAULT_MODEL)


def _report(localizer, image, groundings: list, out: str | None, viz: str | None, source: str) -> dict[str, Any]:
    from localize.images import reduced_by

    result = localizer.result_record(image, groundings, source)
    if out:
        write_output(out, json.dumps(result, indent=2))
    if viz:
        from localize.viz import render_gallery, render_overlay  # matplotlib: only when a figure is asked for

        factor = reduced_by(image)  # an image reduced on load is drawn at the size the heatmap has
        items = [
            {"image": image, "heatmap": g.heatmap, "box": tuple(v / factor for v in g.box),
             "mask": g.mask[::factor, ::factor], "phrase": g.phrase}
            for g in groundings
        ]  # fmt: skip
        try:
            if len(items) == 1:
                render_overlay(**items[0], path=viz)
            else:
                render_gallery(items, path=viz, cols=min(3, len(items)))
        except OSError as err:
            kept = f"; the results are in {out}" if out else ""
            raise OutputError(f"cannot write {viz}: {err.strerror or err}{kept}") from None
    return result


def _image_and_phrases(args: argparse.Namespace) -> None:
    """Split the positional inputs into ``args.image`` and ``args.phrases`` (all phrases with ``--example``)."""
    if args.example:
        named = args.inputs[0] in EXAMPLES and len(args.inputs) > 1
        args.image = example_image(args.inputs[0] if named else EXAMPLES[0])
        args.phrases = list(args.inputs[1:] if named else args.inputs)
    elif len(args.inputs) < 2:
        raise InputError("give an image and at least one phrase (or --example and phrases)")
    else:
        args.image, args.phrases = args.inputs[0], list(args.inputs[1:])


def run(args: argparse.Namespace) -> int:
    """Ground the phrase(s) and print one line per result; write JSON / overlay when asked."""
    _image_and_phrases(args)
    if args.noun_chunks and len(args.phrases) != 1:
        raise InputError("--noun-chunks takes one sentence")
    for path in (args.out, args.viz):
        if path:
            check_output(path)
    localizer = build_localizer(args)  # first: how far a large image is reduced depends on the model
    image = localizer.load_image(args.image)
    if args.noun_chunks:
        groundings = localizer.ground_phrases(image, args.phrases[0])
    else:
        groundings = localizer.ground_many(image, args.phrases)
    _report(localizer, image, groundings, args.out, args.viz, os.fspath(args.image))
    warn_unknown_words(groundings)
    for g in groundings:
        x0, y0, x1, y1 = g.box
        print(
            f"{g.phrase!r}: box ({x0:.0f}, {y0:.0f}, {x1:.0f}, {y1:.0f})  score {g.score:.2f}  mask {int(g.mask.sum())} px"
        )
    for path in (args.out, args.viz):
        if path:
            print(f"wrote {path}")
    return 0


def warn_unknown_words(groundings: list) -> None:
    """One stderr line per phrase with words the model's vocabulary lacks: its box is a guess."""
    for g in groundings:
        if g.meta.get("unknown_words"):
            words = ", ".join(g.meta["unknown_words"])
            print(
                f"localize: warning: {g.phrase!r}: unknown words {words} (the model cannot read them)", file=sys.stderr
            )


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``localize demo``."""
    parser.add_argument("--seed", type=int, default=None, help="scene seed (default: a fresh one)")
    parser.add_argument("--difficulty", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=None, help="scene size in pixels (default: the world's)")
    parser.add_argument("--count", type=int, default=3, help="expressions to ground")
    _add_model_arguments(parser)
    parser.add_argument("--out", default="localize-demo.png", help="overlay PNG")
    parser.add_argument("--json", default=None, help="also write the results as JSON")


def run_demo(args: argparse.Namespace) -> int:
    """Render a shapes scene, ground ``--count`` of its expressions with one image prefix, write the overlay."""
    import numpy as np

    from localize.benchmarks.metrics import box_iou
    from localize.data import shapes

    for path in (args.out, args.json):
        if path:
            check_output(path)
    seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % 1_000_000_000)
    size = args.image_size or shapes.DEFAULT_IMAGE_SIZE
    scene, expressions = shapes.sample_scene(seed, args.difficulty, size)
    rng = np.random.default_rng(seed)
    chosen = [expressions[i] for i in rng.permutation(len(expressions))[: args.count]]
    localizer = build_localizer(args)
    groundings = localizer.ground_many(scene.image, [e.text for e in chosen])
    _report(localizer, scene.image, groundings, args.json, args.out, f"shapes scene seed {seed}")
    print(f"scene seed {seed}: {len(scene.objects)} objects")
    for expression, g in zip(chosen, groundings):
        target = scene.objects[expression.target].box
        print(f"{expression.text!r}: box IoU with the target {float(box_iou(g.box, target)):.2f}  score {g.score:.2f}")
    print(f"wrote {args.out}")
    return 0
