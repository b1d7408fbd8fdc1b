"""Rebuild the shipped shapes-world models from their seed: ``shapes-tiny-base`` and ``shapes-tiny``.

    python -m localize.benchmarks.shapes_tiny.build --work runs/build [--install]

Steps (each skipped when its output is on disk, and each resumable, so an interrupted build reruns as is):

1. ``base-stage1``: ``train_base`` from scratch (seed 0; 3500 steps of 12 images x 4 packed expressions;
   lr 1e-3, vision tower and projector 3e-4; curriculum difficulty 1 -> 2 -> 3).
2. ``base-stage2``: the same model continued for 2500 steps (lr 5e-4 / 1.5e-4; difficulty 2, then 3).
   Its ``model/`` is ``shapes-tiny-base``.
3. ``localize discover`` on the base (500 shapes train scenes; ``--per-sample 2``, since only 8 heads of layers
   2-3 compete) -> ``base-stage2/model/heads.json``.
4. ``localize finetune --loss kl`` (the Where-to-Look KL variant) of those heads (LoRA on the language model and, with
   ``--lora-vision``, the vision tower and projector; see FINETUNE) -> ``finetune/merged``, which carries the
   supervised heads as its ``heads.json``. That is ``shapes-tiny``. (Rerunning discovery on it would pick other
   heads: the fine-tuned heads now cover their objects with several mean-binarized pieces, so their spatial
   entropy is no longer among the lowest; see TRIALS.md.)

``--install`` copies both into ``localize/assets/``. Training runs on ``--threads`` threads (the shipped weights used
1; float reductions may differ with another count); discovery and fine-tuning use torch's default (both cores here).
On the 2-core machine that built the shipped models: stage 1 34 min, stage 2 22 min, fine-tuning 19.8 min wall for
2000 steps (0.57 s/step, alone on 2 threads; a second run gave bit-identical weights). A later full rebuild on a
slower machine of the same kind took 55 + 37 min (1 thread, partly beside another job) and ~0.8-1.3 s per
fine-tuning step, and gave other weights: see TRIALS.md ("What ships"); stage 1 ran at 0.58 s/step on 2
threads there (0.40 where the shipped models were built).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

STAGE1 = ["--seed", "0", "--steps", "3500", "--batch-size", "48", "--pack", "4", "--lr", "1e-3", "--vision-lr", "3e-4"]
STAGE2 = [
    "--seed",
    "0",
    "--steps",
    "2500",
    "--batch-size",
    "48",
    "--pack",
    "4",
    "--lr",
    "5e-4",
    "--vision-lr",
    "1.5e-4",
]
DISCOVER = ["--data", "shapes", "--samples", "500", "--per-sample", "2", "--no-progress"]
FINETUNE = [
    "--data", "shapes", "--loss", "kl", "--schedule", "constant", "--lora-vision", "--steps", "2000",
    "--batch-size", "16", "--lr", "3e-3", "--save-every", "200", "--no-progress",
]  # fmt: skip
ASSETS = Path(__file__).resolve().parents[1] / "localize" / "assets"


def build(work: Path, threads: int = 1, install: bool = False) -> dict[str, Path]:
    """Run the missing steps under ``work``; returns the base and fine-tuned model directories."""
    import torch
    from localize.benchmarks.shapes_tiny import train_base

    from localize.cli import main as localize_main

    default_threads = torch.get_num_threads()  # training sets its own count; discovery and fine-tuning get this

    stage1, stage2, tuned = work / "base-stage1", work / "base-stage2", work / "finetune"
    if not (stage1 / "model" / "config.json").exists():
        train_base.main(["--out", str(stage1), *STAGE1, "--threads", str(threads), "--save-every", "250"])
    if not (stage2 / "model" / "config.json").exists():
        argv = ["--out", str(stage2), "--init", str(stage1 / "checkpoint"), *STAGE2, "--threads", str(threads)]
        train_base.main([*argv, "--save-every", "250"])
    torch.set_num_threads(default_threads)
    base = stage2 / "model"
    if not (base / "heads.json").exists():
        _ok(localize_main(["discover", "--model", str(base), *DISCOVER, "--out", str(base / "heads.json")]))
    merged = tuned / "merged"
    if not (merged / "config.json").exists():
        argv = ["finetune", "--model", str(base), "--heads", str(base / "heads.json"), *FINETUNE, "--out", str(tuned)]
        _ok(localize_main([*argv, "--resume"] if (tuned / "checkpoints").exists() else argv))
    models = {"shapes-tiny-base": base, "shapes-tiny": merged}
    if install:
        for name, source in models.items():
            target = ASSETS / name
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.sidecar.jsonl", "*.png"))
            print(f"installed {target}")
    return models


def _ok(code: int) -> None:
    if code != 0:
        raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    """Build (or finish building) the two models; ``--install`` puts them into the package."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="working directory (every step's output)")
    parser.add_argument("--threads", type=int, default=1, help="training threads (the shipped weights: 1)")
    parser.add_argument("--install", action="store_true", help="copy the models into localize/assets/")
    args = parser.parse_args(argv)
    models = build(Path(args.work), threads=args.threads, install=args.install)
    for name, path in models.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
