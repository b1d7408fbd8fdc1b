"""Head discovery: scoring math, heads file, registry, figures."""

from __future__ import annotations

import json
import math
import os
import warnings

import numpy as np
import pytest
from localize.heads import (
    HeadsFile,
    attention_sum,
    finite_mean,
    format_head,
    load_heads,
    max_curvature_threshold,
    parse_heads,
    pseudo_mask_iou,
    published_entry,
    published_heads,
    rank_iou_correlation,
    save_heads,
    select_heads,
    selection_frequency,
    spatial_entropy,
    top_heads,
    validate_heads,
)
from localize.heads.figures import plot_frequency_bars, plot_rank_iou, plot_sum_curve
from scipy import ndimage

from localize.errors import HeadsMismatchError, InputError, LocalizeError

# --- spatial entropy ------------------------------------------------------------------------------------------


def test_one_blob_has_zero_entropy():
    m = np.zeros((6, 6))
    m[1:4, 2:4] = 1.0
    assert spatial_entropy(m) == 0.0
    assert spatial_entropy(m, weighting="component-mass") == 0.0


def test_two_equal_blobs_give_log2():
    m = np.zeros((6, 6))
    m[0:2, 0:2] = 1.0
    m[4:6, 3:5] = 1.0
    assert spatial_entropy(m) == pytest.approx(math.log(2))
    assert spatial_entropy(m, weighting="component-mass") == pytest.approx(math.log(2))


def test_diagonal_touch_is_one_component_under_8_two_under_4():
    m = np.zeros((5, 5))
    m[1, 1] = m[2, 2] = 1.0  # touch only at a corner
    assert spatial_entropy(m, connectivity=8) == 0.0
    assert spatial_entropy(m, connectivity=4) == pytest.approx(math.log(2))


def test_mass_weighting_differs_from_size_weighting():
    m = np.zeros((6, 6))
    m[0:2, 0:2] = 3.0  # 4 cells
    m[4:6, 4:6] = 1.0  # 4 cells, a third of the height
    # mean = 16/36 = 4/9 -> A = 23/9 and 5/9 on the blobs; masses 92/9 and 20/9 -> P = 23/28, 5/28.
    p = np.array([23 / 28, 5 / 28])
    assert spatial_entropy(m, weighting="size") == pytest.approx(math.log(2))
    assert spatial_entropy(m, weighting="component-mass") == pytest.approx(-(p * np.log(p)).sum())


def test_unequal_sizes_size_weighting():
    m = np.zeros((6, 6))
    m[0, 0:3] = 1.0  # 3 cells
    m[5, 5] = 1.0  # 1 cell
    p = np.array([0.75, 0.25])
    assert spatial_entropy(m) == pytest.approx(-(p * np.log(p)).sum())


def test_constant_map_is_inf_and_leading_dims_are_kept():
    maps = np.zeros((2, 3, 4, 4))
    maps[0, 1, 0, 0] = 1.0
    h = spatial_entropy(maps)
    assert h.shape == (2, 3)
    assert h[0, 1] == 0.0
    assert np.isinf(h[1, 2]) and np.isinf(spatial_entropy(np.full((3, 3), 0.2)))


def test_bad_arguments():
    with pytest.raises(ValueError):
        spatial_entropy(np.zeros((3, 3)), connectivity=6)
    with pytest.raises(ValueError):
        spatial_entropy(np.zeros((3, 3)), weighting="area")
    with pytest.raises(ValueError):
        attention_sum(np.zeros(5))


def _reference_entropy(m: np.ndarray, connectivity: int = 8, weighting: str = "size") -> float:
    """Plain per-map implementation of the paper's definition."""
    a = np.maximum(m - m.mean(), 0.0)
    labels, n = ndimage.label(a > 0, structure=ndimage.generate_binary_structure(2, 2 if connectivity == 8 else 1))
    if n == 0:
        return math.inf
    w = [(labels == i).sum() if weighting == "size" else a[labels == i].sum() for i in range(1, n + 1)]
    p = np.asarray(w, dtype=np.float64) / np.sum(w)
    return float(-(p * np.log(p)).sum())


