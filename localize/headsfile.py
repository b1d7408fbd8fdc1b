"""The heads file: a model's discovered localization heads plus the statistics and settings that produced them.

JSON, written atomically. Heads are 0-based ``[layer, head]`` pairs (``"heads"``) and the same as ``"L14 H24"``
strings (``"heads_str"``); per-head statistics are ``[num_layers][num_heads]`` lists, one row per line, with
``null`` for unknown or non-finite values (read back as ``nan``).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .errors import HeadsMismatchError, InputError
from .files import atomic_write_text
from .version import __version__

__all__ = ["HeadsFile", "format_head", "load_heads", "parse_heads", "save_heads", "validate_heads"]

FORMAT_VERSION = 1
STAT_FIELDS = ("mean_sum", "mean_entropy", "frequency", "mean_iou")


def _transformers_version() -> str | None:
    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return None


@dataclass
class HeadsFile:
    """Contents of a heads file; stats are ``[num_layers, num_heads]`` float arrays or ``None`` when unknown."""

    num_layers: int
    num_heads: int
    heads: list[tuple[int, int]]
    model: str | None = None
    revision: str | None = None
    model_type: str | None = None
    grid: tuple[int, int] | None = None
    tau: float | None = None
    n_samples: int = 0
    seed: int | None = None
    sample_ids: list[str] = field(default_factory=list)
    mean_sum: np.ndarray | None = None
    mean_entropy: np.ndarray | None = None
    frequency: np.ndarray | None = None
    mean_iou: np.ndarray | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    localize_version: str = __version__
    transformers_version: str | None = field(default_factory=_transformers_version)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def __post_init__(self) -> None:
        self.num_layers, self.num_heads = int(self.num_layers), int(self.num_heads)
        self.heads = parse_heads(self.heads)  # integer pairs only: 3.7 is not truncated to 3
        self.sample_ids = [str(s) for s in self.sample_ids]
        if self.grid is not None:
            self.grid = (int(self.grid[0]), int(self.grid[1]))
        for name in STAT_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if hasattr(value, "detach"):
                value = value.detach().cpu().float().numpy()
            arr = np.array(
                [[np.nan if v is None else v for v in row] for row in value] if isinstance(value, list) else value,
                dtype=np.float64,
            )
            if arr.shape != (self.num_layers, self.num_heads):
                raise ValueError(f"{name} has shape {arr.shape}, expected ({self.num_layers}, {self.num_heads})")
            setattr(self, name, arr)

    @property
    def heads_str(self) -> list[str]:
        """The heads as ``"L14 H24"`` strings."""
        return [format_head(h) for h in self.heads]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (stats as nested lists, non-finite values as ``None``)."""
        out: dict[str, Any] = {"format_version": FORMAT_VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in STAT_FIELDS:
                value = None if value is None else [[_json_float(v) for v in row] for row in value]
            elif f.name == "heads":
                out["heads"] = [list(h) for h in value]
                out["heads_str"] = self.heads_str
                continue
            elif f.name == "grid" and value is not None:
                value = list(value)
            elif f.name == "tau" and value is not None:
                value = _json_float(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadsFile:
        """Inverse of :meth:`to_dict`; unknown keys are ignored, ``heads_str`` is used when ``heads`` is absent."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        if "heads" not in kwargs and "heads_str" in data:
            kwargs["heads"] = parse_heads(data["heads_str"])
        return cls(**kwargs)


def _json_float(v: float) -> float | None:
    v = float(v)
    return float(f"{v:.6g}") if math.isfinite(v) else None


def _json_default(value: Any) -> Any:
    """numpy scalars/arrays and paths in ``settings`` -> JSON types."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _dumps(data: dict[str, Any]) -> str:
    """Indented JSON with each 2-D stats row on one line (compact but diffable)."""
    lines = []
    for key, value in data.items():
        if key in STAT_FIELDS and value is not None:
            rows = ",\n".join("    " + json.dumps(row, allow_nan=False) for row in value)
            text = "[\n" + rows + "\n  ]"
        elif key in ("heads", "heads_str", "sample_ids", "grid"):
            text = json.dumps(value, allow_nan=False)
        else:
            text = json.dumps(value, indent=2, allow_nan=False, default=_json_default).replace("\n", "\n  ")
        lines.append(f"  {json.dumps(key)}: {text}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def save_heads(path: str | os.PathLike, heads_file: HeadsFile | None = None, /, **fields_: Any) -> HeadsFile:
    """Write a heads file atomically (temp file in the same folder + ``os.replace``); returns what was written.

    Pass a :class:`HeadsFile`, or its fields as keywords (``num_layers=..., num_heads=..., heads=[(14, 24)], ...``).
    """
    if heads_file is None:
        heads_file = HeadsFile(**fields_)
    elif fields_:
        raise TypeError("pass either a HeadsFile or its fields, not both")
    atomic_write_text(path, _dumps(heads_file.to_dict()))
    return heads_file


def load_heads(path: str | os.PathLike) -> HeadsFile:
    """Read a heads file written by :func:`save_heads` (raises :class:`InputError` if missing or malformed)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"heads file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read heads file {path}: {e}") from None
    if not isinstance(data, dict) or "num_layers" not in data or "num_heads" not in data:
        raise InputError(f"{path} is not a heads file (needs num_layers, num_heads and heads)")
    version = data.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise InputError(f"{path} has heads-file format {version!r}; this localize reads up to {FORMAT_VERSION}")
    try:
        return HeadsFile.from_dict(data)
    except (TypeError, ValueError) as e:
        raise InputError(f"malformed heads file {path}: {e}") from None


def validate_heads(
    heads: HeadsFile | Iterable[tuple[int, int]] | str,
    num_layers: int,
    num_heads: int,
    model_type: str | None = None,
) -> list[tuple[int, int]]:
    """Check heads (or a heads file) against a model's layer/head counts (and, for a heads file that names one, its
    ``model_type``); returns the 0-based pairs, de-duplicated.

    Raises :class:`HeadsMismatchError` naming the offending head, the differing counts or the other family.
    """
    if isinstance(heads, HeadsFile):
        made_for = f" made for {heads.model}" if heads.model else ""
        if model_type and heads.model_type and heads.model_type != model_type:
            raise HeadsMismatchError(
                f"the heads file{made_for} is for a {heads.model_type} model, but this model is {model_type}; "
                "run `localize discover` on this model"
            )
        if (heads.num_layers, heads.num_heads) != (num_layers, num_heads):
            raise HeadsMismatchError(
                f"the heads file{made_for} is for a model with {heads.num_layers} layers x {heads.num_heads} heads, "
                f"but this model has {num_layers} layers x {num_heads} heads; run `localize discover` on this model"
            )
        pairs = heads.heads
    else:
        pairs = parse_heads(heads)
    if not pairs:
        raise HeadsMismatchError("no heads given")
    out: list[tuple[int, int]] = []
    for layer, head in pairs:
        if not (0 <= layer < num_layers and 0 <= head < num_heads):
            raise HeadsMismatchError(
                f"head {format_head((layer, head))} does not fit this model: layers are L0-L{num_layers - 1} and "
                f"heads H0-H{num_heads - 1} (0-based)"
            )
        if (layer, head) not in out:
            out.append((layer, head))
    return out


def format_head(head: tuple[int, int]) -> str:
    """``(14, 24) -> "L14 H24"`` (0-based layer and head)."""
    layer, h = head
    return f"L{int(layer)} H{int(h)}"


_PAIR = re.compile(
    r"\s*(?:L\s*(?P<l1>\d+)\s*[-_:,/]?\s*H\s*(?P<h1>\d+)"  # L14 H24, L14H24, L14:H24
    r"|(?P<l2>\d+)\s*(?:[:,/]|\s)\s*(?P<h2>\d+))"  # 14:24, 14,24, 14 24
    r"\s*(?:[,;]|$|(?=L)|(?<=\s)(?=\d))",  # then a separator, the end, or the next head
    re.IGNORECASE,
)


def parse_heads(text: str | Iterable[Any]) -> list[tuple[int, int]]:
    """Parse heads: ``"L14 H24,14:13"``, ``"L14H24"``, ``"14:24"``, ``"14,24"`` pairs, or a list of pairs/strings.

    Raises :class:`InputError` on anything else.
    """
    if not isinstance(text, str):
        out: list[tuple[int, int]] = []
        for item in text:
            if isinstance(item, str):
                out.extend(parse_heads(item))
            else:
                try:
                    layer, head = item
                except (TypeError, ValueError):
                    raise InputError(f"cannot read {item!r} as a (layer, head) pair") from None
                if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (layer, head)):
                    raise InputError(f"a head is a pair of integers (layer, head), got {item!r}")
                out.append((int(layer), int(head)))
        return out
    out, pos, text = [], 0, text.strip()
    while pos < len(text):
        m = _PAIR.match(text, pos)
        if not m:
            raise InputError(
                f"cannot read heads from {text!r} at {text[pos:]!r}; use e.g. 'L14 H24,L14 H13' or '14:24,14:13'"
            )
        layer, head = (m["l1"], m["h1"]) if m["l1"] is not None else (m["l2"], m["h2"])
        out.append((int(layer), int(head)))
        pos = m.end()
    return out
