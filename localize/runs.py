"""Bookkeeping shared by every long job (discovery, benchmarks, fine-tuning, the shapes trainer).

One implementation of the README's resume promise: an append-only JSONL log that survives a kill (a torn last line
is cut before the next append and ignored when read), one check that refuses to resume with other settings, the
process / shard state under ``accelerate launch`` and one progress bar.
"""

from __future__ import annotations

import glob
import json
import os
import socket
from pathlib import Path
from typing import Any

from .errors import InputError, LocalizeError


class SettingsMismatchError(InputError):
    """Saved results or checkpoints were made with other settings than this command's."""


class RunLockedError(LocalizeError):
    """Another run is writing into the same output directory."""


# -- settings --------------------------------------------------------------------------------------------------------
def diff_settings(saved: dict, new: dict, prefix: str = "") -> list[str]:
    """One line per differing key (nested dicts compared key by key)."""
    lines = []
    for key in sorted(set(saved) | set(new)):
        a, b = saved.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            lines += diff_settings(a, b, f"{prefix}{key}.")
        elif a != b:
            lines.append(f"{prefix}{key}: {a!r} there vs {b!r} now")
    return lines


def check_settings(
    saved: dict,
    new: dict,
    what: str,
    *,
    hint: str = "rerun with the same settings to resume, or write elsewhere",
    error: type[LocalizeError] = SettingsMismatchError,
) -> None:
    """Refuse to resume ``what`` (e.g. "the sidecar x.jsonl") when its ``saved`` settings differ from ``new``."""
    differences = diff_settings(saved, json.loads(json.dumps(new)))
    if differences:
        listed = "; ".join(differences)
        raise error(f"{what} was written with other settings ({listed}); refusing to mix them: {hint}")


# -- JSONL -----------------------------------------------------------------------------------------------------------
def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSONL file (none when it is missing); lines that do not parse (a torn last line) are ignored."""
    rows = []
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict):
                    rows.append(row)
    except FileNotFoundError:
        pass
    return rows


def repair_tail(path: str | os.PathLike) -> None:
    """Cut a torn last line (no trailing newline) so that the next append starts on a fresh line."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return
        handle.seek(0)
        data = handle.read()
        handle.truncate(data.rfind(b"\n") + 1)


class AppendLog:
    """Appends whole JSONL lines to ``path`` (opened at the first write; ``header`` first when the file is new),
    flushed after every write, so that a killed run loses at most the line being written."""

    def __init__(self, path: str | os.PathLike, header: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.header = header
        self.handle: Any = None

    def write(self, *rows: dict[str, Any] | str) -> None:
        """Append rows (dicts, or lines already encoded) and flush them."""
        if self.handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            repair_tail(self.path)
            self.handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
            if self.handle.tell() == 0 and self.header is not None:
                rows = (json.dumps(self.header, sort_keys=True), *rows)
        encoded = (r if isinstance(r, str) else json.dumps(r, separators=(",", ":")) for r in rows)
        self.handle.write("".join(line + "\n" for line in encoded))
        self.handle.flush()

    def close(self) -> None:
        """Close the file (a later write reopens it)."""
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def __enter__(self) -> AppendLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- processes and shards --------------------------------------------------------------------------------------------
class RunLock:
    """``with RunLock(out_dir):`` refuses a second run writing into the same directory at the same time.

    The lock is ``OUT/.localize.lock`` holding the owner's pid and host, created exclusively; a lock left by a run
    that died (its pid gone on this host) is taken over. Removed on exit, whatever the outcome.
    """

    NAME = ".localize.lock"

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / self.NAME
        self.owner = f"{os.getpid()}@{socket.gethostname()}"

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._stale():
                    holder = self.path.read_text(encoding="utf-8", errors="replace").strip() or "?"
                    raise RunLockedError(
                        f"another run ({holder}) is writing into {self.path.parent}; wait for it to end or use "
                        f"another --out (delete {self.path} if that run is gone)"
                    ) from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(self.owner)
            return self
        raise RunLockedError(f"cannot take the lock {self.path}")

    def __exit__(self, *exc: object) -> None:
        try:
            if self.path.read_text(encoding="utf-8").strip() == self.owner:
                self.path.unlink()
        except OSError:
            pass

    def _stale(self) -> bool:
        """Whether the lock's owner ran on this host and is gone."""
        try:
            pid, host = self.path.read_text(encoding="utf-8").strip().split("@", 1)
            if host != socket.gethostname():
                return False
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except (OSError, ValueError):
            return False
        return False


class SingleProcess:
    """The plain path: one process, no accelerate."""

    num_processes = 1
    process_index = 0
    is_main_process = True
    device = None

    def wait_for_everyone(self) -> None:
        """Nothing to wait for."""


def process_state() -> Any:
    """accelerate's ``PartialState`` under a multi-process launch (``WORLD_SIZE`` > 1), else :class:`SingleProcess`."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SingleProcess()
    import torch
    from accelerate import PartialState

    # accelerate only sets up a CPU process group when asked to (ACCELERATE_USE_CPU, or no GPU here).
    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    if state.num_processes != world:  # the processes would all write one file
        raise LocalizeError(f"WORLD_SIZE is {world} but accelerate set up {state.num_processes} process(es)")
    return state


def shard_path(path: str | os.PathLike, index: int, count: int) -> Path:
    """The file process ``index`` of ``count`` writes: ``path`` itself alone, else ``<stem>.rank<i><suffix>``."""
    path = Path(path)
    return path if count == 1 else path.with_name(f"{path.stem}.rank{index}{path.suffix}")


def shard_files(path: str | os.PathLike) -> list[Path]:
    """``path`` and its rank shards, those that exist."""
    path = Path(path)
    pattern = f"{glob.escape(path.stem)}.rank*{glob.escape(path.suffix)}"
    shards = sorted(path.parent.glob(pattern), key=lambda p: p.name)
    return [p for p in [path, *shards] if p.is_file()]


# -- progress --------------------------------------------------------------------------------------------------------
class Progress:
    """One rich progress bar (``enabled=False``: silent); ``advance(n)``, ``note(text)`` beside the count."""

    def __init__(self, total: int | None, desc: str, *, initial: int = 0, enabled: bool = True) -> None:
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            self.bar = RichProgress(*columns, TextColumn("{task.fields[note]}"), transient=False)
            self.task = self.bar.add_task(desc, total=total, completed=initial, note="")
            self.bar.start()

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more items done."""
        if self.bar is not None:
            self.bar.advance(self.task, n)

    def note(self, text: str | dict[str, Any]) -> None:
        """Show ``text`` (or ``key=value`` pairs) beside the bar."""
        if self.bar is not None:
            shown = text if isinstance(text, str) else " ".join(f"{k}={v}" for k, v in text.items())
            self.bar.update(self.task, note=shown)

    def close(self) -> None:
        """Stop drawing the bar."""
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