def test_vectorised_scores_match_per_map_loop():
    rng = np.random.default_rng(0)
    maps = ndimage.gaussian_filter(rng.random((40, 40, 24, 24)), sigma=(0, 0, 1.5, 1.5)).astype(np.float32)
    maps[3, 5] = 0.25  # a constant map among them
    for weighting in ("size", "component-mass"):
        h = spatial_entropy(maps, weighting=weighting)
        assert h.shape == (40, 40)
        ref = np.array(
            [[_reference_entropy(maps[i, j].astype(np.float64), 8, weighting) for j in range(40)] for i in range(40)]
        )
        np.testing.assert_allclose(h, ref, rtol=1e-9, atol=1e-12)
    assert np.isinf(h[3, 5])
    np.testing.assert_allclose(attention_sum(maps), maps.astype(np.float64).sum(axis=(2, 3)), rtol=1e-9)
    h4 = spatial_entropy(maps[:4], connectivity=4)
    ref4 = np.array([[_reference_entropy(maps[i, j].astype(np.float64), 4) for j in range(40)] for i in range(4)])
    np.testing.assert_allclose(h4, ref4, rtol=1e-9, atol=1e-12)


def test_torch_input():
    torch = pytest.importorskip("torch")
    m = np.zeros((2, 6, 6), dtype=np.float32)
    m[:, 0:2, 0:2] = 1.0
    m[1, 4:6, 4:6] = 1.0
    t = torch.from_numpy(m).to(torch.bfloat16)
    np.testing.assert_allclose(spatial_entropy(t), [0.0, math.log(2)])
    np.testing.assert_allclose(attention_sum(t), [4.0, 8.0])


# --- tau --------------------------------------------------------------------------------------------------------


def test_tau_lands_on_the_knee():
    flat = np.linspace(0.0, 0.01, 50)  # indices 0..49, nearly flat
    steep = 0.01 + 0.1 * np.arange(1, 11)  # indices 50..59, steep rise
    y = np.concatenate([flat, steep])
    rng = np.random.default_rng(1)
    assert max_curvature_threshold(rng.permutation(y)) == pytest.approx(y[49])
    assert (y >= max_curvature_threshold(y)).sum() == 11


def test_tau_finds_the_global_bend_of_noisy_curves():
    # The curves: x**6 on 1024 heads, clean and with 0.01 uniform noise. Global bend: where the slope on the
    # unit square is 1 (farthest from the chord), x = (1/6)**(1/5), y = x**6 = 0.1165.
    y = (np.arange(1024) / 1023) ** 6
    bend = (1 / 6) ** (6 / 5)
    noisy = y + 0.01 * np.random.default_rng(0).random(1024)
    for curve in (y, noisy):
        for method in ("chord", "kneedle-smooth"):
            tau = max_curvature_threshold(np.random.default_rng(1).permutation(curve), method)
            assert abs(tau - bend) <= 0.03, (method, tau)
        assert (curve >= max_curvature_threshold(curve)).sum() > 250  # ~300 heads pass, not ~150
    assert max_curvature_threshold(noisy, "kneedle") > 0.3  # raw Kneedle stops at a wiggle in the noisy tail
    assert max_curvature_threshold(y, "curvature") < bend - 0.03  # the literal max curvature sits below the bend
    with pytest.raises(ValueError, match="tau method"):
        max_curvature_threshold(y, "elbow")


def test_tau_on_a_concave_curve_is_where_it_flattens():
    # A model without an attention sink: one head looks at the text, the others almost only at the image. The
    # sharpest bend is where the curve flattens; a convex-only knee would land at the top and keep one head.
    y = np.array([0.0155, 0.98, 0.982, 0.985, 0.996, 0.997, 0.999, 0.9995])
    tau = max_curvature_threshold(np.random.default_rng(0).permutation(y))
    assert tau == pytest.approx(0.98)
    assert (y >= tau).sum() == 7


def test_tau_degenerate_curves():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        linear = np.linspace(0, 1, 20)
        assert max_curvature_threshold(linear) in linear  # no knee: falls back, still a value of the curve
    assert max_curvature_threshold(np.full(10, 0.3)) == pytest.approx(0.3)
    assert max_curvature_threshold([0.2, 0.1]) == pytest.approx(0.1)
    assert max_curvature_threshold([np.nan, 0.5, 0.1, 0.2, np.inf]) in (0.1, 0.2, 0.5)
    with pytest.raises(ValueError):
        max_curvature_threshold([np.nan])


