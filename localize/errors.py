"""Errors a user can act on. Every toolkit error derives from :class:`LocalizeError`."""


class LocalizeError(Exception):
    """Base class of the toolkit's errors."""


class UnknownModelError(LocalizeError):
    """A model spec that is neither an alias, a local directory, nor a reachable hub id."""


class UnsupportedModelError(LocalizeError):
    """A model whose ``model_type`` has no adapter."""


class ImageError(LocalizeError):
    """An image that cannot be read or converted."""


class InputError(LocalizeError, ValueError):
    """Bad user input: empty phrase, phrase too long, malformed request."""


class HeadsMismatchError(LocalizeError, ValueError):
    """Heads (or a heads file) that do not fit the model's layers/heads."""


class OutputError(LocalizeError):
    """An output that cannot be written (checked before the work, or failed after it with the results kept)."""


class LocalizeWarning(UserWarning):
    """Something a user should know that does not stop the work (the CLI prints it as one line)."""


class DataError(LocalizeError):
    """A dataset that cannot be read (missing files, refused pickle, bad layout)."""
