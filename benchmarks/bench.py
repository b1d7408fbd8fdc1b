"""``localize bench`` (REC / RES on RefCOCO-family splits, resumable, sharded), ``--compare``, ``localize reproduce``.

``--task`` ``answer`` also records the model's own greedy text answer per expression where the dataset has a reference
answer (the shapes world) and scores it by exact match, so that fine-tuning can be shown not to degrade the answers.

Output directory::

    OUT/manifest.json                      every setting, model revision, heads (+ heads-file sha256), versions, runs
    OUT/results/<dataset>/<split>.jsonl    one row per expression, appended and flushed as it is computed
    OUT/results/<dataset>/<split>.skipped.jsonl   samples that could not be read (retried on every rerun)
    OUT/summary.json, OUT/summary.md       recomputed from the JSONL files alone (rows: model / method; columns:
                                           dataset x split, the paper's layout)
    OUT/gallery/*.png                      the worst ``--gallery`` samples: prediction (red / cyan) vs target (green)
    OUT/heads.json                         with ``--heads-from-discovery`` (+ its sidecar and figures)

Resuming: a rerun of the same command skips the ids already in the JSONL, so an interrupted run loses nothing and
duplicates nothing; a torn last line (a kill mid-write) is ignored and its sample redone. A rerun whose settings
differ from the directory's manifest is refused, so results of different settings never mix; adding splits or
raising ``--limit`` only adds rows. Under ``accelerate launch`` the images of each split are dealt round-robin to the
processes, each appends to ``<split>.shard<i>.jsonl``, and the main process merges the shards into ``<split>.jsonl``.

Metrics (see :mod:`localize.benchmarks.metrics`): boxes are (x0, y0, x1, y1) in continuous original-image pixels (pixel x spans
[x, x + 1), area = w * h, no +1). REC: Acc@0.5 = fraction of expressions whose predicted box has IoU >= 0.5 with the
target. RES: cIoU = sum(I) / sum(U) over the split, mIoU = mean per-expression I / U; an empty prediction has IoU 0
and its target's area still counts in U. One sample per expression. JSON holds fractions, tables print percent.
Every row records both the box and the mask metrics; ``--task`` picks the tables shown. Answer: exact match of the
continuation's first N words with the reference's N words, case and whitespace ignored (see :func:`answer_matches`).

``--oracle-maps`` replaces the heads' maps by each target mask (its box when there is none) area-averaged onto the
model's grid and runs the same map -> box/mask step: the ceiling the pipeline itself allows on a dataset.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from localize.errors import ImageError, InputError, LocalizeError
from localize.files import atomic_write_text
from localize.postprocess import mask_to_rle, rle_to_mask
from localize.published import load_heads_for

from .metrics import RecAccumulator, ResAccumulator, box_iou, mask_intersection_union
from .paper_results import paper_table_rows

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
DEFAULT_SPLITS: dict[str, tuple[str, ...]] = {
    "refcoco": ("val", "testA", "testB"),
    "refcoco+": ("val", "testA", "testB"),
    "refcocog": ("val", "test"),
    "reasonseg": ("val", "test"),
    "shapes": ("val", "test"),
}
PAPER_ORDER = [(d, s) for d in ("refcoco", "refcoco+", "refcocog") for s in DEFAULT_SPLITS[d]]
DISPLAY = {"refcoco": "RefCOCO", "refcoco+": "RefCOCO+", "refcocog": "RefCOCOg", "reasonseg": "ReasonSeg"}
METRICS = {  # summary key -> (task, table heading)
    "acc@0.5": ("rec", "REC: Acc@0.5 (%)"),
    "ciou": ("res", "RES: cIoU (%)"),
    "miou": ("res", "RES: mIoU (%)"),
    "answer_acc": ("answer", "Answer: exact match (%)"),
}
# The paper's protocol (``localize reproduce``): discovery on 1000 RefCOCO train samples, k = 3, kernel 7, sigma 1.
PAPER_PROTOCOL = {"discovery_samples": 1000, "k": 3, "kernel": 7, "sigma": 1.0, "prompt": "box"}


class ResultsMismatchError(LocalizeError):
    """An output directory holding results of other settings than the command's."""


# -- processes -------------------------------------------------------------------------------------------------------
class _SingleProcess:
    """The plain path: one process, no accelerate."""

    num_processes = 1
    process_index = 0
    is_main_process = True
    device = None

    def wait_for_everyone(self) -> None:
        """Nothing to wait for."""


def _process_state() -> Any:
    """accelerate's ``PartialState`` under a multi-process launch (``WORLD_SIZE`` > 1), else the plain path."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _SingleProcess()
    from accelerate import PartialState

    return PartialState()


# -- JSONL -----------------------------------------------------------------------------------------------------------
def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSONL file; lines that do not parse (a torn last line after a kill) are ignored."""
    rows = []
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict):
                    rows.append(row)
    except FileNotFoundError:
        pass
    return rows


def _repair_tail(path: Path) -> None:
    """Cut a torn last line (no trailing newline) so that the next append starts on a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return
        handle.seek(0)
        data = handle.read()
        handle.truncate(data.rfind(b"\n") + 1)


class _JsonlWriter:
    """Appends rows to a JSONL file (opened at the first row), one flushed line per row."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle: Any = None

    def write(self, row: dict) -> None:
        """Append one row and flush it to the OS."""
        if self.handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _repair_tail(self.path)
            self.handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self.handle.write(json.dumps(row, separators=(",", ":")) + "\n")
        self.handle.flush()

    def close(self) -> None:
        """Close the file."""
        if self.handle is not None:
            self.handle.close()


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9+._-]+", "_", name).strip("_") or "data"


def _split_files(out: Path, dataset: str, split: str) -> tuple[Path, Path]:
    folder = out / "results" / _slug(dataset)
    return folder / f"{_slug(split)}.jsonl", folder / f"{_slug(split)}.skipped.jsonl"


def _shard_file(path: Path, index: int) -> Path:
    return path.with_name(f"{path.stem}.shard{index}.jsonl")


