"""The official code's entropy and ranking, ported, against the toolkit; the planted-heads simulator as a regression guard.

The ports follow ``seilk/LocalizationHeads`` ``localization_heads_finder.py`` (``spatial_entropy``,
``find_elbow_point``, ``analyze_attention_file``) step by step, written here independently of the toolkit.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from localize.benchmarks.discovery_sim import (
    SimConfig,
    evaluate,
    official_elbow_head_index,
    official_rank_sample,
    simulate,
)
from localize.heads.scoring import spatial_entropy
from scipy.ndimage import gaussian_filter, label


def _official_entropy_port(attention_map: torch.Tensor, threshold: float = 0.001) -> float:
    """The official per-map steps: ReLU(S - mean), binarise at ``threshold``, 8-connected labels, mass / sum(B)."""
    b = torch.relu(attention_map - torch.mean(attention_map))
    b_np = b.detach().cpu().to(torch.float32).numpy()
    labelled, count = label((b_np > threshold).astype(np.int32), structure=np.ones((3, 3)))
    total = torch.sum(b).item()
    if total <= 0:
        return float("inf")
    sums = [b_np[labelled == i].sum() for i in range(1, count + 1)]
    probabilities = [s / total for s in sums if s > 0]
    return -sum(p * np.log(p) for p in probabilities if p > 0) if probabilities else 0


def _maps(n: int, rng: np.random.Generator) -> np.ndarray:
    """Varied 24 x 24 attention-like maps: diffuse, smooth, blob + noise, sparse spikes near 0.001, constant."""
    out = []
    for i in range(n):
        kind = i % 5
        s = rng.uniform(0.02, 0.9)
        if kind == 0:
            m = rng.random((24, 24)) ** 3
        elif kind == 1:
            m = gaussian_filter(rng.random((24, 24)), rng.uniform(0.5, 3))
        elif kind == 2:
            y, x = np.mgrid[:24, :24]
            cy, cx, sig = rng.uniform(2, 22), rng.uniform(2, 22), rng.uniform(1, 4)
            m = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sig**2)) + 0.3 * rng.random((24, 24)) ** 3
        elif kind == 3:
            m = np.zeros((24, 24))
            m.flat[rng.integers(0, 576, rng.integers(1, 6))] = rng.uniform(0.0005, 0.003, 1)
            out.append(m)
            continue
        elif i % 10 == 4:  # constant, exactly representable (the mean has no rounding error): inf
            out.append(np.full((24, 24), 2.0 ** -int(rng.integers(8, 14))))
            continue
        else:
            m = rng.random((24, 24))
        out.append(s * m / m.sum() if m.sum() > 0 else m)
    return np.stack(out)


def test_official_weighting_equals_the_ported_official_function():
    maps = _maps(600, np.random.default_rng(0))
    ours = spatial_entropy(maps, weighting="official")
    port = np.array([_official_entropy_port(torch.from_numpy(m)) for m in maps])
    assert np.array_equal(np.isinf(ours), np.isinf(port)) and np.isinf(port).sum() >= 10  # constant maps
    finite = np.isfinite(port)
    np.testing.assert_allclose(ours[finite], port[finite], rtol=0, atol=1e-6)
    assert (port[finite] == 0).sum() >= 20  # the "nothing passes 0.001 -> 0" quirk is exercised
    assert spatial_entropy(maps[:7], weighting="official").shape == (7,)


def test_official_weighting_on_the_issues_examples():
    m = np.zeros((24, 24))
    m[2, 2], m[20, 20] = 0.003, 0.0008
    assert spatial_entropy(m, weighting="official") == pytest.approx(0.186, abs=5e-4)
    assert _official_entropy_port(torch.from_numpy(m)) == pytest.approx(0.186, abs=5e-4)
    assert spatial_entropy(m) == pytest.approx(math.log(2))  # the paper: two one-cell components above the mean
    lone = np.zeros((24, 24))
    lone[5, 5] = 0.0009
    assert spatial_entropy(lone, weighting="official") == 0.0 and _official_entropy_port(torch.from_numpy(lone)) == 0
    assert spatial_entropy(lone, weighting="component-mass") == 0.0  # threshold 0: one component
    assert math.isinf(spatial_entropy(lone, weighting="component-mass", threshold=0.001))
    with pytest.raises(ValueError, match="official"):
        spatial_entropy(lone, weighting="mass")


def _official_ranking_port(sums: np.ndarray, entropy: np.ndarray) -> list[int]:
    """The official per-sample loop: elbow head index, per-head dicts, Python's (stable) sort by entropy."""
    points = np.array([(i, v) for i, v in enumerate(np.sort(sums))])
    x_sorted = np.arange(sums.size)[np.argsort(sums)]
    start, end = points[0], points[-1]
    unit = (end - start) / np.linalg.norm(end - start)
    vec = points - start
    distances = np.linalg.norm(vec - np.outer(np.dot(vec, unit), unit), axis=1)
    threshold_idx = x_sorted[np.argmax(distances)]
    results = [{"head_idx": i, "se": entropy[i] if i >= threshold_idx else float("inf")} for i in range(sums.size)]
    results.sort(key=lambda r: r["se"])
    return [r["head_idx"] for r in results]


def test_official_ranking_port_matches_the_benchmarks():
    rng = np.random.default_rng(3)
    for _ in range(20):
        sums = rng.random(64) ** 4
        entropy = np.where(rng.random(64) < 0.3, 0.0, rng.random(64) * 2)  # many ties at 0
        assert official_rank_sample(sums, entropy).tolist() == _official_ranking_port(sums, entropy)
    sums = np.array([0.5, 0.01, 0.02, 0.9, 0.03])
    assert official_elbow_head_index(sums) == 4  # the flat index of the head at the elbow (0.03), not a value


SMALL = replace(SimConfig(), layers=12, heads=8, grid=12, planted=((6, 3), (7, 5)), roaming=2, sometimes=2)


def test_planted_heads_small_instance():
    for seed in (0, 1):
        sim = simulate(200, seed, SMALL)
        result = evaluate(sim, 200)
        assert result["ours_recovered"], result
        assert result["true_passing"] >= 0.8 and result["ours_pass"] >= 0.8 * result["true_eligible"]
        assert sorted(result["ours_ranks"]) == [1, 2]
