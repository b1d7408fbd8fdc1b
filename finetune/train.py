"""Where-to-Look fine-tuning: LoRA on the language model, next-token loss + λ(t) × attention loss of the heads.

Objective per batch: ``ntp + λ(t) · att``, where ``ntp`` is the next-token loss on each sample's answer (the sample
is the grounding prompt followed by a short answer, see :mod:`localize.finetune.attention`) and ``att`` the attention loss
(:mod:`localize.finetune.losses`) of the supervised heads' maps at the query token against the sample's target grid
(:mod:`localize.finetune.targets`). Answers: the sample's own ``answer`` when its source has one (the shapes world);
otherwise (RefCOCO) the COCO category word of the referred object ("man", "dog"), else the expression itself. A
one-word true answer keeps the language head in distribution (no new format, nothing false is taught) while
the grounding signal comes from the attention loss.

Training: peft LoRA (default: q/k/v/o and MLP projections of the language model's layers up to the deepest
supervised layer), ``accelerate`` for device placement, DDP (``accelerate launch``) and bf16 autocast, gradient
checkpointing on GPU. Data order is a function of (seed, step) alone, so a run resumed from a checkpoint (LoRA
weights, optimizer, scheduler, RNG, step) continues exactly as the uninterrupted run. Outputs under ``--out``:
``log.jsonl`` (losses per step), ``checkpoints/step-N/``, ``adapter/`` (peft), ``merged/`` (merged model +
processor + ``heads.json``; ``localize.load_model(out/"merged")`` accepts it), ``loss_curve.png``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from localize.capture import Head, all_heads
from localize.errors import InputError
from localize.published import load_heads_for
from localize.runs import AppendLog, Progress, read_jsonl

from .attention import QUERY_MODES, build_training_batch, forward_with_attention
from .checkpoints import checkpoint_dirs, load_checkpoint, save_checkpoint
from .losses import ATTENTION_LOSSES, COMBINE_MODES, SCHEDULES, attention_loss, lambda_schedule
from .targets import sample_target

LORA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ANSWER_MODES = ("auto", "category", "expression")
SUPERVISE_MODES = ("heads", "all-layers")


@dataclass
class TrainConfig:
    """Every setting of a fine-tuning run (recorded in checkpoints and the export)."""

    model: str
    heads: str | list = "auto"
    out: str = "finetune-out"
    data: str = "shapes"
    data_root: str | None = None
    image_root: str | None = None
    split: str = "train"
    limit: int | None = None  # first N samples of the split (shapes: its size)
    loss: str = "where-to-look"
    schedule: str = "curriculum"
    lam: float = 1.0
    combine: str = "per-head"
    supervise: str = "heads"
    query: str = "last"
    target_sigma: float = 0.0
    answer: str = "auto"
    lora_r: int = 16
    lora_alpha: float | None = None  # default 2 r
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_PROJECTIONS))
    lora_layers: str = "auto"  # auto (up to the deepest supervised layer), all, or "0-15"
    lora_vision: bool = False  # LoRA on the vision encoder and projector's linear layers too
    steps: int | None = None
    epochs: float | None = None
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup: float = 0.03  # fraction of the steps
    lr_scheduler: str = "cosine"
    batch_size: int = 4
    max_grad_norm: float = 1.0
    seed: int = 0
    save_every: int = 500
    keep_checkpoints: int = 2
    resume: bool = False
    mixed_precision: str = "auto"  # auto: bf16 on GPU, no on CPU
    gradient_checkpointing: str = "auto"  # auto: on GPU only; "on" / "off"
    dtype: str = "auto"
    device: str = "auto"
    progress: bool = True
    export: bool = True


@dataclass
class TrainResult:
    """What a run produced: losses per step, where things were written, the final (merged, when exported) model."""

    log: list[dict]
    out: Path
    steps: int
    merged_dir: Path | None = None
    model: Any = None
    heads: list[Head] = field(default_factory=list)


# -- setup ---------------------------------------------------------------------------------------------------------
def _layer_list(spec: str, deepest: int, num_layers: int) -> list[int]:
    if spec == "auto":
        return list(range(deepest + 1))
    if spec == "all":
        return list(range(num_layers))
    layers: list[int] = []
    for part in str(spec).split(","):
        lo, _, hi = part.strip().partition("-")
        layers.extend(range(int(lo), int(hi or lo) + 1))
    if not layers or min(layers) < 0 or max(layers) >= num_layers:
        raise InputError(f"LoRA layers {spec!r} outside 0-{num_layers - 1}")
    return sorted(set(layers))


def lora_target_regex(model: torch.nn.Module, layers: Sequence[int], projections: Sequence[str]) -> str:
    """peft ``target_modules`` regex: ``projections`` in the language model's decoder ``layers`` (vision excluded)."""
    import re

    decoder = model.get_decoder()
    prefix = next(name for name, module in model.named_modules() if module is decoder)
    layer_alt = "|".join(str(int(i)) for i in layers)
    proj_alt = "|".join(re.escape(p) for p in projections)
    return rf"{re.escape(prefix)}\.layers\.({layer_alt})\.[^.]+\.({proj_alt})"


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Non-reentrant activation checkpointing of the decoder layers (the recorded rows keep their graph)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def vision_linear_names(model: torch.nn.Module, vision_modules: Sequence[str]) -> list[str]:
    """Full names of the ``nn.Linear`` layers inside the modules named ``vision_modules`` (an adapter's vision side)."""
    wanted = set(vision_modules)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and wanted & set(name.split("."))
    ]


