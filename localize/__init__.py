"""localize: visual grounding from a frozen vision-language model's own localization heads."""

__version__ = "0.1.0"
