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

import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from localize.errors import DataError, InputError, LocalizeError
from localize.headsfile import HeadsFile, format_head, save_heads
from localize.runs import Progress, SingleProcess, process_state

from .scoring import (
    TAU_METHODS,
    TIE_RULES,
    check_weighting,
    finite_mean,
    max_curvature_threshold,
    pseudo_mask_iou,
    rank_iou_correlation,
    select_heads,
    spatial_entropy,
    top_heads,
)
from .sidecar import decode_line, read_sidecar, record_line, sidecar_files, sidecar_header, sidecar_writer, skip_line

__all__ = [
    "DiscoveryResult",
    "discover",
    "draw_samples",
    "figure_paths",
    "read_sidecar",
    "sidecar_files",
]

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

    def summary_png(self) -> bytes:
        """The sorted S_img curve with tau and the selection-frequency bars, side by side, as PNG bytes."""
        from .figures import summary_png

        hf = self.heads_file
        method = hf.settings.get("tau_method") or "given"
        return summary_png(hf.mean_sum, hf.tau, method, np.nan_to_num(hf.frequency, nan=0.0))

    def _repr_png_(self) -> bytes:
        return self.summary_png()

    def show(self) -> None:
        """Open :meth:`summary_png` in the system's image viewer."""
        import io

        from PIL import Image

        Image.open(io.BytesIO(self.summary_png())).show()

    def save(self, out: str | os.PathLike) -> dict[str, Path]:
        """Write the heads file atomically and the three figures next to it; returns the paths by name. With no
        head selected there is no heads file (a pipeline must not ground with it); the figures and the sidecar
        are written, so a rerun with another ``--tau`` repeats no forward pass."""
        from .figures import plot_frequency_bars, plot_rank_iou, plot_sum_curve

        hf = self.heads_file
        out = Path(out)
        figures = figure_paths(out)
        if hf.heads:
            save_heads(out, hf)
        plot_sum_curve(hf.mean_sum, hf.tau, figures["sum_curve"], hf.settings.get("tau_method") or "given")
        plot_frequency_bars(np.nan_to_num(hf.frequency, nan=0.0), figures["frequency"])
        iou = hf.mean_iou if hf.mean_iou is not None else np.full_like(hf.frequency, np.nan)
        plot_rank_iou(np.nan_to_num(hf.frequency, nan=0.0), iou, self.rho, figures["rank_iou"], MIN_FREQUENCY)
        self.paths = {**({"heads": out} if hf.heads else {}), **figures}
        return self.paths


def figure_paths(out: str | os.PathLike) -> dict[str, Path]:
    """``<out stem>_sum_curve.png``, ``_frequency.png``, ``_rank_iou.png`` beside the heads file."""
    out = Path(out)
    return {name: out.with_name(out.stem + suffix) for name, suffix in FIGURES.items()}


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
            lines.append(skip_line(sample.sample_id, err))
    if not ready:
        return lines
    try:
        captured = list(zip(ready, _capture(vlm, ready, heads)))
    except CAPTURE_ERRORS as err:
        if len(ready) == 1:
            return [*lines, skip_line(ready[0][0].sample_id, err)]
        captured = []
        for item in ready:  # find the culprit: one sample per forward
            try:
                captured.append((item, _capture(vlm, [item], heads)[0]))
            except CAPTURE_ERRORS as item_err:
                lines.append(skip_line(item[0].sample_id, item_err))
    for (sample, _, mask), maps in captured:
        arr = maps.maps.detach().float().cpu().numpy()  # [heads, rows, cols]
        iou = None
        if mask is not None:
            iou = pseudo_mask_iou(arr, maps.geometry.mask_to_grid(mask) >= 0.5)
        entropy = spatial_entropy(arr, connectivity=connectivity, weighting=weighting)
        image_mass = maps.image_mass.detach().float().cpu().numpy()  # S_img over every view's image tokens
        lines.append(record_line(sample.sample_id, maps.grid, image_mass, entropy, iou))
    return lines


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
    writer = sidecar_writer(sidecar, header, index, count) if sidecar is not None else None
    records: dict[str, dict[str, Any]] = {}
    desc = "discover" if count == 1 else f"discover [{index + 1}/{count}]"
    bar = Progress(total, desc, initial=total - sum(len(b) for b in todo), enabled=progress)
    skipped = 0
    try:
        for batch in filter(None, todo):
            lines = _score_batch(vlm, batch, heads, header["connectivity"], header["weighting"])
            if writer is not None:
                writer.write(*lines)
            for line in lines:  # decode what was written, so that in-memory and resumed runs see the same values
                record = decode_line(line)
                records[record["id"]] = record
                skipped += "skipped" in record
            bar.advance(len(batch))
            if skipped:
                bar.note(f"skipped {skipped}")
            if on_sample is not None:
                for sample in batch:
                    on_sample(sample.sample_id)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    return records