def add_lora(
    model: torch.nn.Module,
    layers: Sequence[int],
    *,
    r: int = 16,
    alpha: float | None = None,
    dropout: float = 0.05,
    projections: Sequence[str] = LORA_PROJECTIONS,
    vision_modules: Sequence[str] = (),
) -> torch.nn.Module:
    """Wrap ``model`` in a peft LoRA model; only the LoRA matrices train. ``vision_modules`` (attribute names, e.g.
    an adapter's ``vision_modules``): their linear layers get LoRA too."""
    import re

    from peft import LoraConfig, get_peft_model

    target = lora_target_regex(model, layers, projections)
    vision = vision_linear_names(model, vision_modules) if vision_modules else []
    if vision_modules and not vision:
        raise InputError(f"no linear layer found under {', '.join(vision_modules)} for --lora-vision")
    if vision:
        target = "|".join([f"(?:{target})", *(re.escape(name) for name in vision)])
    config = LoraConfig(
        r=r,
        lora_alpha=alpha if alpha is not None else 2 * r,
        lora_dropout=dropout,
        target_modules=target,
        bias="none",
    )
    return get_peft_model(model, config)


def open_training_data(config: TrainConfig, world: int = 1) -> Sequence[Any]:
    """The samples of ``config.data`` / ``config.split`` (``limit``: the first N, for shapes its size).

    A procedural source (the shapes world) is sized to the run: without ``limit`` a ``--steps`` run gets a fresh
    scene for every sample it draws (a fixed 1000 would be seen many times over and memorised).
    """
    from localize.data.registry import dataset_spec, open_dataset

    extra = {}
    if dataset_spec(config.data).procedural:
        if config.limit:
            extra = {"size": config.limit}
        elif config.steps:
            extra = {"size": max(1000, int(config.steps) * config.batch_size * world)}
    source = open_dataset(
        config.data, data_root=config.data_root, split=config.split, image_root=config.image_root, **extra
    )
    if config.limit and len(source) > config.limit:
        return [source[i] for i in range(config.limit)]
    return source


