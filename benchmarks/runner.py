"""Running a benchmark: the localizer a :class:`~localize.benchmarks.config.BenchConfig` describes (heads
resolved, discovered or extended to ``k``), every pending expression of each split grounded and appended as a row
(module doc of :mod:`localize.benchmarks`), shards merged, summary and gallery written.

Resuming: a rerun of the same command skips the ids already in the JSONL, so an interrupted run loses nothing and
duplicates nothing; a torn last line (a kill mid-write) is ignored and its sample redone. A rerun whose settings
differ from the directory's manifest is refused. Under ``accelerate launch`` the images of each split are dealt
round-robin to the processes, each appends to ``<split>.shard<i>.jsonl``, and the main process merges the shards.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from localize.errors import ImageError, InputError, LocalizeError
from localize.files import check_output
from localize.published import load_heads_for
from localize.runs import AppendLog, Progress, RunLock, process_state
from localize.weights import weights_fingerprint

from .config import MANIFEST_FORMAT, PAPER_PROTOCOL, BenchConfig, parse_splits, result_settings
from .gallery import render_failures
from .metrics import RecAccumulator, ResAccumulator, box_iou
from .predict import Entry, UnreadableRow, answer_fields, fetch, group_by_image, predict, read_entries, result_row
from .report import write_summary
from .results import check_against, merge_shards, rows_by_id, sha256, shard_file, split_files, versions, write_json


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


def _discover_heads(vlm: Any, config: BenchConfig, out: Path, state: Any) -> Path:
    """Run discovery (``localize.heads.discover.discover``) into ``OUT/heads.json`` unless it is there from an earlier run."""
    from localize.heads.discover import discover, draw_samples

    from localize.data.registry import open_dataset

    path = out / "heads.json"
    if path.exists():
        return path
    extra = {"split_by": config.split_by} if config.split_by else {}
    source = open_dataset(
        config.discovery_data,
        data_root=config.data_root,
        split=config.discovery_split,
        image_root=config.image_root,
        **extra,
    )
    samples, unreadable = draw_samples(source, config.discovery_samples, config.seed)
    if state.is_main_process:
        print(f"discovery: {len(samples)} samples of {config.discovery_data}/{config.discovery_split}", file=sys.stderr)
    data = {
        "name": config.discovery_data,
        "split": config.discovery_split,
        "samples": config.discovery_samples,
        **extra,
    }
    discover(
        vlm,
        samples,
        top_k=max(config.k or PAPER_PROTOCOL["k"], 1),
        mode=config.selection,
        sidecar=out / "heads.sidecar.jsonl",
        out=path,
        progress=state.is_main_process and not config.no_progress,
        seed=config.seed,
        data=data,
        unreadable=unreadable,
    )
    state.wait_for_everyone()  # the main process writes the heads file after the others are done
    return path


def method_label(config: BenchConfig, heads: list[tuple[int, int]]) -> str:
    """The row label of the tables: ``--method``, else the heads (or oracle maps), smoothing and SAM prompt."""
    if config.method:
        return config.method
    from localize.headsfile import format_head

    base = "oracle maps" if config.oracle_maps else f"heads {', '.join(format_head(h) for h in heads)}"
    smoothing = f"kernel {config.kernel}, sigma {config.sigma:g}" + (" scaled" if config.scale_smoothing else "")
    sam = f" + SAM {config.prompt}" if config.sam else ""
    return f"{base} ({smoothing}){sam}"


def build_localizer(config: BenchConfig, out: Path, state: Any) -> tuple[Any, dict]:
    """Model, heads (first ``k``), settings and SAM -> (Localizer via :func:`localize.grounder.load`, the resolved
    settings for the manifest)."""
    from localize.grounder import load
    from localize.models import load_model
    from localize.options import settings_from_args

    device = str(state.device) if state.device is not None and config.device == "auto" else config.device
    vlm = load_model(config.model, device=device, dtype=config.dtype)
    heads_file: str | None = None
    if config.heads_from_discovery:
        heads_file, source = os.fspath(_discover_heads(vlm, config, out, state)), "discovery"
    else:
        spec = config.heads
        if isinstance(spec, str) and spec.strip().lower() != "auto" and _is_heads_file(spec):
            heads_file = spec
        source = spec
    heads = _first_k(list(load_heads_for(vlm, heads_file or config.heads).heads), config.k, heads_file)
    settings = settings_from_args(config)
    loc = load(vlm, heads, sam=config.sam, sam_type=config.sam_type, sam_prompt=config.prompt, settings=settings)
    info = vlm.info()
    resolved = {
        "revision": info.get("revision"),
        "model_type": info.get("model_type"),
        "template": info.get("template"),
        "model_dtype": info.get("dtype"),
        "heads": [list(h) for h in loc.heads],
        "heads_file_sha256": sha256(heads_file) if heads_file else None,
        "weights": weights_fingerprint(vlm.source),  # other weights at the same --model path are not mixed in
        "grounding": settings.to_dict(),
    }
    return loc, {"heads_file": heads_file, "heads_source": source, **resolved}


# -- one split -------------------------------------------------------------------------------------------------------
def _postfix(rec: RecAccumulator, res: ResAccumulator) -> dict[str, str]:
    out = {}
    if rec.ious:
        out["acc@0.5"] = f"{100 * rec.accuracy():.1f}"
    if res.unions:
        out["cIoU"] = f"{100 * res.ciou():.1f}"
    return out


def _count(rec: RecAccumulator, res: ResAccumulator, row: dict) -> None:
    rec.ious.append(float(box_iou(row["pred_box"], row["target_box"])))
    if row.get("mask_u") is not None:
        res.intersections.append(int(row["mask_i"]))
        res.unions.append(int(row["mask_u"]))


def _skip_row(entry: Entry, dataset: str, split: str, reason: str) -> dict:
    return {"id": entry.sample_id, "index": entry.index, "dataset": dataset, "split": split,
            "image": entry.image_key, "reason": entry.reason or reason}  # fmt: skip


def _ground_group(
    loc: Any, source: Any, group: list[Entry], dataset: str, split: str, config: BenchConfig
) -> Iterator[tuple[bool, dict]]:
    """(True, result row) or (False, skip row) for each expression of one image group."""
    if group[0].reason is not None:
        yield from ((False, _skip_row(e, dataset, split, "unreadable row")) for e in group)
        return
    start = time.perf_counter()
    try:
        samples = [fetch(source, e.index) for e in group]
        image = samples[0].load_image()
    except (UnreadableRow, ImageError) as err:
        yield from ((False, _skip_row(e, dataset, split, str(err))) for e in group)
        return
    expected = tuple(int(v) for v in samples[0].image_size)
    if image.size != expected:
        reason = f"image is {image.size[0]}x{image.size[1]}, the annotation says {expected[0]}x{expected[1]}"
        yield from ((False, _skip_row(e, dataset, split, reason)) for e in group)
        return
    load_s, start = time.perf_counter() - start, time.perf_counter()
    try:
        ready = list(zip(group, samples, predict(loc, image, samples, config.oracle_maps)))
    except (LocalizeError, ValueError):  # one bad expression (too long) fails the group: go one by one
        ready = []
        for entry, sample in zip(group, samples):
            try:
                ready.append((entry, sample, predict(loc, image, [sample], config.oracle_maps)[0]))
            except (LocalizeError, ValueError) as err:
                yield False, _skip_row(entry, dataset, split, f"{type(err).__name__}: {err}")
    ground_s = (time.perf_counter() - start) / max(len(ready), 1)
    for entry, sample, pred in ready:
        timings = {"image_s": round(load_s, 5), "ground_s": round(ground_s, 5), "group_size": len(group)}
        answer = None
        if "answer" in config.tasks:
            start = time.perf_counter()
            try:
                answer = answer_fields(loc.vlm, image, sample)
            except (LocalizeError, ValueError) as err:
                yield False, _skip_row(entry, dataset, split, f"{type(err).__name__}: {err}")
                continue
            timings["answer_s"] = round(time.perf_counter() - start, 5)
        yield True, result_row(entry, sample, dataset, split, pred, timings, answer)


def _dropped_rows(source: Any, dataset: str, split: str, known: dict[str, dict]) -> list[dict]:
    """Skip rows for what the source dropped while reading (a ref whose image is not in instances.json, a bad
    bbox...), so that the summary counts them; none already on disk."""
    rows = []
    for sample_id, problem in zip(_dropped_ids(source, dataset, split), getattr(source, "problems", [])):
        if sample_id not in known:
            rows.append({"id": sample_id, "index": -1, "dataset": dataset, "split": split, "image": None,
                         "reason": f"dropped while reading: {problem}"})  # fmt: skip
    return rows


def _dropped_ids(source: Any, dataset: str, split: str) -> list[str]:
    """The skip-row ids of what ``source`` dropped while reading, one per problem it reports."""
    return [f"{dataset}/{split}/dropped#{n}" for n in range(len(getattr(source, "problems", [])))]


def run_split(
    loc: Any, source: Any, dataset: str, split: str, config: BenchConfig, out: Path, state: Any
) -> tuple[dict[str, int], set[str]]:
    """Ground every pending expression of one split, appending rows; returns the readable ids' source indices and
    every id this run asked for (its summary's rows)."""
    entries = read_entries(source, dataset, split, config.limit)
    results, skipped_path = split_files(out, dataset, split)
    dropped = _dropped_rows(source, dataset, split, rows_by_id(skipped_path)) if state.is_main_process else []
    done = rows_by_id(results)
    rec, res = RecAccumulator(), ResAccumulator()
    for row in done.values():
        _count(rec, res, row)
    pending = [e for e in entries if e.sample_id not in done]
    groups = group_by_image(pending)[state.process_index :: state.num_processes]
    if state.num_processes > 1:
        results, skipped_path = shard_file(results, state.process_index), shard_file(skipped_path, state.process_index)
    initial = len(entries) - len(pending)
    show = not config.no_progress and state.is_main_process
    with AppendLog(results) as writer, AppendLog(skipped_path) as skipped:
        if dropped:
            skipped.write(*dropped)
        with Progress(
            initial + sum(len(g) for g in groups), f"{dataset}/{split}", initial=initial, enabled=show
        ) as bar:
            for group in groups:
                for scored, row in _ground_group(loc, source, group, dataset, split, config):
                    (writer if scored else skipped).write(row)
                    if scored:
                        _count(rec, res, row)
                        bar.note(_postfix(rec, res))
                    bar.advance()
    asked = {e.sample_id for e in entries} | set(_dropped_ids(source, dataset, split))
    return {e.sample_id: e.index for e in entries if e.reason is None}, asked


# -- the run ---------------------------------------------------------------------------------------------------------
def _write_manifest(config: BenchConfig, out: Path, loc: Any, resolved: dict, pairs: list, state: Any) -> None:
    """Create ``OUT/manifest.json`` (settings, model, heads, versions) or append this run to it."""
    path = out / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    run_entry = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "argv": list(config.argv or sys.argv[1:]),
        "splits": [f"{d}/{s}" for d, s in pairs],
        "limit": config.limit,
        "processes": state.num_processes,
        "data_root": os.fspath(config.data_root) if config.data_root else os.environ.get("LOCALIZE_DATA_ROOT"),
        "image_root": os.fspath(config.image_root) if config.image_root else None,
    }
    method, sam = method_label(config, loc.heads), None
    if config.sam:
        sam = {"checkpoint": config.sam, "type": config.sam_type, "prompt": config.prompt}
    if manifest is None:
        manifest = {
            "format": MANIFEST_FORMAT,
            "created": run_entry["started"],
            "settings": result_settings(config),
            "resolved": {k: v for k, v in resolved.items() if k not in ("heads_file", "heads_source")},
            "model": loc.vlm.info(),
            "heads": [list(h) for h in loc.heads],
            **{k: resolved[k] for k in ("heads_source", "heads_file", "heads_file_sha256")},
            "sam": sam,
            "data": {"names": _names(config), "split_by": config.split_by},
            "versions": versions(),
            "runs": [],
        }
    manifest.update(method=method, tasks=config.tasks)  # labels only; what changes results is checked before
    manifest["runs"].append(run_entry)
    write_json(path, manifest)


