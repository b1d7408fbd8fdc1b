"""Localization-head discovery: scoring (S_img, spatial entropy, tau, votes), figures and the discovery run
(:mod:`localize.heads.discover`, ``localize discover``). The heads file, the published heads and
:func:`load_heads_for` are part of the core (:mod:`localize.headsfile`, :mod:`localize.published`); they are
re-exported here for convenience.

Figures live in :mod:`localize.heads.figures` (imported lazily: matplotlib is only loaded when a figure is drawn).
"""

from localize.headsfile import HeadsFile, format_head, load_heads, parse_heads, save_heads, validate_heads
from localize.published import (
    PUBLISHED,
    PublishedHeads,
    ResolvedHeads,
    load_heads_for,
    published_entry,
    published_heads,
)

from .discover import DiscoveryResult
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
