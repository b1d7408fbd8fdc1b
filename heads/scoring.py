"""Head-discovery math of Kang et al. (CVPR 2025), "Your Large Vision-Language Model Only Needs A Few Attention Heads
For Visual Grounding".

Every function takes query-to-image attention maps as ``[..., rows, cols]`` (numpy or torch; any leading dims, e.g.
``[layers, heads]`` or ``[n_captured]``) and returns numpy. Per head and sample:

* ``S_img`` (:func:`attention_sum`): the query token's total attention over the image tokens. Heads whose mean
  ``S_img`` over the samples reaches ``tau`` (:func:`max_curvature_threshold`) attend to the image at all.
* spatial entropy (:func:`spatial_entropy`): how scattered the above-mean attention is; a localization head puts it
  in one compact blob (entropy 0).
* :func:`select_heads` lets each sample vote for its best heads; the most frequently chosen are the localization
  heads (:func:`selection_frequency`, :func:`top_heads`).
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
from scipy import ndimage

Criterion = Literal["both", "sum", "entropy"]
Mode = Literal["fixed", "greedy"]

__all__ = [
    "attention_sum",
    "finite_mean",
    "max_curvature_threshold",
    "pseudo_mask_iou",
    "rank_iou_correlation",
    "select_heads",
    "selection_frequency",
    "spatial_entropy",
    "top_heads",
]


def _to_numpy(x, dtype=np.float64) -> np.ndarray:
    """numpy view of a numpy array / torch tensor (any device or dtype, bf16 included)."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().to("cpu")
        if not x.dtype.is_floating_point or x.dtype.itemsize < 4:
            x = x.float()
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def _check_maps(maps: np.ndarray) -> None:
    if maps.ndim < 2 or maps.shape[-1] == 0 or maps.shape[-2] == 0:
        raise ValueError(f"attention maps must be [..., rows, cols] with a non-empty grid, got shape {maps.shape}")


def attention_sum(maps) -> np.ndarray:
    """``S_img``: the query's total attention over the image tokens, summed over ``rows, cols`` -> ``[...]``."""
    maps = _to_numpy(maps)
    _check_maps(maps)
    return maps.sum(axis=(-2, -1))


