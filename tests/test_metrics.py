"""REC/RES metrics against hand-computed values and pycocotools."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from benchmarks.metrics import RecAccumulator, ResAccumulator, box_iou, mask_intersection_union


def test_box_iou_by_hand():
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_box_iou_matches_pycocotools():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (200, 2))
    wh = rng.uniform(1, 60, (200, 2))
    a = np.concatenate([xy, xy + wh], 1)
    b = a + rng.normal(0, 15, a.shape)
    b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 0.5)
    ours = box_iou(a, b)
    xywh = lambda boxes: np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)  # noqa: E731
    theirs = np.array([mask_utils.iou(xywh(a[i : i + 1]), xywh(b[i : i + 1]), [0])[0, 0] for i in range(len(a))])
    np.testing.assert_allclose(ours, theirs, atol=1e-9)


def test_mask_iou_matches_pycocotools():
    rng = np.random.default_rng(1)
    for _ in range(20):
        pred = rng.random((37, 53)) > 0.6
        target = rng.random((37, 53)) > 0.5
        inter, union = mask_intersection_union(pred, target)
        rles = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in (pred, target)]
        assert inter / union == pytest.approx(mask_utils.iou([rles[0]], [rles[1]], [0])[0, 0])


def test_ciou_miou_and_empty_prediction_by_hand():
    res = ResAccumulator()
    target = np.zeros((10, 10), bool)
    target[:5] = True  # 50 px
    pred = np.zeros((10, 10), bool)
    pred[:5, :5] = True  # 25 px inside
    assert res.add(pred, target) == pytest.approx(0.5)
    assert res.add(np.zeros((10, 10), bool), target) == 0.0  # empty prediction: IoU 0, target counts in U
    assert res.ciou() == pytest.approx(25 / 100)
    assert res.miou() == pytest.approx(0.25)


def test_ignore_pixels_are_excluded():
    pred = np.ones((4, 4), bool)
    target = np.zeros((4, 4), bool)
    target[:2] = True
    ignore = np.zeros((4, 4), bool)
    ignore[2:] = True
    assert mask_intersection_union(pred, target, ignore) == (8, 8)


def test_rec_accuracy_threshold():
    rec = RecAccumulator()
    rec.add((0, 0, 10, 10), (0, 0, 10, 10))
    rec.add((0, 0, 10, 10), (5, 0, 15, 10))  # IoU 1/3
    rec.add((0, 0, 10, 10), (0, 0, 10, 20))  # IoU exactly 0.5 counts
    assert rec.accuracy(0.5) == pytest.approx(2 / 3)
