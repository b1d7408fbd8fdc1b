"""``localize explore``: every head's map for an image and phrase, in the browser, and the box of any head set.

One forward pass captures every head of every layer for each (image, phrase) (:class:`Explorer`, cached per
image content and phrase); adding or removing a head regrounds from those maps, with no new forward pass
(:meth:`Explorer.ground`). Each head's tile carries its S_img and spatial entropy for the phrase (Kang et al.,
sec. 4.1, the discovery's two criteria); heads whose S_img passes tau (the heads file's, from discovery, else the
bend of this phrase's own sorted S_img curve) are framed amber, the heads in use red. The web app over it is
:mod:`localize.heads.explore_app` (``localize explore``); this module needs no Gradio.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from localize.headsfile import HeadsFile, load_heads

from .scoring import max_curvature_threshold, spatial_entropy


@dataclass
class HeadGrid:
    """One phrase's every head on one image: maps ``[layers, heads, rows, cols]``, per-head S_img and spatial
    entropy ``[layers, heads]``, and the capture they came from (for regrounding with any head set)."""

    phrase: str
    maps: np.ndarray
    image_mass: np.ndarray
    entropy: np.ndarray
    captured: Any


class Explorer:
    """A :class:`~localize.grounder.Localizer` plus an all-heads capture cache; ``heads`` is the set in use."""

    def __init__(self, localizer: Any, heads_file: HeadsFile | None = None) -> None:
        self.localizer = localizer
        self.heads_file = heads_file
        self.heads: list[tuple[int, int]] = list(localizer.heads)
        self._cache: dict[tuple[str, str], HeadGrid] = {}

    @property
    def cell(self) -> int:
        """Tile side of the head grid in pixels (smaller for wide models, so a 32 x 32 grid stays viewable)."""
        return 72 if self.shape[1] <= 8 else 48

    @property
    def shape(self) -> tuple[int, int]:
        """(layers, heads) of the model."""
        return self.localizer.vlm.num_layers, self.localizer.vlm.num_heads

    def analyse(self, image: Any, phrases: list[str]) -> list[HeadGrid]:
        """Every head's map per phrase on ``image`` (as ``localizer.load_image`` returned it); phrases not yet
        cached for this image's content are captured together in one call (one image prefix)."""
        key = hashlib.sha1(np.asarray(image).tobytes()).hexdigest()
        missing = [p for p in dict.fromkeys(phrases) if (key, p) not in self._cache]
        if missing:
            captured = self.localizer.vlm.capture(image, missing)  # every head of every capturable layer
            for phrase, maps in zip(missing, captured):
                self._cache[(key, phrase)] = self._grid(phrase, maps)
        return [self._cache[(key, p)] for p in phrases]

    def _grid(self, phrase: str, captured: Any) -> HeadGrid:
        layers, heads = self.shape
        dense = captured.dense(layers, heads).float().cpu().numpy()  # NaN where a layer is blind to the image
        mass = np.full((layers, heads), np.nan)
        for (layer, head), value in zip(captured.heads, captured.image_mass.float().cpu().numpy()):
            mass[layer, head] = value
        entropy = np.full((layers, heads), np.nan)
        seen = ~np.isnan(dense).any(axis=(2, 3))
        entropy[seen] = spatial_entropy(dense[seen])
        return HeadGrid(phrase, dense, mass, entropy, captured)

    def toggle(self, head: tuple[int, int]) -> list[tuple[int, int]]:
        """Add ``head`` to the set in use, or remove it (the last one stays); returns the new set."""
        head = (int(head[0]), int(head[1]))
        if head in self.heads:
            if len(self.heads) > 1:
                self.heads.remove(head)
        elif head in self._capturable():
            self.heads.append(head)
        return list(self.heads)

    def _capturable(self) -> set[tuple[int, int]]:
        layers, heads = self.shape
        usable = self.localizer.vlm.adapter.capturable_layers
        return {(layer, head) for layer in usable for head in range(heads)}

    def ground(self, image: Any, grids: list[HeadGrid]) -> Any:
        """Box, mask and heatmap per phrase from the cached maps of the heads in use: no forward pass."""
        localizer = self.localizer.with_heads(self.heads, source="explorer")
        return localizer.ground_captured(image, [g.phrase for g in grids], [g.captured for g in grids])

    def tau(self, grid: HeadGrid) -> tuple[float, str]:
        """Tau and where it came from: the heads file's (discovery, dataset means) or this phrase's curve."""
        if self.heads_file is not None and self.heads_file.tau is not None:
            return float(self.heads_file.tau), "discovery"
        values = grid.image_mass[np.isfinite(grid.image_mass)]
        return float(max_curvature_threshold(values)), "this phrase's S_img curve"

    def render(self, grid: HeadGrid) -> Any:
        """The L x H grid of the phrase's maps, each tile labelled with S_img and entropy (PIL image)."""
        from localize.viz import render_head_grid

        layers, heads = self.shape
        tau, _ = self.tau(grid)
        selected = np.zeros((layers, heads), dtype=bool)
        for layer, head in self.heads:
            selected[layer, head] = True
        labels = [
            f"S {grid.image_mass[r, c]:.2f}\nH {grid.entropy[r, c]:.2f}" if np.isfinite(grid.entropy[r, c]) else "-"
            for r in range(layers)
            for c in range(heads)
        ]
        return render_head_grid(
            np.nan_to_num(grid.maps),
            labels,
            row_names=[f"L{r}" for r in range(layers)],
            col_names=[f"H{c}" for c in range(heads)],
            selected=selected,
            passing=np.nan_to_num(grid.image_mass, nan=-1.0) >= tau,
            cell=self.cell,
        )

    def head_at(self, x: float, y: float) -> tuple[int, int] | None:
        """The head whose tile is under pixel (x, y) of :meth:`render`'s figure."""
        from localize.viz import head_at, head_grid_layout

        return head_at(head_grid_layout(*self.shape, cell=self.cell), x, y)


def heads_file_of(source: str | None) -> HeadsFile | None:
    """The heads file the localizer's heads came from, when they came from one (for its tau and statistics)."""
    if source and source.endswith(".json") and Path(source).is_file():
        return load_heads(source)
    return None
