"""``localize discover``: its arguments and the run that draws samples, calls :func:`discover` and reports."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from localize.errors import DataError, InputError, LocalizeError
from localize.files import check_output
from localize.runs import process_state

from .discover import DiscoveryResult, discover, draw_samples
from .scoring import TAU_METHODS, TIE_RULES, WEIGHTINGS, check_weighting
from .sidecar import read_sidecar, sidecar_files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``localize discover``."""
    parser.add_argument("--model", required=True, help="alias, hub id or local directory")
    parser.add_argument("--data", default="refcoco", metavar="NAME", help="dataset (default refcoco; see data check)")
    parser.add_argument("--data-root", metavar="DIR", help="dataset root (default: $LOCALIZE_DATA_ROOT)")
    parser.add_argument("--split", default="train", help="split to draw samples from (default train)")
    parser.add_argument("--split-by", metavar="NAME", help="refer split scheme: unc, umd or google")
    parser.add_argument("--image-root", metavar="DIR", help="image folder (default: the dataset's convention)")
    parser.add_argument("--samples", type=int, default=1000, help="samples drawn with --seed (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample permutation (default 0)")
    parser.add_argument("--top-k", type=int, default=3, help="localization heads to keep (default 3)")
    parser.add_argument("--per-sample", type=int, default=10, help="heads each sample votes for (default 10)")
    parser.add_argument("--tau", type=float, help="S_img threshold (default: the bend of the sorted means)")
    parser.add_argument(
        "--tau-method", choices=TAU_METHODS, default="chord", help="how tau finds the bend (default chord)"
    )
    parser.add_argument(
        "--tie",
        choices=TIE_RULES,
        default="mean-entropy",
        help="order of heads of equal entropy (default mean-entropy)",
    )
    parser.add_argument("--criterion", choices=("both", "sum", "entropy"), default="both", help="Table 5 ablations")
    parser.add_argument("--selection", choices=("fixed", "greedy"), default="fixed", help="per-sample vote mode")
    parser.add_argument(
        "--weighting",
        type=_weighting,
        default="size",
        metavar="{" + ",".join(WEIGHTINGS) + "}",
        help="entropy P(C): size = the paper (default), official = the official code exactly, component-mass",
    )
    parser.add_argument("--connectivity", type=int, choices=(4, 8), default=8, help="component connectivity")
    parser.add_argument("--skip-layers", type=int, default=2, help="first layers left out (default 2)")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per forward pass (default 8)")
    parser.add_argument("--out", default="heads.json", help="heads file (default heads.json); figures beside it")
    parser.add_argument("--sidecar", help="per-sample statistics, for resuming (default <out stem>.sidecar.jsonl)")
    parser.add_argument("--fresh", action="store_true", help="discard the sidecar of an earlier run first")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default auto)")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    parser.add_argument("--revision", help="model revision on the hub")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _weighting(text: str) -> str:
    """argparse type of ``--weighting``: a known weighting, or a one-line error (naming the retired ``mass``)."""
    try:
        return check_weighting(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _open_samples(args: argparse.Namespace, vlm: Any, sidecar: Path, main: bool) -> tuple[list, list, dict]:
    """The drawn samples, the unreadable ones and the data description recorded in the heads file."""
    from localize.data.registry import open_dataset

    extra = {"split_by": args.split_by} if args.split_by else {}
    source = open_dataset(args.data, data_root=args.data_root, split=args.split, image_root=args.image_root, **extra)
    if len(source) == 0:
        raise DataError(f"{args.data} split {args.split!r} has no samples; pick another --split")
    samples, unreadable = draw_samples(source, args.samples, args.seed)
    if main:
        records = read_sidecar(sidecar) if sidecar_files(sidecar) else {}
        done = sum("sum" in records.get(s.sample_id, {}) for s in samples)
        available = f" (the split has {len(source)})" if args.samples > len(source) else ""
        resuming = f"; resuming: {done} already in {sidecar}" if done else ""
        total = len(samples) + len(unreadable)
        print(f"discover: {vlm.spec}, {total} samples of {args.data}/{args.split}{available}{resuming}")
    data = {
        "name": args.data,
        "split": args.split,
        "data_root": args.data_root or os.environ.get("LOCALIZE_DATA_ROOT"),
        "image_root": os.fspath(getattr(source, "image_root", None) or args.image_root or "") or None,
        "samples": args.samples,
        **extra,
    }
    return samples, unreadable, data


def run(args: argparse.Namespace) -> int:
    """Run ``localize discover``: print the selected heads and the files written."""
    import torch

    from localize.models import load_model

    for flag in ("samples", "top_k", "per_sample", "batch_size"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    check_output(args.out)
    state = process_state()
    device = str(state.device) if state.num_processes > 1 and args.device == "auto" else args.device
    out = Path(args.out)
    sidecar = Path(args.sidecar) if args.sidecar else out.with_name(out.stem + ".sidecar.jsonl")
    if args.fresh and state.is_main_process:
        for path in sidecar_files(sidecar):
            path.unlink()
    state.wait_for_everyone()
    vlm = load_model(args.model, device=device, dtype=args.dtype, revision=args.revision)
    samples, unreadable, data = _open_samples(args, vlm, sidecar, state.is_main_process)
    options = {k: getattr(args, k) for k in ("top_k", "per_sample", "skip_layers", "tau", "criterion", "weighting")}
    options |= {k: getattr(args, k) for k in ("connectivity", "tau_method", "tie", "batch_size", "seed")}
    try:
        result = discover(
            vlm, samples, **options, mode=args.selection, sidecar=sidecar, out=out, progress=not args.no_progress,
            data=data, unreadable=unreadable,
        )  # fmt: skip
    except torch.cuda.OutOfMemoryError as err:
        raise LocalizeError(
            f"out of GPU memory ({err}); rerun with a smaller --batch-size: the samples done are kept in {sidecar}"
        ) from err
    if result is None:
        return 0
    _report(args, result)
    return 0 if result.heads else 1  # "ran but found nothing": no heads file; the sidecar keeps the statistics


def _report(args: argparse.Namespace, result: DiscoveryResult) -> None:
    """Print tau, the selected heads with their statistics, notes on a narrow field, and the files written."""
    hf = result.heads_file
    summary = hf.settings["results"]
    how = "given" if args.tau is not None else args.tau_method
    print(
        f"{hf.n_samples} samples scored, {len(result.skipped)} skipped; tau = {hf.tau:.4g} ({how}; "
        f"{summary['heads_above_tau']} of {summary['heads_scored']} heads pass); ties: {args.tie}"
    )
    for entry in summary["selected"]:
        entropy = "n/a" if entry["mean_entropy"] is None else f"{entry['mean_entropy']:.3f}"
        iou = f", mean IoU {entry['mean_iou']:.3f}" if entry["mean_iou"] is not None else ""
        print(f"  {entry['head']}: frequency {entry['frequency']:.1%}, mean entropy {entropy}{iou}")
    if not hf.heads:
        passed = summary["heads_above_tau"]
        why = (
            f"tau = {hf.tau:.4g} is above every head's mean S_img"
            if not passed
            else "no head that passed tau had a finite entropy"
        )
        print(
            f"localize: no head was selected: {why}, so no heads file was written to "
            f"{args.out}; rerun with a lower --tau (or without it: the statistics are kept, so no forward pass is "
            "repeated)",
            file=sys.stderr,
        )
    elif len(hf.heads) < args.top_k:
        print(
            f"  note: only {len(hf.heads)} of the {args.top_k} heads asked for were ever selected: tau = {hf.tau:.4g} "
            "lets few heads compete; --tau LOWER (or --criterion entropy) widens the field"
        )
    competing = summary["heads_scored"] if args.criterion == "entropy" else summary["heads_above_tau"]
    if args.selection == "fixed" and 0 < competing <= args.per_sample:
        print(
            f"  note: --per-sample {args.per_sample} >= the {competing} heads that compete: every "
            "one is selected for every sample, so frequencies tie (order by mean entropy); a smaller --per-sample "
            "makes the frequency count discriminate"
        )
    print("localization heads: " + (", ".join(hf.heads_str) or "none"))
    for reason in summary["skipped_examples"][:3]:
        print(f"  skipped {reason}")
    for name, path in result.paths.items():
        print(f"{name}: {', '.join(map(str, sidecar_files(path))) if name == 'sidecar' else path}")
