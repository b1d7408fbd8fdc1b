"""The discovery run (Kang et al., CVPR 2025, sections 4.1-4.2, appendix B.1) and ``localize discover``.

Per sample, every head from layer ``skip_layers`` on is captured once (the forward exits inside the last layer) and
scored: ``S_img``, spatial entropy and, when the sample has a mask, the pseudo-mask IoU. Those per-sample statistics
are appended to a sidecar JSONL as they are computed; then ``tau``, the votes, the frequencies, the top-k heads and
the rank-IoU correlation are derived from the sidecar alone and written to the heads file plus three figures.

Sidecar: a header line (what the statistics depend on: model, prompt, dtype, layers skipped, entropy settings), then
one line per sample: ``{"id", "grid", "sum", "entropy", "iou"}`` with one value per scored head (layer-major from
``skip_layers``, entropy ``null`` = +inf) or ``{"id", "skipped": reason}``. A rerun skips the ids already scored
(a run interrupted at any point resumes), retries skipped ones, and refuses a sidecar written with other settings.
The aggregation settings (``tau``, ``tau_method``, ``tie``, ``criterion``, ``mode``, ``per_sample``, ``top_k``)
are not in the header: rerunning with other values over a complete sidecar re-derives the heads without a forward
pass (Table 5 ablations).

Samples are batched in a fixed plan (samples of one image together, through prefix reuse; the others a few per
forward), a function of the sample list and ``batch_size`` only, so a resumed or sharded run computes every sample
in the same batch as an uninterrupted one and the result is identical. Under ``accelerate launch`` each process
takes every ``count``-th batch and writes ``<sidecar stem>.rank<i>.jsonl``; the main process waits for the others,
then merges all shards.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from localize.errors import DataError, HeadsMismatchError, InputError, LocalizeError

from localize.headsfile import HeadsFile, format_head, save_heads
from .scoring import (
    TAU_METHODS,
    TIE_RULES,
    WEIGHTINGS,
    attention_sum,
    check_weighting,
    finite_mean,
    max_curvature_threshold,
    pseudo_mask_iou,
    rank_iou_correlation,
    select_heads,
    spatial_entropy,
    top_heads,
)

__all__ = [
    "DiscoveryResult",
    "add_arguments",
    "discover",
    "draw_samples",
    "figure_paths",
    "read_sidecar",
    "run",
    "sidecar_files",
]

SIDECAR_FORMAT = 1
MIN_FREQUENCY = 0.01  # heads in the rank-IoU correlation (the paper's Fig. 6b)
FIGURES = {"sum_curve": "_sum_curve.png", "frequency": "_frequency.png", "rank_iou": "_rank_iou.png"}
SKIPPED_EXAMPLES = 10
# A corrupt sample may fail anywhere in decoding (PIL, pycocotools): loading errors skip the sample, whatever they are.
LOAD_ERRORS: tuple[type[BaseException], ...] = (Exception,)
# Capture errors caused by one sample's content (prompt too long, a processor refusing an image).
CAPTURE_ERRORS: tuple[type[BaseException], ...] = (LocalizeError, ValueError, OSError)


@dataclass
class DiscoveryResult:
    """A discovery run's outcome: the heads file's contents plus the votes, rho and the skipped samples."""

    heads_file: HeadsFile
    counts: np.ndarray  # [num_layers, num_heads] votes (0 in skipped layers)
    rho: float  # Spearman rho of frequency vs mean IoU over heads chosen >= 1% (nan when undefined)
    rho_heads: int
    skipped: list[tuple[str, str]]  # (sample id, reason)
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def heads(self) -> list[tuple[int, int]]:
        """The selected heads, 0-based ``(layer, head)``, most frequent first."""
        return self.heads_file.heads

    @property
    def heads_str(self) -> list[str]:
        """The selected heads as ``"L14 H24"``."""
        return self.heads_file.heads_str

    def save(self, out: str | os.PathLike) -> dict[str, Path]:
        """Write the heads file atomically and the three figures next to it; returns the paths by name."""
        from .figures import plot_frequency_bars, plot_rank_iou, plot_sum_curve

        hf = self.heads_file
        out = Path(out)
        figures = figure_paths(out)
        save_heads(out, hf)
        plot_sum_curve(hf.mean_sum, hf.tau, figures["sum_curve"], hf.settings.get("tau_method") or "given")
        plot_frequency_bars(np.nan_to_num(hf.frequency, nan=0.0), figures["frequency"])
        iou = hf.mean_iou if hf.mean_iou is not None else np.full_like(hf.frequency, np.nan)
        plot_rank_iou(np.nan_to_num(hf.frequency, nan=0.0), iou, self.rho, figures["rank_iou"], MIN_FREQUENCY)
        self.paths = {"heads": out, **figures}
        return self.paths


def figure_paths(out: str | os.PathLike) -> dict[str, Path]:
    """``<out stem>_sum_curve.png``, ``_frequency.png``, ``_rank_iou.png`` beside the heads file."""
    out = Path(out)
    return {name: out.with_name(out.stem + suffix) for name, suffix in FIGURES.items()}


# -- sidecar ---------------------------------------------------------------------------------------------------------
def _shard_path(sidecar: Path, index: int, count: int) -> Path:
    return sidecar if count == 1 else sidecar.with_name(f"{sidecar.stem}.rank{index}{sidecar.suffix}")


def sidecar_files(sidecar: str | os.PathLike) -> list[Path]:
    """The sidecar and its rank shards (``<stem>.rank<i><suffix>``) that exist."""
    sidecar = Path(sidecar)
    pattern = f"{glob.escape(sidecar.stem)}.rank*{glob.escape(sidecar.suffix)}"
    shards = sorted(sidecar.parent.glob(pattern), key=lambda p: p.name)
    return [p for p in [sidecar, *shards] if p.is_file()]


def _check_header(path: Path, found: Any, expected: dict[str, Any] | None) -> None:
    if not isinstance(found, dict) or found.get("localize_sidecar") != SIDECAR_FORMAT:
        raise InputError(f"{path} is not a discovery sidecar (format {SIDECAR_FORMAT}); remove it or pick another path")
    if expected is None:
        return
    differ = [f"{k}: {found.get(k)!r} there, {v!r} now" for k, v in expected.items() if found.get(k) != v]
    if differ:
        raise InputError(
            f"the sidecar {path} was written with other settings ({'; '.join(differ)}); its statistics cannot be "
            "mixed with this run's: pass another --sidecar/--out, or --fresh to discard it"
        )


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
            record = _decode(line)
            if record is not None and not ("skipped" in record and "sum" in records.get(record["id"], {})):
                records[record["id"]] = record  # a score is never replaced by a skip (of an earlier run, in a shard)
    return records


def _decode(line: str) -> dict[str, Any] | None:
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


class _SidecarWriter:
    """Appends whole lines to one sidecar file (header first), flushed after every batch."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file() and path.stat().st_size:
            text = path.read_bytes()
            if not text.endswith(b"\n"):  # a line cut short by an interruption: drop it
                with open(path, "r+b") as f:
                    f.truncate(text.rfind(b"\n") + 1)
        self.handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        if self.handle.tell() == 0:
            self.write([json.dumps(header, sort_keys=True)])

    def write(self, lines: list[str]) -> None:
        self.handle.write("".join(line + "\n" for line in lines))
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def _floats(values: np.ndarray) -> str:
    """A compact JSON list: 7 significant digits, ``null`` for non-finite values."""
    return "[" + ",".join(f"{v:.7g}" if math.isfinite(v) else "null" for v in values.tolist()) + "]"


