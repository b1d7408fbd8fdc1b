"""One entry point to every grounding data source, a dataset health check, and the ``localize data check`` command.

Names: ``refcoco``, ``refcoco+``, ``refcocog`` (refer layout; ``split_by`` defaults unc/unc/umd), ``reasonseg``,
``parquet:PATH`` (a parquet file, a folder of them, or a Hugging Face dataset id) and ``shapes`` (synthetic).
``data_root`` defaults to the ``LOCALIZE_DATA_ROOT`` environment variable.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localize.errors import DataError, ImageError, LocalizeError

from .sample import SampleSource

REFER_NAMES = {
    "refcoco": "refcoco",
    "refcoco+": "refcoco+",
    "refcocoplus": "refcoco+",
    "refcoco_plus": "refcoco+",
    "refcocog": "refcocog",
}
EXAMPLES = 5  # how many missing paths / unreadable reasons a report lists


@dataclass(frozen=True)
class DatasetSpec:
    """What the toolkit knows of one data source, in one place: how to open a split and list its splits, the splits
    a benchmark runs by default, the name tables show and the splits of the paper's tables (Kang et al., Tables 1-3),
    in column order. ``procedural``: the source draws samples (the shapes world), so its size is chosen by the caller."""

    name: str
    display: str
    open: Callable[..., SampleSource]
    list_splits: Callable[..., list[str | None]]
    bench_splits: tuple[str, ...] = ()
    paper_splits: tuple[str, ...] = ()
    procedural: bool = False


def _data_root(data_root: str | os.PathLike | None, name: str) -> Path:
    root = data_root if data_root is not None else os.environ.get("LOCALIZE_DATA_ROOT")
    if not root:
        raise DataError(f"{name}: no data root; pass data_root (--data-root) or set LOCALIZE_DATA_ROOT")
    return Path(root).expanduser()


def _open_refer(name: str) -> Callable[..., SampleSource]:
    def open_split(data_root, split, image_root=None, **kw):
        from .refer import RefDataset

        return RefDataset(_data_root(data_root, name), name, split, image_root=image_root, **kw)

    return open_split


def _refer_splits(name: str) -> Callable[..., list[str | None]]:
    def list_splits(data_root=None, **kw):
        from .refer import DEFAULT_SPLIT_BY, KNOWN_SPLITS, find_dataset_dir, read_refer

        split_by = kw.get("split_by") or DEFAULT_SPLIT_BY[name]
        refs = read_refer(find_dataset_dir(_data_root(data_root, name), name, split_by), split_by)[0]
        known = list(KNOWN_SPLITS.get(split_by, ()))
        present = {r.get("split") for r in refs if isinstance(r, dict) and isinstance(r.get("split"), str)}
        return known + sorted(present - set(known))

    return list_splits


def _open_reasonseg(data_root, split, image_root=None, **kw) -> SampleSource:
    from .reasonseg import ReasonSegDataset

    if image_root is not None:
        raise DataError("reasonseg keeps each image beside its JSON; image_root does not apply")
    return ReasonSegDataset(_data_root(data_root, "reasonseg"), split, **kw)


def _reasonseg_splits(data_root=None, **kw) -> list[str | None]:
    from .reasonseg import find_split_dir

    found = []
    for split in ("train", "val", "test"):
        try:
            find_split_dir(_data_root(data_root, "reasonseg"), split)
            found.append(split)
        except DataError:
            pass
    if not found:
        raise DataError(f"reasonseg: no train/val/test folder under {_data_root(data_root, 'reasonseg')}")
    return found


def _open_shapes(data_root, split, image_root=None, **kw) -> SampleSource:
    from .shapes import ShapesDataset

    try:
        return ShapesDataset(split=split, **kw)
    except ValueError as err:
        raise DataError(f"shapes: {err}") from err


def _parquet_path(path: str, data_root: str | os.PathLike | None) -> str:
    path = path or (os.fspath(data_root) if data_root is not None else "")
    if not path:
        raise DataError("parquet: give a path or dataset id, e.g. parquet:/data/refcoco or parquet:lmms-lab/RefCOCO")
    return path


def _parquet_spec(path: str) -> DatasetSpec:
    def open_split(data_root, split, image_root=None, **kw):
        from .parquet import ParquetDataset

        return ParquetDataset(_parquet_path(path, data_root), split, image_root=image_root, **kw)

    def list_splits(data_root=None, **kw):
        from .parquet import resolve_source

        root = resolve_source(_parquet_path(path, data_root), offline=kw.get("offline"))
        names = {m.group(1) for f in root.rglob("*.parquet") if (m := re.match(r"^(.+?)-\d+-of-\d+", f.stem))}
        return sorted(names) if root.is_dir() and names else [None]

    return DatasetSpec(f"parquet:{path}", f"parquet:{path}", open_split, list_splits)


_REFER_DISPLAY = {"refcoco": "RefCOCO", "refcoco+": "RefCOCO+", "refcocog": "RefCOCOg"}
_REFER_SPLITS = {
    "refcoco": ("val", "testA", "testB"),
    "refcoco+": ("val", "testA", "testB"),
    "refcocog": ("val", "test"),
}
DATASETS: dict[str, DatasetSpec] = {
    **{
        name: DatasetSpec(name, display, _open_refer(name), _refer_splits(name), _REFER_SPLITS[name], _REFER_SPLITS[name])
        for name, display in _REFER_DISPLAY.items()
    },
    "reasonseg": DatasetSpec("reasonseg", "ReasonSeg", _open_reasonseg, _reasonseg_splits, ("val", "test")),
    "shapes": DatasetSpec(
        "shapes", "shapes", _open_shapes, lambda data_root=None, **kw: ["train", "val", "test"], ("val", "test"),
        procedural=True,
    ),
}  # fmt: skip
DATASET_NAMES = (*DATASETS, "parquet:PATH")


def dataset_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``name`` (refer aliases such as ``refcoco_plus`` and ``parquet:PATH`` included)."""
    key = name.strip()
    if key.lower().startswith("parquet:"):
        return _parquet_spec(key[len("parquet:") :])
    spec = DATASETS.get(REFER_NAMES.get(key.lower(), key.lower()))
    if spec is None:
        raise DataError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}")
    return spec


