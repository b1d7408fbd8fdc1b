"""Rebuild the shipped shapes-world models from their seed: ``shapes-tiny``, ``shapes-tiny-base``, ``shapes-tiny-wtl``.

    python -m localize.benchmarks.shapes_tiny.build --work runs/build [--install]

Steps (each skipped when its output is on disk, and each resumable, so an interrupted build reruns as is):

1. ``klal``: ``train`` from scratch (seed 0; 8000 steps of 12 images x 4 packed expressions, half of the scenes
   from the varied world; lr 1e-3 for both sides; the answers' next-token loss plus 3 x the KLAL attention loss on
   the head average of LM layer 3, no head named). 2 threads: 49 min on the 2-core machine that built the shipped
   weights, with other work beside it (0.33 s/step alone).
2. ``localize discover`` on it, blind (200 shapes train scenes, ``--per-sample 3``: each sample votes for as many
   heads as are kept, see KLAL_DISCOVER) -> ``klal/model/heads.json``. That is ``shapes-tiny``.
3. ``base-stage1``: ``train_base`` from scratch (seed 0; 3500 steps; lr 1e-3, vision tower and projector 3e-4;
   curriculum difficulty 1 -> 2 -> 3); ``base-stage2``: continued for 2500 steps (lr 5e-4 / 1.5e-4). Its ``model/``
   is ``shapes-tiny-base``.
4. ``localize discover`` on the base (500 shapes train scenes; ``--per-sample 2``) -> ``base-stage2/model/heads.json``.
5. ``localize finetune --loss kl`` (the Where-to-Look KL variant) of those heads (LoRA on the language model and,
   with ``--lora-vision``, the vision tower and projector; see FINETUNE) -> ``finetune/merged``, carrying the
   supervised heads as its ``heads.json``. That is ``shapes-tiny-wtl``: the fine-tuning extension on a model that
   lacks the heads.

``--install`` copies the three into ``localize/assets/``. Base training runs on ``--threads`` threads (the shipped
base used 1; float reductions may differ with another count), the KLAL model on 2 (as shipped); discovery and
fine-tuning use torch's default (both cores here). Timings of the base on the machine that built it: stage 1 34
min, stage 2 22 min, fine-tuning 19.8 min wall for 2000 steps (a second run gave bit-identical weights). A later
full rebuild of the base on a slower machine of the same kind took 55 + 37 min and gave other weights: see
TRIALS.md ("What ships").
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
KLAL = [
    "--seed", "0", "--steps", "8000", "--lr", "1e-3", "--vision-lr", "1e-3", "--klal-weight", "3", "--varied", "0.5",
    "--klal-layers", "3", "--threads", "2", "--no-progress",
]  # fmt: skip
# Blind discovery of the KLAL model: 8 heads compete (layers 2-3), top-k 3. With --per-sample below top-k the k-th
# head is whichever most often displaces one of the best two, not a head of its own (per-sample 2 picked L2 H2:
# Acc@0.5 64.4; 3 picks L3 H1, L3 H3, L3 H2: 89.6; TRIALS.md, trial L).
KLAL_DISCOVER = ["--data", "shapes", "--samples", "200", "--per-sample", "3", "--no-progress"]
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
    supervised = _klal(work / "klal", localize_main, default_threads)
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
    models = {"shapes-tiny": supervised, "shapes-tiny-base": base, "shapes-tiny-wtl": merged}
    if install:
        for name, source in models.items():
            target = ASSETS / name
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.sidecar.jsonl", "*.png"))
            print(f"installed {target}")
    return models


def _klal(run: Path, localize_main, default_threads: int) -> Path:
    """Steps 1-2: the attention-supervised model and its blindly discovered heads; returns its model directory."""
    import torch
    from localize.benchmarks.shapes_tiny import train

    model = run / "model"
    if not (model / "config.json").exists():
        train.main(["--out", str(run), *KLAL])
        torch.set_num_threads(default_threads)  # training set its own count
    if not (model / "heads.json").exists():
        _ok(localize_main(["discover", "--model", str(model), *KLAL_DISCOVER, "--out", str(model / "heads.json")]))
    return model


def _ok(code: int) -> None:
    if code != 0:
        raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    """Build (or finish building) the three models; ``--install`` puts them into the package."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="working directory (every step's output)")
    parser.add_argument("--threads", type=int, default=1, help="base training threads (the shipped base: 1)")
    parser.add_argument("--install", action="store_true", help="copy the models into localize/assets/")
    args = parser.parse_args(argv)
    models = build(Path(args.work), threads=args.threads, install=args.install)
    for name, path in models.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
