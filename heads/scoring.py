"""Head-discovery math of Kang et al. (CVPR 2025), "Your Large Vision-Language Model Only Needs A Few Attention Heads
For Visual Grounding".

Every function takes query-to-image attention maps as ``[..., rows, cols]`` (numpy or torch; any leading dims, e.g.
``[layers, heads]`` or ``[n_captured]``) and returns numpy. Per head and sample:

* ``S_img`` (:func:`attention_sum`, sec. 4.1 criterion 1): the query token's total attention over the image tokens.
  Heads whose mean ``S_img`` over the samples reaches ``tau`` (:func:`max_curvature_threshold`, Fig. 3) attend to
  the image at all.
* spatial entropy (:func:`spatial_entropy`, criterion 2, eq. 3 and appendix B.1 eqs. 4-7): how scattered the
  above-mean attention is; a localization head puts it in one compact blob (entropy 0).
* :func:`select_heads` lets each sample vote for its best heads (sec. 4.2, Fig. 5); the most frequently chosen are
  the localization heads (:func:`selection_frequency`, :func:`top_heads`, sec. 5).

Where the official code (``seilk/LocalizationHeads``) differs from the paper, the paper is the default and the
code is an option: ``weighting="official"``; its tau bug (head index compared with head indices) is not offered,
only the chord elbow it computes (``method="chord"``, the default). See ``benchmarks/discovery_sim.py``.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
from scipy import ndimage

Criterion = Literal["both", "sum", "entropy"]
Mode = Literal["fixed", "greedy"]

__all__ = [
    "TAU_METHODS",
    "TIE_RULES",
    "WEIGHTINGS",
    "attention_sum",
    "check_weighting",
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
    """``S_img`` (sec. 4.1, criterion 1): the query's attention summed over the image tokens ``rows, cols``."""
    maps = _to_numpy(maps)
    _check_maps(maps)
    return maps.sum(axis=(-2, -1))


WEIGHTINGS = ("size", "official", "component-mass")
Weighting = Literal["size", "official", "component-mass"]
OFFICIAL_THRESHOLD = 0.001  # the official spatial_entropy's default binarisation threshold on ReLU(map - mean)


def check_weighting(weighting: str) -> str:
    """``weighting`` if known; a one-line error naming the replacement for the retired ``"mass"``."""
    if weighting == "mass":
        raise ValueError(
            "weighting 'mass' was retired: it was neither the paper's entropy nor the official code's; use "
            "'official' (the official code exactly) or 'component-mass' (P = component mass / mass of all components)"
        )
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}; got {weighting!r}")
    return weighting


