"""The discovery sidecar: per-sample statistics appended as they are computed, so that a run resumes (module doc of
:mod:`localize.heads.discover`). Writing, torn-line repair, shards and the settings check are :mod:`localize.runs`'.

A header line (what the statistics depend on), then one line per sample: ``{"id", "grid", "sum", "entropy", "iou"}``
with one value per scored head (entropy ``null`` = +inf) or ``{"id", "skipped": reason}``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from localize.errors import InputError
from localize.runs import AppendLog, check_settings, shard_files, shard_path

SIDECAR_FORMAT = 1


def sidecar_header(vlm: Any, skip_layers: int, weighting: str, connectivity: int) -> dict[str, Any]:
    """The settings the per-sample statistics depend on (model, prompt, dtype, layers skipped, entropy settings)."""
    info = vlm.info()
    spec = info["spec"]
    return {
        "localize_sidecar": SIDECAR_FORMAT,
        "model": os.path.abspath(spec) if os.path.isdir(spec) else spec,
        "revision": info["revision"],
        "model_type": info["model_type"],
        "num_layers": int(info["num_layers"]),
        "num_heads": int(info["num_heads"]),
        "template": info["template"],
        "dtype": info["dtype"],
        "skip_layers": int(skip_layers),
        "weighting": weighting,
        "connectivity": int(connectivity),
    }


def sidecar_files(sidecar: str | os.PathLike) -> list[Path]:
    """The sidecar and its rank shards (``<stem>.rank<i><suffix>``) that exist."""
    return shard_files(sidecar)


def sidecar_writer(sidecar: str | os.PathLike, header: dict[str, Any], index: int, count: int) -> AppendLog:
    """The append log of shard ``index`` of ``count`` (the sidecar itself for one process), header first."""
    return AppendLog(shard_path(sidecar, index, count), header=header)


def _check_header(path: Path, found: Any, expected: dict[str, Any] | None) -> None:
    if not isinstance(found, dict) or found.get("localize_sidecar") != SIDECAR_FORMAT:
        raise InputError(f"{path} is not a discovery sidecar (format {SIDECAR_FORMAT}); remove it or pick another path")
    if expected is not None:
        saved = {key: found.get(key) for key in expected}
        check_settings(saved, expected, f"the sidecar {path}", hint="pass another --sidecar/--out, or --fresh")


def read_sidecar(sidecar: str | os.PathLike, header: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Records of a sidecar and its rank shards by sample id (later lines win, a score over a skip); checks ``header``.

    Unreadable lines (a line cut short by an interruption) are ignored: those samples are scored again.
    """
    records: dict[str, dict[str, Any]] = {}
    for path in sidecar_files(sidecar):
        lines = path.read_text(encoding="utf-8").split("\n")
        if len(lines) < 2:  # not even a whole header line: an interrupted start
            continue
        try:
            head = json.loads(lines[0])
        except json.JSONDecodeError:
            head = None
        _check_header(path, head, header)
        for line in lines[1:]:
            record = decode_line(line)
            if record is not None and not ("skipped" in record and "sum" in records.get(record["id"], {})):
                records[record["id"]] = record  # a score is never replaced by a skip (of an earlier run, in a shard)
    return records


def decode_line(line: str) -> dict[str, Any] | None:
    """A sidecar line -> record with numpy statistics (entropy ``null`` = inf); None when unreadable."""
    try:
        record = json.loads(line)
        if not isinstance(record, dict) or not isinstance(record.get("id"), str):
            return None
        if "sum" in record:
            record["sum"] = _array(record["sum"], np.nan)
            record["entropy"] = _array(record["entropy"], np.inf)
            if "iou" in record:
                record["iou"] = _array(record["iou"], np.nan)
        elif not isinstance(record.get("skipped"), str):
            return None
        return record
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def _floats(values: np.ndarray) -> str:
    """A compact JSON list: 7 significant digits, ``null`` for non-finite values."""
    return "[" + ",".join(f"{v:.7g}" if math.isfinite(v) else "null" for v in values.tolist()) + "]"


def record_line(sample_id: str, grid: tuple[int, int], sums, entropy, iou) -> str:
    """The sidecar line of a scored sample."""
    parts = [f'"id": {json.dumps(sample_id)}', f'"grid": [{grid[0]}, {grid[1]}]', f'"sum": {_floats(sums)}']
    parts.append(f'"entropy": {_floats(entropy)}')
    if iou is not None:
        parts.append(f'"iou": {_floats(iou)}')
    return "{" + ", ".join(parts) + "}"


def skip_line(sample_id: str, err: BaseException | str) -> str:
    """The sidecar line of a sample that could not be scored, with the reason."""
    reason = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    return json.dumps({"id": sample_id, "skipped": reason[:300]})


def _array(values: list, none: float) -> np.ndarray:
    return np.array([none if v is None else v for v in values], dtype=np.float64)
