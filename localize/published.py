"""Published localization heads, used by ``heads="auto"``.

Source: Kang, Kim, Kim, Hwang, "Your Large Vision-Language Model Only Needs A Few Attention Heads For Visual
Grounding", CVPR 2025 (arXiv:2503.06287): LLaVA-1.5-7B -> L14 H24, L14 H13; LLaVA-1.5-13B -> L15 H39, L16 H30, L7 H2.

Indexing -- our reading: the paper's layer and head numbers are 0-based (layer 0 = the first decoder layer, head 0 =
the first head), which is also this toolkit's convention. Why:

* the paper's figures index layers from 0 (as we read them);
* public copies of the authors' code (github.com/MICV-yonsei/LocalizationHeads; copies stored as
  aysanaghazadeh/LocalizationHeads ``localization_heads_finder.py`` and liu-hanyu-97/LocalizationHeads
  ``analyze.py``) stack the per-layer attentions by their 0-based ``layer_idx`` / Hugging Face ``output_attentions``
  position and report the ``for l in range(L): for h in range(H)`` indices unchanged;
* a public re-run of that code on 1,000 RefCOCO training samples with ``liuhaotian/llava-v1.5-7b``
  (liu-hanyu-97/LocalizationHeads, ``outputs/results/liuhaotian-llava-v1.5-7b/batch_selected_heads.json``) selects
  layer 14 head 24 most often (57% of samples) and also layer 14 head 13 -- the paper's 7B heads, read 0-based.

We could not run the models here, so this remains an assumption, strongest for the 7B heads; the 13B heads follow
the same convention but were not re-derived. ``localize discover`` re-derives heads for any model.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .errors import HeadsMismatchError, InputError, LocalizeWarning
from .headsfile import HeadsFile, format_head, load_heads, validate_heads

__all__ = ["PUBLISHED", "PublishedHeads", "ResolvedHeads", "load_heads_for", "published_entry", "published_heads"]

PAPER = "Kang et al., CVPR 2025, arXiv:2503.06287"


@dataclass(frozen=True)
class PublishedHeads:
    """Heads (0-based ``(layer, head)``) published for one model, with where they come from."""

    heads: tuple[tuple[int, int], ...]
    num_layers: int
    num_heads: int
    source: str
    note: str = ""

    @property
    def heads_str(self) -> list[str]:
        """The heads as ``"L14 H24"`` strings."""
        return [format_head(h) for h in self.heads]


_LLAVA_7B = PublishedHeads(
    heads=((14, 24), (14, 13)),
    num_layers=32,
    num_heads=32,
    source=PAPER,
    note="0-based reading, consistent with a public re-run of the authors' code (L14 H24 chosen most often).",
)
_LLAVA_13B = PublishedHeads(
    heads=((15, 39), (16, 30), (7, 2)),
    num_layers=40,
    num_heads=40,
    source=PAPER,
    note="0-based reading (assumed, as for 7B); not re-derived.",
)

# Keys are lower-case hub ids; the HF-converted and the original LLaVA checkpoints share weights.
PUBLISHED: dict[str, PublishedHeads] = {
    "llava-hf/llava-1.5-7b-hf": _LLAVA_7B,
    "liuhaotian/llava-v1.5-7b": _LLAVA_7B,
    "llava-hf/llava-1.5-13b-hf": _LLAVA_13B,
    "liuhaotian/llava-v1.5-13b": _LLAVA_13B,
}


def _key(model_id: str) -> str:
    return str(model_id).strip().rstrip("/").lower()


def published_entry(model_id: str) -> PublishedHeads:
    """The registry entry for a hub id (case-insensitive); :class:`HeadsMismatchError` when there is none."""
    entry = PUBLISHED.get(_key(model_id))
    if entry is None:
        known = ", ".join(sorted(PUBLISHED))
        raise HeadsMismatchError(
            f"no published localization heads for {model_id!r} (known: {known}); "
            "run `localize discover` on this model to find its heads, then pass the heads file"
        )
    return entry


def published_heads(model_id: str) -> list[tuple[int, int]]:
    """Published 0-based ``(layer, head)`` pairs for a hub id; :class:`HeadsMismatchError` when there is none."""
    return list(published_entry(model_id).heads)


# -- heads for a loaded model ---------------------------------------------------------------------------------------------
_HUB_CACHE = re.compile(r"models--([^/\\]+?)--([^/\\]+)")


class ResolvedHeads(NamedTuple):
    """Heads for a model (0-based ``(layer, head)``) and where they came from; unpacks as ``heads, source``."""

    heads: list[tuple[int, int]]
    source: str

    @property
    def file(self) -> Path | None:
        """The heads file they were read from, or None (published, given as text or pairs)."""
        return Path(self.source) if os.path.isfile(self.source) else None


def _published_for(vlm: Any) -> ResolvedHeads:
    from localize.models import ALIASES

    spec = str(getattr(vlm, "spec", ""))
    config = getattr(getattr(vlm, "model", None), "config", None)
    candidates = [spec, ALIASES.get(spec, ""), str(getattr(config, "_name_or_path", "") or "")]
    candidates += [f"{m[1]}/{m[2]}" for c in list(candidates) if (m := _HUB_CACHE.search(c))]  # HF cache folders
    for name in candidates:
        if name.strip().rstrip("/").lower() in PUBLISHED:
            entry = published_entry(name)
            if (entry.num_layers, entry.num_heads) != (vlm.num_layers, vlm.num_heads):
                raise HeadsMismatchError(
                    f"the published heads of {name} are for {entry.num_layers} layers x {entry.num_heads} heads, "
                    f"but this model has {vlm.num_layers} x {vlm.num_heads}; run `localize discover` on it"
                )
            heads = validate_heads(list(entry.heads), vlm.num_layers, vlm.num_heads)
            return ResolvedHeads(heads, f"published for {name} ({entry.source})")
    published_entry(spec)  # no entry: raises, telling to run `localize discover`
    raise HeadsMismatchError(f"no published heads for {spec!r}")


def _model_type(vlm: Any) -> str | None:
    return getattr(getattr(getattr(vlm, "model", None), "config", None), "model_type", None)


def _from_file(vlm: Any, heads_file: HeadsFile, label: str, own: bool = False) -> list[tuple[int, int]]:
    """A heads file's heads checked against ``vlm``: family, layers x heads, and the grid for a fixed-grid family
    (errors); a file recorded for another checkpoint of the family is used with a :class:`LocalizeWarning`."""
    heads = validate_heads(heads_file, vlm.num_layers, vlm.num_heads, _model_type(vlm))
    adapter = getattr(vlm, "adapter", None)
    grid = getattr(adapter, "fixed_grid", None)
    if heads_file.grid and grid and tuple(heads_file.grid) != tuple(grid):
        raise HeadsMismatchError(
            f"the heads file {label} was found on a {heads_file.grid[0]}x{heads_file.grid[1]} image grid, but this "
            f"model's grid is {grid[0]}x{grid[1]}: another model; run `localize discover` on this one"
        )
    names = {_identity(str(getattr(vlm, key, "") or "")) for key in ("spec", "source")}
    if heads_file.model and not own and _identity(heads_file.model) not in names:
        warnings.warn(
            f"the heads file {label} was made for {heads_file.model}, and is used with {vlm.spec} (same family and "
            "shape); run `localize discover` on this model if it is not a copy of that one",
            LocalizeWarning,
            stacklevel=3,
        )
    return heads


def _identity(name: str) -> str:
    """A model name to compare: a local folder by its real path (``./m`` and ``m`` are one), else as written."""
    return os.path.realpath(name) if os.path.isdir(name) else name.rstrip("/")


def load_heads_for(vlm: Any, heads: Any) -> ResolvedHeads:
    """Heads for ``vlm`` from ``"auto"``, a heads-file path or :class:`HeadsFile`, ``"L14 H24,L14 H13"``, or pairs.

    ``"auto"``: ``heads.json`` in the model's directory (a fine-tuned export), else the published registry (by spec,
    alias or hub id). Everything is checked against the model's layer/head counts (:class:`HeadsMismatchError`).
    """
    num_layers, num_heads = vlm.num_layers, vlm.num_heads
    if heads is None or isinstance(heads, (int, float, bytes)):
        raise InputError(f"heads must be 'auto', a heads file, 'L14 H24,...' or (layer, head) pairs; got {heads!r}")
    if isinstance(heads, HeadsFile):
        return ResolvedHeads(_from_file(vlm, heads, f"of {heads.model}"), f"heads file of {heads.model}")
    if isinstance(heads, (str, os.PathLike)):
        text = os.fspath(heads).strip()
        if text.lower() == "auto":
            beside = Path(str(getattr(vlm, "source", None) or getattr(vlm, "spec", ""))) / "heads.json"
            if beside.is_file():  # the model's own (a fine-tuned export): made for it, whatever name it records
                return ResolvedHeads(_from_file(vlm, load_heads(beside), str(beside), own=True), str(beside))
            return _published_for(vlm)
        if isinstance(heads, os.PathLike) or text.lower().endswith(".json") or os.path.isfile(text):
            return ResolvedHeads(_from_file(vlm, load_heads(text), text), text)
        return ResolvedHeads(validate_heads(text, num_layers, num_heads), "given")
    return ResolvedHeads(validate_heads(heads, num_layers, num_heads), "given")
