"""Overlay figures: the image with the attention heatmap, predicted box, mask outline, prompt points and phrase.

Drawn with OpenCV and PIL (no pyplot state); colours come from matplotlib colormaps. Small images are upscaled
(and huge ones downscaled) so that lines and text stay legible; all coordinates are continuous original pixels.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from functools import lru_cache
from itertools import pairwise
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .images import ImageLike, load_image

PRED_COLOR = (255, 64, 64)
TARGET_COLOR = (64, 255, 96)
MASK_COLOR = (0, 200, 255)
POS_COLOR = (64, 255, 96)
NEG_COLOR = (255, 64, 64)
BAND_COLOR = (24, 24, 28)
TEXT_COLOR = (240, 240, 240)


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont:
    """DejaVu Sans from matplotlib's bundled fonts (always present), else PIL's default."""
    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except (OSError, ValueError, ImportError):
        return ImageFont.load_default(size)


def _wrap(text: str, font: ImageFont.ImageFont, width: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}".strip()
            if line and font.getlength(candidate) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def _band(lines: list[str], font: ImageFont.ImageFont, width: int, pad: int) -> Image.Image:
    """A dark strip with ``lines`` of text."""
    ascent, descent = font.getmetrics()
    line_h = ascent + descent + pad // 3
    band = Image.new("RGB", (width, pad * 2 + line_h * len(lines)), BAND_COLOR)
    draw = ImageDraw.Draw(band)
    for i, line in enumerate(lines):
        draw.text((pad, pad + i * line_h), line, font=font, fill=TEXT_COLOR)
    return band


def _draw_box(canvas: np.ndarray, box: Sequence[float], scale: float, color: tuple, thick: int, dashed: bool) -> None:
    x0, y0, x1, y1 = (float(v) * scale for v in box)
    # Continuous edges -> the first/last covered pixel of the scaled canvas.
    p0 = (round(x0), round(y0))
    p1 = (max(round(x1) - 1, p0[0]), max(round(y1) - 1, p0[1]))
    if not dashed:
        cv2.rectangle(canvas, p0, p1, color, thick, cv2.LINE_AA)
        return
    dash = 4 * thick
    corners = [p0, (p1[0], p0[1]), p1, (p0[0], p1[1]), p0]
    for a, b in pairwise(corners):
        length = max(abs(b[0] - a[0]), abs(b[1] - a[1]))
        for start in range(0, length, 2 * dash):
            t0, t1 = start / max(length, 1), min(start + dash, length) / max(length, 1)
            q0 = (int(a[0] + (b[0] - a[0]) * t0), int(a[1] + (b[1] - a[1]) * t0))
            q1 = (int(a[0] + (b[0] - a[0]) * t1), int(a[1] + (b[1] - a[1]) * t1))
            cv2.line(canvas, q0, q1, color, thick, cv2.LINE_AA)


def _outline(
    canvas: np.ndarray, mask: np.ndarray, size: tuple[int, int], color: tuple, thick: int, fill: float
) -> None:
    mask = cv2.resize(np.asarray(mask, dtype=np.uint8), size, interpolation=cv2.INTER_NEAREST)
    if fill > 0:
        tint = np.zeros_like(canvas)
        tint[:] = color
        region = mask.astype(bool)
        canvas[region] = (canvas[region] * (1 - fill) + tint[region] * fill).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(canvas, contours, -1, color, thick, cv2.LINE_AA)


def render_overlay(
    image: ImageLike,
    heatmap: np.ndarray | None = None,
    box: Sequence[float] | None = None,
    mask: np.ndarray | None = None,
    phrase: str | None = None,
    path: str | os.PathLike | None = None,
    points: Any = None,
    title: str | None = None,
    *,
    target_box: Sequence[float] | None = None,
    target_mask: np.ndarray | None = None,
    alpha: float = 0.5,
    cmap: str = "turbo",
    min_size: int = 384,
    max_size: int = 1024,
) -> Image.Image:
    """Image + semi-transparent heatmap, predicted box (red), mask outline (cyan), points, phrase caption.

    ``points``: ``[N, 2]`` (x, y) (positive) or ``[N, 3]`` (x, y, label 1/0). ``target_box``/``target_mask``
    (green, dashed box) show the ground truth in failure galleries. Saved to ``path`` when given.
    """
    pil = load_image(image)
    width, height = pil.size
    longest = max(width, height)
    scale = min_size / longest if longest < min_size else min(1.0, max_size / longest)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    canvas = np.asarray(pil.resize(size, Image.BICUBIC if scale > 1 else Image.LANCZOS), dtype=np.uint8).copy()
    thick = max(2, round(max(size) / 250))

    if heatmap is not None:
        import matplotlib

        heat = np.nan_to_num(np.asarray(heatmap, dtype=np.float32))
        low, high = float(heat.min()), float(heat.max())
        heat = (heat - low) / (high - low) if high > low else np.zeros_like(heat)
        heat = cv2.resize(heat, size, interpolation=cv2.INTER_LINEAR)
        colors = matplotlib.colormaps[cmap](heat)[..., :3] * 255.0
        # Stronger tint where attention is high, so the image stays readable elsewhere.
        weight = (alpha * (0.25 + 0.75 * heat))[..., None]
        canvas = (canvas * (1 - weight) + colors * weight).clip(0, 255).astype(np.uint8)
    if target_mask is not None:
        _outline(canvas, target_mask, size, TARGET_COLOR, thick, fill=0.0)
    if mask is not None:
        _outline(canvas, mask, size, MASK_COLOR, thick, fill=0.25)
    if target_box is not None:
        _draw_box(canvas, target_box, scale, TARGET_COLOR, thick, dashed=True)
    if box is not None:
        _draw_box(canvas, box, scale, PRED_COLOR, thick, dashed=False)
    if points is not None and len(points):
        pts = np.asarray(points, dtype=np.float64).reshape(len(points), -1)
        labels = pts[:, 2] if pts.shape[1] > 2 else np.ones(len(pts))
        radius = max(4, 2 * thick)
        for (x, y), label in zip(pts[:, :2] * scale, labels):
            color = POS_COLOR if label > 0 else NEG_COLOR
            center = (round(x), round(y))
            cv2.circle(canvas, center, radius + thick, (0, 0, 0), -1, cv2.LINE_AA)
            cv2.circle(canvas, center, radius, color, -1, cv2.LINE_AA)

    font = _font(max(14, round(size[0] / 32)))
    pad = max(6, font.size // 2)
    parts = []
    if title:
        parts.append(_band(_wrap(title, font, size[0] - 2 * pad), font, size[0], pad))
    parts.append(Image.fromarray(canvas))
    if phrase:
        parts.append(_band(_wrap(f"\u201c{phrase}\u201d", font, size[0] - 2 * pad), font, size[0], pad))
    figure = Image.new("RGB", (size[0], sum(p.height for p in parts)), BAND_COLOR)
    top = 0
    for part in parts:
        figure.paste(part, (0, top))
        top += part.height
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
        figure.save(path)
    return figure


def render_gallery(
    items: Iterable[dict | Image.Image], path: str | os.PathLike | None = None, cols: int = 4, cell_width: int = 384
) -> Image.Image:
    """Grid of overlays; each item is a PIL image or a dict of :func:`render_overlay` keyword arguments."""
    tiles = [item if isinstance(item, Image.Image) else render_overlay(**{**item, "path": None}) for item in items]
    gap = 8
    if not tiles:
        figure = Image.new("RGB", (cell_width, 64), BAND_COLOR)
        ImageDraw.Draw(figure).text((gap, gap), "(no items)", font=_font(16), fill=TEXT_COLOR)
    else:
        tiles = [t.resize((cell_width, max(1, round(t.height * cell_width / t.width))), Image.LANCZOS) for t in tiles]
        cols = max(1, min(cols, len(tiles)))
        rows = [tiles[i : i + cols] for i in range(0, len(tiles), cols)]
        heights = [max(t.height for t in row) for row in rows]
        figure = Image.new(
            "RGB", (cols * cell_width + (cols + 1) * gap, sum(heights) + (len(rows) + 1) * gap), (255,) * 3
        )
        top = gap
        for row, row_height in zip(rows, heights):
            for j, tile in enumerate(row):
                figure.paste(tile, (gap + j * (cell_width + gap), top))
            top += row_height + gap
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
        figure.save(path)
    return figure


SELECTED_COLOR = (255, 64, 64)
PASSING_COLOR = (255, 200, 40)


def head_grid_layout(rows: int, cols: int, cell: int = 72, label_h: int = 30, gutter: int = 40) -> dict[str, int]:
    """Pixel layout of :func:`render_head_grid`: a ``gutter`` on the left and top for row/column names, then
    ``rows x cols`` tiles of ``cell`` pixels, each with a ``label_h`` strip under it."""
    return {"rows": rows, "cols": cols, "cell": cell, "label_h": label_h, "gutter": gutter, "pad": 4}


def head_at(layout: dict[str, int], x: float, y: float) -> tuple[int, int] | None:
    """The (row, col) tile under pixel (x, y) of a :func:`render_head_grid` figure, or None (gutter, gaps)."""
    step_x = layout["cell"] + layout["pad"]
    step_y = layout["cell"] + layout["label_h"] + layout["pad"]
    col, row = int((x - layout["gutter"]) // step_x), int((y - layout["gutter"]) // step_y)
    if x < layout["gutter"] or y < layout["gutter"] or not (0 <= row < layout["rows"] and 0 <= col < layout["cols"]):
        return None
    return row, col


def render_head_grid(
    maps: np.ndarray,
    labels: Sequence[str] = (),
    *,
    row_names: Sequence[str] = (),
    col_names: Sequence[str] = (),
    selected: np.ndarray | None = None,
    passing: np.ndarray | None = None,
    cmap: str = "turbo",
    cell: int = 72,
) -> Image.Image:
    """Every head's map as a tile, ``maps`` ``[rows, cols, h, w]`` (each tile scaled to its own max), with
    ``labels`` (row-major) under the tiles; ``selected`` tiles framed red, ``passing`` ones (e.g. S_img >= tau)
    amber. Tile positions follow :func:`head_grid_layout` (see :func:`head_at`)."""
    import matplotlib

    maps = np.nan_to_num(np.asarray(maps, dtype=np.float32))
    rows, cols = maps.shape[:2]
    layout = head_grid_layout(rows, cols, cell)
    step_x, step_y = cell + layout["pad"], cell + layout["label_h"] + layout["pad"]
    gutter = layout["gutter"]
    figure = Image.new("RGB", (gutter + cols * step_x, gutter + rows * step_y), (255, 255, 255))
    draw = ImageDraw.Draw(figure)
    font = _font(11)
    colormap = matplotlib.colormaps[cmap]
    for r in range(rows):
        for c in range(cols):
            tile = maps[r, c]
            high = float(tile.max())
            tile = tile / high if high > 0 else np.zeros_like(tile)
            image = colormap(cv2.resize(tile, (cell, cell), interpolation=cv2.INTER_NEAREST))[..., :3] * 255
            x, y = gutter + c * step_x, gutter + r * step_y
            figure.paste(Image.fromarray(image.astype(np.uint8)), (x, y))
            for mask, color in ((passing, PASSING_COLOR), (selected, SELECTED_COLOR)):
                if mask is not None and mask[r, c]:
                    draw.rectangle((x - 2, y - 2, x + cell + 1, y + cell + 1), outline=color, width=3)
            index = r * cols + c
            if index < len(labels):
                draw.multiline_text((x + 1, y + cell + 2), labels[index], font=font, fill=(20, 20, 20), spacing=1)
    for r, name in enumerate(row_names):
        draw.text((2, gutter + r * step_y + cell // 2 - 6), name, font=_font(12), fill=(20, 20, 20))
    for c, name in enumerate(col_names):
        draw.text((gutter + c * step_x + cell // 2 - 8, gutter - 18), name, font=_font(12), fill=(20, 20, 20))
    return figure


def png_bytes(image: Image.Image) -> bytes:
    """``image`` encoded as PNG (for ``_repr_png_``)."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
