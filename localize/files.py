"""Small file helpers shared by the toolkit's writers."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import OutputError


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` all at once: a temp file beside it, fsync, rename (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output(path: str | os.PathLike, directory: bool = False) -> Path:
    """``path`` if the work's output can be written there (a file, or with ``directory`` a folder), checked before
    the work starts; :class:`OutputError` saying why not (a directory where a file goes, a file on the way, no
    permission). Missing folders are created."""
    path = Path(path)
    if not directory and path.is_dir():
        raise OutputError(f"cannot write {path}: it is a directory; give a file name")
    if directory and path.exists() and not path.is_dir():
        raise OutputError(f"cannot write into {path}: it is a file, not a directory")
    folder = path if directory else path.parent
    blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise OutputError(f"cannot write {path}: {blocking} is a file, not a directory")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: no permission to write in {folder}")
    return path


def write_output(path: str | os.PathLike, text: str) -> None:
    """Write a result file atomically; when that fails (disk full, permissions changed) the text is kept in a
    temporary file and :class:`OutputError` names it, so the work is not lost."""
    try:
        atomic_write_text(path, text)
    except OSError as err:
        name = Path(path)
        try:
            fd, kept = tempfile.mkstemp(prefix=f"localize-{name.stem}-", suffix=name.suffix or ".txt")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
        except OSError:
            raise OutputError(f"cannot write {path}: {err.strerror}; the results could not be kept either") from None
        raise OutputError(f"cannot write {path}: {err.strerror}; the results are kept in {kept}") from None
