"""The gallery of a bench run: overlays of the lowest-IoU rows (prediction vs target) in ``OUT/gallery/``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from localize.errors import LocalizeError
from localize.postprocess import rle_to_mask

from .config import TASKS
from .predict import UnreadableRow, fetch, predict
from .results import read_rows, slug, write_json


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
            sample = fetch(source, found[str(row["id"])])
            image = sample.load_image()
            heatmap = predict(loc, image, [sample], oracle)[0].heatmap
        except (UnreadableRow, LocalizeError, ValueError):
            continue
        mask_iou = "" if row.get("mask_iou") is None else f", mask IoU {row['mask_iou']:.2f}"
        title = f"#{rank} {row['dataset']}/{row['split']}: box IoU {row['box_iou']:.2f}{mask_iou}"
        name = f"{rank:03d}_{slug(row['dataset'])}_{slug(row['split'])}_iou{_primary_iou(row, tasks):.2f}.png"
        render_overlay(
            image,
            heatmap,
            row["pred_box"],
            rle_to_mask(row["pred_mask_rle"]),
            sample.expression,
            out / name,
            title=title,
            target_box=row["target_box"],
            target_mask=sample.mask() if sample.has_mask else None,
        )
        written.append(out / name)
        index.append({"file": name, "id": row["id"], "box_iou": row["box_iou"], "mask_iou": row.get("mask_iou")})
    write_json(out / "index.json", index)
    return written