def spatial_entropy(
    maps, connectivity: int = 8, weighting: Literal["size", "mass"] = "size", threshold: float = 0.0
) -> np.ndarray:
    """Spatial entropy of each map ``[..., rows, cols]`` -> ``[...]``; ``+inf`` where no component (constant map).

    ``A = ReLU(map - mean(map))``; components ``C_n`` of ``A > threshold`` (8- or 4-connected);
    ``P(C_n) = |C_n| / sum|C_n|`` (``weighting="size"``, the paper) or ``sum_{C_n} A / sum A`` over the components
    (``"mass"``, the official code, which also uses ``threshold=0.001``); ``H = -sum P ln P``.
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    if weighting not in ("size", "mass"):
        raise ValueError(f"weighting must be 'size' or 'mass', got {weighting!r}")
    maps = _to_numpy(maps)
    _check_maps(maps)
    lead, (rows, cols) = maps.shape[:-2], maps.shape[-2:]
    flat = maps.reshape(-1, rows, cols)
    n_maps = flat.shape[0]
    above = flat - flat.mean(axis=(-2, -1), keepdims=True)
    foreground = above > threshold

    # One label call for all maps: the 3-D structure connects pixels within a map only (middle plane).
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    labels, n_comp = ndimage.label(foreground, structure=structure)
    entropy = np.full(n_maps, np.inf)
    if n_comp:
        labels = labels.ravel()
        weights = None if weighting == "size" else above.ravel()
        comp_weight = np.bincount(labels, weights=weights, minlength=n_comp + 1)[1:].astype(np.float64)
        # Map that each component lies in: label numbers follow raster order (first appearance), so map i holds
        # labels (max label of maps < i, max label of maps <= i].
        last = np.maximum.accumulate(labels.reshape(n_maps, -1).max(axis=1))
        comp_map = np.repeat(np.arange(n_maps), np.diff(last, prepend=0))
        total = np.bincount(comp_map, weights=comp_weight, minlength=n_maps)
        p = comp_weight / total[comp_map]
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
        h = -np.bincount(comp_map, weights=plogp, minlength=n_maps)
        has_comp = np.bincount(comp_map, minlength=n_maps) > 0
        entropy[has_comp] = np.maximum(h[has_comp], 0.0)  # clamp -0.0 / rounding
    return entropy.reshape(lead)


def max_curvature_threshold(values) -> float:
    """``tau``: the mean ``S_img`` at the point of maximum curvature of the heads' ascending-sorted curve.

    Method: drop non-finite values, sort ascending (``y[i]``, ``x = i``) and run Kneedle (``kneed.KneeLocator``,
    ``direction="increasing"``, ``S=1``, ``online=False``, ``interp1d``): on the curve normalised to the unit square,
    the first local maximum of its distance from the chord that passes Kneedle's ``S`` threshold test;
    ``tau = y[knee]``. The curve is ``convex`` (LLaVA-1.5: most heads put little attention on the image, a few a
    lot; the bend is near the top) unless its normalised points lie above the chord on average, then ``concave``
    (a model without an attention sink: one or two heads look at the text, the rest almost only at the image; the
    bend is where the curve flattens). Fallback when Kneedle finds no knee: the index of the largest absolute
    discrete second difference ``y[i-1] - 2 y[i] + y[i+1]`` of the normalised curve. Fewer than 3 values, or a
    constant curve: ``tau = min(values)`` (every head passes).
    """
    from kneed import KneeLocator

    y = np.sort(_to_numpy(values).ravel())
    y = y[np.isfinite(y)]
    if y.size == 0:
        raise ValueError("max_curvature_threshold needs at least one finite value")
    if y.size < 3 or y[-1] == y[0]:
        return float(y[0])
    x = np.arange(y.size, dtype=np.float64)
    yn = (y - y[0]) / (y[-1] - y[0])
    curve = "concave" if float(np.mean(yn - x / x[-1])) > 0 else "convex"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # kneed warns when it finds no knee; we fall back below
        knee = KneeLocator(x, y, S=1.0, curve=curve, direction="increasing").knee
    if knee is None:
        knee = 1 + int(np.argmax(np.abs(yn[:-2] - 2 * yn[1:-1] + yn[2:])))
    return float(y[round(float(knee))])


def _ranked_per_sample(
    entropy: np.ndarray, sums: np.ndarray, tau: float | None, criterion: Criterion
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample head order best-first ``[n_samples, n_heads]`` and whether each ranked head was eligible."""
    n_samples, n_heads = sums.shape
    eligible = np.ones((n_samples, n_heads), dtype=bool)
    if criterion in ("both", "sum") and tau is not None:
        eligible &= (sums.mean(axis=0) >= tau)[None, :]  # tau filters on the heads' MEAN S_img
    if criterion in ("both", "entropy"):
        eligible &= np.isfinite(entropy)
        primary = np.where(eligible, entropy, np.inf)
        secondary = -np.nan_to_num(sums, nan=-np.inf)  # ties (e.g. many H = 0): higher S_img first
    else:
        eligible &= np.isfinite(sums)
        primary = np.where(eligible, -sums, np.inf)
        secondary = np.where(np.isfinite(entropy), entropy, np.inf)  # ties: lower entropy first
    index = np.broadcast_to(np.arange(n_heads), (n_samples, n_heads))
    order = np.lexsort((index, secondary, ~eligible, primary), axis=-1)
    return order, np.take_along_axis(eligible, order, axis=-1)


def select_heads(
    entropy,
    sums,
    tau: float | None,
    per_sample: int = 10,
    criterion: Criterion = "both",
    mode: Mode = "fixed",
) -> np.ndarray:
    """Per-sample votes -> how many samples chose each head (int array, the heads' shape, e.g. ``[n_heads]``).

    ``entropy``/``sums`` are ``[n_samples, *heads]``. Heads whose MEAN ``S_img`` >= ``tau`` compete
    (``tau=None``: no filter). ``criterion``: ``"both"`` = tau filter then lowest entropy (the paper);
    ``"sum"`` = tau filter then highest per-sample ``S_img``; ``"entropy"`` = lowest entropy, no tau filter.
    Ties: ``"both"``/``"entropy"`` prefer higher ``S_img``, ``"sum"`` lower entropy, then the lower flat index.
    Heads with an infinite entropy (no component) never win on entropy.

    ``mode="fixed"``: each sample votes for its ``per_sample`` best eligible heads (fewer if fewer are eligible).
    ``mode="greedy"`` (Table 5's per-sample alternative to a fixed head count): each sample votes for its single
    best head only (``per_sample`` is ignored), i.e. the frequency of being *the* best head for a sample.
    """
    if criterion not in ("both", "sum", "entropy"):
        raise ValueError(f"criterion must be 'both', 'sum' or 'entropy', got {criterion!r}")
    if mode not in ("fixed", "greedy"):
        raise ValueError(f"mode must be 'fixed' or 'greedy', got {mode!r}")
    entropy, sums = _to_numpy(entropy), _to_numpy(sums)
    if entropy.shape != sums.shape or entropy.ndim < 2:
        raise ValueError(f"entropy {entropy.shape} and sums {sums.shape} must both be [n_samples, *heads]")
    head_shape = sums.shape[1:]
    n_samples, n_heads = sums.shape[0], int(np.prod(head_shape))
    k = 1 if mode == "greedy" else int(per_sample)
    if k < 1:
        raise ValueError(f"per_sample must be >= 1, got {per_sample}")
    if n_samples == 0:
        return np.zeros(head_shape, dtype=np.int64)
    order, ok = _ranked_per_sample(entropy.reshape(n_samples, -1), sums.reshape(n_samples, -1), tau, criterion)
    chosen = order[:, :k][ok[:, :k]]
    return np.bincount(chosen, minlength=n_heads).reshape(head_shape)


