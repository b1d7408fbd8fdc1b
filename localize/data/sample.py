"""The sample type every data source yields (RefCOCO family, ReasonSeg, the shapes world), and its helpers."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from PIL import Image

ImageSource = str | os.PathLike | Image.Image | np.ndarray


@dataclass
class GroundingSample:
    """One referring expression with its target.

    ``box`` is (x0, y0, x1, y1) in continuous original-image pixels; ``segmentation`` is COCO polygons
    (list of flat xy lists) or an RLE dict, or ``mask_array`` an in-memory ``[H, W]`` bool mask.
    ``answer`` is the text a model should answer for this expression, when the source has one (the shapes world).
    """

    sample_id: str
    image: ImageSource
    expression: str
    box: tuple[float, float, float, float]
    image_size: tuple[int, int]
    segmentation: Any = None
    mask_array: np.ndarray | None = None
    ignore_segmentation: Any = None
    answer: str | None = None
    dataset: str = ""
    split: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def image_key(self) -> str:
        """Names the image, to group the samples that share it: its path, else an id in ``meta``, else the object."""
        if isinstance(self.image, (str, os.PathLike)):
            return os.path.abspath(os.fspath(self.image))
        for name in ("image_id", "file_name", "seed"):
            if self.meta.get(name) is not None:
                return f"{self.dataset}:{name}:{self.meta[name]}"
        return f"object:{id(self.image)}"

    def load_image(self) -> Image.Image:
        """The RGB image in stored-pixel orientation: COCO-style annotations ignore EXIF rotation tags."""
        from localize.images import load_image

        return load_image(self.image, exif_transpose=False)

    @property
    def has_mask(self) -> bool:
        """Whether a target mask is given (it may still be empty or unreadable: :meth:`mask_problem`)."""
        return self.mask_array is not None or self.segmentation is not None

    def mask_problem(self) -> str | None:
        """Why the given target mask cannot score RES (empty or unreadable), or None (fine, or no mask given)."""
        if not self.has_mask:
            return None
        if self.mask_array is None and not self.segmentation:
            return "empty segmentation"
        try:
            mask = self.mask()
        except Exception as err:  # pycocotools raises TypeError / ValueError / its own on malformed polygons
            return f"unreadable segmentation ({type(err).__name__}: {' '.join(str(err).split())[:120]})"
        return None if mask.any() else "empty mask (no pixel inside the segmentation)"

    def mask(self) -> np.ndarray | None:
        """The target mask ``[H, W]`` bool, decoded from polygons/RLE with pycocotools; None when absent."""
        if self.mask_array is not None:
            return np.asarray(self.mask_array, dtype=bool)
        if self.segmentation is None:
            return None
        return decode_segmentation(self.segmentation, self.image_size)

    def ignore_mask(self) -> np.ndarray | None:
        """Pixels excluded from mask metrics (ReasonSeg's "ignore" regions); None when absent."""
        if self.ignore_segmentation is None:
            return None
        return decode_segmentation(self.ignore_segmentation, self.image_size)


def decode_segmentation(segmentation: Any, image_size: tuple[int, int]) -> np.ndarray:
    """COCO polygons (list of flat xy lists) or RLE (dict) -> ``[H, W]`` bool mask."""
    from pycocotools import mask as mask_utils

    width, height = int(image_size[0]), int(image_size[1])
    if isinstance(segmentation, dict):
        rle = segmentation
        if isinstance(rle.get("counts"), list):
            rle = mask_utils.frPyObjects(rle, height, width)
    else:
        polygons = [list(map(float, poly)) for poly in segmentation if len(poly) >= 6]
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    return mask_utils.decode(rle).astype(bool)


class SampleSource(Protocol):
    """A data source: a named split of grounding samples, iterable and indexable."""

    name: str
    split: str

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> GroundingSample: ...

    def __iter__(self) -> Iterator[GroundingSample]: ...


def box_xywh_to_xyxy(box: Sequence[float]) -> tuple[float, float, float, float]:
    """COCO (x, y, w, h) -> (x0, y0, x1, y1)."""
    x, y, w, h = (float(v) for v in box)
    return (x, y, x + w, y + h)
