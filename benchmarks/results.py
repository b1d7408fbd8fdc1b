"""A bench output directory: result rows (one JSONL per split, shards under ``accelerate launch``, each id once),
skipped samples, and the manifest whose settings a rerun must match (:func:`localize.runs.check_settings`)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from pathlib import Path
from typing import Any

from localize.files import atomic_write_text
from localize.runs import SettingsMismatchError, check_settings, read_jsonl


class ResultsMismatchError(SettingsMismatchError):
    """An output directory holding results of other settings than the command's."""


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9+._-]+", "_", name).strip("_") or "data"


def split_files(out: Path, dataset: str, split: str) -> tuple[Path, Path]:
    folder = out / "results" / slug(dataset)
    return folder / f"{slug(split)}.jsonl", folder / f"{slug(split)}.skipped.jsonl"


def shard_file(path: Path, index: int) -> Path:
    return path.with_name(f"{path.stem}.shard{index}.jsonl")


def _all_files(path: Path) -> list[Path]:
    """A results file and its unmerged shards."""
    return [p for p in [path, *sorted(path.parent.glob(f"{path.stem}.shard*.jsonl"))] if p.exists()]


def rows_by_id(path: Path) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    for file in _all_files(path):
        for row in read_jsonl(file):
            rows.setdefault(str(row.get("id")), row)
    return rows


def read_rows(out_dir: str | os.PathLike) -> dict[tuple[str, str], list[dict]]:
    """All result rows of an output directory (shards included, each id once) by (dataset, split)."""
    results = Path(out_dir) / "results"
    grouped: dict[tuple[str, str], dict[str, dict]] = {}
    for file in sorted(results.glob("*/*.jsonl")):
        if ".skipped" in file.name or ".shard" in file.name:
            continue
        for row in rows_by_id(file).values():
            grouped.setdefault((row["dataset"], row["split"]), {}).setdefault(str(row["id"]), row)
    for file in sorted(results.glob("*/*.shard*.jsonl")):  # shards whose main file does not exist yet
        if ".skipped" in file.name:
            continue
        for row in read_jsonl(file):
            grouped.setdefault((row["dataset"], row["split"]), {}).setdefault(str(row["id"]), row)
    return {
        key: sorted(rows.values(), key=lambda r: (r.get("index", 0), str(r["id"]))) for key, rows in grouped.items()
    }


def read_skipped(out_dir: Path, done: dict[tuple[str, str], set[str]]) -> dict[tuple[str, str], list[dict]]:
    """Skipped samples still without a result row, by (dataset, split)."""
    skipped: dict[tuple[str, str], dict[str, dict]] = {}
    for file in sorted((out_dir / "results").glob("*/*.skipped*.jsonl")):
        for row in read_jsonl(file):
            key = (row["dataset"], row["split"])
            if str(row["id"]) not in done.get(key, set()):
                skipped.setdefault(key, {})[str(row["id"])] = row  # the latest reason wins
    return {key: list(rows.values()) for key, rows in skipped.items()}


def merge_shards(path: Path) -> None:
    """Fold ``<split>.shard<i>.jsonl`` into ``<split>.jsonl`` (each id once, sample order), then remove the shards."""
    shards = sorted(path.parent.glob(f"{path.stem}.shard*.jsonl"))
    if not shards:
        return
    rows = sorted(rows_by_id(path).values(), key=lambda r: (r.get("index", 0), str(r["id"])))
    atomic_write_text(path, "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows))
    for shard in shards:
        shard.unlink()


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_id(path: str | None) -> dict | None:
    """Name and size of a large file (a SAM checkpoint): hashing gigabytes on every run is not worth it."""
    if not path:
        return None
    p = Path(path)
    stat = p.stat() if p.exists() else None
    return {"name": p.name, "bytes": stat.st_size if stat else None}


def versions() -> dict[str, str | None]:
    from importlib import metadata

    import localize

    out: dict[str, str | None] = {"localize": localize.__version__, "python": platform.python_version()}
    for name in ("transformers", "torch", "accelerate", "segment_anything", "pycocotools"):
        try:
            out[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def check_against(out: Path, section: str, new: dict) -> None:
    """Refuse to add to ``out`` when its manifest's ``section`` differs from ``new``."""
    path = out / "manifest.json"
    if not path.exists():
        if (out / "results").is_dir() and any((out / "results").rglob("*.jsonl")):
            raise ResultsMismatchError(f"{out} holds results but no manifest.json; use another --out")
        return
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ResultsMismatchError(f"cannot read {path}: {err}; use another --out") from err
    old = manifest.get(section)
    if old is None:
        raise ResultsMismatchError(f"{path} has no {section!r}; it was not written by `localize bench`")
    hint = "rerun with the directory's settings to resume, or pass another --out"
    check_settings(old, new, f"{out}", hint=hint, error=ResultsMismatchError)