def selection_frequency(counts, n_samples: int) -> np.ndarray:
    """Fraction of the samples that chose each head: ``counts / n_samples``."""
    if n_samples <= 0:
        raise ValueError(f"n_samples must be positive, got {n_samples}")
    return _to_numpy(counts) / float(n_samples)


def finite_mean(values, axis: int = 0) -> np.ndarray:
    """Mean over ``axis`` of the finite entries only (``nan`` where none), e.g. mean entropy ignoring ``inf``."""
    values = _to_numpy(values)
    finite = np.isfinite(values)
    count = finite.sum(axis=axis)
    total = np.where(finite, values, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def top_heads(frequency, mean_entropy, k: int = 3) -> list:
    """The ``k`` most frequently selected heads (frequency > 0), ties broken by lower mean entropy, then index.

    ``[layers, heads]`` arrays give ``(layer, head)`` tuples; 1-D arrays give flat indices.
    """
    frequency, mean_entropy = _to_numpy(frequency), _to_numpy(mean_entropy)
    if frequency.shape != mean_entropy.shape or frequency.ndim not in (1, 2):
        raise ValueError(f"frequency {frequency.shape} and mean_entropy {mean_entropy.shape} must match, 1-D or 2-D")
    f, e = frequency.ravel(), np.nan_to_num(mean_entropy.ravel(), nan=np.inf)
    order = np.lexsort((np.arange(f.size), e, -f))
    order = [int(i) for i in order if f[i] > 0][: max(int(k), 0)]
    if frequency.ndim == 1:
        return order
    return [tuple(int(v) for v in np.unravel_index(i, frequency.shape)) for i in order]


def pseudo_mask_iou(maps, target_grid) -> np.ndarray:
    """IoU of each map's pseudo-mask ``map > mean(map)`` with the target on the grid -> ``[...]``.

    ``target_grid`` (broadcastable to the maps): a bool ``[rows, cols]`` mask, or an area-coverage map (e.g.
    ``GridGeometry.mask_to_grid``) binarised at ``>= 0.5``. An empty union gives 0.
    """
    maps = _to_numpy(maps)
    _check_maps(maps)
    target = np.asarray(target_grid)
    if target.dtype != bool:
        target = _to_numpy(target) >= 0.5
    pred = maps > maps.mean(axis=(-2, -1), keepdims=True)
    inter = np.logical_and(pred, target).sum(axis=(-2, -1))
    union = np.logical_or(pred, target).sum(axis=(-2, -1))
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def rank_iou_correlation(frequency, mean_iou, min_frequency: float = 0.01) -> tuple[float, int]:
    """Spearman rho between selection frequency and mean pseudo-mask IoU over heads chosen >= ``min_frequency``.

    Returns ``(rho, n_heads_used)``; rho > 0 means more frequently chosen heads localize better (rank 1 = most
    frequent, so rho against the rank itself is ``-rho``). ``nan`` with fewer than 3 heads or constant inputs.
    """
    f, iou = _to_numpy(frequency).ravel(), _to_numpy(mean_iou).ravel()
    if f.shape != iou.shape:
        raise ValueError(f"frequency {f.shape} and mean_iou {iou.shape} must have the same size")
    keep = (f >= min_frequency) & np.isfinite(iou) & np.isfinite(f)
    n = int(keep.sum())
    if n < 3 or np.ptp(f[keep]) == 0 or np.ptp(iou[keep]) == 0:
        return float("nan"), n
    from scipy.stats import spearmanr  # lazy: scipy.stats is slow to import

    rho = spearmanr(f[keep], iou[keep]).statistic
    return float(rho), n