def _all_files(path: Path) -> list[Path]:
    """A results file and its unmerged shards."""
    return [p for p in [path, *sorted(path.parent.glob(f"{path.stem}.shard*.jsonl"))] if p.exists()]


def _rows_by_id(path: Path) -> dict[str, dict]:
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
        for row in _rows_by_id(file).values():
            grouped.setdefault((row["dataset"], row["split"]), {}).setdefault(str(row["id"]), row)
    for file in sorted(results.glob("*/*.shard*.jsonl")):  # shards whose main file does not exist yet
        if ".skipped" in file.name:
            continue
        for row in read_jsonl(file):
            grouped.setdefault((row["dataset"], row["split"]), {}).setdefault(str(row["id"]), row)
    return {
        key: sorted(rows.values(), key=lambda r: (r.get("index", 0), str(r["id"]))) for key, rows in grouped.items()
    }


def _read_skipped(out_dir: Path, done: dict[tuple[str, str], set[str]]) -> dict[tuple[str, str], list[dict]]:
    """Skipped samples still without a result row, by (dataset, split)."""
    skipped: dict[tuple[str, str], dict[str, dict]] = {}
    for file in sorted((out_dir / "results").glob("*/*.skipped*.jsonl")):
        for row in read_jsonl(file):
            key = (row["dataset"], row["split"])
            if str(row["id"]) not in done.get(key, set()):
                skipped.setdefault(key, {})[str(row["id"])] = row  # the latest reason wins
    return {key: list(rows.values()) for key, rows in skipped.items()}


