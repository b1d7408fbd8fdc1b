"""What a bench run is: :class:`BenchConfig` (every setting, as ``TrainConfig`` is for fine-tuning), the tasks,
the splits, the settings that change results (checked on resume), and the paper's protocol as a preset.

Dataset facts (default splits, display names, the paper's column order) come from the one registry,
:mod:`localize.data.registry`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from localize.data.registry import DATASETS, paper_columns
from localize.errors import InputError

from .results import file_id

MANIFEST_FORMAT = 1
TASKS = ("rec", "res", "answer")
DEFAULT_TASKS = ("rec", "res")
# Greedy decoding budget of the answer task: the reference's word count plus this many tokens. With word-level
# tokenizers (the shapes world's) one word is one token, so the model may run past the answer (or emit its
# end-of-sequence) and is judged on its first N words only; subword tokenizers need the slack.
ANSWER_EXTRA_TOKENS = 4
# Recorded in the manifest's settings when answers are computed: a directory with answers and one without are
# refused as mixed settings, and so is a change of this protocol.
ANSWER_PROTOCOL = f"greedy, max_new_tokens = reference words + {ANSWER_EXTRA_TOKENS}, first-N-words exact match"
DEFAULT_SPLITS: dict[str, tuple[str, ...]] = {name: spec.bench_splits for name, spec in DATASETS.items()}
PAPER_ORDER = paper_columns()
DISPLAY = {name: spec.display for name, spec in DATASETS.items()}
METRICS = {  # summary key -> (task, table heading)
    "acc@0.5": ("rec", "REC: Acc@0.5 (%)"),
    "ciou": ("res", "RES: cIoU (%)"),
    "miou": ("res", "RES: mIoU (%)"),
    "answer_acc": ("answer", "Answer: exact match (%)"),
}
# The paper's protocol (``localize reproduce``): discovery on 1000 RefCOCO train samples, k = 3, kernel 7, sigma 1.
PAPER_PROTOCOL = {"discovery_samples": 1000, "k": 3, "kernel": 7, "sigma": 1.0, "prompt": "box"}


@dataclass
class BenchConfig:
    """Every setting of a ``localize bench`` run (the command's flags, same names)."""

    model: str | None = None
    out: str | None = None
    heads: Any = "auto"
    heads_from_discovery: bool = False
    selection: str = "fixed"
    discovery_data: str = "refcoco"
    discovery_split: str = "train"
    discovery_samples: int = 1000
    seed: int = 0
    data: str = "refcoco"
    data_root: str | None = None
    image_root: str | None = None
    split_by: str | None = None
    splits: str | None = None
    task: str = ",".join(DEFAULT_TASKS)
    sam: str | None = None
    sam_type: str = "vit_h"
    prompt: str = "box"
    limit: int | None = None
    k: int | None = None
    kernel: int = 7
    sigma: float = 1.0
    scale_smoothing: bool = True
    mask_mode: str = "hull"
    oracle_maps: bool = False
    method: str | None = None
    gallery: int = 16
    device: str = "auto"
    dtype: str = "auto"
    no_progress: bool = False
    argv: list[str] = field(default_factory=list)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BenchConfig:
        """The config of parsed ``localize bench`` (or ``reproduce``) arguments; absent flags keep the defaults."""
        given = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        return cls(**given)

    @classmethod
    def paper_protocol(cls, **overrides: Any) -> BenchConfig:
        """The paper's protocol (Kang et al., section 5.1): heads discovered on 1000 RefCOCO train samples, k = 3,
        kernel 7 / sigma 1 unscaled, the eight RefCOCO / + / g evaluation splits, SAM with a box prompt."""
        protocol = cls(
            heads_from_discovery=True,
            discovery_samples=PAPER_PROTOCOL["discovery_samples"],
            data="refcoco,refcoco+,refcocog",
            prompt=PAPER_PROTOCOL["prompt"],
            k=PAPER_PROTOCOL["k"],
            kernel=PAPER_PROTOCOL["kernel"],
            sigma=PAPER_PROTOCOL["sigma"],
            scale_smoothing=False,
        )
        return replace(protocol, **overrides)

    @property
    def tasks(self) -> list[str]:
        """The parsed ``task`` list."""
        return parse_tasks(self.task)


def parse_tasks(text: str) -> list[str]:
    """``--task``: a comma list of :data:`TASKS` (case-insensitive); InputError otherwise."""
    tasks = [t.strip().lower() for t in text.split(",") if t.strip()]
    if not tasks or any(t not in TASKS for t in tasks):
        raise InputError(f"--task must be a comma list of {', '.join(TASKS)}, got {text!r}")
    return list(dict.fromkeys(tasks))


def result_settings(config: BenchConfig) -> dict[str, Any]:
    """The settings that change results, as given on the command line (checked before the model is loaded).

    rec and res rows are the same rows (``--task`` only picks tables), so those tasks are not settings; the answer
    task adds fields to every row and is recorded (only when asked for: manifests written before it stay valid).
    """
    settings = {
        "model": config.model,
        "heads": None if config.heads_from_discovery else config.heads,
        "heads_from_discovery": bool(config.heads_from_discovery),
        "k": config.k,
        "kernel": config.kernel,
        "sigma": float(config.sigma),
        "scale_smoothing": bool(config.scale_smoothing),
        "mask_mode": config.mask_mode,
        "sam": file_id(config.sam),
        "sam_type": config.sam_type if config.sam else None,
        "prompt": config.prompt if config.sam else None,
        "oracle_maps": bool(config.oracle_maps),
        "split_by": config.split_by,
        "dtype": config.dtype,
    }
    if config.heads_from_discovery:
        settings["discovery"] = {
            "data": config.discovery_data,
            "split": config.discovery_split,
            "samples": config.discovery_samples,
            "seed": config.seed,
            "selection": config.selection,
        }
    if "answer" in parse_tasks(config.task):
        settings["answer"] = ANSWER_PROTOCOL
    return settings


def parse_splits(data: Sequence[str], splits: str | None) -> list[tuple[str, str]]:
    """(dataset, split) pairs: ``splits`` entries are ``split`` (for every dataset) or ``dataset:split``;
    none given -> each dataset's evaluation splits (RefCOCO/+ val, testA, testB; RefCOCOg val, test)."""
    pairs: list[tuple[str, str]] = []
    tokens = [t.strip() for t in (splits or "").split(",") if t.strip()]
    for name in data:
        key = name.lower()
        if not tokens:
            if key not in DEFAULT_SPLITS:
                raise InputError(f"{name}: no default splits; pass --splits")
            pairs += [(name, s) for s in DEFAULT_SPLITS[key]]
            continue
        for token in tokens:
            dataset, _, split = (
                token.rpartition(":") if ":" in token and not token.startswith("parquet:") else ("", "", token)
            )
            if not dataset or dataset.lower() == key:
                pairs.append((name, split))
    if not pairs:
        raise InputError(f"no split of {', '.join(data)} selected by --splits {splits!r}")
    return list(dict.fromkeys(pairs))