def paper_columns() -> list[tuple[str, str]]:
    """The (dataset, split) columns of the paper's REC / RES tables, in their order."""
    return [(spec.name, split) for spec in DATASETS.values() for split in spec.paper_splits]


def open_dataset(
    name: str,
    *,
    data_root: str | os.PathLike | None = None,
    split: str,
    image_root: str | os.PathLike | None = None,
    **kw: Any,
) -> SampleSource:
    """Open ``split`` of the data source ``name`` (see the module doc); extra keywords go to the source's class."""
    return dataset_spec(name).open(data_root, split, image_root=image_root, **kw)


def default_splits(name: str, data_root: str | os.PathLike | None = None, **kw: Any) -> list[str | None]:
    """The splits ``check_dataset`` looks at when none are given (None: a parquet source without split files)."""
    return dataset_spec(name).list_splits(data_root, **kw)


def _check_split(source: SampleSource) -> tuple[dict, set[str], list[str], list[str]]:
    images: set[str] = set()
    missing: list[str] = []
    unreadable = [str(p) for p in getattr(source, "problems", [])]
    mask_problems: list[str] = []
    expressions = 0
    for index in range(len(source)):
        try:
            sample = source[index]
        except ImageError as err:  # lazy sources need the image (its size) to build the sample
            text = str(err)
            if text.startswith("image not found: "):
                path = text[len("image not found: ") :]
                images.add(path)
                if path not in missing:
                    missing.append(path)
            else:
                unreadable.append(f"#{index}: {text}")
            continue
        except (DataError, OSError, ValueError) as err:
            unreadable.append(f"#{index}: {type(err).__name__}: {err}")
            continue
        expressions += 1
        if (problem := sample.mask_problem()) is not None:
            mask_problems.append(f"{sample.sample_id}: {problem}")
        key = sample.image_key
        if key not in images:
            images.add(key)
            if isinstance(sample.image, (str, os.PathLike)) and not os.path.isfile(sample.image):
                missing.append(key)
    entry = {
        "expressions": expressions,
        "images": len(images),
        "images_missing": len(missing),
        "missing_examples": missing[:EXAMPLES],
        "unreadable_rows": len(unreadable),
        "unreadable_examples": unreadable[:EXAMPLES],
        "mask_problems": len(mask_problems),
        "mask_problem_examples": mask_problems[:EXAMPLES],
    }
    return entry, images, missing, unreadable


def check_split(source: SampleSource) -> dict:
    """Expressions, distinct images, missing images (count + first few) and unreadable rows of an opened source."""
    return _check_split(source)[0]