def _merge_shards(path: Path) -> None:
    """Fold ``<split>.shard<i>.jsonl`` into ``<split>.jsonl`` (each id once, sample order), then remove the shards."""
    shards = sorted(path.parent.glob(f"{path.stem}.shard*.jsonl"))
    if not shards:
        return
    rows = sorted(_rows_by_id(path).values(), key=lambda r: (r.get("index", 0), str(r["id"])))
    atomic_write_text(path, "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows))
    for shard in shards:
        shard.unlink()


# -- manifest --------------------------------------------------------------------------------------------------------
def _sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_id(path: str | None) -> dict | None:
    """Name and size of a large file (a SAM checkpoint): hashing gigabytes on every run is not worth it."""
    if not path:
        return None
    p = Path(path)
    stat = p.stat() if p.exists() else None
    return {"name": p.name, "bytes": stat.st_size if stat else None}


def parse_tasks(text: str) -> list[str]:
    """``--task``: a comma list of :data:`TASKS` (case-insensitive); InputError otherwise."""
    tasks = [t.strip().lower() for t in text.split(",") if t.strip()]
    if not tasks or any(t not in TASKS for t in tasks):
        raise InputError(f"--task must be a comma list of {', '.join(TASKS)}, got {text!r}")
    return list(dict.fromkeys(tasks))


def _cli_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings that change results, as given on the command line (checked before the model is loaded).

    rec and res rows are the same rows (``--task`` only picks tables), so those tasks are not settings; the answer
    task adds fields to every row and is recorded (only when asked for: manifests written before it stay valid).
    """
    settings = {
        "model": args.model,
        "heads": None if args.heads_from_discovery else args.heads,
        "heads_from_discovery": bool(args.heads_from_discovery),
        "k": args.k,
        "kernel": args.kernel,
        "sigma": float(args.sigma),
        "scale_smoothing": bool(args.scale_smoothing),
        "mask_mode": args.mask_mode,
        "sam": _file_id(args.sam),
        "sam_type": args.sam_type if args.sam else None,
        "prompt": args.prompt if args.sam else None,
        "oracle_maps": bool(args.oracle_maps),
        "split_by": args.split_by,
        "dtype": args.dtype,
    }
    if args.heads_from_discovery:
        settings["discovery"] = {
            "data": args.discovery_data,
            "split": args.discovery_split,
            "samples": args.discovery_samples,
            "seed": args.seed,
            "selection": args.selection,
        }
    if "answer" in parse_tasks(args.task):
        settings["answer"] = ANSWER_PROTOCOL
    return settings


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            lines += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            lines.append(f"{prefix}{key}: {a!r} (in the directory) vs {b!r} (this command)")
    return lines


def _check_against(out: Path, section: str, new: dict) -> None:
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
    differences = _diff(old, json.loads(json.dumps(new)))
    if differences:
        listed = "\n  ".join(differences)
        raise ResultsMismatchError(
            f"{out} holds results of other settings, refusing to mix them:\n  {listed}\n"
            "rerun with the directory's settings to resume, or pass another --out"
        )


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    import localize

    out: dict[str, str | None] = {"localize": localize.__version__, "python": platform.python_version()}
    for name in ("transformers", "torch", "accelerate", "segment_anything", "pycocotools"):
        try:
            out[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


# -- data ------------------------------------------------------------------------------------------------------------
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


@dataclass
class _Entry:
    """One expression of a split: its position, id and image key, or why it could not be read.

    Samples are fetched again when their image is processed: a lazy source (parquet with embedded images) then holds
    one image in memory, not the whole split's.
    """

    index: int
    sample_id: str
    image_key: str
    reason: str | None = None


class _Unreadable(Exception):
    """A row of a source that cannot be turned into a sample."""


def _fetch(source: Any, index: int) -> Any:
    try:
        return source[index]
    except Exception as err:  # lazy sources decode images here; any failure skips the row, counted
        raise _Unreadable(f"{type(err).__name__}: {err}") from err


def _entries(source: Any, dataset: str, split: str, limit: int | None) -> list[_Entry]:
    n = len(source) if limit is None else min(len(source), max(int(limit), 0))
    entries = []
    for index in range(n):
        try:
            sample = _fetch(source, index)
        except _Unreadable as err:
            entries.append(_Entry(index, f"{dataset}/{split}/#{index}", f"unreadable:{index}", str(err)))
            continue
        entries.append(_Entry(index, str(sample.sample_id), sample.image_key))
    return entries


def _groups(entries: Iterable[_Entry]) -> list[list[_Entry]]:
    """Entries grouped by image (first appearance order): one image prefix per group."""
    groups: dict[str, list[_Entry]] = {}
    for entry in entries:
        groups.setdefault(entry.image_key, []).append(entry)
    return list(groups.values())


# -- prediction ------------------------------------------------------------------------------------------------------
def _predict(loc: Any, image: Any, samples: list[Any], oracle: bool) -> list[Any]:
    """The localizer's groundings of ``samples`` on one image, or with ``oracle`` the same map -> box/mask step on
    each target mask (its box when there is no mask) area-averaged onto the model's grid."""
    phrases = [s.expression for s in samples]
    if not oracle:
        return loc.ground_many(image, phrases)
    geometry = loc.vlm.adapter.prepare([image], [samples[0].expression]).geometries[0]
    grids = [(geometry.mask_to_grid(s.mask()) if s.has_mask else geometry.box_to_grid(s.box))[None] for s in samples]
    return loc.ground_maps(image, phrases, grids, [geometry] * len(samples))


def decode_rle(rle: dict) -> np.ndarray:
    """A row's ``pred_mask_rle`` -> ``[H, W]`` bool."""
    return rle_to_mask(rle)


def answer_matches(pred: str, reference: str) -> bool:
    """Whether ``pred`` answers ``reference``: its first N words equal the reference's N words, case-insensitive.

    Both are split on whitespace and lower-cased. Only the first N = len(reference words) words of the prediction
    count, since greedy decoding may continue past the answer (skip_special_tokens has already removed an
    end-of-sequence); a prediction of fewer words, or an empty reference, is no match.
    """
    expected = reference.lower().split()
    return bool(expected) and pred.lower().split()[: len(expected)] == expected


def _reference_answer(sample: Any) -> str | None:
    answer = getattr(sample, "answer", None)
    return answer if isinstance(answer, str) and answer.strip() else None


def _answer_fields(vlm: Any, image: Any, sample: Any) -> dict[str, Any]:
    """``target_answer``, ``pred_answer`` and ``answer_correct`` of one sample (None without a reference answer)."""
    reference = _reference_answer(sample)
    if reference is None:
        return {"target_answer": None, "pred_answer": None, "answer_correct": None}
    pred = vlm.answer(image, sample.expression, max_new_tokens=len(reference.split()) + ANSWER_EXTRA_TOKENS)
    return {"target_answer": reference, "pred_answer": pred, "answer_correct": answer_matches(pred, reference)}


def _row(
    entry: _Entry,
    sample: Any,
    dataset: str,
    split: str,
    pred: Any,
    timings: dict,
    answer: dict[str, Any] | None = None,
) -> dict:
    """One result row; ``answer`` (from :func:`_answer_fields`) is added when the answer task runs."""
    start = time.perf_counter()
    iou = float(box_iou(pred.box, sample.box))
    inter = union = None
    if sample.has_mask:
        inter, union = mask_intersection_union(pred.mask, sample.mask(), sample.ignore_mask())
    timings = {**timings, "metrics_s": round(time.perf_counter() - start, 5)}
    row = {
        "id": entry.sample_id,
        "index": entry.index,
        "dataset": dataset,
        "split": split,
        "image": entry.image_key,
        "image_size": [int(v) for v in sample.image_size],
        "expression": sample.expression,
        "pred_box": [round(float(v), 3) for v in pred.box],
        "target_box": [float(v) for v in sample.box],
        "box_iou": round(iou, 6),
        "pred_mask_rle": mask_to_rle(pred.mask),
        "mask_i": inter,
        "mask_u": union,
        "mask_iou": None if union is None else (round(inter / union, 6) if union else 1.0),
        "score": round(float(pred.score), 6),
        "sam_score": None if pred.sam_score is None else round(float(pred.sam_score), 6),
        "timings": timings,
    }
    if answer is not None:
        row.update(answer)
    return row


# -- heads -----------------------------------------------------------------------------------------------------------
def _first_k(heads: list[tuple[int, int]], k: int | None, heads_file: str | None) -> list[tuple[int, int]]:
    """The first ``k`` heads; a heads file with fewer selected heads is extended by its frequency ranking."""
    if k is None or k <= len(heads):
        return heads[: k or len(heads)]
    if heads_file is not None:
        from localize.heads import load_heads, top_heads

        hf = load_heads(heads_file)
        if hf.frequency is not None:
            ranked = top_heads(np.nan_to_num(hf.frequency, nan=0.0), np.nan_to_num(hf.mean_entropy, nan=np.inf), k)
            ranked = heads + [h for h in ranked if h not in heads]
            if len(ranked) >= k:
                return ranked[:k]
    raise InputError(f"--k {k} needs {k} heads but only {len(heads)} are known ({heads}); discover with --top-k {k}")


def _is_heads_file(spec: str) -> bool:
    return spec.strip().lower().endswith(".json") or os.path.isfile(spec)


def _discover_heads(vlm: Any, args: argparse.Namespace, out: Path, state: Any) -> Path:
    """Run discovery (``localize.heads.discover.discover``) into ``OUT/heads.json`` unless it is there from an earlier run."""
    from localize.heads.discover import discover, draw_samples

    from localize.data.registry import open_dataset

    path = out / "heads.json"
    if path.exists():
        return path
    extra = {"split_by": args.split_by} if args.split_by else {}
    source = open_dataset(
        args.discovery_data,
        data_root=args.data_root,
        split=args.discovery_split,
        image_root=args.image_root,
        **extra,
    )
    samples, unreadable = draw_samples(source, args.discovery_samples, args.seed)
    if state.is_main_process:
        print(f"discovery: {len(samples)} samples of {args.discovery_data}/{args.discovery_split}", file=sys.stderr)
    data = {"name": args.discovery_data, "split": args.discovery_split, "samples": args.discovery_samples, **extra}
    discover(
        vlm,
        samples,
        top_k=max(args.k or PAPER_PROTOCOL["k"], 1),
        mode=args.selection,
        sidecar=out / "heads.sidecar.jsonl",
        out=path,
        progress=state.is_main_process and not args.no_progress,
        seed=args.seed,
        data=data,
        unreadable=unreadable,
    )
    state.wait_for_everyone()  # the main process writes the heads file after the others are done
    return path


# -- the run ---------------------------------------------------------------------------------------------------------
def _method_label(args: argparse.Namespace, heads: Sequence[tuple[int, int]]) -> str:
    if args.method:
        return args.method
    from localize.headsfile import format_head

    base = "oracle maps" if args.oracle_maps else f"heads {', '.join(format_head(h) for h in heads)}"
    smoothing = f"kernel {args.kernel}, sigma {args.sigma:g}" + (" scaled" if args.scale_smoothing else "")
    sam = f" + SAM {args.prompt}" if args.sam else ""
    return f"{base} ({smoothing}){sam}"


def _progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True, leave=True)


