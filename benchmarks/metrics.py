"""REC and RES metrics: box IoU / Acc@0.5, and mask cIoU / mIoU.

Box convention: (x0, y0, x1, y1) in continuous pixels (pixel ``x`` spans ``[x, x + 1)``); area is
``(x1 - x0) * (y1 - y0)`` with no ``+ 1`` (COCO's convention, as ``pycocotools.mask.iou`` on xywh boxes).
Inverted boxes have zero area; the IoU of two zero-area boxes is 0.

Mask conventions: ``ignore`` pixels are removed from both prediction and target before counting. cIoU = ΣI / ΣU
over the split; mIoU = mean of per-expression I / U, where an empty prediction scores 0 and its target still adds
to U; an expression whose union is empty (empty prediction and empty target) scores 1 (as LISA's evaluation does;
target masks are never empty in the RefCOCO family).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ArrayLike = np.ndarray | list | tuple


def _areas(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[..., 2] - boxes[..., 0], 0, None) * np.clip(boxes[..., 3] - boxes[..., 1], 0, None)


def box_iou(a: ArrayLike, b: ArrayLike) -> float | np.ndarray:
    """IoU of xyxy boxes ``a [..., 4]`` and ``b [..., 4]`` (broadcast, element-wise); a float for two single boxes."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape[-1:] != (4,) or b.shape[-1:] != (4,):
        raise ValueError(f"boxes must have a last dimension of 4, got {a.shape} and {b.shape}")
    width = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    height = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = width * height
    union = _areas(a) + _areas(b) - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return float(iou) if iou.ndim == 0 else iou


def box_iou_matrix(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """Pairwise IoU ``[N, M]`` of xyxy boxes ``a [N, 4]`` and ``b [M, 4]``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    return np.asarray(box_iou(a[:, None, :], b[None, :, :]))


def mask_intersection_union(pred: np.ndarray, target: np.ndarray, ignore: np.ndarray | None = None) -> tuple[int, int]:
    """Pixel counts (I, U) of two ``[H, W]`` masks, ``ignore`` pixels excluded from both."""
    pred = np.asarray(pred, dtype=bool)
    target = np.asarray(target, dtype=bool)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    if ignore is not None:
        keep = ~np.asarray(ignore, dtype=bool)
        if keep.shape != target.shape:
            raise ValueError(f"ignore mask {keep.shape} and target {target.shape} differ in shape")
        pred, target = pred & keep, target & keep
    return int(np.count_nonzero(pred & target)), int(np.count_nonzero(pred | target))


def mask_iou(pred: np.ndarray, target: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """IoU of two ``[H, W]`` masks (``ignore`` excluded); 1.0 when both are empty."""
    inter, union = mask_intersection_union(pred, target, ignore)
    return inter / union if union > 0 else 1.0


@dataclass
class RecAccumulator:
    """Referring expression comprehension: per-expression box IoUs -> Acc@threshold and mean IoU."""

    ious: list[float] = field(default_factory=list)

    def add(self, pred_box: ArrayLike, target_box: ArrayLike) -> float:
        """Record one expression; returns its box IoU."""
        iou = float(box_iou(pred_box, target_box))
        self.ious.append(iou)
        return iou

    def accuracy(self, threshold: float = 0.5) -> float:
        """Fraction of expressions with IoU >= ``threshold`` (0 for an empty split)."""
        return float(np.mean(np.asarray(self.ious) >= threshold)) if self.ious else 0.0

    def summary(self) -> dict:
        """``{"n", "acc@0.5", "miou"}``."""
        return {
            "n": len(self.ious),
            "acc@0.5": self.accuracy(0.5),
            "miou": float(np.mean(self.ious)) if self.ious else 0.0,
        }


@dataclass
class ResAccumulator:
    """Referring expression segmentation: per-expression (I, U) -> cIoU = ΣI/ΣU and mIoU = mean(I/U)."""

    intersections: list[int] = field(default_factory=list)
    unions: list[int] = field(default_factory=list)

    def add(self, pred_mask: np.ndarray, target_mask: np.ndarray, ignore: np.ndarray | None = None) -> float:
        """Record one expression; returns its IoU (1.0 for empty vs empty)."""
        inter, union = mask_intersection_union(pred_mask, target_mask, ignore)
        self.intersections.append(inter)
        self.unions.append(union)
        return inter / union if union > 0 else 1.0

    @property
    def ious(self) -> list[float]:
        """Per-expression IoUs, in the order added."""
        return [i / u if u > 0 else 1.0 for i, u in zip(self.intersections, self.unions)]

    def ciou(self) -> float:
        """Cumulative IoU ΣI / ΣU over the split (0 when ΣU is 0)."""
        total = sum(self.unions)
        return sum(self.intersections) / total if total > 0 else 0.0

    def miou(self) -> float:
        """Mean per-expression IoU (0 for an empty split)."""
        return float(np.mean(self.ious)) if self.unions else 0.0

    def summary(self) -> dict:
        """``{"n", "ciou", "miou"}``."""
        return {"n": len(self.unions), "ciou": self.ciou(), "miou": self.miou()}
