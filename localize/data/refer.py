"""RefCOCO / RefCOCO+ / RefCOCOg in the ``refer`` layout: ``refs(<split_by>).p`` + ``instances.json`` per dataset.

    DATA_ROOT/refcoco/refs(unc).p       DATA_ROOT/refcoco/instances.json
    DATA_ROOT/refcoco+/refs(unc).p      DATA_ROOT/refcocog/refs(umd).p   (also refs(google).p)
    DATA_ROOT/images/mscoco/images/train2014/COCO_train2014_*.jpg

The pickles are read with a restricted unpickler that admits no class or function at all.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from localize.errors import DataError

from .sample import GroundingSample, box_xywh_to_xyxy

DEFAULT_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}
KNOWN_SPLITS = {"unc": ("val", "testA", "testB", "train"), "umd": ("val", "test", "train"), "google": ("val", "train")}
# Where COCO train2014 images commonly live under a refer data root; the first is the refer convention.
IMAGE_SUBDIRS = ("images/mscoco/images/train2014", "images/mscoco/train2014", "images/train2014", "train2014")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that admits no global: plain containers, strings and numbers only."""

    def find_class(self, module: str, name: str) -> Any:
        """Refuse every class/function lookup (the only way a pickle can reach executable code)."""
        raise DataError(f"refused pickle: it asks for {module}.{name}; refs files hold only plain data")

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids (nothing in a refs file uses them)."""
        raise DataError("refused pickle: it uses persistent ids")


def restricted_load(data: bytes, *, source: str = "") -> Any:
    """Unpickle ``data`` admitting only plain data; Python-2 byte strings are decoded (UTF-8, else Latin-1)."""
    try:
        return _decode_bytes(RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load())
    except DataError as err:
        raise DataError(f"{source}: {err}" if source else str(err)) from None
    except Exception as err:  # truncated/corrupt streams raise a zoo of exception types
        where = f"{source}: " if source else ""
        raise DataError(f"{where}not a readable pickle ({type(err).__name__}: {err})") from err


def _decode_bytes(obj: Any) -> Any:
    if isinstance(obj, bytes):
        try:
            return obj.decode("utf-8")
        except UnicodeDecodeError:
            return obj.decode("latin-1")
    if isinstance(obj, dict):
        return {_decode_bytes(k): _decode_bytes(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_decode_bytes(v) for v in obj)
    return obj


def find_dataset_dir(data_root: str | os.PathLike, dataset: str, split_by: str) -> Path:
    """``data_root/dataset`` holding ``refs(split_by).p`` (``data_root`` itself may be that folder)."""
    root = Path(data_root).expanduser()
    refs_name = f"refs({split_by}).p"
    for candidate in (root / dataset, root):
        if (candidate / refs_name).is_file():
            return candidate
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist")
    raise DataError(f"{dataset}: {root / dataset / refs_name} not found (expected the refer layout under {root})")


def default_image_root(data_root: str | os.PathLike) -> Path:
    """Where COCO train2014 images live under a refer data root (the first existing candidate, else the convention)."""
    root = Path(data_root).expanduser()
    for sub in IMAGE_SUBDIRS:
        if (root / sub).is_dir():
            return root / sub
    return root / IMAGE_SUBDIRS[0]


@functools.lru_cache(maxsize=1)
def _read_refer_files(refs_path: str, instances_path: str, _stamp: tuple) -> tuple[list, dict, dict, dict]:
    # Cached on (paths, mtimes): checking several splits parses the (large) files once.
    try:
        refs = restricted_load(Path(refs_path).read_bytes(), source=refs_path)
    except OSError as err:
        raise DataError(f"cannot read {refs_path}: {err}") from err
    if not isinstance(refs, list):
        raise DataError(f"{refs_path}: expected a list of refs, got {type(refs).__name__}")
    try:
        with open(instances_path, encoding="utf-8") as handle:
            instances = json.load(handle)
    except FileNotFoundError as err:
        raise DataError(f"{instances_path} not found") from err
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {instances_path}: {err}") from err
    if not isinstance(instances, dict):
        raise DataError(f"{instances_path}: expected a COCO instances object")
    anns = {a["id"]: a for a in instances.get("annotations", []) if isinstance(a, dict) and "id" in a}
    images = {i["id"]: i for i in instances.get("images", []) if isinstance(i, dict) and "id" in i}
    cats = {c["id"]: c.get("name", "") for c in instances.get("categories", []) if isinstance(c, dict) and "id" in c}
    return refs, anns, images, cats


def read_refer(dataset_dir: str | os.PathLike, split_by: str) -> tuple[list, dict, dict, dict]:
    """Parse ``refs(split_by).p`` and ``instances.json`` -> (refs, annotations by id, images by id, category names)."""
    refs_path = Path(dataset_dir) / f"refs({split_by}).p"
    instances_path = Path(dataset_dir) / "instances.json"
    stamp = tuple((p.stat().st_mtime_ns, p.stat().st_size) if p.exists() else None for p in (refs_path, instances_path))
    return _read_refer_files(str(refs_path), str(instances_path), stamp)


def _valid_bbox(bbox: Any) -> bool:
    try:
        values = [float(v) for v in bbox]
    except (TypeError, ValueError):
        return False
    return len(values) == 4 and all(math.isfinite(v) for v in values) and values[2] > 0 and values[3] > 0


class RefDataset:
    """One split of RefCOCO / RefCOCO+ / RefCOCOg in the refer layout: one sample per sentence.

    Corrupt refs (missing annotation or image entry, bad bbox, no sentences) are skipped and described in
    ``problems``. Missing image files are not checked here: loading such a sample's image raises ImageError.
    """

    def __init__(
        self,
        data_root: str | os.PathLike,
        dataset: str = "refcoco",
        split: str = "val",
        *,
        split_by: str | None = None,
        image_root: str | os.PathLike | None = None,
    ) -> None:
        if dataset not in DEFAULT_SPLIT_BY:
            raise DataError(f"unknown refer dataset {dataset!r}; expected one of {sorted(DEFAULT_SPLIT_BY)}")
        self.name = dataset
        self.split = split
        self.split_by = split_by or DEFAULT_SPLIT_BY[dataset]
        self.dataset_dir = find_dataset_dir(data_root, dataset, self.split_by)
        self.image_root = Path(image_root).expanduser() if image_root is not None else default_image_root(data_root)
        self.problems: list[str] = []
        refs, anns, images, cats = read_refer(self.dataset_dir, self.split_by)
        present = {r.get("split") for r in refs if isinstance(r, dict)}
        self.available_splits = tuple(KNOWN_SPLITS.get(self.split_by, ())) + tuple(
            sorted(s for s in present if isinstance(s, str) and s not in KNOWN_SPLITS.get(self.split_by, ()))
        )
        if split not in self.available_splits:
            raise DataError(
                f"{dataset} ({self.split_by}) has no split {split!r}; available: {', '.join(self.available_splits)}"
            )
        self.samples: list[GroundingSample] = []
        for position, ref in enumerate(refs):
            if not isinstance(ref, dict):
                self.problems.append(f"ref #{position}: not a dict ({type(ref).__name__})")
            elif ref.get("split") == split:
                self._add_ref(ref, anns, images, cats)

    def _add_ref(self, ref: dict, anns: dict, images: dict, cats: dict) -> None:
        ref_id, ann_id = ref.get("ref_id"), ref.get("ann_id")
        where = f"ref {ref_id}"
        ann = anns.get(ann_id)
        if ann is None:
            self.problems.append(f"{where}: annotation {ann_id} not in instances.json")
            return
        if not _valid_bbox(ann.get("bbox")):
            self.problems.append(f"{where}: annotation {ann_id} has a bad bbox {ann.get('bbox')!r}")
            return
        image_id = ref.get("image_id", ann.get("image_id"))
        image = images.get(image_id)
        if image is None or not image.get("file_name") or not image.get("width") or not image.get("height"):
            self.problems.append(f"{where}: image {image_id} missing from instances.json or lacks file_name/size")
            return
        sentences = ref.get("sentences")
        if not isinstance(sentences, list) or not sentences:
            self.problems.append(f"{where}: no sentences")
            return
        box = box_xywh_to_xyxy(ann["bbox"])
        size = (int(image["width"]), int(image["height"]))
        path = str(self.image_root / image["file_name"])
        category_id = ref.get("category_id", ann.get("category_id"))
        for index, sent in enumerate(sentences):
            text = (sent.get("sent") or sent.get("raw")) if isinstance(sent, dict) else None
            if not isinstance(text, str) or not text.strip():
                self.problems.append(f"{where}: sentence #{index} has no text")
                continue
            sent_id = sent.get("sent_id", index)
            self.samples.append(
                GroundingSample(
                    sample_id=f"{self.name}/{self.split_by}/{self.split}/ref{ref_id}/sent{sent_id}",
                    image=path,
                    expression=text.strip(),
                    box=box,
                    image_size=size,
                    segmentation=ann.get("segmentation"),  # [] kept: an empty mask is reported, not dropped
                    dataset=self.name,
                    split=self.split,
                    meta={
                        "ref_id": ref_id,
                        "ann_id": ann_id,
                        "image_id": image_id,
                        "category_id": category_id,
                        "category": cats.get(category_id, ""),
                        "sent_id": sent_id,
                        "raw": sent.get("raw", text),
                        "split_by": self.split_by,
                        "file_name": image["file_name"],
                    },
                )
            )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> GroundingSample:
        return self.samples[index]

    def __iter__(self) -> Iterator[GroundingSample]:
        return iter(self.samples)

    def __repr__(self) -> str:
        return f"RefDataset({self.name}/{self.split_by}/{self.split}: {len(self)} expressions, {len(self.problems)} problems)"
