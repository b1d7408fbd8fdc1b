"""RefCOCO-family data from parquet: local files, a local directory of them, or a Hugging Face dataset id.

Column layouts understood (one sample per expression):

* lmms-lab/RefCOCO style: ``question_id, image {bytes, path}, question, answer [str], bbox [x, y, w, h],
  segmentation [flat polygon], file_name`` -- the expressions are ``answer`` (``question`` is a fixed prompt).
* jxu124/refcoco style: ``sentences [{raw, sent, sent_id}], sent_ids, bbox [x0, y0, x1, y1], raw_anns (JSON COCO
  annotation), raw_image_info (JSON COCO image), image_path, ref_id, ann_id, image_id, split`` -- no pixels; images
  are found under ``image_root``.

Pixels come from an embedded image column when there is one, else from a path column under ``image_root``.
Only the small columns are read up front; image bytes are read a row group at a time when samples are accessed.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from localize.errors import DataError, ImageError

from .sample import GroundingSample, box_xywh_to_xyxy

TEXT_COLUMNS = (
    "sentences",
    "expressions",
    "expression",
    "sentence",
    "answer",
    "ref_text",
    "phrase",
    "text",
    "question",
)
IMAGE_COLUMNS = ("image", "img")
PATH_COLUMNS = ("image_path", "file_name", "path")
META_COLUMNS = ("question_id", "ref_id", "ann_id", "image_id", "category_id", "file_name", "image_path", "iscrowd")
SPLIT_ALIASES = {"val": ("val", "validation"), "validation": ("val", "validation"), "test": ("test",)}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_offline() -> bool:
    """Whether the Hugging Face Hub must not be contacted (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE / TRANSFORMERS_OFFLINE)."""
    flags = (os.environ.get(k, "") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))
    if any(f.strip().upper() in ("1", "ON", "YES", "TRUE") for f in flags):
        return True
    from huggingface_hub import is_offline_mode

    return bool(is_offline_mode())


def _split_names(split: str) -> tuple[str, ...]:
    return SPLIT_ALIASES.get(split, (split,))


def resolve_source(source: str | os.PathLike, split: str | None = None, *, offline: bool | None = None) -> Path:
    """A local parquet file/directory as is; otherwise a Hugging Face dataset id fetched with ``huggingface_hub``."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    text = os.fspath(source)
    if not _HUB_ID.match(text):
        raise DataError(f"parquet source {text!r} is neither an existing file/directory nor a Hugging Face dataset id")
    from huggingface_hub import snapshot_download

    patterns = None
    if split:  # only this split's files: data/val-00000-of-00003.parquet or data/val/*.parquet
        patterns = [p for s in _split_names(split) for p in (f"*{s}-*.parquet", f"*{s}/*.parquet", f"*{s}.parquet")]
    offline = hub_offline() if offline is None else offline
    try:
        local = snapshot_download(text, repo_type="dataset", allow_patterns=patterns, local_files_only=offline)
    except Exception as err:
        if offline:
            raise DataError(
                f"{text!r} is not a local path and is not in the Hugging Face cache; the Hub is offline "
                f"(HF_HUB_OFFLINE). Download it first, or pass a local parquet file or directory"
            ) from err
        raise DataError(
            f"{text!r} is not a local path, and fetching it as a Hugging Face dataset failed: {type(err).__name__}: {err}"
        ) from err
    return Path(local)


def _is_split_file(path: Path, names: tuple[str, ...]) -> bool:
    stem = path.name[: -len(".parquet")]
    return any(stem == s or stem.startswith((f"{s}-", f"{s}_", f"{s}.")) or path.parent.name == s for s in names)


def select_files(root: Path, split: str | None) -> tuple[list[Path], bool]:
    """Parquet files of ``split`` under ``root`` -> (files, whether rows still need filtering by a split column)."""
    if root.is_file():
        return [root], split is not None
    files = sorted(root.rglob("*.parquet"))
    if not files:
        raise DataError(f"no .parquet files under {root}")
    if split is None:
        return files, False
    chosen = [f for f in files if _is_split_file(f, _split_names(split))]
    if chosen:
        return chosen, False
    if all("split" in pq.read_schema(f).names for f in files):
        return files, True
    names = ", ".join(f.name for f in files[:8])
    raise DataError(f"no parquet file for split {split!r} under {root} (found: {names})")