def _postfix(rec: RecAccumulator, res: ResAccumulator) -> dict[str, str]:
    out = {}
    if rec.ious:
        out["acc@0.5"] = f"{100 * rec.accuracy():.1f}"
    if res.unions:
        out["cIoU"] = f"{100 * res.ciou():.1f}"
    return out


def _run_split(
    loc: Any, source: Any, dataset: str, split: str, args: argparse.Namespace, out: Path, state: Any
) -> dict[str, int]:
    """Ground every pending expression of one split, appending rows; returns the readable ids' source indices."""

    answering = "answer" in parse_tasks(args.task)
    entries = _entries(source, dataset, split, args.limit)
    results, skipped_path = _split_files(out, dataset, split)
    done = _rows_by_id(results)
    rec, res = RecAccumulator(), ResAccumulator()
    for row in done.values():
        rec.ious.append(float(box_iou(row["pred_box"], row["target_box"])))
        if row.get("mask_u") is not None:
            res.intersections.append(int(row["mask_i"]))
            res.unions.append(int(row["mask_u"]))
    pending = [e for e in entries if e.sample_id not in done]
    groups = _groups(pending)[state.process_index :: state.num_processes]
    if state.num_processes > 1:
        results, skipped_path = (
            _shard_file(results, state.process_index),
            _shard_file(skipped_path, state.process_index),
        )
    writer, skipped = _JsonlWriter(results), _JsonlWriter(skipped_path)
    initial = len(entries) - len(pending)
    show = not args.no_progress and state.is_main_process
    bar = _progress(initial + sum(len(g) for g in groups), initial, f"{dataset}/{split}", show)

    def skip(group: list[_Entry], reason: str) -> None:
        for entry in group:
            skipped.write({"id": entry.sample_id, "index": entry.index, "dataset": dataset, "split": split,
                           "image": entry.image_key, "reason": entry.reason or reason})  # fmt: skip
        bar.update(len(group))

    try:
        for group in groups:
            if group[0].reason is not None:
                skip(group, "unreadable row")
                continue
            start = time.perf_counter()
            try:
                samples = [_fetch(source, e.index) for e in group]
                image = samples[0].load_image()
            except (_Unreadable, ImageError) as err:
                skip(group, str(err))
                continue
            expected = tuple(int(v) for v in samples[0].image_size)
            if image.size != expected:
                skip(
                    group, f"image is {image.size[0]}x{image.size[1]}, the annotation says {expected[0]}x{expected[1]}"
                )
                continue
            load_s = time.perf_counter() - start
            start = time.perf_counter()
            try:
                preds = _predict(loc, image, samples, args.oracle_maps)
                ready = list(zip(group, samples, preds))
            except (LocalizeError, ValueError):  # one bad expression (too long) fails the group: go one by one
                ready = []
                for entry, sample in zip(group, samples):
                    try:
                        ready.append((entry, sample, _predict(loc, image, [sample], args.oracle_maps)[0]))
                    except (LocalizeError, ValueError) as err:
                        skip([entry], f"{type(err).__name__}: {err}")
            ground_s = (time.perf_counter() - start) / max(len(ready), 1)
            for entry, sample, pred in ready:
                timings = {"image_s": round(load_s, 5), "ground_s": round(ground_s, 5), "group_size": len(group)}
                answer = None
                if answering:
                    start = time.perf_counter()
                    try:
                        answer = _answer_fields(loc.vlm, image, sample)
                    except (LocalizeError, ValueError) as err:
                        skip([entry], f"{type(err).__name__}: {err}")
                        continue
                    timings["answer_s"] = round(time.perf_counter() - start, 5)
                row = _row(entry, sample, dataset, split, pred, timings, answer)
                writer.write(row)
                rec.ious.append(row["box_iou"])
                if row["mask_u"] is not None:
                    res.intersections.append(row["mask_i"])
                    res.unions.append(row["mask_u"])
                bar.update(1)
                bar.set_postfix(_postfix(rec, res), refresh=False)
    finally:
        writer.close()
        skipped.close()
        bar.close()
    return {e.sample_id: e.index for e in entries if e.reason is None}


def _build_localizer(args: argparse.Namespace, out: Path, state: Any) -> tuple[Any, dict]:
    """Model, heads (first ``k``), settings and SAM -> (Localizer, resolved settings for the manifest)."""
    from localize.grounder import Localizer
    from localize.models import load_model
    from localize.postprocess import GroundingSettings

    device = str(state.device) if state.device is not None and args.device == "auto" else args.device
    vlm = load_model(args.model, device=device, dtype=args.dtype)
    heads_file: str | None = None
    if args.heads_from_discovery:
        heads_file = os.fspath(_discover_heads(vlm, args, out, state))
        heads = list(load_heads_for(vlm, heads_file).heads)
        source = "discovery"
    else:
        if isinstance(args.heads, str) and args.heads.strip().lower() != "auto" and _is_heads_file(args.heads):
            heads_file = args.heads
        heads = list(load_heads_for(vlm, args.heads).heads)
        source = args.heads
    heads = _first_k(heads, args.k, heads_file)
    settings = GroundingSettings(
        kernel=args.kernel, sigma=args.sigma, scale_to_grid=args.scale_smoothing, mask_mode=args.mask_mode
    )
    refiner = None
    if args.sam:
        from localize.refine.sam import SamRefiner

        refiner = SamRefiner(args.sam, model_type=args.sam_type, device=str(vlm.model.device))
    loc = Localizer(vlm, heads, settings=settings, sam=refiner, sam_prompt=args.prompt, heads_source=source)
    info = vlm.info()
    resolved = {
        "revision": info.get("revision"),
        "model_type": info.get("model_type"),
        "template": info.get("template"),
        "model_dtype": info.get("dtype"),
        "heads": [list(h) for h in loc.heads],
        "heads_file_sha256": _sha256(heads_file) if heads_file else None,
        "grounding": settings.to_dict(),
    }
    return loc, {"heads_file": heads_file, "heads_source": source, **resolved}