# --- selection ----------------------------------------------------------------------------------------------------

SUMS = np.tile([0.5, 0.4, 0.1, 0.6], (3, 1))  # mean S_img per head: .5 .4 .1 .6
ENTROPY = np.array(
    [
        [0.0, 0.5, 0.0, 0.2],
        [0.3, 0.1, 0.0, np.inf],
        [0.0, 0.0, 0.0, 0.0],
    ]
)


def test_select_heads_both():
    # tau = 0.3 drops head 2; head 3 has no component in sample 1; tie="s_img": ties go to the higher S_img.
    assert select_heads(ENTROPY, SUMS, 0.3, per_sample=1, tie="s_img").tolist() == [1, 1, 0, 1]
    assert select_heads(ENTROPY, SUMS, 0.3, per_sample=2, tie="s_img").tolist() == [3, 1, 0, 2]
    assert select_heads(ENTROPY, SUMS, 0.3, per_sample=10).tolist() == [3, 3, 0, 2]  # fewer eligible than 10


def test_select_heads_tie_rules():
    # sample 2 ties heads 0, 1, 3 at H = 0. Mean entropy over the samples: 0.1, 0.2, (0.0 dropped by tau), 0.1.
    assert select_heads(ENTROPY[2:], SUMS[2:], 0.3, per_sample=1, tie="s_img").tolist() == [0, 0, 0, 1]
    assert select_heads(ENTROPY[2:], SUMS[2:], 0.3, per_sample=1, tie="index").tolist() == [1, 0, 0, 0]
    # mean-entropy (default): the head that is compact over all samples wins a tie
    entropy = ENTROPY.copy()
    entropy[0, 3] = 0.0  # head 3: mean entropy 0 (vs head 0's 0.1): it wins the ties in samples 0 and 2
    assert select_heads(entropy, SUMS, 0.3, per_sample=1).tolist() == [0, 1, 0, 2]
    entropy[0, 3] = 0.5  # head 3's mean entropy rises to 0.25: head 0 now wins the tie in sample 2
    assert select_heads(entropy, SUMS, 0.3, per_sample=1).tolist() == [2, 1, 0, 0]
    equal = np.zeros((2, 4))  # equal mean entropies: then the higher S_img (head 3, 0.6)
    assert select_heads(equal, SUMS[:2], 0.3, per_sample=1).tolist() == [0, 0, 0, 2]
    keys = np.tile([3.0, 2.0, 1.0, 0.0], (3, 1))  # explicit keys, lower first
    assert select_heads(ENTROPY[2:], SUMS[2:], None, per_sample=2, tie=keys[2:]).tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="tie"):
        select_heads(ENTROPY, SUMS, 0.3, tie="area")


def test_select_heads_criteria_and_greedy():
    assert select_heads(ENTROPY, SUMS, 0.3, per_sample=1, criterion="entropy", tie="s_img").tolist() == [1, 0, 1, 1]
    assert select_heads(ENTROPY, SUMS, None, per_sample=1, criterion="entropy", tie="s_img").tolist() == [1, 0, 1, 1]
    assert select_heads(ENTROPY, SUMS, 0.3, per_sample=1, criterion="sum").tolist() == [0, 0, 0, 3]
    assert select_heads(ENTROPY, SUMS, 0.3, per_sample=2, criterion="sum").tolist() == [3, 0, 0, 3]
    assert select_heads(ENTROPY, SUMS, 0.3, per_sample=10, mode="greedy", tie="s_img").tolist() == [1, 1, 0, 1]
    with pytest.raises(ValueError):
        select_heads(ENTROPY, SUMS, 0.3, criterion="best")
    with pytest.raises(ValueError):
        select_heads(ENTROPY, SUMS, 0.3, mode="adaptive")


def test_select_heads_keeps_head_shape_and_frequency_top_heads():
    counts = select_heads(ENTROPY.reshape(3, 2, 2), SUMS.reshape(3, 2, 2), 0.3, per_sample=2)
    assert counts.shape == (2, 2) and counts.tolist() == [[3, 1], [0, 2]]
    freq = selection_frequency(counts, 3)
    np.testing.assert_allclose(freq, [[1.0, 1 / 3], [0.0, 2 / 3]])
    mean_entropy = finite_mean(ENTROPY, axis=0).reshape(2, 2)
    np.testing.assert_allclose(mean_entropy, [[0.1, 0.2], [0.0, 0.1]])
    assert top_heads(freq, mean_entropy, k=3) == [(0, 0), (1, 1), (0, 1)]
    assert top_heads(freq, mean_entropy, k=10) == [(0, 0), (1, 1), (0, 1)]  # unselected heads never listed
    # equal frequency: lower mean entropy wins
    assert top_heads(np.array([0.5, 0.5, 0.1]), np.array([0.3, 0.2, 0.0]), k=2) == [1, 0]