def _json(value: Any) -> Any:
    if isinstance(value, (str, bytes)) and value[:1] in ("{", "[", b"{", b"["):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def _segmentation(value: Any) -> Any:
    value = _json(value)
    if isinstance(value, dict):
        return value if value.get("counts") is not None and value.get("size") is not None else None
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(v, (int, float)) for v in value):
        return [value]  # one flat polygon (lmms-lab)
    polygons = [list(p) for p in value if isinstance(p, (list, tuple)) and len(p) >= 6]
    return polygons or None


def _expressions(row: dict, text_column: str | None) -> list[tuple[str, Any]]:
    """(text, sent_id or None) for every expression of a row."""
    column = text_column or next((c for c in TEXT_COLUMNS if c in row), None)  # the first such column present
    value = row.get(column) if column else None
    items = value if isinstance(value, list) else [value]
    sent_ids = row.get("sent_ids") if isinstance(row.get("sent_ids"), list) else []
    out = []
    for index, item in enumerate(items):
        sent_id = sent_ids[index] if index < len(sent_ids) else None
        if isinstance(item, dict):
            sent_id = item.get("sent_id", sent_id)
            item = item.get("sent") or item.get("raw")
        if isinstance(item, str) and item.strip():
            out.append((item.strip(), sent_id))
    return out


def _box(row: dict, raw_ann: dict | None, bbox_format: str) -> tuple[float, float, float, float] | None:
    if raw_ann and raw_ann.get("bbox") is not None:  # the COCO annotation itself: always xywh
        bbox, bbox_format = raw_ann["bbox"], "xywh"
    else:
        bbox = _json(row.get("bbox"))
    try:
        values = [float(v) for v in bbox]
    except (TypeError, ValueError):
        return None
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        return None
    box = box_xywh_to_xyxy(values) if bbox_format == "xywh" else tuple(values)
    return box if box[2] > box[0] and box[3] > box[1] else None


