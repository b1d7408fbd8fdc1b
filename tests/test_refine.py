"""SAM refinement with a tiny random SAM: prompts reach SAM in the right coordinates; masks at image size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("segment_anything")

from localize.errors import InputError  # noqa: E402
from refine.sam import SamCheckpointError, SamRefiner, load_sam, sample_points  # noqa: E402
from refine.testing import tiny_sam  # noqa: E402

HEIGHT, WIDTH = 60, 150  # non-square


@pytest.fixture
def refiner():
    sam = SamRefiner(tiny_sam(), device="cpu")
    rng = np.random.default_rng(0)
    sam.set_image((rng.random((HEIGHT, WIDTH, 3)) * 255).astype(np.uint8))
    return sam


def _heatmap() -> np.ndarray:
    heat = np.zeros((HEIGHT, WIDTH), np.float32)
    heat[20:40, 100:130] = 0.6
    heat[30, 120] = 1.0
    return heat


def _record(refiner):
    seen = {}
    original = refiner.predictor.predict_torch

    def spy(point_coords, point_labels, boxes, *args, **kwargs):
        seen["points"] = None if point_coords is None else point_coords.clone()
        seen["labels"] = None if point_labels is None else point_labels.clone()
        seen["box"] = None if boxes is None else boxes.clone()
        return original(point_coords, point_labels, boxes, *args, **kwargs)

    refiner.predictor.predict_torch = spy
    return seen


@pytest.mark.parametrize("prompt", ["box", "point", "points", "box+points"])
def test_prompts_arrive_in_sam_input_coordinates(refiner, prompt):
    seen = _record(refiner)
    box = (100.0, 20.0, 130.0, 40.0)
    mask, score = refiner.refine(_heatmap(), box, prompt=prompt, n_pos=2, n_neg=2)
    assert mask.shape == (HEIGHT, WIDTH) and mask.dtype == bool
    assert np.isfinite(score)
    scale = 64 / WIDTH  # ResizeLongestSide to the tiny SAM's 64 px
    if "box" in prompt:
        # The continuous box's boundary pixels (x1 - 1, y1 - 1), scaled to SAM's input frame.
        expected = torch.tensor([[100.0, 20.0, 129.0, 39.0]]) * scale
        torch.testing.assert_close(seen["box"].float().reshape(1, 4), expected, atol=0.6, rtol=0)
    else:
        assert seen["box"] is None
    if prompt == "point":
        torch.testing.assert_close(seen["points"][0].float(), torch.tensor([[120.0, 30.0]]) * scale, atol=0.6, rtol=0)
    if prompt.endswith("points"):
        labels = seen["labels"][0].tolist()
        points = seen["points"][0] / scale
        for (x, y), label in zip(points.tolist(), labels):
            heat = _heatmap()[int(round(y)), int(round(x))]
            assert (heat >= 0.5) if label == 1 else (heat <= 0.2)
        assert labels.count(1) == 2 and labels.count(0) == 2


def test_sampled_points_follow_thresholds_and_seed():
    heat = _heatmap()
    coords, labels = sample_points(heat, 4, 4, seed=3)
    again, _ = sample_points(heat, 4, 4, seed=3)
    np.testing.assert_array_equal(coords, again)
    for (x, y), label in zip(coords, labels):
        value = heat[int(y), int(x)]
        assert value >= 0.5 if label else value <= 0.2


def test_image_embedding_is_cached(refiner):
    calls = []
    original = refiner.predictor.set_image
    refiner.predictor.set_image = lambda *a, **k: (calls.append(1), original(*a, **k))
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    refiner.set_image(image)
    refiner.set_image(image.copy())
    assert len(calls) == 1


def test_errors(refiner, tmp_path):
    with pytest.raises(InputError):
        refiner.refine(np.zeros((5, 5)), (0, 0, 1, 1))
    with pytest.raises(InputError):
        refiner.refine(_heatmap(), None, prompt="box")
    bogus = tmp_path / "not_sam.pth"
    torch.save({"weight": torch.zeros(3)}, bogus)
    with pytest.raises(SamCheckpointError, match="vit_b"):
        load_sam(bogus, "vit_b")
