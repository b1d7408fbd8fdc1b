"""Train the tiny shapes-world LLaVA from scratch: seeded, resumable, CPU-sized.

    python -m benchmarks.train_shapes --out runs/shapes --steps 3000 [--threads 2] [--seed 0]

The model is a plain ``LlavaForConditionalGeneration`` built from a config (a shallow CLIP vision tower whose
position embedding is a frozen 2-D sin-cos table, so image tokens stay local, and a small Llama), with a word-level
tokenizer over the world's vocabulary: it goes through the toolkit's ordinary ``llava`` adapter.

Objective: next-token loss on the answer only. The prompt is the toolkit's default LLaVA prompt
``<image>\\n{expression}``, followed by the answer ``x{col} y{row} {size} {color} {shape}`` and ``</s>``: the
expression's last token (the query the localization heads are read from) must predict the referred object's fine
position, so nothing is answered without finding the object; no coordinates are ever read at inference.
Curriculum: difficulty 1 scenes for the first fifth of the steps, 2 for the next two fifths, then 3.

Options for trials (benchmarks/SHAPES_TRIALS.md), all off by default: ``--pack`` (several expressions after one
image), ``--position-bins`` (a finer answer grid), ``--isolate-image-tokens`` (for a fraction of the steps no image
token attends to another in the language model, so the scene cannot be gathered into a few tokens),
``--vision-feature-layer -2`` (the projector reads the patch embeddings: local image tokens) and
``--attention-dropout`` (a head that reads one or two image tokens loses them often).

Checkpoints (``OUT/checkpoint``: weights as safetensors, optimizer state read back with ``weights_only=True``) are
written every ``--save-every`` steps; rerunning the same command resumes. The final model and processor are
saved with ``save_pretrained`` to ``OUT/model``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import shapes


def sincos_2d(side: int, dim: int) -> torch.Tensor:
    """``[side * side, dim]`` 2-D sin-cos position table (half the channels for x, half for y)."""
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    ys, xs = torch.meshgrid(
        torch.arange(side, dtype=torch.float32), torch.arange(side, dtype=torch.float32), indexing="ij"
    )
    out = [
        torch.sin(xs.flatten()[:, None] * omega),
        torch.cos(xs.flatten()[:, None] * omega),
        torch.sin(ys.flatten()[:, None] * omega),
        torch.cos(ys.flatten()[:, None] * omega),
    ]
    table = torch.cat(out, dim=1)
    return torch.nn.functional.pad(table, (0, dim - table.shape[1]))


def build_model(args: argparse.Namespace):
    """The untrained model and processor (seeded)."""
    from localize.testing import tiny_llava

    model, processor = tiny_llava(
        words=shapes.vocabulary(getattr(args, "position_bins", shapes.POSITION_BINS)),
        image_size=args.image_size,
        patch_size=args.patch_size,
        vision_hidden=args.vision_hidden,
        vision_layers=args.vision_layers,
        vision_heads=4,
        hidden=args.hidden,
        layers=args.layers,
        heads=args.heads,
        kv_heads=args.heads,
        intermediate=args.hidden * 2,
        vision_feature_layer=getattr(args, "vision_feature_layer", -1),
        seed=args.seed,
    )
    embeddings = model.model.vision_tower.embeddings
    side = args.image_size // args.patch_size
    with torch.no_grad():
        table = torch.zeros_like(embeddings.position_embedding.weight)
        table[1:] = sincos_2d(side, table.shape[1])  # row 0 is the CLS token
        embeddings.position_embedding.weight.copy_(table)
    embeddings.position_embedding.weight.requires_grad_(False)
    # Attention dropout in the language model (training only): a head that reads one or two image tokens loses them
    # often, one that reads many tokens of the same object does not.
    dropout = float(getattr(args, "attention_dropout", 0.0))
    model.config.text_config.attention_dropout = dropout
    for layer in model.model.language_model.layers:
        layer.self_attn.attention_dropout = dropout
    return model.train(), processor


def difficulty_at(step: int, steps: int, warm: bool = False) -> int:
    """Easy-first curriculum: 1, then 2, then 3 (``warm``, a continued model: 2 for the first half, then 3)."""
    if warm:
        return 2 if step < steps // 2 else 3
    return 1 if step < steps // 5 else 2 if step < 3 * steps // 5 else 3


def _packed_texts(step: int, args: argparse.Namespace, split: str = "train") -> tuple[list, list[str]]:
    """Images and texts of a packed step: ``--pack`` expressions (distinct targets) after each image (validation:
    difficulty 3)."""
    images, texts = [], []
    n_images = max(1, args.batch_size // args.pack)
    difficulty = difficulty_at(step, args.steps, bool(getattr(args, "init", None))) if split == "train" else 3
    bins = getattr(args, "position_bins", shapes.POSITION_BINS)
    for i in range(n_images):
        seed = shapes.scene_seed(split, step * n_images + i)
        scene, expressions = shapes.sample_scene(seed, difficulty, args.image_size)
        rng = np.random.default_rng([seed, difficulty, 23])
        chosen, targets = [], set()
        for j in rng.permutation(len(expressions)):
            if expressions[j].target not in targets:
                chosen.append(expressions[j])
                targets.add(expressions[j].target)
        # Fill up to ``pack`` with repeats of other expressions when the scene has fewer objects.
        rest = [e for e in expressions if e not in chosen]
        chosen += [rest[k] for k in rng.permutation(len(rest))[: max(0, args.pack - len(chosen))]]
        parts = [f"{e.text} {shapes.answer_for(scene.objects[e.target], args.image_size, bins)} </s>" for e in chosen]
        images.append(scene.image)
        texts.append("<image>\n" + " ".join(parts[: args.pack]))
    return images, texts


def isolation_mask(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, image_id: int, dtype: torch.dtype
) -> torch.Tensor:
    """A ``[batch, 1, T, T]`` additive mask: causal and padding as usual, except that an image token attends to no
    other image token, so the language model cannot gather the scene into a few image tokens and a text token can
    only learn about an object by attending to that object's own tokens."""
    length = input_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    is_image = input_ids == image_id
    image_pairs = is_image[:, :, None] & is_image[:, None, :] & ~torch.eye(length, dtype=torch.bool)
    allowed = causal[None] & attention_mask.bool()[:, None, :] & ~image_pairs
    allowed |= torch.eye(length, dtype=torch.bool)[None]  # every row keeps itself (padding rows stay finite)
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def isolating(step: int, args: argparse.Namespace) -> bool:
    """Whether training step ``step`` isolates image tokens in the language model (``--isolate-image-tokens``)."""
    return step < getattr(args, "isolate_image_tokens", 0.0) * args.steps