def run_bench(args: argparse.Namespace) -> dict:
    """Run the benchmark described by ``args`` (see :func:`add_arguments`); returns the summary."""
    from localize.data.registry import open_dataset

    if not args.model:
        raise InputError("--model is required (or --compare BASE_DIR FT_DIR)")
    if not args.out:
        raise InputError("--out DIR is required")
    tasks = parse_tasks(args.task)
    if args.k is not None and args.k < 1:
        raise InputError(f"--k must be >= 1, got {args.k}")
    out = Path(args.out)
    data = [d.strip() for d in args.data.split(",") if d.strip()]
    pairs = parse_splits(data, args.splits)
    extra = {"split_by": args.split_by} if args.split_by else {}
    sources = {  # opened first: a wrong split or data root fails before the model is loaded
        (d, s): open_dataset(d, data_root=args.data_root, split=s, image_root=args.image_root, **extra)
        for d, s in pairs
    }
    state = _process_state()
    cli = _cli_settings(args)
    _check_against(out, "settings", cli)
    loc, resolved = _build_localizer(args, out, state)
    compared = {k: v for k, v in resolved.items() if k not in ("heads_file", "heads_source")}
    _check_against(out, "resolved", compared)
    method = _method_label(args, loc.heads)
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        path = out / "manifest.json"
        manifest = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
        run_entry = {
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "argv": list(getattr(args, "argv", None) or sys.argv[1:]),
            "splits": [f"{d}/{s}" for d, s in pairs],
            "limit": args.limit,
            "processes": state.num_processes,
            "data_root": os.fspath(args.data_root) if args.data_root else os.environ.get("LOCALIZE_DATA_ROOT"),
            "image_root": os.fspath(args.image_root) if args.image_root else None,
        }
        if manifest is None:
            manifest = {
                "format": MANIFEST_FORMAT,
                "created": run_entry["started"],
                "settings": cli,
                "resolved": compared,
                "method": method,
                "tasks": tasks,
                "model": loc.vlm.info(),
                "heads": [list(h) for h in loc.heads],
                "heads_source": resolved["heads_source"],
                "heads_file": resolved["heads_file"],
                "heads_file_sha256": resolved["heads_file_sha256"],
                "sam": {"checkpoint": args.sam, "type": args.sam_type, "prompt": args.prompt} if args.sam else None,
                "data": {"names": data, "split_by": args.split_by},
                "versions": _versions(),
                "runs": [],
            }
        manifest.update(method=method, tasks=tasks)  # labels only; what changes results is checked above
        manifest["runs"].append(run_entry)
        _write_json(path, manifest)
    state.wait_for_everyone()

    indices: dict[tuple[str, str], dict[str, int]] = {}
    for (dataset, split), source in sources.items():
        indices[(dataset, split)] = _run_split(loc, source, dataset, split, args, out, state)
    state.wait_for_everyone()
    if not state.is_main_process:
        return {}
    for dataset, split in pairs:
        for path in _split_files(out, dataset, split):
            _merge_shards(path)
    summary = write_summary(out)
    if args.gallery > 0:
        samples = {key: (sources[key], found) for key, found in indices.items()}
        render_failures(out, loc, samples, args.gallery, oracle=args.oracle_maps, tasks=tasks)
    return summary


