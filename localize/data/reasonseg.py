"""ReasonSeg (LISA, Lai et al. 2024): a folder per split of ``<name>.jpg`` + ``<name>.json`` (LabelMe style).

The JSON holds ``text`` (the queries), ``is_sentence`` and ``shapes`` ``[{label: "target" | "ignore", points}]``.
Masks follow LISA's evaluation: polygons are painted largest first, so a smaller shape drawn over a larger one wins;
pixels left "target" form the mask, pixels left "ignore" are excluded from metrics. "flag" shapes are skipped.
Split names may carry LISA's query-type suffix: ``test_short`` / ``test_long`` keep phrases / sentences only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from localize.errors import DataError, ImageError

from .sample import GroundingSample, box_xywh_to_xyxy

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
SPLIT_DIRS = ("{split}", "ReasonSeg/{split}", "reason_seg/ReasonSeg/{split}", "reasonseg/{split}")
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def find_split_dir(data_root: str | os.PathLike, split: str) -> Path:
    """The folder of ``split`` under a ReasonSeg root (the root itself, ``ReasonSeg/`` or LISA's ``reason_seg/ReasonSeg/``)."""
    root = Path(data_root).expanduser()
    for pattern in SPLIT_DIRS:
        candidate = root / pattern.format(split=split)
        if candidate.is_dir():
            return candidate
    raise DataError(f"ReasonSeg split folder {split!r} not found under {root} (tried {', '.join(SPLIT_DIRS)})")


def read_annotation(path: str | os.PathLike) -> dict:
    """A ReasonSeg JSON file (UTF-8, falling back to cp1252 as LISA does)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err}") from err
    for encoding in ("utf-8", "cp1252"):
        try:
            data = json.loads(raw.decode(encoding))
            break
        except (UnicodeDecodeError, ValueError):
            continue
    else:
        raise DataError(f"{path}: not valid JSON")
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return data


def _polygon(shape: dict) -> list[float] | None:
    """A shape's outline as a flat COCO polygon (LabelMe rectangles expanded to four corners); None when unusable."""
    try:
        points = [(float(x), float(y)) for x, y in shape.get("points") or []]
    except (TypeError, ValueError):
        return None
    if shape.get("shape_type") == "rectangle" and len(points) == 2:
        (x0, y0), (x1, y1) = points
        points = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    return [v for point in points for v in point] if len(points) >= 3 else None


def _is_target(shape: dict) -> bool:
    label = str(shape.get("label", "")).lower()
    return label != "flag" and "ignore" not in label


def paint_masks(shapes: list[tuple[str, list[float]]], image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(target, ignore) bool masks from (label, polygon) shapes, painted largest first as LISA's evaluation does."""
    from pycocotools import mask as mask_utils

    width, height = image_size
    label_map = np.zeros((height, width), dtype=np.uint8)  # 0 background, 1 target, 2 ignore
    rasters = []
    for label, polygon in shapes:
        raster = mask_utils.decode(mask_utils.frPyObjects([polygon], height, width))[:, :, 0].astype(bool)
        rasters.append((int(raster.sum()), 2 if "ignore" in label.lower() else 1, raster))
    for _, value, raster in sorted(rasters, key=lambda item: -item[0]):
        label_map[raster] = value
    return label_map == 1, label_map == 2


def _encode(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


class ReasonSegDataset:
    """One ReasonSeg split: one sample per query text, masks decoded when a sample is accessed.

    Files with no usable target shape or no query are skipped and described in ``problems``; a missing image is
    reported only when a sample needs it (its size unknown from the JSON) or its pixels are loaded.
    """

    def __init__(self, data_root: str | os.PathLike, split: str = "val") -> None:
        self.name = "reasonseg"
        self.split = split
        base, _, kind = split.partition("_")
        if kind not in ("", "short", "long"):
            base, kind = split, ""
        self.split_dir = find_split_dir(data_root, base)
        self.problems: list[str] = []
        self._records: list[tuple[Path, int, str, bool]] = []  # json path, query index, text, is_sentence
        self._mask_cache: dict[Path, tuple] = {}  # queries of one image share its masks
        for json_path in sorted(self.split_dir.glob("*.json")):
            try:
                data = read_annotation(json_path)
            except DataError as err:
                self.problems.append(str(err))
                continue
            shapes = data.get("shapes") if isinstance(data.get("shapes"), list) else []
            if not any(isinstance(s, dict) and _is_target(s) and _polygon(s) for s in shapes):
                self.problems.append(f"{json_path.name}: no target polygon")
                continue
            texts = data.get("text")
            texts = [texts] if isinstance(texts, str) else texts if isinstance(texts, list) else []
            is_sentence = bool(data.get("is_sentence", False))
            if kind and is_sentence != (kind == "long"):
                continue
            queries = [(i, t.strip()) for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
            if not queries:
                self.problems.append(f"{json_path.name}: no query text")
            self._records.extend((json_path, i, text, is_sentence) for i, text in queries)

    @staticmethod
    def _image_path(json_path: Path) -> Path:
        candidates = [json_path.with_suffix(s) for s in IMAGE_SUFFIXES]
        return next((c for c in candidates if c.exists()), candidates[0])

    def _compute_masks(self, json_path: Path) -> tuple[str, tuple[int, int], dict, dict | None, tuple]:
        data = read_annotation(json_path)
        image_path = self._image_path(json_path)
        width, height = data.get("imageWidth"), data.get("imageHeight")
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            try:
                with Image.open(image_path) as opened:
                    width, height = opened.size
                    if opened.getexif().get(0x0112) in _ROTATED:  # LabelMe annotates the EXIF-rotated image
                        width, height = height, width
            except FileNotFoundError as err:
                raise ImageError(f"image not found: {image_path}") from err
            except (UnidentifiedImageError, OSError) as err:
                raise ImageError(f"cannot read image {image_path}: {err}") from err
        shapes = [
            (str(s.get("label", "")), _polygon(s))
            for s in data.get("shapes", [])
            if isinstance(s, dict) and str(s.get("label", "")).lower() != "flag" and _polygon(s)
        ]
        target, ignore = paint_masks(shapes, (width, height))
        from pycocotools import mask as mask_utils

        rle = _encode(target)
        box = box_xywh_to_xyxy(mask_utils.toBbox(rle)) if target.any() else (0.0, 0.0, 0.0, 0.0)
        return str(image_path), (width, height), rle, _encode(ignore) if ignore.any() else None, box

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> GroundingSample:
        json_path, query_index, text, is_sentence = self._records[index]
        if json_path not in self._mask_cache:
            if len(self._mask_cache) >= 8:
                self._mask_cache.pop(next(iter(self._mask_cache)))
            self._mask_cache[json_path] = self._compute_masks(json_path)
        image_path, size, rle, ignore, box = self._mask_cache[json_path]
        return GroundingSample(
            sample_id=f"reasonseg/{self.split}/{json_path.stem}/q{query_index}",
            image=image_path,
            expression=text,
            box=box,
            image_size=size,
            segmentation=rle,
            ignore_segmentation=ignore,
            dataset=self.name,
            split=self.split,
            meta={"image_id": json_path.stem, "query_index": query_index, "is_sentence": is_sentence},
        )

    def __iter__(self) -> Iterator[GroundingSample]:
        for index in range(len(self)):
            yield self[index]

    def __repr__(self) -> str:
        return f"ReasonSegDataset({self.split}: {len(self)} queries, {len(self.problems)} problems)"
