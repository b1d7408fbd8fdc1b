"""Localization-head discovery: scoring (S_img, spatial entropy, tau, votes), the heads file, published heads, figures,
the discovery run (:mod:`heads.discover`, ``localize discover``) and :func:`load_heads_for` (heads for inference).

Figures live in :mod:`heads.figures` (imported lazily: matplotlib is only loaded when a figure is drawn).
"""

from .discover import DiscoveryResult, ResolvedHeads, load_heads_for
from .headsfile import HeadsFile, format_head, load_heads, parse_heads, save_heads, validate_heads
from .registry import PUBLISHED, PublishedHeads, published_entry, published_heads
from .scoring import (
    attention_sum,
    finite_mean,
    max_curvature_threshold,
    pseudo_mask_iou,
    rank_iou_correlation,
    select_heads,
    selection_frequency,
    spatial_entropy,
    top_heads,
)

_FIGURES = ("plot_sum_curve", "plot_frequency_bars", "plot_rank_iou")

__all__ = [
    "PUBLISHED",
    "DiscoveryResult",
    "HeadsFile",
    "PublishedHeads",
    "ResolvedHeads",
    "attention_sum",
    "finite_mean",
    "format_head",
    "load_heads",
    "load_heads_for",
    "max_curvature_threshold",
    "parse_heads",
    "plot_frequency_bars",
    "plot_rank_iou",
    "plot_sum_curve",
    "pseudo_mask_iou",
    "published_entry",
    "published_heads",
    "rank_iou_correlation",
    "save_heads",
    "select_heads",
    "selection_frequency",
    "spatial_entropy",
    "top_heads",
    "validate_heads",
]


def __getattr__(name: str):
    """Lazy access to the figure functions (``heads.plot_sum_curve`` etc.)."""
    if name in _FIGURES:
        from . import figures

        return getattr(figures, name)
    raise AttributeError(f"module 'heads' has no attribute {name!r}")
