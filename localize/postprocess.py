"""Localization-head attention maps -> box, mask and heatmap in original-image pixels (Kang et al., CVPR 2025, §5).

Pipeline (:func:`maps_to_grounding`): Gaussian-smooth each head's ``[rows, cols]`` map, sum over heads, resample
the sum to the original image through :meth:`GridGeometry.to_image` (padding dropped), binarize it (at its mean by
default), split the binary map into 8-connected components, keep the component whose convex hull is largest, and
return the tight box around that hull.

Paper (Kang et al. §5, Fig. 7; appendix B.2): Gaussian smoothing with kernel 7 and sigma 1.0, element-wise sum of
the k heads' maps, binarisation at the mean, the convex hull (Graham [13]) of each component, the largest hull kept,
its tight bounding box; for RES that box prompts SAM (``refine/``). Where we differ, one line each:

- smoothing scales with the grid (kernel and sigma x min(rows, cols) / 24; the paper's values are LLaVA-1.5's 24x24);
- the summed map is resampled to the image before binarising (the paper does not say at which resolution);
- equal hull areas go to the component with more attention mass (the paper is silent);
- the mask without SAM (``mask_mode``) is ours: the paper's RES masks come from SAM.

Conventions: boxes are (x0, y0, x1, y1) in continuous pixels (pixel ``x`` spans ``[x, x + 1)``), so a component
covering columns 10..19 has ``x0 = 10, x1 = 20``. A component's convex hull is taken over its pixels' corners, so
a single pixel has hull area 1 and the hull's tight box equals the component's bounding box.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import cv2
import numpy as np
from scipy import ndimage

from .errors import InputError
from .geometry import GridGeometry

# The paper's smoothing values were chosen for LLaVA-1.5's 24x24 grid.
REFERENCE_GRID = 24
_CORNERS = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=np.int32)
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class GroundingSettings:
    """Post-processing settings (recorded in outputs via :meth:`to_dict`).

    ``kernel``/``sigma``: Gaussian smoothing of each head map on the grid (sigma 0 disables smoothing). With
    ``scale_to_grid`` (default) both scale with the grid relative to the paper's 24x24 (LLaVA-1.5's grid, where
    they are unchanged; a 7-cell kernel would swamp a 16x16 grid): ``m = min(rows, cols)``,
    kernel = max(1, odd(round(kernel * m / 24))) (odd(n) = n if n is odd else n + 1), sigma = sigma * m / 24.
    ``threshold``: ``"mean"`` keeps pixels strictly above the mean of the upsampled summed map; a float ``f`` in
    (0, 1] keeps pixels whose normalised heatmap is >= ``f`` (``min + f * (max - min)``; ``f * max`` for maps
    whose minimum is 0). ``mask_mode``: ``"hull"`` = filled convex hull of the kept component,
    ``"component"`` = the kept component's pixels, ``"binary"`` = the whole binarized map (all components).
    ``view``: which image view's maps ground, for families with several (tiles and a thumbnail, a hi-res grid
    and a base view): ``"default"`` = the adapter's first, the finest view covering the whole image; a view's
    name; or ``"fuse"`` = every view's summed map resampled into original-image pixels, normalised and averaged.
    """

    kernel: int = 7
    sigma: float = 1.0
    scale_to_grid: bool = True
    threshold: str | float = "mean"
    mask_mode: str = "hull"
    view: str = "default"

    def __post_init__(self) -> None:
        if int(self.kernel) != self.kernel or self.kernel < 1 or self.kernel % 2 == 0:
            raise InputError(f"kernel must be a positive odd integer, got {self.kernel!r}")
        if not self.sigma >= 0:
            raise InputError(f"sigma must be >= 0, got {self.sigma!r}")
        if isinstance(self.threshold, str):
            if self.threshold != "mean":
                raise InputError(f"threshold must be 'mean' or a fraction of the max in (0, 1], got {self.threshold!r}")
        elif not 0.0 < float(self.threshold) <= 1.0:
            raise InputError(f"threshold fraction must be in (0, 1], got {self.threshold!r}")
        if self.mask_mode not in ("hull", "component", "binary"):
            raise InputError(f"mask_mode must be 'hull', 'component' or 'binary', got {self.mask_mode!r}")
        if not isinstance(self.view, str) or not self.view:
            raise InputError(f"view must be 'default', 'fuse' or a view's name, got {self.view!r}")

    def smoothing_for(self, rows: int, cols: int) -> tuple[int, float]:
        """The (kernel, sigma) used on a ``rows x cols`` grid (scaled when ``scale_to_grid``)."""
        if not self.scale_to_grid:
            return int(self.kernel), float(self.sigma)
        ratio = min(rows, cols) / REFERENCE_GRID
        kernel = max(1, round(self.kernel * ratio))
        kernel += 1 - kernel % 2
        return kernel, float(self.sigma) * ratio

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        return asdict(self)


class Grounding(NamedTuple):
    """Result of :func:`maps_to_grounding`; all arrays are at the original image size ``[H, W]``.

    ``score`` is the fraction of the normalised heatmap's mass inside the kept component (0 when nothing is found).
    """

    box: tuple[float, float, float, float]
    mask: np.ndarray
    heatmap: np.ndarray
    score: float


def _as_array(maps: object) -> np.ndarray:
    """numpy or torch (any device/dtype) -> float32 numpy."""
    if hasattr(maps, "detach"):
        maps = maps.detach().float().cpu().numpy()
    return np.asarray(maps, dtype=np.float32)


def smooth_maps(maps: np.ndarray, kernel: int = 7, sigma: float = 1.0) -> np.ndarray:
    """Gaussian-smooth each ``[rows, cols]`` map of ``maps [k, rows, cols]`` (or one 2-D map); float32 out.

    Kang et al. §5 and appendix B.2 (kernel 7, sigma 1.0; Table 8 ablates both).

    ``cv2.GaussianBlur`` with ksize ``(kernel, kernel)`` and ``sigma`` on both axes; borders reflect without
    repeating the edge cell (``BORDER_REFLECT_101``, as torchvision's ``gaussian_blur``). ``sigma == 0`` or
    ``kernel == 1`` returns the maps unchanged (OpenCV would otherwise derive sigma from the kernel).
    """
    maps = _as_array(maps)
    if maps.ndim not in (2, 3):
        raise InputError(f"maps must be [k, rows, cols] or [rows, cols], got shape {maps.shape}")
    if sigma <= 0 or kernel <= 1:
        return maps.copy()
    if kernel % 2 == 0:
        raise InputError(f"kernel must be odd, got {kernel}")
    stack = maps[None] if maps.ndim == 2 else maps
    out = np.stack(
        [
            cv2.GaussianBlur(m, (kernel, kernel), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
            for m in stack
        ]
    )
    return out[0] if maps.ndim == 2 else out


def _corner_hull(component: np.ndarray) -> np.ndarray:
    """``[n, 2]`` (x, y) vertices of the convex hull of a (cropped) component's pixel corners (OpenCV: the outer
    contours' points, each pixel's four corners, ``convexHull``)."""
    contours, _ = cv2.findContours(component.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    points = np.concatenate([c.reshape(-1, 2) for c in contours])
    corners = (points[:, None, :] + _CORNERS[None]).reshape(-1, 2)
    return cv2.convexHull(corners).reshape(-1, 2)


def _component_hull_area(component: np.ndarray) -> float:
    """Area of the convex hull of a (cropped) component's pixel corners."""
    return float(cv2.contourArea(_corner_hull(component)))