# -- aggregation -----------------------------------------------------------------------------------------------------
def _stack(scored: list[dict[str, Any]], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Per-sample S_img, entropy and IoU as ``[n, L - skip, H]`` arrays (IoU nan without a mask), and the mask count."""
    n = len(scored)
    sums = np.stack([r["sum"] for r in scored]).reshape(n, *shape)
    entropy = np.stack([r["entropy"] for r in scored]).reshape(n, *shape)
    no_mask = np.full(int(np.prod(shape)), np.nan)
    iou = np.stack([r.get("iou", no_mask) for r in scored]).reshape(n, *shape)
    return sums, entropy, iou, sum("iou" in r for r in scored)


def _full_layers(values: np.ndarray, num_layers: int, skip: int) -> np.ndarray:
    """``[L - skip, H]`` -> ``[L, H]``, nan in the skipped layers."""
    out = np.full((num_layers, values.shape[-1]), np.nan)
    out[skip:] = values
    return out


def _stat(array: np.ndarray | None, head: tuple[int, int]) -> float | None:
    return None if array is None or not math.isfinite(array[head]) else float(f"{array[head]:.6g}")


def _summary(stats: dict[str, Any], chosen: list[tuple[int, int]], counts: np.ndarray) -> list[dict[str, Any]]:
    """One entry per selected head: votes, frequency, mean S_img / entropy / IoU."""
    keys = ("frequency", "mean_sum", "mean_entropy", "mean_iou")
    return [{"head": format_head(h), "votes": int(counts[h]), **{k: _stat(stats[k], h) for k in keys}} for h in chosen]


def _run_settings(
    header: dict[str, Any], top_k: int, per_sample: int, criterion: str, mode: str, tau: float | None,
    tau_method: str, tie: Any,
) -> dict[str, Any]:  # fmt: skip
    """The aggregation and scoring settings recorded in the heads file."""
    return {
        "top_k": top_k,
        "per_sample": per_sample,
        "criterion": criterion,
        "selection": mode,
        "tau_source": "given" if tau is not None else f"{tau_method} bend of the sorted mean S_img",
        "tau_method": None if tau is not None else tau_method,
        "tie_rule": tie if isinstance(tie, str) else "given keys",
        **{k: header[k] for k in ("skip_layers", "weighting", "connectivity", "template", "dtype")},
    }


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
    sums, entropy, iou, with_mask = _stack(scored, shape)

    full = partial(_full_layers, num_layers=num_layers, skip=skip)
    mean_sum = sums.mean(axis=0)
    tau_value = float(tau) if tau is not None else max_curvature_threshold(mean_sum, tau_method)
    counts = np.zeros((num_layers, num_heads), dtype=np.int64)
    counts[skip:] = select_heads(
        entropy, sums, tau_value, per_sample=per_sample, criterion=criterion, mode=mode, tie=tie
    )
    stats = {
        "frequency": full(counts[skip:] / n),
        "mean_sum": full(mean_sum),
        "mean_entropy": full(finite_mean(entropy)),
        "mean_iou": full(finite_mean(iou)) if with_mask else None,
    }
    frequency, mean_iou = stats["frequency"], stats["mean_iou"]
    chosen = top_heads(np.nan_to_num(frequency, nan=0.0), np.nan_to_num(stats["mean_entropy"], nan=np.inf), top_k)
    rho, rho_heads = (float("nan"), 0) if mean_iou is None else rank_iou_correlation(frequency, mean_iou, MIN_FREQUENCY)
    grids = Counter(tuple(r["grid"]) for r in scored)
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
        "selected": _summary(stats, chosen, counts),
    }
    settings = {**settings, **_run_settings(header, top_k, per_sample, criterion, mode, tau, tau_method, tie)}
    settings["results"] = results
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
        settings=settings,
        **stats,
    )
    return DiscoveryResult(heads_file, counts, rho, rho_heads, skipped)


# -- the run ---------------------------------------------------------------------------------------------------------
def _check_samples(samples: list[Any], unreadable: Sequence[tuple[str, str]]) -> None:
    """Some samples, each id once."""
    if not samples and not unreadable:
        raise InputError("no samples to discover heads on")
    ids = Counter(s.sample_id for s in samples)
    duplicates = [i for i, k in ids.items() if k > 1]
    if duplicates:
        raise InputError(f"sample ids must be unique; repeated: {duplicates[:3]}")


def _check_options(
    vlm: Any, criterion: str, mode: str, weighting: str, connectivity: int, tau_method: str, tie: str,
    skip_layers: int, top_k: int, per_sample: int, batch_size: int,
) -> None:  # fmt: skip
    """One-line errors for discovery options that do not fit (each names the allowed values)."""
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
    _check_options(
        vlm, criterion, mode, weighting, connectivity, tau_method, tie, skip_layers, top_k, per_sample, batch_size
    )
    samples = list(samples)
    _check_samples(samples, unreadable)
    state = process_state() if shard is None else SingleProcess()
    index, count = shard or (state.process_index, state.num_processes)
    if not 0 <= index < count:
        raise InputError(f"shard index {index} outside 0..{count - 1}")
    sidecar = Path(sidecar) if sidecar is not None else None
    if count > 1 and sidecar is None:
        raise InputError("a sharded discovery needs a sidecar path: the shards are merged from it")

    header = sidecar_header(vlm, skip_layers, weighting, connectivity)
    scoring = {"batch_size": batch_size, "sidecar": sidecar, "progress": progress, "on_sample": on_sample}
    records = _score(vlm, samples, header, shard=(index, count), **scoring)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    if sidecar is not None:
        records = read_sidecar(sidecar, header)
    if any(s.sample_id not in records for s in samples):
        if count > 1:
            return None  # other shards have not finished yet
        raise RuntimeError("discovery finished with samples lacking records")  # not reachable in one process
    # Entropy is computed on each sample's grounding view (the adapter's first); S_img over every view.
    settings = {"batch_size": batch_size, "data": dict(data or {}), "entropy_view": vlm.adapter.view_names[0]}
    voting = {"top_k": top_k, "per_sample": per_sample, "tau": tau, "criterion": criterion, "mode": mode}
    voting |= {"seed": seed, "tau_method": tau_method, "tie": tie}
    result = _aggregate(header, samples, records, list(unreadable), settings=settings, **voting)
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
