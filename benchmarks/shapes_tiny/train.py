"""Train the shapes-world LLaVA with KLAL attention supervision beside the answer's next-token loss.

    python -m localize.benchmarks.shapes_tiny.train --out runs/klal [--init localize/assets/shapes-tiny-base] [--steps 800]

Objective (KLAL, Esmaeilkhani & Latecki, sec. 3 eqs. 3-4): for each supervised layer of the language model, the
attention of the expression's last token (the query ``localize discover`` and ``localize ground`` read), averaged
over that layer's heads, against a ground-truth map from the scene's geometry (the referred object's mask,
area-averaged onto the image-token grid, as ``finetune/targets.py``). Differs from the paper: the KL is taken over
the image cells plus one "rest" bin (every non-image key: BOS / sink, text), with ``rest_mass`` of the target there,
so the supervised layers also put most of their mass on the image (high S_img, which discovery's tau asks for);
renormalising over image cells alone would leave the mass on the sink free. No head is named: every head of a
supervised layer is averaged, and discovery later finds the heads blind. Answers: as ``localize.benchmarks.shapes_tiny.train_base``
(packed expressions after each image, "x y size colour shape </s>"), every expression's last token supervised.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from localize.data import shapes

from .batches import answer_positions, difficulty_at, pack_expressions
from .config import ShapesTrainConfig
from .config import parser as config_parser
from .model import build_model
from .train_base import rate_multiplier


@dataclass
class KlalTrainConfig(ShapesTrainConfig):
    """A KLAL recipe: the answer trainer's settings and model shape (``init``: continue from that model), plus the
    attention supervision."""

    steps: int = 800
    pack: int = 4
    lr: float = 5e-4
    vision_lr: float = 1.5e-4
    threads: int = 1
    klal_layers: tuple[int, ...] = (2, 3)
    klal_weight: float = 1.0
    rest_mass: float = 0.05
    per_head: bool = False  # KL of each head's row (averaged over heads) instead of the head average's (KLAL eq. 3)
    varied: float = 0.0  # share of training scenes drawn from the varied world (shapes.render_scene(varied=True))

    def model_config(self) -> ShapesTrainConfig:
        """The answer trainer's config of the same model (for its builder)."""
        shared = {f.name for f in dataclasses.fields(ShapesTrainConfig)}
        return ShapesTrainConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in shared})


