"""localize: visual grounding from a frozen vision-language model's own localization heads.

vlm = localize.load_model("llava-1.5-7b")           # or a local directory, or (model, processor)
maps = vlm.capture(image, ["the dog on the left"], heads=[(14, 24), (14, 13)])
loc = localize.load("shapes-tiny")                   # model + its heads -> Localizer.ground(image, phrase)

The names below are imported on first use, so ``import localize.errors`` or ``localize --version`` does not pay
for torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

_EXPORTS = {
    "AttentionMaps": ".capture",
    "all_heads": ".capture",
    "LocalizeError": ".errors",
    "GridGeometry": ".geometry",
    "Grounding": ".grounder",
    "Groundings": ".grounder",
    "Localizer": ".grounder",
    "load": ".grounder",
    "load_image": ".images",
    "VLM": ".models",
    "load_model": ".models",
}

if TYPE_CHECKING:
    from .capture import AttentionMaps, all_heads
    from .errors import LocalizeError
    from .geometry import GridGeometry
    from .grounder import Grounding, Groundings, Localizer, load
    from .images import load_image
    from .models import VLM, load_model


def __getattr__(name: str) -> Any:
    """The public names, imported on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'localize' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)


__all__ = [
    "VLM",
    "AttentionMaps",
    "GridGeometry",
    "Grounding",
    "Groundings",
    "LocalizeError",
    "Localizer",
    "__version__",
    "all_heads",
    "load",
    "load_image",
    "load_model",
]