def spatial_entropy(
    maps, connectivity: int = 8, weighting: Weighting = "size", threshold: float | None = None
) -> np.ndarray:
    """Spatial entropy of each map ``[..., rows, cols]`` -> ``[...]`` (Kang et al. eq. 3, appendix B.1 eqs. 4-7).

    ``A = ReLU(map - mean(map))`` (eq. 4); components ``C_n`` of ``A > threshold`` (8- or 4-connected, eq. 5);
    ``H = -sum P ln P`` (eq. 6) with, by ``weighting``:

    * ``"size"`` (the paper, eq. 7): ``P(C_n) = |C_n| / sum |C_n|``; ``+inf`` where no component (constant map).
    * ``"official"``: the official ``spatial_entropy`` exactly, quirks included: ``threshold`` 0.001 by default,
      ``P(C_n) = sum_{C_n} A / sum A`` where ``sum A`` runs over *all* positive above-mean values (those under the
      threshold too, so the P need not sum to 1), ``0`` (the best score) when no component passes the threshold,
      ``+inf`` when ``sum A <= 0``.
    * ``"component-mass"``: ``P(C_n) = sum_{C_n} A / sum over all components of A`` (a proper distribution of the
      kept mass); ``+inf`` where no component.

    ``threshold`` defaults to 0 (``"size"``, ``"component-mass"``) or 0.001 (``"official"``).
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    check_weighting(weighting)
    if threshold is None:
        threshold = OFFICIAL_THRESHOLD if weighting == "official" else 0.0
    maps = _to_numpy(maps)
    _check_maps(maps)
    lead, (rows, cols) = maps.shape[:-2], maps.shape[-2:]
    flat = maps.reshape(-1, rows, cols)
    n_maps = flat.shape[0]
    above = np.maximum(flat - flat.mean(axis=(-2, -1), keepdims=True), 0.0)
    foreground = above > threshold

    # One label call for all maps: the 3-D structure connects pixels within a map only (middle plane).
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    labels, n_comp = ndimage.label(foreground, structure=structure)
    entropy = np.full(n_maps, np.inf)
    if weighting == "official":
        positive = above.reshape(n_maps, -1).sum(axis=1)
        entropy[positive > 0] = 0.0  # no component past the threshold: 0, the official code's best score
    if n_comp:
        labels = labels.ravel()
        weights = None if weighting == "size" else above.ravel()
        comp_weight = np.bincount(labels, weights=weights, minlength=n_comp + 1)[1:].astype(np.float64)
        # Map that each component lies in: label numbers follow raster order (first appearance), so map i holds
        # labels (max label of maps < i, max label of maps <= i].
        last = np.maximum.accumulate(labels.reshape(n_maps, -1).max(axis=1))
        comp_map = np.repeat(np.arange(n_maps), np.diff(last, prepend=0))
        total = positive if weighting == "official" else np.bincount(comp_map, weights=comp_weight, minlength=n_maps)
        p = comp_weight / total[comp_map]
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
        h = -np.bincount(comp_map, weights=plogp, minlength=n_maps)
        has_comp = np.bincount(comp_map, minlength=n_maps) > 0
        entropy[has_comp] = np.maximum(h[has_comp], 0.0)  # clamp -0.0 / rounding
    return entropy.reshape(lead)


TAU_METHODS = ("chord", "kneedle-smooth", "kneedle", "curvature")
TauMethod = Literal["chord", "kneedle-smooth", "kneedle", "curvature"]


def _sorted_curve(values) -> np.ndarray:
    y = np.sort(_to_numpy(values).ravel())
    y = y[np.isfinite(y)]
    if y.size == 0:
        raise ValueError("max_curvature_threshold needs at least one finite value")
    return y


def _kneedle(x: np.ndarray, y: np.ndarray, yn: np.ndarray) -> float | None:
    """Offline Kneedle (kneed, ``S=1``) on ``y``; the curve side from the mean sign of the normalised gap."""
    from kneed import KneeLocator

    curve = "concave" if float(np.mean(yn - x / x[-1])) > 0 else "convex"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # kneed warns when it finds no knee; the caller falls back
        return KneeLocator(x, y, S=1.0, curve=curve, direction="increasing").knee


def _fitted_curvature(x: np.ndarray, yn: np.ndarray) -> int:
    """Index of the largest curvature ``|y''| / (1 + y'^2)^1.5`` of a smoothing spline (GCV) on the unit square."""
    from scipy.interpolate import make_smoothing_spline

    xn = x / x[-1]
    spline = make_smoothing_spline(xn, yn)
    d1, d2 = spline.derivative(1)(xn), spline.derivative(2)(xn)
    return int(np.argmax(np.abs(d2) / (1.0 + d1**2) ** 1.5))


def max_curvature_threshold(values, method: TauMethod = "chord") -> float:
    """``tau`` (Kang et al. sec. 4.1, Fig. 3): the mean ``S_img`` at the bend of the heads' ascending-sorted curve.

    Non-finite values are dropped; ``y`` sorted ascending, ``x = i``, both normalised to the unit square.
    ``method`` (chosen on measured curves; see ``benchmarks/discovery_sim.py``):

    * ``"chord"`` (default): the point farthest from the chord joining the first and last points (below it for a
      convex curve, above it for a concave one, whichever side is farther) -- the global maximum of Kneedle's
      difference curve, and the official code's ``find_elbow_point`` applied to the ``S_img`` values (that code
      returns the *head index* found there and compares flat head indices with it: a bug not reproduced here).
    * ``"kneedle-smooth"``: Kneedle (kneed, ``S=1``, offline) on the curve smoothed by a Gaussian of
      ``sigma = n / 100`` points.
    * ``"kneedle"``: Kneedle on the raw curve (this toolkit's earlier default). On a noisy convex curve it stops at
      the first wiggle counted from the top: ``tau`` lands in the tail.
    * ``"curvature"``: the largest curvature of a smoothing spline fitted to the normalised curve -- the literal
      "maximum curvature"; it sits below the bend (for ``x**6``: 0.063 where the bend is 0.117).

    Kneedle finding no knee falls back to ``"chord"``. Fewer than 3 values or a constant curve: ``min(values)``.
    """
    if method not in TAU_METHODS:
        raise ValueError(f"tau method must be one of {', '.join(TAU_METHODS)}; got {method!r}")
    y = _sorted_curve(values)
    if y.size < 3 or y[-1] == y[0]:
        return float(y[0])
    x = np.arange(y.size, dtype=np.float64)
    yn = (y - y[0]) / (y[-1] - y[0])
    knee = None
    if method == "kneedle":
        knee = _kneedle(x, y, yn)
    elif method == "kneedle-smooth":
        from scipy.ndimage import gaussian_filter1d

        smooth = gaussian_filter1d(y, sigma=max(1.0, y.size / 100), mode="nearest")
        knee = _kneedle(x, smooth, yn)
    elif method == "curvature":
        knee = _fitted_curvature(x, yn)
    if knee is None:
        gap = yn - x / x[-1]
        knee = int(np.argmin(gap)) if -gap.min() >= gap.max() else int(np.argmax(gap))
    return float(y[round(float(knee))])


TIE_RULES = ("mean-entropy", "s_img", "index")
TieRule = Literal["mean-entropy", "s_img", "index"]


def _tie_keys(tie, entropy: np.ndarray, sums: np.ndarray) -> np.ndarray:
    """Secondary sort keys (lower first) ``[n_samples, n_heads]`` among heads of equal entropy."""
    if isinstance(tie, str):
        if tie == "mean-entropy":  # the head's entropy over all samples: consistently compact heads first
            mean = np.nan_to_num(finite_mean(entropy), nan=np.inf)
            return np.broadcast_to(mean, sums.shape)
        if tie == "s_img":
            return -np.nan_to_num(sums, nan=-np.inf)
        if tie == "index":
            return np.zeros(sums.shape)
        raise ValueError(f"tie must be one of {', '.join(TIE_RULES)} or an array of keys; got {tie!r}")
    keys = _to_numpy(tie)
    if keys.size != sums.size:
        raise ValueError(f"tie keys have {keys.size} values, expected one per sample and head ({sums.size})")
    return keys.reshape(sums.shape)


def _ranked_per_sample(
    entropy: np.ndarray, sums: np.ndarray, tau: float | None, criterion: Criterion, tie
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample head order best-first ``[n_samples, n_heads]`` and whether each ranked head was eligible."""
    n_samples, n_heads = sums.shape
    eligible = np.ones((n_samples, n_heads), dtype=bool)
    if criterion in ("both", "sum") and tau is not None:
        eligible &= (sums.mean(axis=0) >= tau)[None, :]  # tau filters on the heads' MEAN S_img
    if criterion in ("both", "entropy"):
        eligible &= np.isfinite(entropy)
        primary = np.where(eligible, entropy, np.inf)
        secondary = _tie_keys(tie, entropy, sums)
        by_index = isinstance(tie, str) and tie == "index"
        tertiary = np.zeros(sums.shape) if by_index else -np.nan_to_num(sums, nan=-np.inf)  # then higher S_img
    else:
        eligible &= np.isfinite(sums)
        primary = np.where(eligible, -sums, np.inf)
        secondary = np.where(np.isfinite(entropy), entropy, np.inf)  # ties: lower entropy first
        tertiary = np.zeros(sums.shape)
    index = np.broadcast_to(np.arange(n_heads), (n_samples, n_heads))
    order = np.lexsort((index, tertiary, secondary, ~eligible, primary), axis=-1)
    return order, np.take_along_axis(eligible, order, axis=-1)


def select_heads(
    entropy,
    sums,
    tau: float | None,
    per_sample: int = 10,
    criterion: Criterion = "both",
    mode: Mode = "fixed",
    tie: TieRule | np.ndarray = "mean-entropy",
) -> np.ndarray:
    """Per-sample votes -> how many samples chose each head (int array, the heads' shape, e.g. ``[n_heads]``).

    Kang et al. sec. 4.2 / Fig. 5. ``entropy``/``sums`` are ``[n_samples, *heads]``. Heads whose MEAN ``S_img``
    >= ``tau`` compete (``tau=None``: no filter). ``criterion``: ``"both"`` = tau filter then lowest entropy (the
    paper); ``"sum"`` = tau filter then highest per-sample ``S_img``; ``"entropy"`` = lowest entropy, no tau filter.
    Heads with an infinite entropy (no component) never win on entropy.

    Ties at equal entropy (the paper is silent; with the size weighting every single-component map scores 0),
    ``tie``: ``"mean-entropy"`` (default, chosen on the planted-heads simulator) = lower entropy of the head
    averaged over all samples, then higher ``S_img``; ``"s_img"`` = higher per-sample ``S_img``; ``"index"`` = the
    lower flat index (the official code's stable sort); or an array of keys like ``entropy`` (lower first). The
    flat index decides what is still tied. ``criterion="sum"`` breaks its ties by lower entropy.

    ``mode="fixed"``: each sample votes for its ``per_sample`` best eligible heads (fewer if fewer are eligible).
    ``mode="greedy"`` (after Table 5's per-sample alternative to a fixed head count): each sample votes for its
    single best head only (``per_sample`` is ignored), i.e. the frequency of being *the* best head for a sample.
    Differs: the paper's greedy (appendix A) grounds each sample with its own top-k heads, with no vote at all.
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
    flat_e, flat_s = entropy.reshape(n_samples, -1), sums.reshape(n_samples, -1)
    order, ok = _ranked_per_sample(flat_e, flat_s, tau, criterion, tie)
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
    """The ``k`` most frequently selected heads (sec. 5; frequency > 0), ties by lower mean entropy, then index.

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
    """IoU of each map's pseudo-mask ``map > mean(map)`` with the target on the grid (sec. 4.2, appendix A).

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
    """Spearman rho of selection frequency vs mean pseudo-mask IoU, heads chosen >= ``min_frequency`` (Fig. 6b).

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
