"""REC / RES metrics against hand-computed values and pycocotools."""

from __future__ import annotations

import numpy as np
import pytest
from localize.benchmarks.metrics import (
    RecAccumulator,
    ResAccumulator,
    box_iou,
    box_iou_matrix,
    mask_intersection_union,
    mask_iou,
)
from pycocotools import mask as mask_utils


def test_box_iou_hand_values() -> None:
    assert box_iou((0, 0, 10, 10), (5, 5, 15, 15)) == pytest.approx(25 / 175)
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching: no shared area (no +1 convention)
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert box_iou((0, 0, 4, 2), (1, 0, 3, 4)) == pytest.approx(4 / 12)
    assert box_iou((5, 5, 5, 5), (5, 5, 5, 5)) == 0.0  # zero-area boxes
    assert box_iou((10, 10, 0, 0), (0, 0, 10, 10)) == 0.0  # inverted box has zero area
    assert isinstance(box_iou((0, 0, 1, 1), (0, 0, 1, 1)), float)


def test_box_iou_vectorised() -> None:
    a = np.array([[0, 0, 10, 10], [0, 0, 4, 2]])
    b = np.array([[5, 5, 15, 15], [1, 0, 3, 4]])
    np.testing.assert_allclose(box_iou(a, b), [25 / 175, 4 / 12])
    np.testing.assert_allclose(box_iou(a, b[0]), [25 / 175, 0.0])  # broadcast one box against many
    matrix = box_iou_matrix(a, b)
    assert matrix.shape == (2, 2)
    np.testing.assert_allclose(np.diag(matrix), [25 / 175, 4 / 12])
    with pytest.raises(ValueError):
        box_iou(np.zeros(3), np.zeros(4))


def test_box_iou_matches_pycocotools() -> None:
    rng = np.random.default_rng(0)

    def boxes(n: int) -> np.ndarray:
        xy = rng.uniform(0, 200, size=(n, 2))
        return np.concatenate([xy, xy + rng.uniform(1, 120, size=(n, 2))], axis=1)

    dt, gt = boxes(40), boxes(30)
    xywh = lambda b: np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)  # noqa: E731
    expected = mask_utils.iou(xywh(dt), xywh(gt), [0] * len(gt))
    assert (expected > 0).sum() > 50  # the sample has real overlaps
    np.testing.assert_allclose(box_iou_matrix(dt, gt), expected, rtol=1e-9, atol=1e-12)


def test_paired_box_iou_matches_pycocotools_on_near_boxes() -> None:
    rng = np.random.default_rng(2)
    xy = rng.uniform(0, 100, (200, 2))
    a = np.concatenate([xy, xy + rng.uniform(1, 60, (200, 2))], 1)
    b = a + rng.normal(0, 15, a.shape)  # jittered copies: IoUs spread over (0, 1)
    b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 0.5)
    xywh = lambda boxes: np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)  # noqa: E731
    theirs = np.diag(mask_utils.iou(xywh(a), xywh(b), [0] * len(b)))
    np.testing.assert_allclose(box_iou(a, b), theirs, atol=1e-9)


def test_mask_iou_matches_pycocotools() -> None:
    rng = np.random.default_rng(1)
    height, width, n = 37, 53, 6
    pred = rng.random((n, height, width)) < 0.4
    target = rng.random((n, height, width)) < 0.3
    pred[0] = False  # an empty prediction
    encode = lambda m: mask_utils.encode(np.asfortranarray(m.transpose(1, 2, 0).astype(np.uint8)))  # noqa: E731
    expected = np.diag(mask_utils.iou(encode(pred), encode(target), [0] * n))
    ours = [mask_iou(p, t) for p, t in zip(pred, target)]
    np.testing.assert_allclose(ours, expected, rtol=1e-12)
    assert ours[0] == 0.0


def test_mask_intersection_union_with_ignore() -> None:
    pred = np.zeros((4, 4), bool)
    target = np.zeros((4, 4), bool)
    pred[0, :] = True  # 4 px
    target[0, :2] = True
    target[1, :2] = True  # 4 px, 2 shared
    assert mask_intersection_union(pred, target) == (2, 6)
    ignore = np.zeros((4, 4), bool)
    ignore[0, 3] = ignore[1, 0] = True  # one predicted-only and one target-only pixel removed from both
    assert mask_intersection_union(pred, target, ignore) == (2, 4)
    with pytest.raises(ValueError):
        mask_intersection_union(pred, target[:3])
    assert mask_iou(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0  # empty vs empty


def test_rec_accumulator() -> None:
    rec = RecAccumulator()
    assert rec.summary() == {"n": 0, "acc@0.5": 0.0, "miou": 0.0}
    rec.add((0, 0, 10, 10), (0, 0, 10, 10))  # 1.0
    rec.add((0, 0, 10, 10), (0, 0, 10, 5))  # exactly 0.5: counts as a hit
    rec.add((0, 0, 10, 10), (5, 5, 15, 15))  # 1/7
    rec.add((0, 0, 10, 10), (50, 50, 60, 60))  # 0
    summary = rec.summary()
    assert summary["n"] == 4
    assert summary["acc@0.5"] == 0.5
    assert summary["miou"] == pytest.approx((1 + 0.5 + 1 / 7) / 4)
    assert rec.accuracy(0.9) == 0.25


def test_res_accumulator_ciou_and_miou() -> None:
    res = ResAccumulator()
    assert res.summary() == {"n": 0, "ciou": 0.0, "miou": 0.0}
    big_t = np.zeros((10, 10), bool)
    big_t[:, :8] = True  # 80 px
    big_p = np.zeros((10, 10), bool)
    big_p[:, :4] = True  # I 40, U 80
    small_t = np.zeros((10, 10), bool)
    small_t[0, 0] = True  # 1 px
    assert res.add(big_p, big_t) == 0.5
    assert res.add(small_t, small_t) == 1.0  # I 1, U 1
    assert res.add(np.zeros((10, 10), bool), small_t) == 0.0  # empty prediction: I 0, U 1
    assert res.ciou() == pytest.approx(41 / 82)
    assert res.miou() == pytest.approx(1.5 / 3)
    assert res.ious == [0.5, 1.0, 0.0]
    assert res.summary()["n"] == 3