def _record_line(sample_id: str, grid: tuple[int, int], sums, entropy, iou) -> str:
    parts = [f'"id": {json.dumps(sample_id)}', f'"grid": [{grid[0]}, {grid[1]}]', f'"sum": {_floats(sums)}']
    parts.append(f'"entropy": {_floats(entropy)}')
    if iou is not None:
        parts.append(f'"iou": {_floats(iou)}')
    return "{" + ", ".join(parts) + "}"


def _skip_line(sample_id: str, err: BaseException | str) -> str:
    reason = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    return json.dumps({"id": sample_id, "skipped": reason[:300]})


def _array(values: list, none: float) -> np.ndarray:
    return np.array([none if v is None else v for v in values], dtype=np.float64)


# -- scoring ---------------------------------------------------------------------------------------------------------
def _plan(samples: Sequence[Any], batch_size: int) -> list[list[int]]:
    """Batches of sample indices: one image's samples together (prefix reuse), lone samples a few per batch."""
    by_image: dict[Any, list[int]] = {}
    for index, sample in enumerate(samples):
        by_image.setdefault(sample.image_key, []).append(index)
    batches: list[list[int]] = []
    lone: list[int] = []
    for members in by_image.values():
        if len(members) == 1:
            lone.extend(members)
        else:
            batches.extend(members[i : i + batch_size] for i in range(0, len(members), batch_size))
    batches.extend(lone[i : i + batch_size] for i in range(0, len(lone), batch_size))
    return sorted(batches, key=lambda b: b[0])


