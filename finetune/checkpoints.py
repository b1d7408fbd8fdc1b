"""Fine-tuning checkpoints: LoRA weights (safetensors), optimizer, scheduler, RNG and step, written atomically;
resuming checks the run's settings against the checkpoint's (:func:`localize.runs.check_settings`)."""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from localize.errors import InputError
from localize.runs import check_settings

CHECKPOINT_DIR = "checkpoints"
# Config fields that may differ between a run and its resumption.
RESUME_FREE = {"resume", "save_every", "keep_checkpoints", "progress", "export", "out", "data_root", "image_root"}


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
    config: Any,
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
    config: Any,
    accelerator: Any,
) -> int:
    """Restore a :func:`save_checkpoint` directory into the prepared objects; returns its step."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text())
    current = {k: v for k, v in asdict(config).items() if k not in RESUME_FREE}
    saved = {k: state["config"].get(k) for k in current}
    check_settings(saved, current, f"the checkpoint {path}", hint="rerun with the original settings to resume")
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
