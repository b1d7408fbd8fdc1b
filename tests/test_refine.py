"""SAM refinement with a tiny random SAM: prompt coordinates, mask size, image cache, checkpoint checks."""

from __future__ import annotations

import numpy as np
import pytest
import segment_anything
import torch
from localize.refine.errors import RefineError, SamInputError
from localize.refine.sam import SamCheckpointError, SamRefiner, load_sam, sample_points
from localize.refine.testing import tiny_sam
from PIL import Image

HEIGHT, WIDTH = 48, 80  # non-square; SAM input 64 px: resized to (38, 64)
SX, SY = 64 / WIDTH, 38 / HEIGHT


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)


@pytest.fixture()
def refiner(image: np.ndarray) -> SamRefiner:
    refiner = SamRefiner(tiny_sam(img_size=64), device="cpu")
    refiner.set_image(image)
    return refiner


@pytest.fixture()
def heatmap() -> np.ndarray:
    heat = np.zeros((HEIGHT, WIDTH), dtype=np.float32)
    heat[20:34, 40:70] = 0.6
    heat[30, 50] = 1.0
    return heat


def record_prompts(refiner: SamRefiner, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Record what reaches SamPredictor.predict (original pixels) and the prompt encoder (SAM input frame)."""
    seen: dict = {}
    predict, encode = refiner.predictor.predict, refiner.predictor.model.prompt_encoder.forward

    def spy_predict(**kwargs):
        seen["predict"] = kwargs
        return predict(**kwargs)

    def spy_encode(points, boxes, masks):
        seen["points"], seen["boxes"] = points, boxes
        return encode(points, boxes, masks)

    monkeypatch.setattr(refiner.predictor, "predict", spy_predict)
    monkeypatch.setattr(refiner.predictor.model.prompt_encoder, "forward", spy_encode)
    return seen


def test_box_prompt_coordinates(refiner: SamRefiner, heatmap: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = record_prompts(refiner, monkeypatch)
    mask, score = refiner.refine(heatmap, box=(40, 20, 70, 34), prompt="box")
    assert mask.shape == (HEIGHT, WIDTH) and mask.dtype == bool and isinstance(score, float)
    # Continuous [40, 70) x [20, 34) -> boundary pixel indices, then SAM's ResizeLongestSide scaling.
    np.testing.assert_allclose(seen["predict"]["box"], [40, 20, 69, 33])
    assert seen["predict"]["point_coords"] is None
    np.testing.assert_allclose(seen["boxes"].numpy().reshape(4), [40 * SX, 20 * SY, 69 * SX, 33 * SY], rtol=1e-6)
    assert seen["points"] is None


def test_point_prompt_is_the_argmax(refiner: SamRefiner, heatmap: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = record_prompts(refiner, monkeypatch)
    mask, _ = refiner.refine(heatmap, prompt="point")
    assert mask.shape == (HEIGHT, WIDTH)
    np.testing.assert_allclose(seen["predict"]["point_coords"], [[50, 30]])  # (col, row): SAM adds the 0.5
    assert seen["predict"]["box"] is None
    coords, labels = seen["points"]
    np.testing.assert_allclose(coords.numpy(), [[[50 * SX, 30 * SY]]], rtol=1e-6)
    assert labels.tolist() == [[1]]


def test_points_and_box_plus_points(refiner: SamRefiner, heatmap: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = record_prompts(refiner, monkeypatch)
    refiner.refine(heatmap, prompt="points", n_pos=4, n_neg=2, seed=3)
    coords, labels = sample_points(heatmap, 4, 2, seed=3)
    np.testing.assert_allclose(seen["predict"]["point_coords"], coords - 0.5)
    assert seen["predict"]["point_labels"].tolist() == [1, 1, 1, 1, 0, 0]
    np.testing.assert_allclose(seen["points"][0].numpy()[0], (coords - 0.5) * [SX, SY], rtol=1e-6)
    refiner.refine(heatmap, box=(40, 20, 70, 34), prompt="box+points", n_pos=2, n_neg=1)
    assert seen["predict"]["box"] is not None and len(seen["predict"]["point_coords"]) == 3


@pytest.mark.parametrize("prompt", ["box", "point", "points", "box+points"])
def test_every_prompt_reaches_predict_torch_in_sam_input_frame(
    refiner: SamRefiner, heatmap: np.ndarray, monkeypatch: pytest.MonkeyPatch, prompt: str
) -> None:
    seen: dict = {}
    original = refiner.predictor.predict_torch

    def spy(point_coords, point_labels, boxes, *args, **kwargs):
        seen.update(points=point_coords, labels=point_labels, box=boxes)
        return original(point_coords, point_labels, boxes, *args, **kwargs)

    monkeypatch.setattr(refiner.predictor, "predict_torch", spy)
    mask, score = refiner.refine(heatmap, (40, 20, 70, 34), prompt=prompt, n_pos=2, n_neg=2)
    assert mask.shape == (HEIGHT, WIDTH) and mask.dtype == bool and np.isfinite(score)
    scale = np.array([SX, SY])
    if "box" in prompt:
        np.testing.assert_allclose(seen["box"].numpy().reshape(2, 2), [[40, 20], [69, 33]] * scale, rtol=1e-6)
    else:
        assert seen["box"] is None
    if prompt == "point":
        np.testing.assert_allclose(seen["points"].numpy().reshape(2), np.array([50, 30]) * scale, rtol=1e-6)
    if prompt.endswith("points"):
        labels = seen["labels"][0].tolist()
        assert labels == [1, 1, 0, 0]
        for (x, y), label in zip(seen["points"][0].numpy() / scale, labels):
            value = heatmap[round(y), round(x)]
            assert value >= 0.5 if label else value <= 0.2


def test_sample_points_follow_the_map(heatmap: np.ndarray) -> None:
    coords, labels = sample_points(heatmap, n_pos=5, n_neg=5, tau_pos=0.5, tau_neg=0.2, seed=0)
    assert coords.shape == (10, 2) and labels.tolist() == [1] * 5 + [0] * 5
    cols, rows = (coords - 0.5).astype(int).T
    assert (heatmap[rows[:5], cols[:5]] >= 0.5).all() and (heatmap[rows[5:], cols[5:]] <= 0.2).all()
    assert len({tuple(c) for c in coords}) == 10  # without replacement
    again, _ = sample_points(heatmap, n_pos=5, n_neg=5, seed=0)
    other, _ = sample_points(heatmap, n_pos=5, n_neg=5, seed=1)
    np.testing.assert_array_equal(coords, again)
    assert not np.array_equal(coords, other)
    # Positives are weighted by attention: with candidates 1.0 and 0.5, the first is drawn 2/3 of the time.
    two = np.zeros((4, 4))
    two[0, 0], two[3, 3] = 1.0, 0.5
    hits = np.mean([sample_points(two, 1, 0, seed=s)[0][0, 0] == 0.5 for s in range(600)])
    assert 0.58 < hits < 0.75
    few, few_labels = sample_points(heatmap, n_pos=0, n_neg=3, tau_neg=-1.0)
    assert len(few) == 0 and len(few_labels) == 0  # no negative candidates
    zero_coords, zero_labels = sample_points(np.zeros((4, 4)), n_pos=2, n_neg=2)
    assert zero_labels.tolist() == [0, 0]  # an all-zero map has no positives


def test_best_multimask_is_kept(refiner: SamRefiner, heatmap: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    masks = np.zeros((3, HEIGHT, WIDTH), dtype=bool)
    masks[1, :5, :5] = True

    def fake_predict(**kwargs):
        assert kwargs["multimask_output"] is True
        return masks, np.array([0.1, 0.9, 0.3]), None

    monkeypatch.setattr(refiner.predictor, "predict", fake_predict)
    mask, score = refiner.refine(heatmap, box=(0, 0, 5, 5))
    assert score == pytest.approx(0.9) and mask.sum() == 25


def test_set_image_is_cached(image: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    refiner = SamRefiner(tiny_sam(img_size=64), device="cpu")
    calls = []
    original = refiner.predictor.set_image
    monkeypatch.setattr(refiner.predictor, "set_image", lambda *a, **k: (calls.append(1), original(*a, **k)))
    refiner.set_image(image)
    refiner.set_image(image)
    refiner.set_image(image.copy())
    refiner.set_image(Image.fromarray(image))
    assert len(calls) == 1
    refiner.set_image(255 - image)
    assert len(calls) == 2
    assert refiner.image_size == (WIDTH, HEIGHT)


def test_refine_input_errors(image: np.ndarray, heatmap: np.ndarray) -> None:
    refiner = SamRefiner(tiny_sam(img_size=64), device="cpu")
    with pytest.raises(SamInputError):
        refiner.refine(heatmap, box=(0, 0, 5, 5))  # no image yet
    refiner.set_image(image)
    with pytest.raises(SamInputError):
        refiner.refine(heatmap[:, :-1], box=(0, 0, 5, 5))
    with pytest.raises(SamInputError):
        refiner.refine(heatmap, prompt="box")  # no box
    with pytest.raises(SamInputError):
        refiner.refine(heatmap, box=(0, 0, 5, 5), prompt="scribble")
    with pytest.raises(SamInputError):
        refiner.set_image(image.astype(np.float32))


@pytest.fixture()
def tiny_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the registry's vit_b/vit_h build tiny SAMs so checkpoints stay small."""
    monkeypatch.setitem(segment_anything.sam_model_registry, "vit_b", lambda checkpoint=None: tiny_sam(img_size=64))
    monkeypatch.setitem(segment_anything.sam_model_registry, "vit_h", lambda checkpoint=None: tiny_sam(embed_dim=48))


def test_checkpoint_loading(tmp_path, tiny_registry, image: np.ndarray, heatmap: np.ndarray) -> None:
    reference = tiny_sam(img_size=64, seed=7)
    path = tmp_path / "sam_vit_b.pth"
    torch.save(reference.state_dict(), path)
    sam = load_sam(path, "vit_b")
    for name, tensor in reference.state_dict().items():
        assert torch.equal(sam.state_dict()[name], tensor)
    refiner = SamRefiner(path, "vit_b", device="cpu")
    refiner.set_image(image)
    assert refiner.refine(heatmap, box=(40, 20, 70, 34))[0].shape == (HEIGHT, WIDTH)


def test_wrong_checkpoint_kind(tmp_path, tiny_registry) -> None:
    state = tiny_sam(img_size=64).state_dict()
    state["image_encoder.patch_embed.proj.weight"] = torch.zeros(768, 3, 16, 16)  # a vit_b-sized patch embedding
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "sam.pth"
    torch.save(state, path)
    with pytest.raises(SamCheckpointError) as err:
        load_sam(path, "vit_h")
    message = str(err.value)
    assert "vit_h" in message and "looks like a vit_b" in message
    assert "shape mismatches [image_encoder." in message and "unexpected keys [extra.weight]" in message
    assert isinstance(err.value, RefineError)


def test_wrong_checkpoint_against_the_real_registry(tmp_path) -> None:
    path = tmp_path / "not_sam.pth"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(
        SamCheckpointError, match="not a SAM vit_h checkpoint: missing keys .*unexpected keys \\[weight\\]"
    ):
        load_sam(path, "vit_h")  # checked against a meta-device vit_h: nothing is allocated


def test_unreadable_checkpoints(tmp_path) -> None:
    with pytest.raises(SamCheckpointError, match="not found"):
        load_sam(tmp_path / "missing.pth", "vit_b")
    path = tmp_path / "pickle.pth"
    torch.save({"model": object()}, path)  # arbitrary objects are refused by weights_only loading
    with pytest.raises(SamCheckpointError, match="weights-only"):
        load_sam(path, "vit_b")
    with pytest.raises(SamCheckpointError, match="unknown SAM model type"):
        load_sam(path, "vit_z")