def _hull_mask(component: np.ndarray) -> np.ndarray:
    """The pixels of a (cropped) component's box whose centres lie in (or on) the hull of its pixel corners: per
    row, the hull's span at the row's centre line, then the columns whose centres fall in it."""
    hull = _corner_hull(component).astype(np.float64)
    x0, y0 = hull[:, 0], hull[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    centres_y = np.arange(component.shape[0])[:, None] + 0.5  # never on a vertex: those are integers
    crosses = (centres_y > np.minimum(y0, y1)) & (centres_y < np.maximum(y0, y1))
    xs = x0 + (centres_y - y0) / np.where(y1 != y0, y1 - y0, 1.0) * (x1 - x0)
    left = np.where(crosses, xs, np.inf).min(axis=1, keepdims=True)
    right = np.where(crosses, xs, -np.inf).max(axis=1, keepdims=True)
    centres_x = np.arange(component.shape[1]) + 0.5
    return (centres_x >= left - 1e-9) & (centres_x <= right + 1e-9)


def maps_to_grounding(maps: np.ndarray, geometry: GridGeometry, settings: GroundingSettings | None = None) -> Grounding:
    """Head maps ``[k, rows, cols]`` -> :class:`Grounding` (box, mask, heatmap, score) in original-image pixels.

    Kang et al. §5 (Fig. 7) and appendix B.2; differences from the paper are listed in the module docstring.

    A constant (or all-zero/non-finite) summed map carries no location: it yields the whole-image box, an empty
    mask, an all-zero heatmap and score 0.
    """
    settings = settings or GroundingSettings()
    upsampled, covered = image_map(maps, geometry, settings)
    return image_map_to_grounding(upsampled, covered, settings)


def fuse_views(views: list[tuple[np.ndarray, GridGeometry]], settings: GroundingSettings | None = None) -> Grounding:
    """Several views' head maps of one image -> one :class:`Grounding`: each view's summed, smoothed map resampled
    into original-image pixels and scaled to [0, 1] over the pixels it covers, then averaged where views cover."""
    settings = settings or GroundingSettings()
    total, count = None, None
    for maps, geometry in views:
        upsampled, covered = image_map(maps, geometry, settings)
        if total is None:
            total, count = np.zeros_like(upsampled), np.zeros(upsampled.shape, np.int32)
        scaled = _scaled(upsampled, covered)
        if scaled is not None:  # a view whose map is flat carries no location: it does not vote
            total += scaled
            count += covered
    if total is None:
        raise InputError("no views to fuse")
    covered = count > 0
    return image_map_to_grounding(np.where(covered, total / np.maximum(count, 1), 0.0), covered, settings)


def image_map(maps: np.ndarray, geometry: GridGeometry, settings: GroundingSettings) -> tuple[np.ndarray, np.ndarray]:
    """Head maps ``[k, rows, cols]`` smoothed on the grid, summed and resampled to the image: (map, covered), both
    ``[H, W]``; ``covered`` marks the pixels some cell covers (a centre crop's margins are not)."""
    maps = np.nan_to_num(_as_array(maps), nan=0.0, posinf=0.0, neginf=0.0)
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3 or maps.shape[1:] != (geometry.rows, geometry.cols):
        raise InputError(f"maps of shape {maps.shape} do not match the grid {(geometry.rows, geometry.cols)}")
    if maps.shape[0] == 0:
        empty = np.zeros((geometry.height, geometry.width))
        return empty, empty.astype(bool)
    kernel, sigma = settings.smoothing_for(geometry.rows, geometry.cols)
    summed = smooth_maps(maps, kernel, sigma).sum(axis=0)
    covered = geometry.to_image(np.ones_like(summed), interpolation="nearest") > 0.5
    return geometry.to_image(summed), covered


def _scaled(upsampled: np.ndarray, covered: np.ndarray) -> np.ndarray | None:
    """``upsampled`` scaled to [0, 1] over the covered pixels (0 elsewhere); None when it is flat there (or nothing
    is covered): such a map carries no location."""
    values = upsampled[covered]
    if values.size == 0:
        return None
    low, high = float(values.min()), float(values.max())
    if not high - low > 1e-6 * max(abs(high), abs(low), 1e-12):
        return None
    return np.where(covered, (upsampled - low) / (high - low), 0.0)


def image_map_to_grounding(upsampled: np.ndarray, covered: np.ndarray, settings: GroundingSettings) -> Grounding:
    """An image-sized map -> box, mask, heatmap and score: binarise (over covered pixels), 8-connected components,
    the largest convex hull, its tight box."""
    height, width = upsampled.shape
    whole = (0.0, 0.0, float(width), float(height))
    nothing = Grounding(whole, np.zeros((height, width), bool), np.zeros((height, width), np.float32), 0.0)
    scaled = _scaled(upsampled, covered)
    if scaled is None:
        return nothing
    heatmap = scaled.astype(np.float32)

    if settings.threshold == "mean":
        binary = covered & (upsampled > upsampled[covered].mean())
    else:
        binary = covered & (heatmap >= float(settings.threshold))
    labels, count = ndimage.label(binary, structure=_EIGHT)
    if count == 0:
        return Grounding(whole, np.zeros((height, width), bool), heatmap, 0.0)

    # Largest hull wins; ties go to the component with more attention mass, then to the lower label.
    slices = ndimage.find_objects(labels)
    masses = np.bincount(labels.ravel(), weights=heatmap.ravel(), minlength=count + 1)[1:]
    best = max(
        range(count),
        key=lambda i: (_component_hull_area(labels[slices[i]] == i + 1), masses[i], -i),
    )
    rows_slice, cols_slice = slices[best]
    box = (float(cols_slice.start), float(rows_slice.start), float(cols_slice.stop), float(rows_slice.stop))
    component = labels == best + 1

    if settings.mask_mode == "binary":
        mask = binary
    elif settings.mask_mode == "component":
        mask = component
    else:
        # Pixels whose centres lie in the hull of the component's pixel corners (stays inside ``box``).
        mask = np.zeros((height, width), dtype=bool)
        mask[rows_slice, cols_slice] = _hull_mask(component[rows_slice, cols_slice])
    total = float(heatmap.sum())
    score = float(masses[best]) / total if total > 0 else 0.0
    return Grounding(box, mask, heatmap, score)


def mask_to_rle(mask: np.ndarray) -> dict:
    """``[H, W]`` bool mask -> JSON-friendly COCO RLE (``counts`` as an ASCII string)."""
    from pycocotools import mask as mask_utils

    mask = np.asarray(mask)
    as_bytes = mask.view(np.uint8) if mask.dtype == np.bool_ else mask.astype(np.uint8)  # a bool mask: no copy
    rle = mask_utils.encode(np.asfortranarray(as_bytes))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_to_mask(rle: dict) -> np.ndarray:
    """Inverse of :func:`mask_to_rle`: ``[H, W]`` bool."""
    from pycocotools import mask as mask_utils

    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)