def make_batch(
    processor,
    step: int,
    args: argparse.Namespace,
    split: str = "train",
    size: int | None = None,
    isolate: bool | None = None,
):
    """Inputs and labels (answers + eos only) of training step ``step`` (deterministic in the step). ``isolate``:
    use :func:`isolation_mask` (default: as ``--isolate-image-tokens`` says for a training step; never for val)."""
    size = size or args.batch_size
    bins = getattr(args, "position_bins", shapes.POSITION_BINS)
    pack = getattr(args, "pack", 1) if split == "train" else 1
    samples = []
    if split != "train" and bins != shapes.POSITION_BINS:  # the dataset's answers use the default bins
        images, texts = _packed_texts(step, argparse.Namespace(**{**vars(args), "pack": 4, "batch_size": size}), split)
    elif pack > 1:
        images, texts = _packed_texts(step, args)
    else:
        difficulty = difficulty_at(step, args.steps, bool(getattr(args, "init", None))) if split == "train" else 3
        data = shapes.ShapesDataset(
            split, size=shapes.SPLIT_CAPACITY - 1, difficulty=difficulty, image_size=args.image_size
        )
        samples = [data[step * size + i] for i in range(size)]
        images = [s.image for s in samples]
        texts = [f"<image>\n{s.expression} {s.answer} </s>" for s in samples]
    inputs = processor(images=images, text=texts, return_tensors="pt", padding=True)
    labels = torch.full_like(inputs["input_ids"], -100)
    answer_words = {w for w in shapes.vocabulary(bins) if w[0] in "xy" and w[1:].isdigit()}
    answer_words |= set(shapes.SIZE_WORDS)
    tokenizer = processor.tokenizer
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    for b, text in enumerate(texts):
        words = text.split("\n", 1)[1].split()
        first = int((inputs["input_ids"][b] == image_id).nonzero().max()) + 1  # words follow the image tokens
        in_answer = False
        for j, word in enumerate(words):
            # An answer runs from its position word (x..) to its </s>; colour/shape words there are answers too.
            if word in answer_words and word.startswith("x"):
                in_answer = True
            if in_answer:
                labels[b, first + j] = inputs["input_ids"][b, first + j]
            if word == "</s>":
                in_answer = False
    inputs = dict(inputs)
    if isolating(step, args) if isolate is None and split == "train" else bool(isolate):
        inputs["attention_mask"] = isolation_mask(
            inputs["input_ids"], inputs["attention_mask"], image_id, torch.float32
        )
    return inputs, labels, samples


@torch.no_grad()
def evaluate(model, processor, args: argparse.Namespace, batches: int = 4, isolate: bool = False) -> dict[str, float]:
    """Answer accuracy on validation scenes (difficulty 3): exact answers and token accuracy (teacher-forced);
    ``isolate``: under the isolation mask (the training phase's)."""
    model.eval()
    correct = exact = total = rows = 0
    for k in range(batches):
        inputs, labels, _ = make_batch(processor, k, args, split="val", size=32, isolate=isolate)
        logits = model(**inputs).logits[:, :-1]
        target = labels[:, 1:]
        hit = (logits.argmax(-1) == target) | (target == -100)
        exact += int(hit.all(1).sum())
        rows += int(hit.shape[0])
        correct += int(((logits.argmax(-1) == target) & (target != -100)).sum())
        total += int((target != -100).sum())
    model.train()
    return {"answer_exact": exact / rows, "token_acc": correct / total}