def answer_for(sample: Any, mode: str = "auto") -> str:
    """The answer text trained after the prompt (module docstring): own answer, category word, or the expression."""
    if mode not in ANSWER_MODES:
        raise InputError(f"answer must be one of {', '.join(ANSWER_MODES)}, got {mode!r}")
    if mode == "auto" and getattr(sample, "answer", None):
        return str(sample.answer)
    category = (getattr(sample, "meta", None) or {}).get("category")
    if mode in ("auto", "category") and category:
        return str(category)
    return str(sample.expression)


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def batch_indices(step: int, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> list[int]:
    """Sample indices of ``rank``'s share of global ``step``: a seeded permutation per epoch, a function of its args."""
    start = step * batch_size * world + rank * batch_size
    return [int(_epoch_order(n, seed, p // n)[p % n]) for p in range(start, start + batch_size)]


def total_steps(config: TrainConfig, n: int, world: int = 1) -> int:
    """``steps``, or ``epochs`` passes over ``n`` samples in global batches (1 epoch when neither is set)."""
    if config.steps:
        return int(config.steps)
    return max(1, math.ceil((config.epochs or 1.0) * n / (config.batch_size * world)))


# -- checkpoints ---------------------------------------------------------------------------------------------------
# -- outputs -------------------------------------------------------------------------------------------------------
def plot_losses(log: Sequence[dict], path: str | os.PathLike) -> Path:
    """Loss-curve PNG: next-token and attention loss per step, λ on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in log]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["ntp"] for r in log], label="next-token loss")
    ax.plot(steps, [r["att"] for r in log], label="attention loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    twin = ax.twinx()
    twin.plot(steps, [r["lambda"] for r in log], "k--", alpha=0.4, label="λ")
    twin.set_ylabel("λ")
    twin.set_ylim(0, 1.1 * max([r["lambda"] for r in log] + [1e-6]))
    lines = ax.get_legend_handles_labels()
    extra = twin.get_legend_handles_labels()
    ax.legend(lines[0] + extra[0], lines[1] + extra[1], loc="upper right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def export_merged(
    model: torch.nn.Module,
    processor: Any,
    heads: Sequence[Head],
    out_dir: str | os.PathLike,
    *,
    heads_source: Path | None = None,
    num_layers: int,
    num_heads: int,
    info: dict | None = None,
) -> tuple[Path, torch.nn.Module]:
    """Merge LoRA into the base (``merge_and_unload``) and save model + processor + ``heads.json`` to ``out_dir``."""
    from localize.headsfile import save_heads

    out_dir = Path(out_dir)
    merged = model.merge_and_unload()
    merged.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    if heads_source is not None:
        shutil.copyfile(heads_source, out_dir / "heads.json")
    else:
        save_heads(
            out_dir / "heads.json",
            num_layers=num_layers,
            num_heads=num_heads,
            heads=list(heads),
            model=str(out_dir),
            settings={"source": "localize finetune"},
        )
    (out_dir / "finetune.json").write_text(json.dumps(info or {}, indent=1, default=str))
    return out_dir, merged


# -- training ------------------------------------------------------------------------------------------------------
def _check(config: TrainConfig) -> None:
    choices = {
        "loss": ATTENTION_LOSSES,
        "schedule": SCHEDULES,
        "combine": COMBINE_MODES,
        "query": QUERY_MODES,
        "answer": ANSWER_MODES,
        "supervise": SUPERVISE_MODES,
    }
    for name, allowed in choices.items():
        if getattr(config, name) not in allowed:
            raise InputError(f"{name} must be one of {', '.join(allowed)}, got {getattr(config, name)!r}")
    if config.batch_size < 1 or (config.steps is not None and config.steps < 1):
        raise InputError("batch size and steps must be positive")


def _accelerator(config: TrainConfig) -> tuple[Any, bool]:
    """accelerate's ``Accelerator`` for this run (bf16 autocast on GPU by default) and whether it runs on CUDA."""
    from accelerate import Accelerator

    cuda = torch.cuda.is_available() and config.device in ("auto", "cuda") or config.device.startswith("cuda")
    precision = ("bf16" if cuda else "no") if config.mixed_precision == "auto" else config.mixed_precision
    accelerator = Accelerator(mixed_precision=precision, cpu=not cuda)
    if accelerator.distributed_type.name in ("FSDP", "DEEPSPEED"):
        # Sharded optimizer state would need its own checkpoint format; LoRA fits one GPU per process up to ~30B.
        raise InputError("localize finetune supports single-device and DDP runs (accelerate launch --multi_gpu)")
    return accelerator, cuda


def _lora_model(config: TrainConfig, vlm: Any, deepest: int, cuda: bool) -> torch.nn.Module:
    """The model with LoRA on the language model's layers up to ``deepest`` (and the vision side if asked)."""
    base = vlm.model
    base.config.use_cache = False
    if config.gradient_checkpointing == "on" or (config.gradient_checkpointing == "auto" and cuda):
        enable_gradient_checkpointing(base)
    model = add_lora(
        base,
        _layer_list(config.lora_layers, deepest, vlm.num_layers),
        r=config.lora_r,
        alpha=config.lora_alpha,
        dropout=config.lora_dropout,
        projections=config.lora_targets,
        vision_modules=vlm.adapter.vision_modules if config.lora_vision else (),
    )
    model.train()
    return model


def _resume(config: TrainConfig, parts: dict[str, Any], accelerator: Any) -> tuple[int, list[dict]]:
    """The step to start from and the log up to it (the latest checkpoint with ``config.resume``, else 0)."""
    out = Path(config.out)
    start, log = 0, []
    log_path = out / "log.jsonl"
    if config.resume and (found := checkpoint_dirs(out)):
        start = load_checkpoint(found[-1], parts["model"], parts["optimizer"], parts["scheduler"], config, accelerator)
        log = [r for r in read_jsonl(log_path) if r.get("step", math.inf) <= start]
    if accelerator.is_main_process:  # the log restarts at the checkpoint: later steps are redone
        log_path.write_text("".join(json.dumps(r) + "\n" for r in log))
    return start, log


def _train_step(step: int, steps: int, config: TrainConfig, run: dict[str, Any], accelerator: Any) -> dict:
    """One optimizer step over this process's batch; returns the step's record (losses averaged over processes)."""
    began = time.perf_counter()
    lam = lambda_schedule(config.schedule, step / steps, config.lam)
    samples = run["samples"]
    rank, world = accelerator.process_index, accelerator.num_processes
    picked = [samples[i] for i in batch_indices(step, len(samples), config.batch_size, config.seed, rank, world)]
    answers = [answer_for(s, config.answer) for s in picked]
    expressions = [s.expression for s in picked]
    images = [s.load_image() for s in picked]
    batch = build_training_batch(run["vlm"].adapter, images, expressions, answers, query=config.query)
    batch = batch.to(accelerator.device)
    targets = [sample_target(s, g, sigma=config.target_sigma) for s, g in zip(picked, batch.geometries)]
    with accelerator.autocast():
        ntp, maps = forward_with_attention(run["model"], batch, run["supervised"])
        att = torch.stack([attention_loss(m, t, config.loss, run["combine"]) for m, t in zip(maps, targets)]).mean()
        loss = ntp + lam * att if lam > 0 else ntp
    accelerator.backward(loss)
    if config.max_grad_norm:
        accelerator.clip_grad_norm_(run["params"], config.max_grad_norm)
    run["optimizer"].step()
    run["scheduler"].step()
    run["optimizer"].zero_grad(set_to_none=True)
    stats = accelerator.reduce(torch.stack([ntp.detach(), att.detach()]).float(), reduction="mean")
    return {
        "step": step + 1,
        "ntp": float(stats[0]),
        "att": float(stats[1]),
        "lambda": lam,
        "loss": float(stats[0] + lam * stats[1]),
        "lr": float(run["scheduler"].get_last_lr()[0]),
        "seconds": round(time.perf_counter() - began, 4),
    }


def _prepare(config: TrainConfig, vlm: Any, dataset: Sequence[Any] | None, accelerator: Any, cuda: bool) -> dict:
    """Model (LoRA), data, heads, optimizer and scheduler of a run, by name."""
    from transformers import get_scheduler

    from localize.models import load_model

    vlm = load_model(vlm if vlm is not None else config.model, dtype=config.dtype, device=str(accelerator.device))
    samples = dataset if dataset is not None else open_training_data(config, accelerator.num_processes)
    if len(samples) == 0:
        raise InputError(f"no samples in {config.data} / {config.split}")
    found = load_heads_for(vlm, config.heads)
    heads = list(found.heads)
    supervised = all_heads(vlm.num_layers, vlm.num_heads) if config.supervise == "all-layers" else heads
    model = _lora_model(config, vlm, max(layer for layer, _ in supervised), cuda)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps = total_steps(config, len(samples), accelerator.num_processes)
    warmup = int(config.warmup * steps)
    scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=steps)
    model, optimizer = accelerator.prepare(model, optimizer)  # the scheduler is stepped once per step, by hand
    return {
        "vlm": vlm, "samples": samples, "heads": heads, "heads_source": found.file, "supervised": supervised,
        "combine": "mean" if config.supervise == "all-layers" else config.combine, "model": model,
        "params": params, "optimizer": optimizer, "scheduler": scheduler, "steps": steps,
    }  # fmt: skip


def train(
    config: TrainConfig,
    *,
    vlm: Any = None,
    dataset: Sequence[Any] | None = None,
    on_step: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Run (or resume, with ``config.resume``) a fine-tuning run; ``vlm``/``dataset`` override loading them.

    A ``vlm`` passed in gets its LoRA layers in place; ``on_step(record)`` is called after every step.
    """
    from accelerate.utils import set_seed

    _check(config)
    accelerator, cuda = _accelerator(config)
    set_seed(config.seed)
    out = Path(config.out)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    run = _prepare(config, vlm, dataset, accelerator, cuda)
    steps = run["steps"]
    start, log = _resume(config, run, accelerator)
    writer = AppendLog(out / "log.jsonl") if accelerator.is_main_process else None
    bar = Progress(steps, "finetune", initial=start, enabled=config.progress and accelerator.is_main_process)
    try:
        for step in range(start, steps):
            record = _train_step(step, steps, config, run, accelerator)
            log.append(record)
            if writer is not None:
                writer.write(record)
            bar.advance()
            bar.note(f"ntp {record['ntp']:.4f}  att {record['att']:.4f}  λ {record['lambda']:.2f}")
            if (config.save_every and (step + 1) % config.save_every == 0) or step + 1 == steps:
                parts = (run["model"], run["optimizer"], run["scheduler"], config, accelerator)
                save_checkpoint(out, step + 1, *parts, config.keep_checkpoints)
            if on_step is not None:
                on_step(record)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    return _finish(config, run, log, accelerator)


def _finish(config: TrainConfig, run: dict[str, Any], log: list[dict], accelerator: Any) -> TrainResult:
    """Loss curve, the peft adapter and (``config.export``) the merged model with its heads file."""
    out, heads, vlm = Path(config.out), run["heads"], run["vlm"]
    result = TrainResult(log=log, out=out, steps=run["steps"], model=run["model"], heads=list(heads))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if log:
            plot_losses(log, out / "loss_curve.png")
        unwrapped = accelerator.unwrap_model(run["model"])
        unwrapped.save_pretrained(out / "adapter")
        if config.export:
            vlm.model.config.use_cache = True
            info = {"config": asdict(config), "final": log[-1] if log else None, "heads": [list(h) for h in heads]}
            result.merged_dir, result.model = export_merged(
                unwrapped,
                vlm.processor,
                heads,
                out / "merged",
                heads_source=run["heads_source"],
                num_layers=vlm.num_layers,
                num_heads=vlm.num_heads,
                info=info,
            )
    accelerator.wait_for_everyone()
    return result