def _load(sample: Any, images: dict[Any, Any]) -> tuple[Any, np.ndarray | None]:
    """The sample's RGB image (cached per image, errors too) and its mask, checked against the image size."""
    key = sample.image_key
    if key not in images:
        try:
            images[key] = sample.load_image()
        except LOAD_ERRORS as err:
            images[key] = err
    image = images[key]
    if isinstance(image, BaseException):
        raise image
    mask = sample.mask() if sample.has_mask else None
    if mask is not None and mask.shape != (image.height, image.width):
        raise DataError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {image.width}x{image.height}")
    return image, mask


def _capture(vlm: Any, ready: list[tuple[Any, Any, Any]], heads: list[tuple[int, int]]) -> list[Any]:
    images = [image for _, image, _ in ready]
    shared = all(image is images[0] for image in images)  # one image: a single object -> prefix reuse
    return vlm.capture(images[0] if shared else images, [s.expression for s, _, _ in ready], heads)


def _score_batch(
    vlm: Any, batch: list[Any], heads: list[tuple[int, int]], connectivity: int, weighting: str
) -> list[str]:
    """Sidecar lines for one batch of samples: statistics, or the reason a sample was skipped."""
    lines: list[str] = []
    ready: list[tuple[Any, Any, Any]] = []
    images: dict[Any, Any] = {}
    for sample in batch:
        try:
            ready.append((sample, *_load(sample, images)))
        except LOAD_ERRORS as err:
            lines.append(_skip_line(sample.sample_id, err))
    if not ready:
        return lines
    try:
        captured = list(zip(ready, _capture(vlm, ready, heads)))
    except CAPTURE_ERRORS as err:
        if len(ready) == 1:
            return [*lines, _skip_line(ready[0][0].sample_id, err)]
        captured = []
        for item in ready:  # find the culprit: one sample per forward
            try:
                captured.append((item, _capture(vlm, [item], heads)[0]))
            except CAPTURE_ERRORS as item_err:
                lines.append(_skip_line(item[0].sample_id, item_err))
    for (sample, _, mask), maps in captured:
        arr = maps.maps.detach().float().cpu().numpy()  # [heads, rows, cols]
        iou = None
        if mask is not None:
            iou = pseudo_mask_iou(arr, maps.geometry.mask_to_grid(mask) >= 0.5)
        entropy = spatial_entropy(arr, connectivity=connectivity, weighting=weighting)
        lines.append(_record_line(sample.sample_id, maps.grid, attention_sum(arr), entropy, iou))
    return lines


def _progress(total: int, initial: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="sample", dynamic_ncols=True)