# --- pseudo-mask IoU, rank correlation ------------------------------------------------------------------------------


def test_pseudo_mask_iou_hand_computed():
    m = np.zeros((4, 4))
    m[0:2, 0:2] = 1.0  # pseudo-mask: the top-left 2x2
    target = np.zeros((4, 4), dtype=bool)
    target[0:2, 1:3] = True  # overlaps 2 cells, union 6
    assert pseudo_mask_iou(m, target) == pytest.approx(1 / 3)
    assert pseudo_mask_iou(np.stack([m, m.T * 0 + 0.1]), target).tolist() == pytest.approx([1 / 3, 0.0])
    coverage = target * 0.8 + 0.1  # area-coverage map: >= 0.5 counts as target
    assert pseudo_mask_iou(m, coverage) == pytest.approx(1 / 3)


def test_rank_iou_correlation():
    freq = np.array([0.5, 0.3, 0.2, 0.1, 0.005])
    iou = np.array([0.6, 0.5, 0.3, 0.4, 0.9])  # the last head is under 1% and ignored
    rho, n = rank_iou_correlation(freq, iou)
    assert n == 4 and rho == pytest.approx(0.8)
    rho, n = rank_iou_correlation(freq[:2], iou[:2])
    assert n == 2 and math.isnan(rho)


# --- heads file -----------------------------------------------------------------------------------------------------


def _heads_file(**overrides) -> HeadsFile:
    mean_entropy = np.arange(6, dtype=np.float64).reshape(2, 3) / 7
    mean_entropy[1, 2] = np.inf
    fields = {
        "model": "llava-hf/llava-1.5-7b-hf",
        "revision": "abc123",
        "model_type": "llava",
        "num_layers": 2,
        "num_heads": 3,
        "grid": (24, 24),
        "tau": 0.123456789,
        "n_samples": 3,
        "seed": 0,
        "sample_ids": ["a", "b", 7],
        "mean_sum": np.full((2, 3), 0.25),
        "mean_entropy": mean_entropy,
        "frequency": np.array([[0.0, 1.0, 1 / 3], [0.0, 0.0, 2 / 3]]),
        "heads": [(0, 1), (1, 2)],
        "settings": {"per_sample": 10, "criterion": "both", "weights": np.float32(0.5)},
    }
    fields.update(overrides)
    return HeadsFile(**fields)


def test_heads_file_round_trip(tmp_path):
    path = tmp_path / "sub" / "heads.json"
    written = save_heads(path, _heads_file())
    data = json.loads(path.read_text())  # strict JSON: no NaN / Infinity
    assert data["heads"] == [[0, 1], [1, 2]] and data["heads_str"] == ["L0 H1", "L1 H2"]
    assert data["mean_entropy"][1][2] is None and data["mean_iou"] is None
    assert data["localize_version"] and "transformers_version" in data
    loaded = load_heads(path)
    assert loaded.heads == [(0, 1), (1, 2)] and loaded.grid == (24, 24) and loaded.sample_ids == ["a", "b", "7"]
    assert (loaded.num_layers, loaded.num_heads, loaded.n_samples, loaded.seed) == (2, 3, 3, 0)
    assert loaded.tau == pytest.approx(0.123457)
    np.testing.assert_allclose(loaded.frequency, written.frequency, rtol=1e-5)
    assert np.isnan(loaded.mean_entropy[1, 2]) and loaded.mean_iou is None
    assert loaded.settings == {"per_sample": 10, "criterion": "both", "weights": 0.5}
    # keyword form
    save_heads(path, num_layers=2, num_heads=3, heads=[(1, 1)])
    assert load_heads(path).heads == [(1, 1)]


def test_heads_file_atomic_write(tmp_path, monkeypatch):
    path = tmp_path / "heads.json"
    save_heads(path, _heads_file())
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        save_heads(path, _heads_file(heads=[(0, 0)]))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heads.json"]  # no temp file left behind


