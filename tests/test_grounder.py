"""Grounding API: sizes, ground_many == ground per phrase with one prefix, noun chunks, SAM through the API."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from localize.errors import HeadsMismatchError, InputError
from localize.grounder import Grounding, Localizer

HEADS = [(2, 0), (3, 1), (2, 3)]


@pytest.fixture
def localizer(tiny_vlm):
    return Localizer(tiny_vlm, HEADS)


def test_outputs_at_original_size(localizer, noise_image):
    g = localizer.ground(noise_image, "the red circle", return_maps=True)
    assert isinstance(g, Grounding)
    height, width = noise_image.height, noise_image.width
    assert g.mask.shape == g.heatmap.shape == g.attention_mask.shape == (height, width)
    assert g.mask.dtype == bool and g.heatmap.dtype == np.float32
    assert 0.0 <= g.heatmap.min() and g.heatmap.max() <= 1.0
    x0, y0, x1, y1 = g.box
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    assert g.maps.shape[0] == len(HEADS) and g.heads == tuple(HEADS)
    assert g.to_json()["mask_rle"]["size"] == [height, width]


def test_ground_many_equals_ground_with_one_prefix(localizer, noise_image):
    phrases = ["the red circle", "the big man on the left of the dog", "a dog"]
    capturer = localizer.vlm.capturer
    capturer.forward_calls = 0
    many = localizer.ground_many(noise_image, phrases, return_maps=True)
    # the prefix once, then the 3 phrases in one suffix pass (SUFFIX_BATCH 8)
    assert capturer.forward_calls == (2 if localizer.vlm.adapter.prefix_reuse else 1)
    capturer.forward_calls = 0
    single = [localizer.ground(noise_image, p, return_maps=True) for p in phrases]
    assert capturer.forward_calls == len(phrases)
    for a, b in zip(many, single):
        np.testing.assert_allclose(a.maps, b.maps, atol=1e-5)
        np.testing.assert_allclose(a.box, b.box)
        np.testing.assert_array_equal(a.mask, b.mask)


def test_ground_batch_equals_ground_per_image(localizer, noise_image):
    other = noise_image.resize((90, 140))
    batch = localizer.ground_batch([noise_image, other], ["the red circle", "a big dog on the left"], return_maps=True)
    for g, image, phrase in zip(batch, [noise_image, other], ["the red circle", "a big dog on the left"]):
        single = localizer.ground(image, phrase, return_maps=True)
        np.testing.assert_allclose(g.maps, single.maps, atol=1e-5)
        assert g.mask.shape == (image.height, image.width)
        np.testing.assert_allclose(g.box, single.box)


def test_noun_chunks_query_their_own_last_token(tiny_llava_vlm, noise_image):
    pytest.importorskip("spacy")
    localizer = Localizer(tiny_llava_vlm, HEADS)
    text = "the man next to the red car"
    try:
        results = localizer.ground_phrases(noise_image, text, return_maps=True)
    except Exception as err:  # no spaCy English pipeline installed
        pytest.skip(str(err))
    assert [r.phrase for r in results] == ["the man", "the red car"]
    # "car" comes 5 words ("next to the red car") after "man".
    direct = tiny_llava_vlm.capture(noise_image, ["the man"], HEADS)[0]
    np.testing.assert_allclose(results[0].maps, direct.maps.numpy(), atol=1e-5)
    assert results[1].query_position == direct.query_position + 5


def test_bad_input(localizer, noise_image, tiny_vlm):
    with pytest.raises(InputError):
        localizer.ground(noise_image, "  ")
    with pytest.raises(InputError):
        localizer.ground_many(noise_image, "a single string")
    with pytest.raises(HeadsMismatchError):
        Localizer(tiny_vlm, [(99, 0)])


def test_sam_refines_through_the_api(tiny_llava_vlm, noise_image):
    pytest.importorskip("segment_anything")
    from localize.refine.sam import SamRefiner
    from localize.refine.testing import tiny_sam

    localizer = Localizer(tiny_llava_vlm, HEADS, sam=SamRefiner(tiny_sam(), device="cpu"))
    calls = []
    original = localizer.sam.predictor.set_image
    localizer.sam.predictor.set_image = lambda *a, **k: (calls.append(1), original(*a, **k))
    results = localizer.ground_many(noise_image, ["the dog", "the red car"])
    assert len(calls) == 1  # one SAM image embedding for both phrases
    for g in results:
        assert g.mask.shape == (noise_image.height, noise_image.width)
        assert g.sam_score is not None


def test_cli_ground_writes_json_and_overlay(tmp_path, noise_image):
    import json

    from localize.cli import main
    from localize.testing import tiny_llava

    model, processor = tiny_llava()
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    image = tmp_path / "scene.png"
    noise_image.save(image)
    out, viz = tmp_path / "result.json", tmp_path / "overlay.png"
    code = main(
        [
            "ground",
            str(image),
            "the red circle",
            "--model",
            str(tmp_path / "model"),
            "--heads",
            "L2 H0,L3 H1",
            "--out",
            str(out),
            "--viz",
            str(viz),
            "--scale-smoothing",
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert result["heads"] == [[2, 0], [3, 1]]
    assert result["results"][0]["mask_rle"]["size"] == [noise_image.height, noise_image.width]
    assert result["settings"]["scale_to_grid"] is True and result["model"]["model_type"] == "llava"
    assert viz.stat().st_size > 1000
    assert main(["ground", str(image), "  ", "--model", str(tmp_path / "model"), "--heads", "L2 H0"]) == 2
    assert main(["ground", str(image), "a dog", "--model", str(tmp_path / "model"), "--heads", "L9 H0"]) == 2


def test_empty_phrase_list_and_missing_heads(tmp_path):
    """``ground_many`` of no phrases is an empty list; ``heads=None`` is refused by name, not a TypeError."""
    import localize
    from localize.errors import InputError
    from localize.testing import tiny_llava

    vlm = localize.VLM(*tiny_llava())
    loc = localize.Localizer(vlm, [(2, 1)])
    assert loc.ground_many(np.zeros((40, 30, 3), np.uint8), []) == []
    with pytest.raises(InputError, match="heads must be 'auto'"):
        localize.load(vlm, heads=None)


def test_tiled_families_ground_on_the_view_asked_for(tiny_llava_next_vlm):
    """``view``: the default (finest, hi-res), a named view, or every view fused; recorded in each result."""
    from localize.postprocess import GroundingSettings

    image = Image.new("RGB", (200, 120), (90, 90, 90))
    results = {}
    for view in ("default", "base", "fuse"):
        loc = Localizer(tiny_llava_next_vlm, [(2, 1), (3, 0)], settings=GroundingSettings(view=view))
        results[view] = loc.ground(image, "the dog", return_maps=True)
    assert [results[v].meta["view"] for v in results] == ["hi-res", "base", "fuse"]
    assert results["default"].maps.shape[1:] == (8, 12) and results["base"].maps.shape[1:] == (6, 6)
    assert all(g.heatmap.shape == (120, 200) for g in results.values())
    assert results["fuse"].to_json()["view"] == "fuse"
    with pytest.raises(InputError, match="no view 'thumbnail' in llava_next"):
        Localizer(tiny_llava_next_vlm, [(2, 1)], settings=GroundingSettings(view="thumbnail"))


def test_fused_views_keep_what_both_views_see():
    """Two views of one image (a coarse and a fine squash) with the same object: the fused box is the object."""
    from localize.geometry import GridGeometry
    from localize.postprocess import fuse_views

    size, box = (200, 120), (60, 30, 140, 90)
    views = []
    for rows, cols in ((6, 6), (12, 20)):
        geometry = GridGeometry.squashed(rows, cols, size)
        mask = np.zeros((120, 200), bool)
        mask[box[1] : box[3], box[0] : box[2]] = True
        views.append((geometry.mask_to_grid(mask)[None], geometry))
    fused = fuse_views(views)
    assert fused.heatmap.shape == (120, 200) and fused.score > 0
    assert all(abs(f - b) <= 200 / 6 for f, b in zip(fused.box, box))