def _score(
    vlm: Any,
    samples: list[Any],
    header: dict[str, Any],
    *,
    batch_size: int,
    sidecar: Path | None,
    shard: tuple[int, int],
    progress: bool,
    on_sample: Callable[[str], None] | None,
) -> dict[str, dict[str, Any]]:
    """Score this shard's samples not yet in the sidecar; returns the records of this run (in memory)."""
    from localize.capture import all_heads

    index, count = shard
    heads = all_heads(header["num_layers"], header["num_heads"], header["skip_layers"])
    done = read_sidecar(sidecar, header) if sidecar is not None else {}
    mine = [batch for i, batch in enumerate(_plan(samples, batch_size)) if i % count == index]
    todo = [[samples[i] for i in batch if "sum" not in done.get(samples[i].sample_id, {})] for batch in mine]
    total = sum(len(batch) for batch in mine)
    writer = _SidecarWriter(_shard_path(sidecar, index, count), header) if sidecar is not None else None
    records: dict[str, dict[str, Any]] = {}
    desc = "discover" if count == 1 else f"discover [{index + 1}/{count}]"
    bar = _progress(total, total - sum(len(b) for b in todo), progress, desc)
    skipped = 0
    try:
        for batch in filter(None, todo):
            lines = _score_batch(vlm, batch, heads, header["connectivity"], header["weighting"])
            if writer is not None:
                writer.write(lines)
            for line in lines:  # decode what was written, so that in-memory and resumed runs see the same values
                record = _decode(line)
                records[record["id"]] = record
                skipped += "skipped" in record
            bar.update(len(batch))
            if skipped:
                bar.set_postfix(skipped=skipped)
            if on_sample is not None:
                for sample in batch:
                    on_sample(sample.sample_id)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    return records


