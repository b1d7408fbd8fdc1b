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

import argparse
import functools
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from localize.capture import Head, all_heads
from localize.errors import InputError
from localize.published import load_heads_for

from .attention import QUERY_MODES, build_training_batch, forward_with_attention
from .losses import ATTENTION_LOSSES, COMBINE_MODES, SCHEDULES, attention_loss, lambda_schedule
from .targets import sample_target

LORA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ANSWER_MODES = ("auto", "category", "expression")
SUPERVISE_MODES = ("heads", "all-layers")
CHECKPOINT_DIR = "checkpoints"
# Config fields that may differ between a run and its resumption.
RESUME_FREE = {"resume", "save_every", "keep_checkpoints", "progress", "export", "out", "data_root", "image_root"}


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
def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _json_rng() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": [kind, keys.tolist(), pos, has_gauss, cached]}


def _set_json_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def checkpoint_dirs(out: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``out``, oldest first."""
    root = Path(out) / CHECKPOINT_DIR
    found = [p for p in root.glob("step-*") if (p / "state.json").is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(
    out: str | os.PathLike,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    config: TrainConfig,
    accelerator: Any,
    keep: int = 2,
) -> Path:
    """Write ``checkpoints/step-N`` (LoRA weights as safetensors, optimizer, scheduler, RNG, step); keep the last ``keep``."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    final = Path(out) / CHECKPOINT_DIR / f"step-{step:07d}"
    tmp = final.with_name(final.name + ".tmp")
    rank = accelerator.process_index
    state_dict = accelerator.get_state_dict(model)  # gathers across processes where sharded
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        lora = get_peft_model_state_dict(accelerator.unwrap_model(model), state_dict=state_dict)
        save_file({k: v.detach().cpu().contiguous() for k, v in lora.items()}, tmp / "adapter_model.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), tmp / f"rng-{rank}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"step": step, "config": asdict(config), "rng": _json_rng(), "world": accelerator.num_processes}
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoint_dirs(out)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    config: TrainConfig,
    accelerator: Any,
) -> int:
    """Restore a :func:`save_checkpoint` directory into the prepared objects; returns its step."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text())
    saved, current = state["config"], json.loads(json.dumps(asdict(config)))
    changed = sorted(k for k in current if k not in RESUME_FREE and saved.get(k) != current[k])
    if changed:
        raise InputError(
            f"cannot resume from {path}: settings differ ({', '.join(changed)}); rerun with the original settings"
        )
    if state.get("world", 1) != accelerator.num_processes:
        raise InputError(f"{path} was written by {state['world']} processes, this run has {accelerator.num_processes}")
    weights = load_file(path / "adapter_model.safetensors", device=str(accelerator.device))
    result = set_peft_model_state_dict(accelerator.unwrap_model(model), weights)
    if getattr(result, "unexpected_keys", None):
        raise InputError(f"{path}: LoRA weights do not fit this model ({result.unexpected_keys[:3]} ...)")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = torch.load(path / f"rng-{accelerator.process_index}.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    _set_json_rng(state["rng"])
    return int(state["step"])


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
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    from localize.models import load_model

    _check(config)
    cuda = torch.cuda.is_available() and config.device in ("auto", "cuda") or config.device.startswith("cuda")
    precision = ("bf16" if cuda else "no") if config.mixed_precision == "auto" else config.mixed_precision
    accelerator = Accelerator(mixed_precision=precision, cpu=not cuda)
    if accelerator.distributed_type.name in ("FSDP", "DEEPSPEED"):
        # Sharded optimizer state would need its own checkpoint format; LoRA fits one GPU per process up to ~30B.
        raise InputError("localize finetune supports single-device and DDP runs (accelerate launch --multi_gpu)")
    set_seed(config.seed)
    out = Path(config.out)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)

    vlm = load_model(vlm if vlm is not None else config.model, dtype=config.dtype, device=str(accelerator.device))
    samples = dataset if dataset is not None else open_training_data(config, accelerator.num_processes)
    if len(samples) == 0:
        raise InputError(f"no samples in {config.data} / {config.split}")
    found = load_heads_for(vlm, config.heads)
    heads, heads_source = list(found.heads), found.file
    supervised = all_heads(vlm.num_layers, vlm.num_heads) if config.supervise == "all-layers" else heads
    combine = "mean" if config.supervise == "all-layers" else config.combine
    deepest = max(layer for layer, _ in supervised)

    base = vlm.model
    base.config.use_cache = False
    if config.gradient_checkpointing == "on" or (config.gradient_checkpointing == "auto" and cuda):
        enable_gradient_checkpointing(base)
    layers = _layer_list(config.lora_layers, deepest, vlm.num_layers)
    model = add_lora(
        base,
        layers,
        r=config.lora_r,
        alpha=config.lora_alpha,
        dropout=config.lora_dropout,
        projections=config.lora_targets,
        vision_modules=vlm.adapter.vision_modules if config.lora_vision else (),
    )
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps = total_steps(config, len(samples), accelerator.num_processes)
    scheduler = get_scheduler(
        config.lr_scheduler, optimizer, num_warmup_steps=int(config.warmup * steps), num_training_steps=steps
    )
    model, optimizer = accelerator.prepare(model, optimizer)  # the scheduler is stepped once per step, by hand

    start, log = 0, []
    log_path = out / "log.jsonl"
    if config.resume and (found := checkpoint_dirs(out)):
        start = load_checkpoint(found[-1], model, optimizer, scheduler, config, accelerator)
        if log_path.is_file():
            log = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
            log = [r for r in log if r["step"] <= start]
    if accelerator.is_main_process:
        log_path.write_text("".join(json.dumps(r) + "\n" for r in log))

    progress, task = _progress(config.progress and accelerator.is_main_process, steps, start)
    try:
        for step in range(start, steps):
            began = time.perf_counter()
            lam = lambda_schedule(config.schedule, step / steps, config.lam)
            picked = [
                samples[i]
                for i in batch_indices(
                    step,
                    len(samples),
                    config.batch_size,
                    config.seed,
                    accelerator.process_index,
                    accelerator.num_processes,
                )
            ]
            images = [s.load_image() for s in picked]
            batch = build_training_batch(
                vlm.adapter,
                images,
                [s.expression for s in picked],
                [answer_for(s, config.answer) for s in picked],
                query=config.query,
            ).to(accelerator.device)
            targets = [sample_target(s, g, sigma=config.target_sigma) for s, g in zip(picked, batch.geometries)]
            with accelerator.autocast():
                ntp, maps = forward_with_attention(model, batch, supervised)
                att = torch.stack([attention_loss(m, t, config.loss, combine) for m, t in zip(maps, targets)]).mean()
                loss = ntp + lam * att if lam > 0 else ntp
            accelerator.backward(loss)
            if config.max_grad_norm:
                accelerator.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            stats = accelerator.reduce(torch.stack([ntp.detach(), att.detach()]).float(), reduction="mean")
            record = {
                "step": step + 1,
                "ntp": float(stats[0]),
                "att": float(stats[1]),
                "lambda": lam,
                "loss": float(stats[0] + lam * stats[1]),
                "lr": float(scheduler.get_last_lr()[0]),
                "seconds": round(time.perf_counter() - began, 4),
            }
            log.append(record)
            if accelerator.is_main_process:
                with log_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
            if progress is not None:
                progress.update(task, advance=1, ntp=record["ntp"], att=record["att"], lam=lam)
            if (config.save_every and (step + 1) % config.save_every == 0) or step + 1 == steps:
                save_checkpoint(
                    out, step + 1, model, optimizer, scheduler, config, accelerator, config.keep_checkpoints
                )
            if on_step is not None:
                on_step(record)
    finally:
        if progress is not None:
            progress.stop()

    result = TrainResult(log=log, out=out, steps=steps, model=model, heads=list(heads))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if log:
            plot_losses(log, out / "loss_curve.png")
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(out / "adapter")
        if config.export:
            base.config.use_cache = True
            info = {"config": asdict(config), "final": log[-1] if log else None, "heads": [list(h) for h in heads]}
            result.merged_dir, result.model = export_merged(
                unwrapped,
                vlm.processor,
                heads,
                out / "merged",
                heads_source=heads_source,
                num_layers=vlm.num_layers,
                num_heads=vlm.num_heads,
                info=info,
            )
    accelerator.wait_for_everyone()
    return result


def _progress(enabled: bool, total: int, completed: int) -> tuple[Any, Any]:
    if not enabled:
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("finetune"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("ntp {task.fields[ntp]:.4f}  att {task.fields[att]:.4f}  λ {task.fields[lam]:.2f}"),
        TimeRemainingColumn(),
    )
    task = progress.add_task("finetune", total=total, completed=completed, ntp=float("nan"), att=float("nan"), lam=0.0)
    progress.start()
    return progress, task


# -- command line --------------------------------------------------------------------------------------------------
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
