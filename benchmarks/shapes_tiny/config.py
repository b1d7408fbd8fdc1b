"""The shapes trainer's settings: :class:`ShapesTrainConfig` and its command line.

Only the shipped recipe's options (``build.py``) and the model's shape are left; the trial options of trials 1-34
(benchmarks/shapes_tiny/TRIALS.md) ran at commit ``d0015a8`` and live there.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from localize.data import shapes

# Settings that are not part of a run's identity: a resumed (or moved) run may change them.
UNCHECKED = ("out", "threads", "no_progress")
# Options of the retired trials with their off value: a checkpoint written before they were dropped still resumes
# when it left them off.
RETIRED = {
    "position_bins": shapes.POSITION_BINS, "isolate_image_tokens": 0.0, "vision_feature_layer": -1,
    "attention_dropout": 0.0, "patch_attributes": 0.0, "isolate_probability": 0.0, "shaded": False,
    "query_reads_probability": 0.0, "clutter": 0, "text_steps": 0, "align_steps": 0, "text_clutter": None,
    "text_order": "positions-first", "text_kinds": None, "image_kinds": None, "text_mix": 0.0,
}  # fmt: skip
LEGACY = {"pack": 1, "init": None, "head_dim": None}  # checkpoints from before these options existed


@dataclass
class ShapesTrainConfig:
    """One training run of the shapes-world LLaVA: data, schedule and the model's shape."""

    out: str = ""
    seed: int = 0
    steps: int = 3000
    batch_size: int = 48
    pack: int = 1  # expressions packed after each training image
    init: str | None = None  # start from this model (a train_base OUT/model or checkpoint)
    lr: float = 1e-3
    vision_lr: float = 3e-4
    image_size: int = shapes.DEFAULT_IMAGE_SIZE
    patch_size: int = 8
    vision_hidden: int = 128
    vision_layers: int = 1
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    head_dim: int | None = None  # the language model's per-head width (default hidden / heads)
    threads: int = 2
    save_every: int = 100
    eval_every: int = 250
    no_progress: bool = False

    def settings(self) -> dict:
        """The settings a checkpoint records and a resume must match (all but the directory, threads and display)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in UNCHECKED}

    @classmethod
    def from_settings(cls, saved: dict) -> ShapesTrainConfig:
        """The config a checkpoint's recorded settings describe (retired trial options left at off are dropped)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in upgrade_settings(saved).items() if k in known})


def upgrade_settings(saved: dict) -> dict:
    """A checkpoint's recorded settings in today's terms: options added since filled in, retired trial options
    dropped where they were off (left in where on, so that a resume refuses them)."""
    kept = {k: v for k, v in saved.items() if not (k in RETIRED and v == RETIRED[k]) and k not in UNCHECKED}
    return {**LEGACY, **kept}


HELP = {
    "pack": "expressions packed after each training image",
    "init": "start from this model (a train_base OUT/model or checkpoint)",
    "head_dim": "the language model's per-head width (default hidden / heads)",
    "threads": "torch threads (the shipped weights: 1; float reductions may differ with another count)",
    "save_every": "write OUT/checkpoint every N steps (and at the end)",
    "eval_every": "validation answer accuracy every N steps (and at the end)",
    "no_progress": "no progress bar (a JSON line every 25 steps instead)",
}


def _int_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


# Flag types that the defaults do not tell (None defaults, floats written as ints, tuples).
TYPES = {"init": str, "head_dim": int, "klal_layers": _int_tuple}


def parser(description: str | None = None, config: type = None) -> argparse.ArgumentParser:
    """The command line of ``config`` (:class:`ShapesTrainConfig` or a subclass; one ``--flag`` per field)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="run directory (checkpoint, log.jsonl, model)")
    for field in dataclasses.fields(config or ShapesTrainConfig):
        if field.name == "out":
            continue
        flag, default = "--" + field.name.replace("_", "-"), field.default
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=HELP.get(field.name))
        else:
            kind = TYPES.get(field.name, type(default))
            parser.add_argument(flag, type=kind, default=default, help=HELP.get(field.name))
    return parser


def parse(argv: list[str] | None = None, description: str | None = None) -> ShapesTrainConfig:
    """A config from command-line arguments."""
    args = parser(description).parse_args(argv)
    return ShapesTrainConfig(**vars(args))
