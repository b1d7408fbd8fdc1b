"""The prediction side of a bench run: a split's entries grouped by image, the localizer's (or the oracle's)
groundings, the model's answers, and one result row per expression."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from localize.postprocess import mask_to_rle

from .config import ANSWER_EXTRA_TOKENS
from .metrics import box_iou, mask_intersection_union


@dataclass
class Entry:
    """One expression of a split: its position, id and image key, or why it could not be read.

    Samples are fetched again when their image is processed: a lazy source (parquet with embedded images) then holds
    one image in memory, not the whole split's.
    """

    index: int
    sample_id: str
    image_key: str
    reason: str | None = None


class UnreadableRow(Exception):
    """A row of a source that cannot be turned into a sample."""


def fetch(source: Any, index: int) -> Any:
    try:
        return source[index]
    except Exception as err:  # lazy sources decode images here; any failure skips the row, counted
        raise UnreadableRow(f"{type(err).__name__}: {err}") from err


def read_entries(source: Any, dataset: str, split: str, limit: int | None) -> list[Entry]:
    n = len(source) if limit is None else min(len(source), max(int(limit), 0))
    entries = []
    for index in range(n):
        try:
            sample = fetch(source, index)
        except UnreadableRow as err:
            entries.append(Entry(index, f"{dataset}/{split}/#{index}", f"unreadable:{index}", str(err)))
            continue
        entries.append(Entry(index, str(sample.sample_id), sample.image_key))
    return entries


def group_by_image(entries: Iterable[Entry]) -> list[list[Entry]]:
    """Entries grouped by image (first appearance order): one image prefix per group."""
    groups: dict[str, list[Entry]] = {}
    for entry in entries:
        groups.setdefault(entry.image_key, []).append(entry)
    return list(groups.values())


def predict(loc: Any, image: Any, samples: list[Any], oracle: bool) -> list[Any]:
    """The localizer's groundings of ``samples`` on one image, or with ``oracle`` the same map -> box/mask step on
    each target mask (its box when there is no mask) area-averaged onto the model's grid."""
    phrases = [s.expression for s in samples]
    if not oracle:
        return loc.ground_many(image, phrases)
    geometry = loc.vlm.adapter.prepare([image], [samples[0].expression]).geometries[0]
    grids = [(geometry.mask_to_grid(s.mask()) if s.has_mask else geometry.box_to_grid(s.box))[None] for s in samples]
    return loc.ground_maps(image, phrases, grids, [geometry] * len(samples))


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


def answer_fields(vlm: Any, image: Any, sample: Any) -> dict[str, Any]:
    """``target_answer``, ``pred_answer`` and ``answer_correct`` of one sample (None without a reference answer)."""
    reference = _reference_answer(sample)
    if reference is None:
        return {"target_answer": None, "pred_answer": None, "answer_correct": None}
    pred = vlm.answer(image, sample.expression, max_new_tokens=len(reference.split()) + ANSWER_EXTRA_TOKENS)
    return {"target_answer": reference, "pred_answer": pred, "answer_correct": answer_matches(pred, reference)}


def result_row(
    entry: Entry,
    sample: Any,
    dataset: str,
    split: str,
    pred: Any,
    timings: dict,
    answer: dict[str, Any] | None = None,
) -> dict:
    """One result row; ``answer`` (from :func:`answer_fields`) is added when the answer task runs."""
    start = time.perf_counter()
    iou = float(box_iou(pred.box, sample.box))
    inter = union = None
    mask_problem = sample.mask_problem()
    if sample.has_mask and mask_problem is None:
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
    if mask_problem is not None:  # REC is scored; RES skips this row, counted in the summary
        row["mask_problem"] = mask_problem
    if pred.meta.get("unknown_words"):
        row["unknown_words"] = list(pred.meta["unknown_words"])
    if pred.meta.get("view"):
        row["view"] = pred.meta["view"]
    if answer is not None:
        row.update(answer)
    return row