# -- summary ---------------------------------------------------------------------------------------------------------
def _column_order(keys: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    keys = list(dict.fromkeys(keys))
    known = [k for k in PAPER_ORDER if k in keys]
    return known + [k for k in keys if k not in known]


def split_metrics(rows: Sequence[dict]) -> dict[str, Any]:
    """Acc@0.5 and mean box IoU from the rows' boxes, cIoU and mIoU from their mask I and U, and the answer
    accuracy (``answer_acc``) over the ``n_answer`` rows with an ``answer_correct`` (None when there are none)."""
    rec, res = RecAccumulator(), ResAccumulator()
    for row in rows:
        rec.add(row["pred_box"], row["target_box"])
        if row.get("mask_u") is not None:
            res.intersections.append(int(row["mask_i"]))
            res.unions.append(int(row["mask_u"]))
    out = {"n": len(rows), "acc@0.5": rec.accuracy(0.5) if rows else None, "box_miou": rec.summary()["miou"]}
    out["n_mask"] = len(res.unions)
    out["ciou"] = res.ciou() if res.unions else None
    out["miou"] = res.miou() if res.unions else None
    answered = [bool(row["answer_correct"]) for row in rows if row.get("answer_correct") is not None]
    out["n_answer"] = len(answered)
    out["answer_acc"] = sum(answered) / len(answered) if answered else None
    if not rows:
        out["box_miou"] = None
    return out


def summarize(out_dir: str | os.PathLike) -> dict:
    """The summary of an output directory, recomputed from its JSONL files (and its manifest for the labels)."""
    out = Path(out_dir)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.exists() else {}
    rows = read_rows(out)
    skipped = _read_skipped(out, {key: {str(r["id"]) for r in value} for key, value in rows.items()})
    splits = []
    for dataset, split in _column_order([*rows, *skipped]):
        entry = {"dataset": dataset, "split": split, **split_metrics(rows.get((dataset, split), []))}
        reasons = skipped.get((dataset, split), [])
        entry["skipped"] = len(reasons)
        entry["skipped_examples"] = [f"{r['id']}: {r['reason']}" for r in reasons[:5]]
        splits.append(entry)
    model = manifest.get("model", {}).get("spec") or manifest.get("settings", {}).get("model") or "?"
    return {
        "model": model,
        "method": manifest.get("method", "?"),
        "tasks": manifest.get("tasks", list(DEFAULT_TASKS)),
        "heads": manifest.get("heads"),
        "oracle_maps": manifest.get("settings", {}).get("oracle_maps", False),
        "splits": splits,
        "total": {"n": sum(s["n"] for s in splits), "skipped": sum(s["skipped"] for s in splits)},
        "metrics": "fractions in [0, 1]; boxes in continuous pixels; empty prediction IoU 0, its target counts in U",
    }


def _label(dataset: str, split: str) -> str:
    return f"{DISPLAY.get(dataset, dataset)} {split}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _model_name(model: str) -> str:
    return Path(model).name if os.path.sep in str(model) else str(model)


def _table(columns: Sequence[tuple[str, str]], rows: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
    header = "| model / method | " + " | ".join(_label(d, s) for d, s in columns) + " |"
    rule = "|---|" + "---:|" * len(columns)
    return [header, rule, *(f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows)]


def format_summary_md(summary: dict) -> str:
    """Markdown tables of a summary: one per metric of its tasks (REC Acc@0.5, RES cIoU, RES mIoU, answer exact
    match), then samples and skips."""
    columns = [(s["dataset"], s["split"]) for s in summary["splits"]]
    by_key = {(s["dataset"], s["split"]): s for s in summary["splits"]}
    name = f"{_model_name(summary['model'])} / {summary['method']}"
    lines = [f"# Benchmark: {_model_name(summary['model'])}", ""]
    for metric, (task, heading) in METRICS.items():
        if task not in summary["tasks"]:
            continue
        lines += [f"## {heading}", ""]
        rows = [(name, [_percent(by_key[c][metric]) for c in columns])]
        lines += _table(columns, rows + paper_table_rows(summary["model"], metric, columns))  # the paper's, if any
        lines.append("")
    lines += ["## Samples", ""]
    lines += _table(columns, [("expressions scored", [str(by_key[c]["n"]) for c in columns])])
    lines += ["| skipped (unreadable) | " + " | ".join(str(by_key[c]["skipped"]) for c in columns) + " |", ""]
    examples = [f"- skipped {e['dataset']}/{e['split']}: {x}" for e in summary["splits"] for x in e["skipped_examples"]]
    if examples:
        lines += [*examples, ""]
    lines += [
        "Acc@0.5: box IoU >= 0.5 (continuous pixel coordinates, area w*h). cIoU = sum I / sum U over the split; "
        "mIoU = mean per-expression IoU; an empty prediction has IoU 0 and its target still counts in U.",
    ]
    if "answer" in summary["tasks"]:
        lines += [
            "",
            "Answer: greedy continuation's first N words == the reference answer's N words (case and whitespace "
            "ignored), over the expressions with a reference answer.",
        ]
    return "\n".join(lines).rstrip() + "\n"


def write_summary(out_dir: str | os.PathLike) -> dict:
    """Recompute ``summary.json`` and ``summary.md`` from the JSONL files; returns the summary."""
    out = Path(out_dir)
    summary = summarize(out)
    _write_json(out / "summary.json", summary)
    (out / "summary.md").write_text(format_summary_md(summary), encoding="utf-8")
    return summary


# -- failure gallery -------------------------------------------------------------------------------------------------
def _primary_iou(row: dict, tasks: Sequence[str]) -> float:
    if "rec" in tasks or row.get("mask_iou") is None:
        return float(row["box_iou"])
    return float(row["mask_iou"])


def render_failures(
    out_dir: str | os.PathLike,
    loc: Any,
    samples: dict[tuple[str, str], tuple[Any, dict[str, int]]],
    n: int,
    *,
    oracle: bool = False,
    tasks: Sequence[str] = TASKS,
) -> list[Path]:
    """Overlay PNGs of the ``n`` lowest-IoU rows into ``OUT/gallery/``: heatmap, predicted box (red) and mask (cyan)
    vs the target box (green, dashed) and mask (green). ``samples``: (dataset, split) -> (source, {id: index})."""
    from localize.viz import render_overlay

    out = Path(out_dir) / "gallery"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    rows = read_rows(out_dir)
    candidates = [r for key in samples for r in rows.get(key, []) if str(r["id"]) in samples[key][1]]
    worst = sorted(candidates, key=lambda r: (_primary_iou(r, tasks), str(r["id"])))[:n]
    written, index = [], []
    for rank, row in enumerate(worst, 1):
        source, found = samples[(row["dataset"], row["split"])]
        try:
            sample = _fetch(source, found[str(row["id"])])
            image = sample.load_image()
            heatmap = _predict(loc, image, [sample], oracle)[0].heatmap
        except (_Unreadable, LocalizeError, ValueError):
            continue
        mask_iou = "" if row.get("mask_iou") is None else f", mask IoU {row['mask_iou']:.2f}"
        title = f"#{rank} {row['dataset']}/{row['split']}: box IoU {row['box_iou']:.2f}{mask_iou}"
        name = f"{rank:03d}_{_slug(row['dataset'])}_{_slug(row['split'])}_iou{_primary_iou(row, tasks):.2f}.png"
        render_overlay(
            image,
            heatmap,
            row["pred_box"],
            decode_rle(row["pred_mask_rle"]),
            sample.expression,
            out / name,
            title=title,
            target_box=row["target_box"],
            target_mask=sample.mask() if sample.has_mask else None,
        )
        written.append(out / name)
        index.append({"file": name, "id": row["id"], "box_iou": row["box_iou"], "mask_iou": row.get("mask_iou")})
    _write_json(out / "index.json", index)
    return written


# -- compare ---------------------------------------------------------------------------------------------------------
def compare_runs(base_dir: str | os.PathLike, ft_dir: str | os.PathLike) -> dict:
    """Zero-shot (``base_dir``) vs fine-tuned (``ft_dir``) per split, over the expressions both runs scored.

    Deltas are ``ft - base`` (fractions). Splits only one run has are listed in ``only_base`` / ``only_ft``.
    """
    runs = {}
    for role, folder in (("base", base_dir), ("ft", ft_dir)):
        folder = Path(folder)
        if not (folder / "results").is_dir():
            raise InputError(f"{folder} is not a `localize bench` output directory (no results/)")
        runs[role] = (folder, summarize(folder), read_rows(folder))
    base_rows, ft_rows = runs["base"][2], runs["ft"][2]
    splits = []
    for key in _column_order([k for k in base_rows if k in ft_rows]):
        base_by_id = {str(r["id"]): r for r in base_rows[key]}
        ft_by_id = {str(r["id"]): r for r in ft_rows[key]}
        common = [i for i in base_by_id if i in ft_by_id]
        base = split_metrics([base_by_id[i] for i in common])
        ft = split_metrics([ft_by_id[i] for i in common])
        entry: dict[str, Any] = {"dataset": key[0], "split": key[1], "n": len(common)}
        entry["n_base"], entry["n_ft"] = len(base_by_id), len(ft_by_id)
        for metric in METRICS:
            a, b = base[metric], ft[metric]
            entry[metric] = {"base": a, "ft": b, "delta": None if a is None or b is None else b - a}
        splits.append(entry)
    return {
        "base": {"dir": os.fspath(base_dir), "model": runs["base"][1]["model"], "method": runs["base"][1]["method"]},
        "ft": {"dir": os.fspath(ft_dir), "model": runs["ft"][1]["model"], "method": runs["ft"][1]["method"]},
        "splits": splits,
        "only_base": [f"{d}/{s}" for d, s in base_rows if (d, s) not in ft_rows],
        "only_ft": [f"{d}/{s}" for d, s in ft_rows if (d, s) not in base_rows],
    }


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}"


def format_compare(result: dict) -> str:
    """Markdown: per metric, the zero-shot row, the fine-tuned row and the delta row (percentage points)."""
    columns = [(s["dataset"], s["split"]) for s in result["splits"]]
    base = f"zero-shot: {_model_name(result['base']['model'])} / {result['base']['method']}"
    ft = f"fine-tuned: {_model_name(result['ft']['model'])} / {result['ft']['method']}"
    lines = ["# Zero-shot vs fine-tuned", ""]
    for metric, (_, heading) in METRICS.items():
        if all(s[metric]["base"] is None and s[metric]["ft"] is None for s in result["splits"]):
            continue
        lines += [f"## {heading}", ""]
        rows = [
            (base, [_percent(s[metric]["base"]) for s in result["splits"]]),
            (ft, [_percent(s[metric]["ft"]) for s in result["splits"]]),
            ("delta (points)", [_signed(s[metric]["delta"]) for s in result["splits"]]),
            *paper_table_rows(result["base"]["model"], metric, columns),
        ]
        lines += [*_table(columns, rows), ""]
    lines.append(
        "Expressions compared: " + ", ".join(f"{_label(s['dataset'], s['split'])} {s['n']}" for s in result["splits"])
    )
    for s in result["splits"]:
        if s["n"] != s["n_base"] or s["n"] != s["n_ft"]:
            lines.append(f"- {_label(s['dataset'], s['split'])}: over the {s['n']} expressions both runs have "
                         f"(zero-shot {s['n_base']}, fine-tuned {s['n_ft']})")  # fmt: skip
    for role in ("only_base", "only_ft"):
        if result[role]:
            lines.append(f"- only in {'zero-shot' if role == 'only_base' else 'fine-tuned'}: {', '.join(result[role])}")
    return "\n".join(lines).rstrip() + "\n"


def run_compare(base_dir: str, ft_dir: str, out: str | None = None) -> dict:
    """Print the comparison table; write ``compare.json`` and ``compare.md`` into ``out`` when given."""
    result = compare_runs(base_dir, ft_dir)
    text = format_compare(result)
    print(text, end="")
    if out:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        _write_json(folder / "compare.json", result)
        (folder / "compare.md").write_text(text, encoding="utf-8")
        print(f"wrote {folder / 'compare.json'} and {folder / 'compare.md'}")
    return result


# -- command line ----------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``localize bench``."""
    parser.add_argument("--compare", nargs=2, metavar=("BASE_DIR", "FT_DIR"), help="zero-shot vs fine-tuned table")
    parser.add_argument("--model", help="alias, hub id or local directory")
    heads = parser.add_mutually_exclusive_group()
    heads.add_argument("--heads", default="auto", help='"auto" (published), a heads file, or "L14 H24,L14 H13"')
    heads.add_argument("--heads-from-discovery", action="store_true", help="discover the heads first (OUT/heads.json)")
    parser.add_argument("--selection", choices=("fixed", "greedy"), default="fixed", help="discovery vote mode")
    parser.add_argument("--discovery-data", default="refcoco", help="discovery dataset (default refcoco)")
    parser.add_argument("--discovery-split", default="train", help="discovery split (default train)")
    parser.add_argument("--discovery-samples", type=int, default=1000, help="discovery samples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="discovery sample seed (default 0)")
    parser.add_argument("--data", default="refcoco", help="dataset(s), comma-separated: refcoco,refcoco+,refcocog,...")
    parser.add_argument("--data-root", help="dataset root (default: $LOCALIZE_DATA_ROOT)")
    parser.add_argument("--image-root", help="image folder (default: the dataset's convention)")
    parser.add_argument("--split-by", help="refer split scheme (default unc for RefCOCO/+, umd for RefCOCOg)")
    parser.add_argument("--splits", help="e.g. val,testA,testB or refcocog:test (default: each dataset's eval splits)")
    parser.add_argument(
        "--task",
        default=",".join(DEFAULT_TASKS),
        help="comma list of rec, res, answer (default rec,res); answer: the model's greedy text answers, exact match",
    )
    parser.add_argument("--sam", help="SAM checkpoint (.pth): RES masks from SAM")
    parser.add_argument("--sam-type", default="vit_h", choices=["vit_b", "vit_l", "vit_h"])
    parser.add_argument("--prompt", default="box", choices=["box", "point", "points", "box+points"], help="SAM prompt")
    parser.add_argument("--limit", type=int, help="first N expressions of each split")
    parser.add_argument("--k", type=int, choices=range(1, 6), metavar="1..5", help="use the first k heads")
    parser.add_argument("--kernel", type=int, default=7, help="Gaussian kernel on the grid (paper: 7)")
    parser.add_argument("--sigma", type=float, default=1.0, help="Gaussian sigma on the grid (paper: 1; 0 = off)")
    parser.add_argument(
        "--scale-smoothing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="scale kernel and sigma with the grid relative to 24x24 (default; unchanged on LLaVA-1.5)",
    )
    parser.add_argument("--mask-mode", default="hull", choices=["hull", "component", "binary"])
    parser.add_argument("--oracle-maps", action="store_true", help="ceiling: target mask on the grid as the map")
    parser.add_argument("--method", help="row label in the tables (default: from heads and settings)")
    parser.add_argument("--gallery", type=int, default=16, help="worst samples rendered to OUT/gallery (default 16)")
    parser.add_argument("--out", help="output directory (with --compare: where compare.json/.md go)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``localize bench`` (or ``--compare``); prints the summary tables."""
    if args.compare:
        run_compare(args.compare[0], args.compare[1], args.out)
        return 0
    summary = run_bench(args)
    if summary:
        print(format_summary_md(summary), end="")
        total = summary["total"]
        print(f"{total['n']} expressions scored, {total['skipped']} skipped; wrote {Path(args.out) / 'summary.md'}")
    return 0


def add_reproduce_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``localize reproduce``."""
    parser.add_argument("--model", default="llava-1.5-7b", help="model (default llava-1.5-7b)")
    parser.add_argument("--data-root", required=True, help="refer data root (refcoco, refcoco+, refcocog)")
    parser.add_argument("--image-root", help="COCO train2014 images (default: the refer convention)")
    parser.add_argument("--sam", help="SAM checkpoint (the paper's RES uses SAM with a box prompt)")
    parser.add_argument("--sam-type", default="vit_h", choices=["vit_b", "vit_l", "vit_h"])
    parser.add_argument("--heads", help="skip discovery and use these heads (e.g. auto)")
    parser.add_argument("--discovery-samples", type=int, default=PAPER_PROTOCOL["discovery_samples"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, help="first N expressions of each split (a quick look)")
    parser.add_argument("--gallery", type=int, default=16)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--no-progress", action="store_true")


def reproduce_namespace(args: argparse.Namespace) -> argparse.Namespace:
    """The ``localize bench`` arguments of the paper's protocol for a ``localize reproduce`` command."""
    return argparse.Namespace(
        compare=None,
        model=args.model,
        heads=args.heads or "auto",
        heads_from_discovery=not args.heads,
        selection="fixed",
        discovery_data="refcoco",
        discovery_split="train",
        discovery_samples=args.discovery_samples,
        seed=args.seed,
        data="refcoco,refcoco+,refcocog",
        data_root=args.data_root,
        image_root=args.image_root,
        split_by=None,
        splits=None,
        task="rec,res",
        sam=args.sam,
        sam_type=args.sam_type,
        prompt=PAPER_PROTOCOL["prompt"],
        limit=args.limit,
        k=PAPER_PROTOCOL["k"],
        kernel=PAPER_PROTOCOL["kernel"],
        sigma=PAPER_PROTOCOL["sigma"],
        scale_smoothing=False,
        mask_mode="hull",
        oracle_maps=False,
        method=None,
        gallery=args.gallery,
        out=args.out,
        device=args.device,
        dtype=args.dtype,
        no_progress=args.no_progress,
        argv=["reproduce", *sys.argv[2:]],
    )


def format_paper_comparison(summary: dict, model: str) -> str:
    """Our eight-split table beside the paper's Table 1 / Table 2 row for ``model`` (percent)."""
    from .paper_results import NOT_AVAILABLE, PAPER, SPLITS, TABLES, paper_row

    row = paper_row(model)
    ours = {(s["dataset"], s["split"]): s for s in summary["splits"]}
    name = f"ours: {_model_name(summary['model'])} / {summary['method']}"
    lines = [f"# Reproduction: {model}", ""]
    for metric, table in TABLES.items():
        lines += [f"## {table}", ""]
        rows = [(name, [_percent(ours[c][metric]) if c in ours else "not run" for c in SPLITS])]
        if row is not None:
            paper = [row.value(metric, *c) for c in SPLITS]
            rows.insert(0, (f"paper: {row.model}", [f"{v:.1f}" if v is not None else "n/a" for v in paper]))
        lines += [*_table(SPLITS, rows), ""]
    if row is None:
        lines.append(f"The paper's tables list no row for {model!r} in benchmarks/paper_results.py.")
    elif not row.available:
        lines.append(f"paper values: {NOT_AVAILABLE} (benchmarks/paper_results.py).")
    lines.append(f"Source of the paper's values: {PAPER}.")
    if not summary.get("sam", True):
        lines.append("RES here uses the attention mask (no --sam); the paper's RES uses SAM with a box prompt.")
    return "\n".join(lines).rstrip() + "\n"


def run_reproduce(args: argparse.Namespace) -> int:
    """Run ``localize reproduce``: discovery, REC and RES on the eight splits, our table beside the paper's."""
    bench_args = reproduce_namespace(args)
    summary = run_bench(bench_args)
    if not summary:
        return 0  # a non-main process
    summary = {**summary, "sam": bool(args.sam)}
    text = format_paper_comparison(summary, args.model)
    print(text, end="")
    (Path(args.out) / "reproduce.md").write_text(text, encoding="utf-8")
    print(f"wrote {Path(args.out) / 'reproduce.md'}")
    return 0


__all__ = [
    "ResultsMismatchError",
    "add_arguments",
    "answer_matches",
    "add_reproduce_arguments",
    "compare_runs",
    "decode_rle",
    "format_compare",
    "format_paper_comparison",
    "format_summary_md",
    "parse_splits",
    "parse_tasks",
    "read_jsonl",
    "read_rows",
    "render_failures",
    "reproduce_namespace",
    "run",
    "run_bench",
    "run_compare",
    "run_reproduce",
    "split_metrics",
    "summarize",
    "write_summary",
]
