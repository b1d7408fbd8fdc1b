"""Mapping between a model's image-token grid and the original image's pixels.

Every supported preprocessing (LLaVA's pad-to-square or resize + center-crop, Qwen's resize to multiples of
the patch size) is an axis-aligned affine map, so one model-agnostic type serves all adapters:

    x_pixel = x_offset + x_scale * x_grid        y_pixel = y_offset + y_scale * y_grid

where grid coordinates are in cells (cell ``c`` spans ``[c, c + 1)``) and pixel coordinates are continuous
(pixel ``x`` spans ``[x, x + 1)``). Adapters build it from the processor's own settings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class GridGeometry:
    """Affine grid <-> pixel map for one image; ``image_size`` is the original (width, height)."""

    rows: int
    cols: int
    image_size: tuple[int, int]
    x_scale: float
    y_scale: float
    x_offset: float = 0.0
    y_offset: float = 0.0

    @classmethod
    def squashed(cls, rows: int, cols: int, image_size: tuple[int, int]) -> GridGeometry:
        """The whole image resized onto the grid (no pad, no crop): one cell is ``image / grid`` pixels per axis."""
        width, height = image_size
        return cls(rows=rows, cols=cols, image_size=(width, height), x_scale=width / cols, y_scale=height / rows)

    @property
    def width(self) -> int:
        """Original image width in pixels."""
        return int(self.image_size[0])

    @property
    def height(self) -> int:
        """Original image height in pixels."""
        return int(self.image_size[1])

    def cell_box(self, row: int, col: int, clip: bool = False) -> tuple[float, float, float, float]:
        """Box (x0, y0, x1, y1) in original pixels that cell (row, col) was taken from; ``clip`` to the image."""
        x0 = self.x_offset + self.x_scale * col
        y0 = self.y_offset + self.y_scale * row
        box = (x0, y0, x0 + self.x_scale, y0 + self.y_scale)
        if clip:
            box = (
                min(max(box[0], 0.0), self.width),
                min(max(box[1], 0.0), self.height),
                min(max(box[2], 0.0), self.width),
                min(max(box[3], 0.0), self.height),
            )
        return box

    def grid_to_pixel(self, x_grid: np.ndarray | float, y_grid: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Continuous grid coordinates -> continuous original-pixel coordinates."""
        return (
            self.x_offset + self.x_scale * np.asarray(x_grid, dtype=np.float64),
            self.y_offset + self.y_scale * np.asarray(y_grid, dtype=np.float64),
        )

    def to_image(self, grid_map: np.ndarray, interpolation: str = "bilinear") -> np.ndarray:
        """Resample a ``[rows, cols]`` map to the original image (``[H, W]`` float32).

        Bilinear between cell centres (``nearest`` gives the cells' blocks); pixels that no cell covers
        (a center-crop's cut-away margins) get 0; padding cells are dropped.
        """
        grid_map = np.asarray(grid_map, dtype=np.float32)
        if grid_map.shape != (self.rows, self.cols):
            raise ValueError(f"map of shape {grid_map.shape} does not match the grid {(self.rows, self.cols)}")
        # Inverse map: destination pixel centre -> source cell-centre index.
        ax, ay = 1.0 / self.x_scale, 1.0 / self.y_scale
        bx = (0.5 - self.x_offset) / self.x_scale - 0.5
        by = (0.5 - self.y_offset) / self.y_scale - 0.5
        matrix = np.array([[ax, 0.0, bx], [0.0, ay, by]], dtype=np.float64)
        flag = {"bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}[interpolation]
        out = cv2.warpAffine(
            grid_map,
            matrix,
            (self.width, self.height),
            flags=flag | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
        xs = (np.arange(self.width) + 0.5 - self.x_offset) / self.x_scale
        ys = (np.arange(self.height) + 0.5 - self.y_offset) / self.y_scale
        inside = ((ys >= 0) & (ys < self.rows))[:, None] & ((xs >= 0) & (xs < self.cols))[None, :]
        out[~inside] = 0.0
        return out

    def _coverage(self, n_cells: int, scale: float, offset: float, n_pixels: int) -> np.ndarray:
        """``[n_cells, n_pixels]``: length of pixel p inside cell c, divided by the cell's length."""
        cell_lo = offset + scale * np.arange(n_cells)[:, None]
        pix_lo = np.arange(n_pixels)[None, :]
        overlap = np.clip(np.minimum(cell_lo + scale, pix_lo + 1) - np.maximum(cell_lo, pix_lo), 0.0, None)
        return overlap / scale

    def mask_to_grid(self, mask: np.ndarray) -> np.ndarray:
        """Area-averaged ``[rows, cols]`` coverage of an ``[H, W]`` mask: a cell's value = the fraction it covers.

        Parts of a cell outside the image (padding) count as uncovered.
        """
        mask = np.asarray(mask, dtype=np.float64)
        if mask.shape != (self.height, self.width):
            raise ValueError(f"mask of shape {mask.shape} does not match the image {(self.height, self.width)}")
        wy = self._coverage(self.rows, self.y_scale, self.y_offset, self.height)
        wx = self._coverage(self.cols, self.x_scale, self.x_offset, self.width)
        return (wy @ mask @ wx.T).astype(np.float32)

    def box_to_grid(self, box: tuple[float, float, float, float]) -> np.ndarray:
        """Area-averaged ``[rows, cols]`` coverage of a box (x0, y0, x1, y1) in continuous original pixels."""
        x0, y0, x1, y1 = (float(v) for v in box)
        x0, x1 = max(x0, 0.0), min(x1, float(self.width))
        y0, y1 = max(y0, 0.0), min(y1, float(self.height))

        def axis(n: int, scale: float, offset: float, lo: float, hi: float) -> np.ndarray:
            cell_lo = offset + scale * np.arange(n)
            return np.clip(np.minimum(cell_lo + scale, hi) - np.maximum(cell_lo, lo), 0.0, None) / scale

        return np.outer(
            axis(self.rows, self.y_scale, self.y_offset, y0, y1), axis(self.cols, self.x_scale, self.x_offset, x0, x1)
        ).astype(np.float32)

    def to_dict(self) -> dict:
        """JSON-friendly form (recorded in outputs)."""
        data = asdict(self)
        data["image_size"] = list(self.image_size)
        return data