def _names(config: BenchConfig) -> list[str]:
    return [d.strip() for d in config.data.split(",") if d.strip()]


def run_bench(config: BenchConfig) -> dict:
    """Run the benchmark ``config`` describes; returns the summary (empty on a non-main process)."""
    from localize.data.registry import open_dataset

    if not config.model:
        raise InputError("--model is required (or --compare BASE_DIR FT_DIR)")
    if not config.out:
        raise InputError("--out DIR is required")
    if config.k is not None and config.k < 1:
        raise InputError(f"--k must be >= 1, got {config.k}")
    if config.limit is not None and config.limit < 0:
        raise InputError(f"--limit must be >= 0, got {config.limit}")
    out = check_output(config.out, directory=True)
    pairs = parse_splits(_names(config), config.splits)
    extra = {"split_by": config.split_by} if config.split_by else {}
    sources = {  # opened first: a wrong split or data root fails before the model is loaded
        (d, s): open_dataset(d, data_root=config.data_root, split=s, image_root=config.image_root, **extra)
        for d, s in pairs
    }
    state = process_state()
    with RunLock(out) if state.is_main_process else contextlib.nullcontext():
        return _run_locked(config, out, pairs, sources, state)


def _run_locked(config: BenchConfig, out: Path, pairs: list, sources: dict, state: Any) -> dict:
    """:func:`run_bench` once the output directory is this run's."""
    tasks = config.tasks
    check_against(out, "settings", result_settings(config))
    loc, resolved = build_localizer(config, out, state)
    check_against(out, "resolved", {k: v for k, v in resolved.items() if k not in ("heads_file", "heads_source")})
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        _write_manifest(config, out, loc, resolved, pairs, state)
    state.wait_for_everyone()
    ran = {key: run_split(loc, source, *key, config, out, state) for key, source in sources.items()}
    indices = {key: found for key, (found, _) in ran.items()}
    state.wait_for_everyone()
    if not state.is_main_process:
        return {}
    for dataset, split in pairs:
        for path in split_files(out, dataset, split):
            merge_shards(path)
    summary = write_summary(out, only={key: ids for key, (_, ids) in ran.items()})
    if config.gallery > 0:
        samples = {key: (sources[key], found) for key, found in indices.items()}
        render_failures(out, loc, samples, config.gallery, oracle=config.oracle_maps, tasks=tasks)
    return summary