def main(argv: list[str] | None = None) -> int:
    """Train (or resume) and save the model."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--pack", type=int, default=1, help="expressions packed after each training image")
    parser.add_argument("--init", default=None, help="start from this model (a train_shapes OUT/model or checkpoint)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--vision-lr", type=float, default=3e-4)
    parser.add_argument("--image-size", type=int, default=shapes.DEFAULT_IMAGE_SIZE)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--vision-hidden", type=int, default=128)
    parser.add_argument("--vision-layers", type=int, default=1)
    parser.add_argument(
        "--vision-feature-layer",
        type=int,
        default=-1,
        help="CLIP hidden state fed to the projector (LLaVA-1.5: -2; with one CLIP layer, -2 = the patch embeddings)",
    )
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument(
        "--position-bins", type=int, default=shapes.POSITION_BINS, help="answer position bins per axis (needs --pack)"
    )
    parser.add_argument(
        "--isolate-image-tokens",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="for this fraction of the steps, image tokens attend to no other image token in the language model",
    )
    parser.add_argument(
        "--attention-dropout", type=float, default=0.0, help="attention dropout in the language model while training"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save-every", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=250)
    args = parser.parse_args(argv)
    if args.position_bins != shapes.POSITION_BINS and args.pack < 2:
        parser.error("--position-bins other than the world's needs --pack >= 2 (answers are built per scene)")

    from safetensors.torch import load_file, save_file

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, processor = build_model(args)
    if args.init:
        init = Path(args.init)
        weights = init / "model.safetensors"
        result = model.load_state_dict(load_file(weights), strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise SystemExit(f"{weights} does not match the model: {result.missing_keys or result.unexpected_keys}")
        print(f"initialised from {weights}", flush=True)
    vision = [p for n, p in model.named_parameters() if p.requires_grad and ("vision_tower" in n or "projector" in n)]
    language = [
        p for n, p in model.named_parameters() if p.requires_grad and not ("vision_tower" in n or "projector" in n)
    ]
    optimizer = torch.optim.AdamW(
        [
            {"params": language, "lr": args.lr, "weight_decay": 0.01},
            {"params": vision, "lr": args.vision_lr, "weight_decay": 0.1},
        ],
        betas=(0.9, 0.98),
    )
    warmup = max(1, args.steps // 30)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))
    )
    checkpoint = out / "checkpoint"
    start = 0
    if (checkpoint / "state.json").exists():
        state = json.loads((checkpoint / "state.json").read_text())
        # checkpoints from before --pack / --position-bins existed
        saved_args = {
            "pack": 1,
            "init": None,
            "position_bins": shapes.POSITION_BINS,
            "isolate_image_tokens": 0.0,
            "vision_feature_layer": -1,
            "attention_dropout": 0.0,
            **state["args"],
        }
        if saved_args != {k: v for k, v in vars(args).items() if k not in ("threads",)}:
            raise SystemExit(f"{checkpoint} was written with other settings; use another --out")
        model.load_state_dict(load_file(checkpoint / "model.safetensors"), strict=False)
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
        schedule.load_state_dict(torch.load(checkpoint / "schedule.pt", weights_only=True))
        start = state["step"]
        print(f"resumed at step {start}", flush=True)
    log = (out / "log.jsonl").open("a")
    began = time.time()
    for step in range(start, args.steps):
        inputs, labels, _ = make_batch(processor, step, args)
        loss = model(**inputs, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        record = {
            "step": step + 1,
            "loss": round(loss.item(), 4),
            "difficulty": difficulty_at(step, args.steps, bool(getattr(args, "init", None))),
            "seconds": round(time.time() - began, 1),
        }
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            record.update(evaluate(model, processor, args, isolate=isolating(step, args)))
        log.write(json.dumps(record) + "\n")
        log.flush()
        if (step + 1) % 25 == 0 or "answer_exact" in record:
            print(json.dumps(record), flush=True)
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            checkpoint.mkdir(exist_ok=True)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, checkpoint / "model.safetensors")
            torch.save(optimizer.state_dict(), checkpoint / "optimizer.pt")
            torch.save(schedule.state_dict(), checkpoint / "schedule.pt")
            saved = {"step": step + 1, "args": {k: v for k, v in vars(args).items() if k not in ("threads",)}}
            (checkpoint / "state.json").write_text(json.dumps(saved))
    model.eval()
    model.config.text_config.attention_dropout = 0.0  # a training regulariser, not part of the shipped model
    model.save_pretrained(out / "model")
    processor.save_pretrained(out / "model")
    print(f"saved {out / 'model'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