# -- aggregation -----------------------------------------------------------------------------------------------------
def _aggregate(
    header: dict[str, Any],
    samples: list[Any],
    records: dict[str, dict[str, Any]],
    skipped: list[tuple[str, str]],
    *,
    top_k: int,
    per_sample: int,
    tau: float | None,
    criterion: str,
    mode: str,
    seed: int | None,
    settings: dict[str, Any],
    tau_method: str = "chord",
    tie: Any = "mean-entropy",
) -> DiscoveryResult:
    """tau, votes, frequency, top-k, mean IoU and rho from the per-sample records, in the samples' order."""
    num_layers, num_heads, skip = header["num_layers"], header["num_heads"], header["skip_layers"]
    shape = (num_layers - skip, num_heads)
    requested = len(samples) + len(skipped)
    ordered = [records[s.sample_id] for s in samples]
    scored = [r for r in ordered if "sum" in r]
    skipped = skipped + [(r["id"], r["skipped"]) for r in ordered if "sum" not in r]
    if not scored:
        reasons = "; ".join(f"{i}: {r}" for i, r in skipped[:3])
        raise DataError(f"no sample could be scored ({len(skipped)} skipped: {reasons})")
    n = len(scored)
    sums = np.stack([r["sum"] for r in scored]).reshape(n, *shape)
    entropy = np.stack([r["entropy"] for r in scored]).reshape(n, *shape)
    no_mask = np.full(int(np.prod(shape)), np.nan)
    iou = np.stack([r.get("iou", no_mask) for r in scored]).reshape(n, *shape)
    with_mask = sum("iou" in r for r in scored)

    def full(values: np.ndarray) -> np.ndarray:  # [L - skip, H] -> [L, H], nan in the skipped layers
        out = np.full((num_layers, num_heads), np.nan)
        out[skip:] = values
        return out

    mean_sum = sums.mean(axis=0)
    tau_value = float(tau) if tau is not None else max_curvature_threshold(mean_sum, tau_method)
    counts = np.zeros((num_layers, num_heads), dtype=np.int64)
    counts[skip:] = select_heads(
        entropy, sums, tau_value, per_sample=per_sample, criterion=criterion, mode=mode, tie=tie
    )
    frequency = full(counts[skip:] / n)
    mean_entropy = full(finite_mean(entropy))
    mean_iou = full(finite_mean(iou)) if with_mask else None
    chosen = top_heads(np.nan_to_num(frequency, nan=0.0), np.nan_to_num(mean_entropy, nan=np.inf), top_k)
    rho, rho_heads = (float("nan"), 0) if mean_iou is None else rank_iou_correlation(frequency, mean_iou, MIN_FREQUENCY)
    grids = Counter(tuple(r["grid"]) for r in scored)
    mean_sum_full = full(mean_sum)

    def stat(array: np.ndarray | None, head: tuple[int, int]) -> float | None:
        return None if array is None or not math.isfinite(array[head]) else float(f"{array[head]:.6g}")

    results = {
        "samples_requested": requested,
        "samples_scored": n,
        "samples_skipped": len(skipped),
        "skipped_examples": [f"{i}: {r}" for i, r in skipped[:SKIPPED_EXAMPLES]],
        "samples_with_mask": with_mask,
        "heads_scored": int(np.prod(shape)),
        "heads_above_tau": int((mean_sum >= tau_value).sum()),
        "rank_iou_spearman": rho if math.isfinite(rho) else None,
        "rank_iou_heads": rho_heads,
        "grids": {f"{r}x{c}": k for (r, c), k in sorted(grids.items())},
        "selected": [
            {
                "head": format_head(h),
                "votes": int(counts[h]),
                "frequency": stat(frequency, h),
                "mean_sum": stat(mean_sum_full, h),
                "mean_entropy": stat(mean_entropy, h),
                "mean_iou": stat(mean_iou, h),
            }
            for h in chosen
        ],
    }
    heads_file = HeadsFile(
        num_layers=num_layers,
        num_heads=num_heads,
        heads=chosen,
        model=header["model"],
        revision=header["revision"],
        model_type=header["model_type"],
        grid=next(iter(grids)) if len(grids) == 1 else None,
        tau=tau_value,
        n_samples=n,
        seed=seed,
        sample_ids=[r["id"] for r in scored],
        mean_sum=mean_sum_full,
        mean_entropy=mean_entropy,
        frequency=frequency,
        mean_iou=mean_iou,
        settings={
            **settings,
            "top_k": top_k,
            "per_sample": per_sample,
            "criterion": criterion,
            "selection": mode,
            "tau_source": "given" if tau is not None else f"{tau_method} bend of the sorted mean S_img",
            "tau_method": None if tau is not None else tau_method,
            "tie_rule": tie if isinstance(tie, str) else "given keys",
            **{k: header[k] for k in ("skip_layers", "weighting", "connectivity", "template", "dtype")},
            "results": results,
        },
    )
    return DiscoveryResult(heads_file, counts, rho, rho_heads, skipped)