def check_dataset(
    name: str,
    data_root: str | os.PathLike | None,
    splits: Iterable[str] | None = None,
    image_root: str | os.PathLike | None = None,
    **kw: Any,
) -> dict:
    """Per split (and ``total``, images counted once): expressions, distinct images, images missing, unreadable rows.

    A split that cannot be opened gets an ``error`` entry instead; missing images never raise.
    """
    chosen = list(splits) if splits else default_splits(name, data_root, **kw)
    report: dict[str, Any] = {
        "dataset": name,
        "data_root": os.fspath(data_root) if data_root is not None else os.environ.get("LOCALIZE_DATA_ROOT"),
        "image_root": os.fspath(image_root) if image_root is not None else None,
        "splits": {},
    }
    all_images: set[str] = set()
    all_missing: list[str] = []
    expressions = 0
    unreadable: set[str] = set()
    for split in chosen:
        label = split or "all"
        try:
            source = open_dataset(name, data_root=data_root, split=split, image_root=image_root, **kw)
        except LocalizeError as err:
            report["splits"][label] = {"error": str(err)}
            continue
        if report["image_root"] is None and getattr(source, "image_root", None) is not None:
            report["image_root"] = os.fspath(source.image_root)
        entry, images, missing, reasons = _check_split(source)
        report["splits"][label] = entry
        all_images |= images
        all_missing.extend(m for m in missing if m not in all_missing)
        unreadable.update(f"{label}: {r}" if r.startswith("#") else r for r in reasons)  # row numbers are per split
        expressions += entry["expressions"]
    report["total"] = {  # images counted once across splits
        "expressions": expressions,
        "images": len(all_images),
        "images_missing": len(all_missing),
        "missing_examples": all_missing[:EXAMPLES],
        "unreadable_rows": len(unreadable),
        "mask_problems": sum(e.get("mask_problems", 0) for e in report["splits"].values()),
    }
    entries = report["splits"].values()
    report["ok"] = bool(entries) and all(
        "error" not in e and not e["images_missing"] and not e["unreadable_rows"] and not e["mask_problems"]
        for e in entries
    )
    return report


def format_check_report(report: dict) -> str:
    """A human-readable table of a ``check_dataset`` report, with the first missing images and unreadable rows."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"data check: {report['dataset']}", box=box.ASCII2)
    for column in ("split", "expressions", "images", "images missing", "unreadable rows", "empty masks"):
        table.add_column(column, justify="left" if column == "split" else "right")
    notes: list[str] = []
    for split, entry in report["splits"].items():
        if "error" in entry:
            table.add_row(split, "-", "-", "-", "-", "-")
            notes.append(f"{split}: cannot open: {entry['error']}")
            continue
        table.add_row(
            split,
            str(entry["expressions"]),
            str(entry["images"]),
            str(entry["images_missing"]),
            str(entry["unreadable_rows"]),
            str(entry["mask_problems"]),
        )
        notes += [f"{split}: mask (RES not scored): {reason}" for reason in entry["mask_problem_examples"]]
        for path in entry["missing_examples"]:
            notes.append(f"{split}: missing image {path}")
        if entry["images_missing"] > len(entry["missing_examples"]):
            notes.append(f"{split}: ... {entry['images_missing'] - len(entry['missing_examples'])} more missing")
        for reason in entry["unreadable_examples"]:
            notes.append(f"{split}: unreadable row: {reason}")
        if entry["unreadable_rows"] > len(entry["unreadable_examples"]):
            notes.append(f"{split}: ... {entry['unreadable_rows'] - len(entry['unreadable_examples'])} more unreadable")
    total = report.get("total")
    if total and len(report["splits"]) > 1:
        table.add_section()
        table.add_row(
            "total",
            str(total["expressions"]),
            str(total["images"]),
            str(total["images_missing"]),
            str(total["unreadable_rows"]),
            str(total["mask_problems"]),
        )
    buffer = io.StringIO()
    Console(file=buffer, width=120, color_system=None, force_terminal=False).print(table)
    roots = [f"data root: {report.get('data_root')}", f"image root: {report.get('image_root')}"]
    lines = [buffer.getvalue().rstrip(), *roots, *notes, "OK" if report.get("ok") else "PROBLEMS FOUND"]
    return "\n".join(lines) + "\n"


def add_data_check_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``localize data check``."""
    parser.add_argument("--data", required=True, metavar="NAME", help=f"dataset: {', '.join(DATASET_NAMES)}")
    parser.add_argument("--data-root", metavar="DIR", help="dataset root (default: $LOCALIZE_DATA_ROOT)")
    parser.add_argument("--split", action="append", metavar="SPLIT", help="split to check (repeatable; default: all)")
    parser.add_argument("--split-by", metavar="NAME", help="refer split scheme: unc, umd or google")
    parser.add_argument("--image-root", metavar="DIR", help="image folder (default: the dataset's convention)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run_data_check(args: argparse.Namespace) -> int:
    """Run ``localize data check``: 0 when clean, 1 when images are missing or rows unreadable, 2 when unreadable."""
    kw = {"split_by": args.split_by} if getattr(args, "split_by", None) else {}
    try:
        report = check_dataset(args.data, args.data_root, splits=args.split, image_root=args.image_root, **kw)
    except LocalizeError as err:
        if args.json:
            print(json.dumps({"dataset": args.data, "error": str(err), "ok": False}, indent=2))
        else:
            print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_check_report(report), end="\n" if args.json else "")
    if any("error" in entry for entry in report["splits"].values()):
        return 2
    return 0 if report["ok"] else 1
