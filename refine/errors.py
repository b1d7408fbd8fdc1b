"""SAM refinement's own errors: ``refine`` imports nothing of the project, so the core may use it (README, Layout).

The ``localize`` command line reports a :class:`RefineError` as one line, like a ``LocalizeError``.
"""


class RefineError(Exception):
    """Base of refinement errors."""


class SamCheckpointError(RefineError):
    """A SAM checkpoint that is missing, unreadable, or of another model type than requested."""


class SamInputError(RefineError, ValueError):
    """A heatmap, image, box or prompt SAM cannot take."""