# -- the run ---------------------------------------------------------------------------------------------------------
def _distributed_state() -> Any:
    """accelerate's ``PartialState`` under a multi-process launch (``WORLD_SIZE`` > 1), else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    import torch
    from accelerate import PartialState

    # accelerate only sets up a CPU process group when asked to (ACCELERATE_USE_CPU, or no GPU here).
    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    if state.num_processes != world:  # the processes would all write one sidecar
        raise LocalizeError(f"WORLD_SIZE is {world} but accelerate set up {state.num_processes} process(es)")
    return state


def _header(vlm: Any, skip_layers: int, weighting: str, connectivity: int) -> dict[str, Any]:
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


def discover(
    vlm: Any,
    samples: Sequence[Any],
    *,
    top_k: int = 3,
    per_sample: int = 10,
    skip_layers: int = 2,
    tau: float | None = None,
    criterion: str = "both",
    mode: str = "fixed",
    weighting: str = "size",
    connectivity: int = 8,
    tau_method: str = "chord",
    tie: str = "mean-entropy",
    batch_size: int = 8,
    sidecar: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
    seed: int | None = None,
    data: dict[str, Any] | None = None,
    unreadable: Sequence[tuple[str, str]] = (),
    on_sample: Callable[[str], None] | None = None,
) -> DiscoveryResult | None:
    """Find ``vlm``'s localization heads over ``samples`` (``GroundingSample``s); writes ``out`` + figures if given.

    ``vlm``: a :class:`~localize.models.VLM`, ``(model, processor)`` or a spec. Resumes from ``sidecar`` (module
    doc). Returns None on a non-main process and, for an explicit ``shard=(index, count)``, until every shard's
    records are in the sidecar (the last shard to finish merges). ``unreadable``: (label, reason) of samples the
    source could not produce, counted as skipped. ``on_sample(sample_id)`` runs once each sample's batch is written.
    """
    from localize.models import load_model

    vlm = load_model(vlm)
    if criterion not in ("both", "sum", "entropy"):
        raise InputError(f"criterion must be 'both', 'sum' or 'entropy', got {criterion!r}")
    if mode not in ("fixed", "greedy"):
        raise InputError(f"mode must be 'fixed' or 'greedy', got {mode!r}")
    try:
        check_weighting(weighting)
    except ValueError as err:
        raise InputError(str(err)) from None
    if connectivity not in (4, 8):
        raise InputError(f"connectivity must be 4 or 8, got {connectivity!r}")
    if tau_method not in TAU_METHODS or tie not in TIE_RULES:
        raise InputError(f"tau_method must be one of {TAU_METHODS} and tie one of {TIE_RULES}")
    if not 0 <= skip_layers < vlm.num_layers:
        raise InputError(f"skip_layers must be in [0, {vlm.num_layers - 1}] for this model, got {skip_layers}")
    if top_k < 1 or per_sample < 1 or batch_size < 1:
        raise InputError("top_k, per_sample and batch_size must be >= 1")
    samples = list(samples)
    if not samples and not unreadable:
        raise InputError("no samples to discover heads on")
    ids = Counter(s.sample_id for s in samples)
    duplicates = [i for i, k in ids.items() if k > 1]
    if duplicates:
        raise InputError(f"sample ids must be unique; repeated: {duplicates[:3]}")
    state = _distributed_state() if shard is None else None
    index, count = (state.process_index, state.num_processes) if state is not None else (shard or (0, 1))
    if not 0 <= index < count:
        raise InputError(f"shard index {index} outside 0..{count - 1}")
    sidecar = Path(sidecar) if sidecar is not None else None
    if count > 1 and sidecar is None:
        raise InputError("a sharded discovery needs a sidecar path: the shards are merged from it")

    header = _header(vlm, skip_layers, weighting, connectivity)
    records = _score(
        vlm,
        samples,
        header,
        batch_size=batch_size,
        sidecar=sidecar,
        shard=(index, count),
        progress=progress,
        on_sample=on_sample,
    )
    if state is not None:
        state.wait_for_everyone()
        if not state.is_main_process:
            return None
    if sidecar is not None:
        records = read_sidecar(sidecar, header)
    if any(s.sample_id not in records for s in samples):
        if count > 1:
            return None  # other shards have not finished yet
        raise RuntimeError("discovery finished with samples lacking records")  # not reachable in one process
    settings = {"batch_size": batch_size, "data": dict(data or {})}
    result = _aggregate(
        header,
        samples,
        records,
        list(unreadable),
        top_k=top_k,
        per_sample=per_sample,
        tau=tau,
        criterion=criterion,
        mode=mode,
        seed=seed,
        settings=settings,
        tau_method=tau_method,
        tie=tie,
    )
    if out is not None:
        result.save(out)
        if sidecar is not None:
            result.paths["sidecar"] = sidecar
    return result


def draw_samples(source: Any, n: int | None, seed: int = 0) -> tuple[list[Any], list[tuple[str, str]]]:
    """The first ``n`` of a seeded permutation of ``source``; rows that cannot be read come back as (label, reason)."""
    order = np.random.default_rng(seed).permutation(len(source))
    chosen = order if n is None else order[: max(int(n), 0)]
    fetched: dict[int, Any] = {}
    failed: dict[int, str] = {}
    for i in sorted(int(i) for i in chosen):  # source order: lazy sources read their files sequentially
        try:
            fetched[i] = source[i]
        except LOAD_ERRORS as err:
            failed[i] = f"{type(err).__name__}: {err}"
    name = f"{getattr(source, 'name', 'data')}/{getattr(source, 'split', '')}"
    samples = [fetched[int(i)] for i in chosen if int(i) in fetched]
    return samples, [(f"{name}/#{int(i)}", failed[int(i)]) for i in chosen if int(i) in failed]


# -- command line ----------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``localize discover``."""
    parser.add_argument("--model", required=True, help="alias, hub id or local directory")
    parser.add_argument("--data", default="refcoco", metavar="NAME", help="dataset (default refcoco; see data check)")
    parser.add_argument("--data-root", metavar="DIR", help="dataset root (default: $LOCALIZE_DATA_ROOT)")
    parser.add_argument("--split", default="train", help="split to draw samples from (default train)")
    parser.add_argument("--split-by", metavar="NAME", help="refer split scheme: unc, umd or google")
    parser.add_argument("--image-root", metavar="DIR", help="image folder (default: the dataset's convention)")
    parser.add_argument("--samples", type=int, default=1000, help="samples drawn with --seed (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample permutation (default 0)")
    parser.add_argument("--top-k", type=int, default=3, help="localization heads to keep (default 3)")
    parser.add_argument("--per-sample", type=int, default=10, help="heads each sample votes for (default 10)")
    parser.add_argument("--tau", type=float, help="S_img threshold (default: the bend of the sorted means)")
    parser.add_argument(
        "--tau-method", choices=TAU_METHODS, default="chord", help="how tau finds the bend (default chord)"
    )
    parser.add_argument(
        "--tie",
        choices=TIE_RULES,
        default="mean-entropy",
        help="order of heads of equal entropy (default mean-entropy)",
    )
    parser.add_argument("--criterion", choices=("both", "sum", "entropy"), default="both", help="Table 5 ablations")
    parser.add_argument("--selection", choices=("fixed", "greedy"), default="fixed", help="per-sample vote mode")
    parser.add_argument(
        "--weighting",
        type=_weighting,
        default="size",
        metavar="{" + ",".join(WEIGHTINGS) + "}",
        help="entropy P(C): size = the paper (default), official = the official code exactly, component-mass",
    )
    parser.add_argument("--connectivity", type=int, choices=(4, 8), default=8, help="component connectivity")
    parser.add_argument("--skip-layers", type=int, default=2, help="first layers left out (default 2)")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per forward pass (default 8)")
    parser.add_argument("--out", default="heads.json", help="heads file (default heads.json); figures beside it")
    parser.add_argument("--sidecar", help="per-sample statistics, for resuming (default <out stem>.sidecar.jsonl)")
    parser.add_argument("--fresh", action="store_true", help="discard the sidecar of an earlier run first")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default auto)")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    parser.add_argument("--revision", help="model revision on the hub")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _weighting(text: str) -> str:
    """argparse type of ``--weighting``: a known weighting, or a one-line error (naming the retired ``mass``)."""
    try:
        return check_weighting(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def run(args: argparse.Namespace) -> int:
    """Run ``localize discover``: print the selected heads and the files written."""
    import torch

    from localize.data.registry import open_dataset
    from localize.models import load_model

    if args.samples < 1:
        raise InputError(f"--samples must be >= 1, got {args.samples}")
    state = _distributed_state()
    main = state is None or state.is_main_process
    device = str(state.device) if state is not None and args.device == "auto" else args.device
    out = Path(args.out)
    sidecar = Path(args.sidecar) if args.sidecar else out.with_name(out.stem + ".sidecar.jsonl")
    if args.fresh and main:
        for path in sidecar_files(sidecar):
            path.unlink()
    if state is not None:
        state.wait_for_everyone()
    vlm = load_model(args.model, device=device, dtype=args.dtype, revision=args.revision)
    extra = {"split_by": args.split_by} if args.split_by else {}
    source = open_dataset(args.data, data_root=args.data_root, split=args.split, image_root=args.image_root, **extra)
    if len(source) == 0:
        raise DataError(f"{args.data} split {args.split!r} has no samples; pick another --split")
    samples, unreadable = draw_samples(source, args.samples, args.seed)
    if main:
        records = read_sidecar(sidecar) if sidecar_files(sidecar) else {}
        done = sum("sum" in records.get(s.sample_id, {}) for s in samples)
        available = f" (the split has {len(source)})" if args.samples > len(source) else ""
        resuming = f"; resuming: {done} already in {sidecar}" if done else ""
        print(
            f"discover: {vlm.spec}, {len(samples) + len(unreadable)} samples of {args.data}/{args.split}{available}{resuming}"
        )
    data = {
        "name": args.data,
        "split": args.split,
        "data_root": args.data_root or os.environ.get("LOCALIZE_DATA_ROOT"),
        "image_root": os.fspath(getattr(source, "image_root", None) or args.image_root or "") or None,
        "samples": args.samples,
        **extra,
    }
    try:
        result = discover(
            vlm,
            samples,
            top_k=args.top_k,
            per_sample=args.per_sample,
            skip_layers=args.skip_layers,
            tau=args.tau,
            criterion=args.criterion,
            mode=args.selection,
            weighting=args.weighting,
            connectivity=args.connectivity,
            tau_method=args.tau_method,
            tie=args.tie,
            batch_size=args.batch_size,
            sidecar=sidecar,
            out=out,
            progress=not args.no_progress,
            seed=args.seed,
            data=data,
            unreadable=unreadable,
        )
    except torch.cuda.OutOfMemoryError as err:
        raise LocalizeError(
            f"out of GPU memory ({err}); rerun with a smaller --batch-size: the samples done are kept in {sidecar}"
        ) from err
    if result is None:
        return 0
    hf = result.heads_file
    summary = hf.settings["results"]
    how = "given" if args.tau is not None else args.tau_method
    print(
        f"{hf.n_samples} samples scored, {len(result.skipped)} skipped; tau = {hf.tau:.4g} ({how}; "
        f"{summary['heads_above_tau']} of {summary['heads_scored']} heads pass); ties: {args.tie}"
    )
    for entry in summary["selected"]:
        entropy = "n/a" if entry["mean_entropy"] is None else f"{entry['mean_entropy']:.3f}"
        iou = f", mean IoU {entry['mean_iou']:.3f}" if entry["mean_iou"] is not None else ""
        print(f"  {entry['head']}: frequency {entry['frequency']:.1%}, mean entropy {entropy}{iou}")
    if not hf.heads:
        print("  no head was selected (no head passed tau with a finite entropy)")
    elif len(hf.heads) < args.top_k:
        print(
            f"  note: only {len(hf.heads)} of the {args.top_k} heads asked for were ever selected: tau = {hf.tau:.4g} "
            "lets few heads compete; --tau LOWER (or --criterion entropy) widens the field"
        )
    competing = summary["heads_scored"] if args.criterion == "entropy" else summary["heads_above_tau"]
    if args.selection == "fixed" and 0 < competing <= args.per_sample:
        print(
            f"  note: --per-sample {args.per_sample} >= the {competing} heads that compete: every "
            "one is selected for every sample, so frequencies tie (order by mean entropy); a smaller --per-sample "
            "makes the frequency count discriminate"
        )
    print("localization heads: " + (", ".join(hf.heads_str) or "none"))
    for reason in summary["skipped_examples"][:3]:
        print(f"  skipped {reason}")
    for name, path in result.paths.items():
        print(f"{name}: {', '.join(map(str, sidecar_files(path))) if name == 'sidecar' else path}")
    return 0
