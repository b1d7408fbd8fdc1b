"""Train the tiny shapes-world LLaVA from scratch: seeded, resumable, CPU-sized.

    python -m localize.benchmarks.shapes_tiny.train_base --out runs/shapes --steps 3000 [--threads 2] [--seed 0]

The model (:mod:`.model`) is a plain ``LlavaForConditionalGeneration`` built from a config (a shallow CLIP vision
tower whose position embedding is a frozen 2-D sin-cos table, so image tokens stay local, and a small Llama), with
a word-level tokenizer over the world's vocabulary: it goes through the toolkit's ordinary ``llava`` adapter.

Objective (:mod:`.batches`): next-token loss on the answer only. The prompt is the toolkit's default LLaVA prompt
``<image>\\n{expression}``, followed by the answer ``x{col} y{row} {size} {color} {shape}`` and ``</s>``; with
``--pack`` several expressions follow one image. Curriculum: difficulty 1 scenes for the first fifth of the steps, 2
for the next two fifths, then 3 (a run from ``--init``: 2 for the first half, then 3). Learning rate: linear warm-up
over a thirtieth of the steps, then cosine decay; the vision tower and projector at ``--vision-lr``.

Checkpoints (``OUT/checkpoint``: weights as safetensors, optimizer state read back with ``weights_only=True``) are
written every ``--save-every`` steps; rerunning the same command resumes (other settings are refused). Each step
appends a line to ``OUT/log.jsonl``. The final model and processor are saved with ``save_pretrained`` to
``OUT/model``. The trial options of benchmarks/shapes_tiny/TRIALS.md were dropped: check out ``d0015a8`` to rerun them.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from localize.runs import AppendLog, Progress, SettingsMismatchError, check_settings

from .batches import difficulty_at, make_batch
from .config import ShapesTrainConfig, parse, upgrade_settings
from .model import build_model

__all__ = ["ShapesTrainConfig", "build_model", "evaluate", "make_batch", "rate_multiplier", "train"]


def rate_multiplier(step: int, steps: int) -> float:
    """Linear warm-up over a thirtieth of ``steps``, then cosine decay to zero (both parameter groups)."""
    return min(1.0, (step + 1) / max(1, steps // 30)) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / steps)))


@torch.no_grad()
def evaluate(model, processor, config: ShapesTrainConfig, batches: int = 4) -> dict:
    """Answer accuracy on validation scenes (difficulty 3), teacher-forced: exact answers, token accuracy, and the
    accuracy of each answer field (first word, second, ...)."""
    model.eval()
    correct = exact = total = rows = 0
    field_hits: dict[int, list[bool]] = {}
    for k in range(batches):
        inputs, labels, _ = make_batch(processor, k, config, split="val", size=32)
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


def _optimizer(model, config: ShapesTrainConfig):
    """AdamW over the language model (``lr``) and the vision tower + projector (``vision_lr``), and its schedule."""
    vision, language = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (vision if "vision_tower" in name or "projector" in name else language).append(p)
    groups = [
        {"params": language, "lr": config.lr, "weight_decay": 0.01},
        {"params": vision, "lr": config.vision_lr, "weight_decay": 0.1},
    ]
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: rate_multiplier(s, config.steps))
    return optimizer, schedule


def _load_init(model, init: str) -> None:
    """Start from the weights of another run's model or checkpoint directory."""
    from safetensors.torch import load_file

    weights = Path(init) / "model.safetensors"
    result = model.load_state_dict(load_file(weights), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise SystemExit(f"{weights} does not match the model: {result.missing_keys or result.unexpected_keys}")
    print(f"initialised from {weights}", flush=True)


def _resume(checkpoint: Path, config: ShapesTrainConfig, model, optimizer, schedule) -> int:
    """Load ``checkpoint`` when there is one (refusing other settings); returns the step to start from."""
    if not (checkpoint / "state.json").exists():
        return 0
    from safetensors.torch import load_file

    state = json.loads((checkpoint / "state.json").read_text())
    check_settings(upgrade_settings(state["args"]), config.settings(), f"the checkpoint {checkpoint}",
                   hint="rerun with the same settings to resume, or use another --out")  # fmt: skip
    model.load_state_dict(load_file(checkpoint / "model.safetensors"), strict=False)
    optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
    schedule.load_state_dict(torch.load(checkpoint / "schedule.pt", weights_only=True))
    print(f"resumed at step {state['step']}", flush=True)
    return int(state["step"])


def _save_checkpoint(checkpoint: Path, step: int, config: ShapesTrainConfig, model, optimizer, schedule) -> None:
    """Weights, optimizer and schedule state, and the settings they were trained with."""
    from safetensors.torch import save_file

    checkpoint.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, checkpoint / "model.safetensors")
    torch.save(optimizer.state_dict(), checkpoint / "optimizer.pt")
    torch.save(schedule.state_dict(), checkpoint / "schedule.pt")
    (checkpoint / "state.json").write_text(json.dumps({"step": step, "args": config.settings()}))


def train(config: ShapesTrainConfig) -> Path:
    """Train (or resume) the run ``config`` describes; returns the saved model directory ``OUT/model``."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    model, processor = build_model(config)
    if config.init:
        _load_init(model, config.init)
    optimizer, schedule = _optimizer(model, config)
    checkpoint = out / "checkpoint"
    start = _resume(checkpoint, config, model, optimizer, schedule)
    began = time.time()
    bar = Progress(config.steps, "train", initial=start, enabled=not config.no_progress)
    with AppendLog(out / "log.jsonl") as log, bar:
        for step in range(start, config.steps):
            inputs, labels, _ = make_batch(processor, step, config)
            loss = model(**inputs, labels=labels).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            record = {"step": step + 1, "loss": round(loss.item(), 4),
                      "difficulty": difficulty_at(step, config.steps, bool(config.init)),
                      "seconds": round(time.time() - began, 1)}  # fmt: skip
            if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
                record.update(evaluate(model, processor, config))
            log.write(record)
            bar.advance()
            bar.note({"loss": record["loss"]})
            if "answer_exact" in record or (config.no_progress and (step + 1) % 25 == 0):
                print(json.dumps(record), flush=True)
            if (step + 1) % config.save_every == 0 or step + 1 == config.steps:
                _save_checkpoint(checkpoint, step + 1, config, model, optimizer, schedule)
    model.eval()
    model.save_pretrained(out / "model")
    processor.save_pretrained(out / "model")
    print(f"saved {out / 'model'}", flush=True)
    return out / "model"


def main(argv: list[str] | None = None) -> int:
    """Train (or resume) and save the model."""
    config = parse(argv, description=__doc__)
    try:
        train(config)
    except SettingsMismatchError as error:
        raise SystemExit(str(error)) from error
    return 0


if __name__ == "__main__":
    sys.exit(main())
