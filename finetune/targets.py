"""Supervision targets: a sample's mask (or box) on the adapter's image-token grid.

A cell's value is the fraction of it the object covers (area-averaged through :class:`~localize.GridGeometry`, so
padding and cropped-away parts count as uncovered); optional Gaussian smoothing on the grid; for the KL loss the
grid is normalized to sum 1 (the cosine loss is scale-invariant and does not care).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch

from localize.geometry import GridGeometry


def smooth_grid(grid: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-smooth a ``[rows, cols]`` grid with ``sigma`` in cells (0: unchanged); mass leaving the grid is lost."""
    if sigma <= 0:
        return np.asarray(grid, dtype=np.float32)
    kernel = 2 * int(np.ceil(3 * sigma)) + 1
    return cv2.GaussianBlur(
        np.asarray(grid, dtype=np.float32), (kernel, kernel), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_CONSTANT
    )


def normalize_grid(grid: np.ndarray | torch.Tensor, eps: float = 1e-12) -> np.ndarray | torch.Tensor:
    """``grid / grid.sum()`` (a probability map); an all-zero grid stays zero."""
    total = grid.sum()
    return grid / max(float(total), eps)


def _center_cell(geometry: GridGeometry, box: tuple[float, float, float, float]) -> tuple[int, int]:
    """The grid cell holding the box centre (clamped to the grid)."""
    cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
    col = int(np.floor((cx - geometry.x_offset) / geometry.x_scale))
    row = int(np.floor((cy - geometry.y_offset) / geometry.y_scale))
    return min(max(row, 0), geometry.rows - 1), min(max(col, 0), geometry.cols - 1)


def target_grid(
    geometry: GridGeometry,
    mask: np.ndarray | None = None,
    box: tuple[float, float, float, float] | None = None,
    *,
    sigma: float = 0.0,
    normalize: bool = True,
) -> np.ndarray:
    """``[rows, cols]`` float32 target from ``mask`` (``[H, W]``) or, without one, ``box``; smoothed, then normalized.

    An object too small to cover any cell (or an empty mask) falls back to its box, then to the cell of its centre.
    """
    if mask is None and box is None:
        raise ValueError("target_grid needs a mask or a box")
    grid = geometry.mask_to_grid(mask) if mask is not None else geometry.box_to_grid(box)
    if not grid.sum() > 0 and mask is not None and box is not None:
        grid = geometry.box_to_grid(box)
    if not grid.sum() > 0:
        if box is None:
            ys, xs = np.nonzero(mask)
            box = (
                (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) if xs.size else (0, 0, geometry.width, geometry.height)
            )
        grid = np.zeros((geometry.rows, geometry.cols), dtype=np.float32)
        grid[_center_cell(geometry, box)] = 1.0
    grid = smooth_grid(grid, sigma)
    return normalize_grid(grid).astype(np.float32) if normalize else grid.astype(np.float32)


def sample_target(sample: Any, geometry: GridGeometry, *, sigma: float = 0.0, use_mask: bool = True) -> torch.Tensor:
    """Target of a :class:`~localize.data.sample.GroundingSample` (mask when it has one, else box), summing to 1."""
    mask = sample.mask() if use_mask and sample.has_mask else None
    return torch.from_numpy(target_grid(geometry, mask, tuple(sample.box), sigma=sigma, normalize=True))
