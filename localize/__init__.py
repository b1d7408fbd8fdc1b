"""localize: visual grounding from a frozen vision-language model's own localization heads.

vlm = localize.load_model("llava-1.5-7b")           # or a local directory, or (model, processor)
maps = vlm.capture(image, ["the dog on the left"], heads=[(14, 24), (14, 13)])
loc = localize.load("shapes-tiny")                   # model + its heads -> Localizer.ground(image, phrase)
"""

from .capture import AttentionMaps, all_heads
from .errors import LocalizeError
from .geometry import GridGeometry
from .grounder import Localizer, load
from .images import load_image
from .models import VLM, load_model
from .version import __version__

__all__ = [
    "VLM",
    "AttentionMaps",
    "GridGeometry",
    "LocalizeError",
    "Localizer",
    "__version__",
    "all_heads",
    "load",
    "load_image",
    "load_model",
]