def scene_batch(step: int, cfg: KlalTrainConfig, split: str = "train") -> list[tuple[shapes.Scene, list]]:
    """The (scene, chosen expressions) of each image of a step: deterministic in the step; the curriculum of
    ``train_base`` (difficulty 3 for validation); a ``varied`` share of the scenes from the varied world."""
    n_images = max(1, cfg.batch_size // cfg.pack)
    difficulty = 3 if split != "train" else difficulty_at(step, cfg.steps, cfg.init is not None)
    out = []
    for i in range(n_images):
        seed = shapes.scene_seed(split, step * n_images + i)
        varied = bool(np.random.default_rng([seed, 61]).random() < cfg.varied)
        scene, expressions = shapes.sample_scene(seed, difficulty, cfg.image_size, varied=varied)
        out.append((scene, pack_expressions(seed, scene, expressions, cfg.pack)))
    return out


def _with_answers(expressions: list[shapes.Expression], scene: shapes.Scene) -> str:
    """Each expression, its answer (positions binned on the scene's own canvas) and ``</s>``, joined by spaces."""
    size = scene.image.size
    return " ".join(f"{e.text} {shapes.answer_for(scene.objects[e.target], size)} </s>" for e in expressions)


def make_batch(vlm, drawn: list[tuple[shapes.Scene, list]], cfg: KlalTrainConfig):
    """Inputs, answer labels, and per row the expressions' query positions, image-token positions and targets
    (``[Q, rows * cols]`` grids of the referred objects, each summing to 1)."""
    from localize.finetune.targets import target_grid

    texts = ["<image>\n" + _with_answers(chosen, scene) for scene, chosen in drawn]
    inputs = dict(vlm.processor(images=[s.image for s, _ in drawn], text=texts, return_tensors="pt", padding=True))
    labels = torch.full_like(inputs["input_ids"], -100)
    image_id = vlm.adapter.image_token_id
    rows = []
    for b, ((scene, chosen), text) in enumerate(zip(drawn, texts)):
        image_positions = (inputs["input_ids"][b] == image_id).nonzero().flatten()
        first = int(image_positions.max()) + 1
        answer = answer_positions(text.split("\n", 1)[1].split())
        for j in answer:
            labels[b, first + j] = inputs["input_ids"][b, first + j]
        starts = [j for j in answer if j - 1 not in answer]  # each answer's first word; the query sits before it
        geometry = vlm.adapter.geometry(scene.image.size, inputs, b)
        targets = [target_grid(geometry, scene.objects[e.target].mask).reshape(-1) for e in chosen]
        queries = torch.tensor([first + j - 1 for j in starts])
        rows.append((queries, image_positions, torch.from_numpy(np.stack(targets))))
    return inputs, labels, rows


def klal_loss(
    attentions, rows, layers: tuple[int, ...], rest_mass: float, per_head: bool = False
) -> tuple[torch.Tensor, float]:
    """Mean over rows, queries and ``layers`` of KL(target ‖ head-averaged attention) over [image cells, rest]
    (``per_head``: of every head's own row, averaged); also the supervised layers' mean mass on the image."""
    losses, masses = [], []
    for layer in layers:
        attention = attentions[layer]  # [B, H, T, T]
        for b, (queries, image_positions, targets) in enumerate(rows):
            rows_b = attention[b, :, queries]  # [H, Q, T]
            rows_b = rows_b.flatten(0, 1) if per_head else rows_b.mean(0)  # the head average: KLAL eq. 3
            image = rows_b[:, image_positions]
            rest = (1.0 - image.sum(-1, keepdim=True)).clamp_min(1e-8)
            q = torch.cat([image, rest], dim=-1).clamp_min(1e-8)
            p = torch.cat([targets * (1.0 - rest_mass), torch.full_like(targets[:, :1], rest_mass)], dim=-1)
            p = p.repeat(len(q) // len(p), 1)  # per head: the same targets for every head (head-major rows)
            losses.append((torch.xlogy(p, p) - p * q.log()).sum(-1))
            masses.append(image.sum(-1).detach())
    return torch.cat(losses).mean(), float(torch.cat(masses).mean())


def _load_init(model, init: str) -> None:
    """Weights of ``init`` (a ``save_pretrained`` directory or a checkpoint) into ``model`` (every key must match)."""
    from safetensors.torch import load_file
    from transformers import LlavaForConditionalGeneration

    if (Path(init) / "config.json").exists():  # a save_pretrained directory (its own key names, converted on load)
        weights = LlavaForConditionalGeneration.from_pretrained(init, dtype=torch.float32).state_dict()
    else:
        weights = load_file(Path(init) / "model.safetensors")
    result = model.load_state_dict(weights, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise SystemExit(f"{init} does not match the model: {result.missing_keys or result.unexpected_keys}")


def _checkpoint(model, optimizer, schedule, cfg: KlalTrainConfig, step: int, directory: Path) -> None:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, directory / "model.safetensors")
    torch.save(optimizer.state_dict(), directory / "optimizer.pt")
    torch.save(schedule.state_dict(), directory / "schedule.pt")
    (directory / "state.json").write_text(json.dumps({"step": step, "config": dataclasses.asdict(cfg)}))


def train(cfg: KlalTrainConfig) -> Path:
    """Train (or resume) under ``cfg.out``; returns the saved model directory (``OUT/model``)."""
    from safetensors.torch import load_file

    from localize.models import VLM

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model, processor = build_model(cfg.model_config())
    if cfg.init:
        _load_init(model, cfg.init)
    vlm = VLM(model, processor, spec=str(out))  # for its adapter's geometry; it installs the capture attention
    model.set_attn_implementation("eager")  # so set eager after it: the supervised attention rows need their graph
    vision = [p for n, p in model.named_parameters() if p.requires_grad and ("vision_tower" in n or "projector" in n)]
    language = [
        p for n, p in model.named_parameters() if p.requires_grad and not ("vision_tower" in n or "projector" in n)
    ]
    optimizer = torch.optim.AdamW(
        [
            {"params": language, "lr": cfg.lr, "weight_decay": 0.01},
            {"params": vision, "lr": cfg.vision_lr, "weight_decay": 0.1},
        ],
        betas=(0.9, 0.98),
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: rate_multiplier(s, cfg.steps))
    checkpoint, start = out / "checkpoint", 0
    if (checkpoint / "state.json").exists():
        state = json.loads((checkpoint / "state.json").read_text())
        saved = {**state["config"], "klal_layers": tuple(state["config"]["klal_layers"])}
        if {k: v for k, v in saved.items() if k != "threads"} != {
            k: v for k, v in dataclasses.asdict(cfg).items() if k != "threads"
        }:
            raise SystemExit(f"{checkpoint} was written with other settings; use another --out")
        model.load_state_dict(load_file(checkpoint / "model.safetensors"), strict=False)
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
        schedule.load_state_dict(torch.load(checkpoint / "schedule.pt", weights_only=True))
        start = state["step"]
    model.train()
    began = time.time()
    with (out / "log.jsonl").open("a") as log:
        for step in range(start, cfg.steps):
            inputs, labels, rows = make_batch(vlm, scene_batch(step, cfg), cfg)
            output = model(**inputs, labels=labels, output_attentions=True)
            kl, mass = klal_loss(output.attentions, rows, cfg.klal_layers, cfg.rest_mass, cfg.per_head)
            total = output.loss + cfg.klal_weight * kl
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            record = {
                "step": step + 1,
                "loss": round(output.loss.item(), 4),
                "kl": round(kl.item(), 4),
                "image_mass": round(mass, 4),
                "seconds": round(time.time() - began, 1),
            }
            log.write(json.dumps(record) + "\n")
            log.flush()
            if (step + 1) % 25 == 0:
                print(json.dumps(record), flush=True)
            if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
                _checkpoint(model, optimizer, schedule, cfg, step + 1, checkpoint)
    model.eval()
    model.set_attn_implementation("sdpa")
    model.save_pretrained(out / "model")
    processor.save_pretrained(out / "model")
    return out / "model"


def main(argv: list[str] | None = None) -> int:
    """Parse a :class:`KlalTrainConfig` from the command line and train."""
    parser = config_parser(__doc__, KlalTrainConfig)
    cfg = KlalTrainConfig(**vars(parser.parse_args(argv)))
    print(f"saved {train(cfg)}", flush=True)
    return 0


def export(checkpoint: str | Path, out: str | Path) -> Path:
    """Save the model of a training ``checkpoint`` directory with ``save_pretrained`` (model and processor)."""
    from safetensors.torch import load_file

    state = json.loads((Path(checkpoint) / "state.json").read_text())
    config = {**state["config"], "klal_layers": tuple(state["config"]["klal_layers"]), "init": None}
    model, processor = build_model(KlalTrainConfig(**config).model_config())
    model.load_state_dict(load_file(Path(checkpoint) / "model.safetensors"), strict=False)
    model.eval().save_pretrained(out)
    processor.save_pretrained(out)
    return Path(out)


if __name__ == "__main__":
    sys.exit(main())
