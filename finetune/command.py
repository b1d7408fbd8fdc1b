"""``localize finetune``: its arguments and the run (:func:`localize.finetune.train.train`)."""

from __future__ import annotations

import argparse

from .attention import QUERY_MODES
from .losses import ATTENTION_LOSSES, COMBINE_MODES, SCHEDULES
from .train import ANSWER_MODES, LORA_PROJECTIONS, SUPERVISE_MODES, TrainConfig, train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``localize finetune``."""
    d = TrainConfig(model="")
    parser.add_argument("--model", required=True, help="alias, hub id or local directory")
    parser.add_argument("--heads", default="auto", help="auto, a heads file, or 'L14 H24,L14 H13'")
    parser.add_argument("--data", default=d.data, help="refcoco, refcoco+, refcocog, reasonseg, parquet:PATH, shapes")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--image-root", default=None)
    parser.add_argument("--split", default=d.split)
    parser.add_argument("--limit", type=int, default=None, help="use the first N samples (shapes: the split size)")
    parser.add_argument("--loss", choices=ATTENTION_LOSSES, default=d.loss)
    parser.add_argument("--schedule", choices=SCHEDULES, default=d.schedule)
    parser.add_argument("--lambda", dest="lam", type=float, default=d.lam, help="attention-loss weight (base λ)")
    parser.add_argument("--combine", choices=COMBINE_MODES, default=d.combine, help="loss per head, or on their mean")
    parser.add_argument("--supervise", choices=SUPERVISE_MODES, default=d.supervise, help="all-layers: seed variant")
    parser.add_argument("--query", choices=QUERY_MODES, default=d.query, help="last expression token, or all of them")
    parser.add_argument("--target-sigma", type=float, default=d.target_sigma, help="Gaussian smoothing, grid cells")
    parser.add_argument("--answer", choices=ANSWER_MODES, default=d.answer, help="answer text when a sample has none")
    parser.add_argument("--lora-r", type=int, default=d.lora_r)
    parser.add_argument("--lora-alpha", type=float, default=None, help="default 2 r")
    parser.add_argument("--lora-dropout", type=float, default=d.lora_dropout)
    parser.add_argument("--lora-targets", default=",".join(LORA_PROJECTIONS), help="projection names")
    parser.add_argument("--lora-layers", default=d.lora_layers, help="auto (to the deepest head), all, or 0-15")
    parser.add_argument("--lora-vision", action="store_true", help="LoRA on the vision encoder and projector too")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=None)
    length.add_argument("--epochs", type=float, default=None)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument("--warmup", type=float, default=d.warmup, help="fraction of the steps")
    parser.add_argument("--lr-scheduler", default=d.lr_scheduler, help="transformers scheduler name")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="per process")
    parser.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--save-every", type=int, default=d.save_every, help="checkpoint every N steps (0: at the end)")
    parser.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints)
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    parser.add_argument("--mixed-precision", default=d.mixed_precision, choices=("auto", "no", "bf16", "fp16"))
    parser.add_argument("--gradient-checkpointing", default=d.gradient_checkpointing, choices=("auto", "on", "off"))
    parser.add_argument("--dtype", default=d.dtype)
    parser.add_argument("--device", default=d.device)
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--no-export", dest="export", action="store_false", help="skip the merged export")
    parser.add_argument("--out", required=True, help="output directory")


def run(args: argparse.Namespace) -> int:
    """``localize finetune``: train, then print where the results are."""
    fields = set(TrainConfig.__dataclass_fields__)
    values = {k: v for k, v in vars(args).items() if k in fields}
    values["lora_targets"] = [p.strip() for p in str(args.lora_targets).split(",") if p.strip()]
    result = train(TrainConfig(**values))
    last = result.log[-1] if result.log else {}
    print(
        f"finetune: {result.steps} steps; final ntp {last.get('ntp', float('nan')):.4f}, "
        f"att {last.get('att', float('nan')):.4f}; log {result.out / 'log.jsonl'}"
    )
    if result.merged_dir is not None:
        print(f"merged model: {result.merged_dir} (localize.load_model('{result.merged_dir}'))")
    return 0
