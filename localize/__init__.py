"""localize: visual grounding from a frozen vision-language model's own localization heads.

vlm = localize.load_model("llava-1.5-7b")           # or a local directory, or (model, processor)
maps = vlm.capture(image, ["the dog on the left"], heads=[(14, 24), (14, 13)])
"""

__version__ = "0.1.0"

from .capture import AttentionMaps, all_heads
from .errors import LocalizeError
from .geometry import GridGeometry
from .images import load_image
from .models import VLM, load_model

__all__ = [
    "VLM",
    "AttentionMaps",
    "GridGeometry",
    "LocalizeError",
    "__version__",
    "all_heads",
    "load_image",
    "load_model",
]
