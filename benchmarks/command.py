"""``localize bench`` and ``localize reproduce``: their arguments, and the runs they start (a
:class:`~localize.benchmarks.config.BenchConfig` each; ``reproduce`` is the paper's protocol as a preset)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from localize.options import add_grounding_arguments

from .config import DEFAULT_TASKS, PAPER_PROTOCOL, BenchConfig
from .report import format_paper_comparison, format_summary_md, run_compare
from .runner import run_bench


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``localize bench``."""
    parser.add_argument("--compare", nargs=2, metavar=("BASE_DIR", "FT_DIR"), help="zero-shot vs fine-tuned table")
    parser.add_argument("--model", help="alias, hub id or local directory")
    heads = parser.add_mutually_exclusive_group()
    heads.add_argument("--heads", default="auto", help='"auto" (published), a heads file, or "L14 H24,L14 H13"')
    heads.add_argument("--heads-from-discovery", action="store_true", help="discover the heads first (OUT/heads.json)")
    parser.add_argument("--selection", choices=("fixed", "greedy"), default="fixed", help="discovery vote mode")
    parser.add_argument("--discovery-data", default="refcoco", help="discovery dataset (default refcoco)")
    parser.add_argument("--discovery-split", default="train", help="discovery split (default train)")
    parser.add_argument("--discovery-samples", type=int, default=1000, help="discovery samples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="discovery sample seed (default 0)")
    parser.add_argument("--data", default="refcoco", help="dataset(s), comma-separated: refcoco,refcoco+,refcocog,...")
    parser.add_argument("--data-root", help="dataset root (default: $LOCALIZE_DATA_ROOT)")
    parser.add_argument("--image-root", help="image folder (default: the dataset's convention)")
    parser.add_argument("--split-by", help="refer split scheme (default unc for RefCOCO/+, umd for RefCOCOg)")
    parser.add_argument("--splits", help="e.g. val,testA,testB or refcocog:test (default: each dataset's eval splits)")
    parser.add_argument(
        "--task",
        default=",".join(DEFAULT_TASKS),
        help="comma list of rec, res, answer (default rec,res); answer: the model's greedy text answers, exact match",
    )
    parser.add_argument("--limit", type=int, help="first N expressions of each split")
    parser.add_argument("--k", type=int, choices=range(1, 6), metavar="1..5", help="use the first k heads")
    parser.add_argument("--oracle-maps", action="store_true", help="ceiling: target mask on the grid as the map")
    parser.add_argument("--method", help="row label in the tables (default: from heads and settings)")
    parser.add_argument("--gallery", type=int, default=16, help="worst samples rendered to OUT/gallery (default 16)")
    parser.add_argument("--out", help="output directory (with --compare: where compare.json/.md go)")
    add_grounding_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``localize bench`` (or ``--compare``); prints the summary tables."""
    if args.compare:
        run_compare(args.compare[0], args.compare[1], args.out)
        return 0
    summary = run_bench(BenchConfig.from_args(args))
    if not summary:
        return 0  # a non-main process
    print(format_summary_md(summary), end="")
    total = summary["total"]
    flagged = [f"{total.get(key, 0)} {what}" for key, what in (
        ("n_mask_problem", "without a usable target mask (REC only)"),
        ("n_unknown_words", "with words the model does not know"),
    ) if total.get(key)]  # fmt: skip
    notes = f" ({'; '.join(flagged)})" if flagged else ""
    print(f"{total['n']} expressions scored{notes}, {total['skipped']} skipped; wrote {Path(args.out) / 'summary.md'}")
    if total["n"] == 0:  # no silent empty result: the tables hold no number
        print(f"localize: error: no expression was scored ({total['skipped']} skipped); see the skipped reasons above",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


def add_reproduce_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``localize reproduce``."""
    parser.add_argument("--model", default="llava-1.5-7b", help="model (default llava-1.5-7b)")
    parser.add_argument("--data-root", required=True, help="refer data root (refcoco, refcoco+, refcocog)")
    parser.add_argument("--image-root", help="COCO train2014 images (default: the refer convention)")
    parser.add_argument("--sam", help="SAM checkpoint (the paper's RES uses SAM with a box prompt)")
    parser.add_argument("--sam-type", default="vit_h", choices=["vit_b", "vit_l", "vit_h"])
    parser.add_argument("--heads", help="skip discovery and use these heads (e.g. auto)")
    parser.add_argument("--discovery-samples", type=int, default=PAPER_PROTOCOL["discovery_samples"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, help="first N expressions of each split (a quick look)")
    parser.add_argument("--gallery", type=int, default=16)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--no-progress", action="store_true")


def reproduce_config(args: argparse.Namespace) -> BenchConfig:
    """The paper's protocol (:meth:`BenchConfig.paper_protocol`) with this ``localize reproduce`` command's options."""
    given = BenchConfig.from_args(args)
    return BenchConfig.paper_protocol(
        **{k: getattr(given, k) for k in ("model", "data_root", "image_root", "sam", "sam_type", "seed", "limit")},
        **{k: getattr(given, k) for k in ("discovery_samples", "gallery", "out", "device", "dtype", "no_progress")},
        heads=args.heads or "auto",
        heads_from_discovery=not args.heads,
        argv=["reproduce", *sys.argv[2:]],
    )


def run_reproduce(args: argparse.Namespace) -> int:
    """Run ``localize reproduce``: discovery, REC and RES on the eight splits, our table beside the paper's."""
    summary = run_bench(reproduce_config(args))
    if not summary:
        return 0  # a non-main process
    summary = {**summary, "sam": bool(args.sam)}
    text = format_paper_comparison(summary, args.model)
    print(text, end="")
    (Path(args.out) / "reproduce.md").write_text(text, encoding="utf-8")
    print(f"wrote {Path(args.out) / 'reproduce.md'}")
    return 0