def test_heads_file_errors(tmp_path):
    with pytest.raises(InputError):
        load_heads(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError):
        load_heads(bad)
    bad.write_text('{"hello": 1}')
    with pytest.raises(InputError):
        load_heads(bad)
    with pytest.raises(ValueError):
        _heads_file(mean_sum=np.zeros((3, 3)))


def test_validate_heads():
    hf = _heads_file()
    assert validate_heads(hf, 2, 3) == [(0, 1), (1, 2)]
    with pytest.raises(HeadsMismatchError, match="2 layers x 3 heads.*40 layers x 40 heads"):
        validate_heads(hf, 40, 40)
    with pytest.raises(HeadsMismatchError, match="L2 H0"):
        validate_heads([(2, 0)], 2, 3)
    with pytest.raises(HeadsMismatchError, match="L0 H3"):
        validate_heads("L0 H3", 2, 3)
    with pytest.raises(HeadsMismatchError):
        validate_heads([], 2, 3)
    assert validate_heads("L1 H2, 1:2, 0:0", 2, 3) == [(1, 2), (0, 0)]
    assert issubclass(HeadsMismatchError, LocalizeError)


def test_parse_and_format_heads():
    assert format_head((14, 24)) == "L14 H24"
    assert parse_heads("L14 H24,14:13") == [(14, 24), (14, 13)]
    assert parse_heads("L14H24") == [(14, 24)]
    assert parse_heads("l14 h24; L14 H13") == [(14, 24), (14, 13)]
    assert parse_heads("L14 H24 L14 H13") == [(14, 24), (14, 13)]
    assert parse_heads("14,24") == [(14, 24)]
    assert parse_heads("14,24,14,13") == [(14, 24), (14, 13)]
    assert parse_heads("14:24 7:2") == [(14, 24), (7, 2)]
    assert parse_heads(["L14 H24", (7, 2)]) == [(14, 24), (7, 2)]
    assert parse_heads(format_head((3, 9))) == [(3, 9)]
    for bad in ("L14", "14", "L14 H24,,L1 H2", "H3 L2", "L14 H24 x"):
        with pytest.raises(InputError):
            parse_heads(bad)


# --- registry -------------------------------------------------------------------------------------------------------


def test_registry():
    assert published_heads("llava-hf/llava-1.5-7b-hf") == [(14, 24), (14, 13)]
    assert published_heads("LIUHAOTIAN/llava-v1.5-7b") == [(14, 24), (14, 13)]
    assert published_heads("llava-hf/llava-1.5-13b-hf") == [(15, 39), (16, 30), (7, 2)]
    assert published_heads("liuhaotian/llava-v1.5-13b") == [(15, 39), (16, 30), (7, 2)]
    for model_id in ("llava-hf/llava-1.5-7b-hf", "llava-hf/llava-1.5-13b-hf"):
        entry = published_entry(model_id)
        assert validate_heads(entry.heads, entry.num_layers, entry.num_heads) == list(entry.heads)
        assert "2503.06287" in entry.source
    with pytest.raises(HeadsMismatchError, match="localize discover"):
        published_heads("Qwen/Qwen2-VL-7B-Instruct")


# --- figures --------------------------------------------------------------------------------------------------------


def test_figures_are_written(tmp_path):
    rng = np.random.default_rng(0)
    mean_sums = np.sort(rng.random((4, 8)) ** 4, axis=None).reshape(4, 8)
    tau = max_curvature_threshold(mean_sums)
    freq = rng.random((4, 8)) * (rng.random((4, 8)) > 0.5)
    iou = rng.random((4, 8))
    rho, _ = rank_iou_correlation(freq, iou)
    paths = [
        plot_sum_curve(mean_sums, tau, tmp_path / "sum.png"),
        plot_frequency_bars(freq, tmp_path / "figs" / "freq.png", top=5),
        plot_frequency_bars(np.zeros((2, 2)), tmp_path / "empty.png"),
        plot_rank_iou(freq, iou, rho, tmp_path / "rank.png"),
        plot_rank_iou(freq, iou, float("nan"), tmp_path / "rank_nan.png"),
    ]
    for p in paths:
        assert p.exists() and p.stat().st_size > 1000
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