class ParquetDataset:
    """Grounding samples from RefCOCO-family parquet files (see the module doc for the layouts understood).

    ``bbox_format`` ("xywh" or "xyxy") overrides the guess for the ``bbox`` column (xyxy for the jxu124 layout,
    xywh otherwise). Rows without expressions or with a bad box are skipped and described in ``problems``.
    """

    def __init__(
        self,
        source: str | os.PathLike,
        split: str | None = None,
        *,
        name: str | None = None,
        image_root: str | os.PathLike | None = None,
        text_column: str | None = None,
        bbox_format: str | None = None,
        offline: bool | None = None,
    ) -> None:
        if bbox_format not in (None, "xywh", "xyxy"):
            raise DataError(f"bbox_format must be 'xywh' or 'xyxy', got {bbox_format!r}")
        self.name = name or f"parquet:{os.fspath(source)}"
        self.split = split or ""
        self.root = resolve_source(source, split, offline=offline)
        self.image_root = Path(image_root).expanduser() if image_root is not None else None
        self.problems: list[str] = []
        self.files, filter_rows = select_files(self.root, split)
        self._records: list[tuple[int, int, int, dict, str, Any]] = []  # file, row group, row, row data, text, sent id
        self._image_columns: list[str | None] = []
        self._cache: tuple[tuple[int, int], list] | None = None
        for file_index, path in enumerate(self.files):
            self._read_file(file_index, path, split if filter_rows else None, text_column, bbox_format)

    def _read_file(
        self, file_index: int, path: Path, split: str | None, text_column: str | None, fmt: str | None
    ) -> None:
        try:
            handle = pq.ParquetFile(path)
        except Exception as err:
            raise DataError(f"cannot read parquet file {path}: {err}") from err
        names = handle.schema_arrow.names
        image_column = next((c for c in IMAGE_COLUMNS if c in names), None)
        self._image_columns.append(image_column)
        fmt = fmt or ("xyxy" if "raw_anns" in names or "raw_image_info" in names else "xywh")
        columns = [c for c in names if c != image_column]
        for group in range(handle.num_row_groups):
            try:
                rows = handle.read_row_group(group, columns=columns).to_pylist()
            except (pa.ArrowException, OSError, ValueError) as err:
                self.problems.append(f"{path.name} row group {group}: unreadable ({err})")
                continue
            for offset, row in enumerate(rows):
                if split is not None and "split" in names and row.get("split") not in _split_names(split):
                    continue
                where = f"{path.name} row group {group} row {offset}"
                raw_ann = _json(row.get("raw_anns"))
                raw_ann = raw_ann if isinstance(raw_ann, dict) else None
                box = _box(row, raw_ann, fmt)
                if box is None:
                    self.problems.append(f"{where}: bad or missing bbox {row.get('bbox')!r}")
                    continue
                texts = _expressions(row, text_column)
                if not texts:
                    self.problems.append(f"{where}: no expression")
                    continue
                raw_image = _json(row.get("raw_image_info"))
                data = {
                    "box": box,
                    "segmentation": _segmentation(raw_ann.get("segmentation") if raw_ann else row.get("segmentation")),
                    "raw_image": raw_image if isinstance(raw_image, dict) else {},
                    "meta": {k: row[k] for k in META_COLUMNS if row.get(k) is not None},
                    "row": row,
                }
                key = next((row[k] for k in ("question_id", "ref_id", "ann_id") if row.get(k) is not None), None)
                data["key"] = str(key) if key is not None else f"{path.stem}/rg{group}/row{offset}"
                for index, (text, sent_id) in enumerate(texts):
                    self._records.append(
                        (file_index, group, offset, data, text, sent_id if sent_id is not None else index)
                    )

    def _image_value(self, file_index: int, group: int, offset: int) -> Any:
        column = self._image_columns[file_index]
        if column is None:
            return None
        if self._cache is None or self._cache[0] != (file_index, group):  # one row group of images at a time
            try:
                table = pq.ParquetFile(self.files[file_index]).read_row_group(group, columns=[column])
            except (pa.ArrowException, OSError, ValueError) as err:
                raise ImageError(f"{self.files[file_index]} row group {group}: images unreadable ({err})") from err
            self._cache = ((file_index, group), table.column(column).to_pylist())
        return self._cache[1][offset]

    def _resolve_path(self, relative: str, file_index: int) -> Path:
        rel = Path(relative)
        if rel.is_absolute():
            return rel
        if self.image_root is None:
            return self.files[file_index].parent / rel
        candidates = [self.image_root / rel, self.image_root / rel.name]
        return next((c for c in candidates if c.exists()), candidates[0])

    def _image(self, file_index: int, group: int, offset: int, data: dict) -> Image.Image | str:
        value = self._image_value(file_index, group, offset)
        embedded = value.get("bytes") if isinstance(value, dict) else value
        if isinstance(embedded, (bytes, bytearray)) and embedded:
            try:
                return Image.open(io.BytesIO(embedded))  # lazy: the header only, pixels on load
            except (UnidentifiedImageError, OSError) as err:
                raise ImageError(f"{self.name} {data['key']}: embedded image cannot be read ({err})") from err
        row = data["row"]
        relative = next(
            (
                v
                for v in (
                    value.get("path") if isinstance(value, dict) else value,
                    row.get("image_path"),
                    data["raw_image"].get("file_name"),
                    row.get("file_name"),
                    row.get("path"),
                )
                if isinstance(v, str) and v
            ),
            None,
        )
        if relative is None:
            raise ImageError(f"{self.name} {data['key']}: row has neither image bytes nor an image path")
        return str(self._resolve_path(relative, file_index))

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> GroundingSample:
        file_index, group, offset, data, text, sent_id = self._records[index]
        image = self._image(file_index, group, offset, data)
        row, info = data["row"], data["raw_image"]
        width = info.get("width") or row.get("width") or row.get("image_width")
        height = info.get("height") or row.get("height") or row.get("image_height")
        if isinstance(image, Image.Image):
            size = image.size
        elif width and height:
            size = (int(width), int(height))
        else:
            try:
                with Image.open(image) as opened:
                    size = opened.size
            except FileNotFoundError as err:
                raise ImageError(f"image not found: {image}") from err
            except (UnidentifiedImageError, OSError) as err:
                raise ImageError(f"cannot read image {image}: {err}") from err
        file_name = self.files[file_index].name
        return GroundingSample(
            sample_id=f"{self.name}/{self.split or 'all'}/{data['key']}/sent{sent_id}",
            image=image,
            expression=text,
            box=data["box"],
            image_size=(int(size[0]), int(size[1])),
            segmentation=data["segmentation"],
            dataset=self.name,
            split=self.split or str(row.get("split") or ""),
            meta={**data["meta"], "sent_id": sent_id, "source_file": file_name, "row_group": group, "row": offset},
        )

    def __iter__(self) -> Iterator[GroundingSample]:
        for index in range(len(self)):
            yield self[index]

    def __repr__(self) -> str:
        return (
            f"ParquetDataset({self.name}/{self.split or 'all'}: {len(self)} expressions, {len(self.problems)} problems)"
        )
