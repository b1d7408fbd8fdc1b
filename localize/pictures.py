"""``Drawable``: results that draw themselves (``render()``) get ``save``, ``show`` and Jupyter's ``_repr_png_``.

Nothing is imported until a picture is asked for.
"""

from __future__ import annotations

import io
import os
from typing import Any


class Drawable:
    """Mixin for a class whose ``render()`` returns a PIL image."""

    def render(self) -> Any:  # pragma: no cover - every user overrides it
        raise NotImplementedError

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`render` as a PNG."""
        self.render().save(path, format="PNG")

    def show(self) -> None:
        """Open :meth:`render` in the system's image viewer."""
        self.render().show()

    def _repr_png_(self) -> bytes | None:
        picture = self.render()
        if picture is None:
            return None
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        return buffer.getvalue()
