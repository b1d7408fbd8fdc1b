"""Attention capture: the query token's attention over the image tokens, per (layer, head), exactly and cheaply.

The language model runs its normal SDPA attention through a function registered with transformers'
``AttentionInterface``. For the layers asked for, that function also computes, for the query position only,
``softmax(q · Kᵀ · scale + mask)`` of the requested heads (the row eager attention would return), and stores it on
a per-call :class:`Recorder` passed down the forward as a keyword argument. No patched modeling file, no
``output_attentions``, no eager N×N attention. Two savings on top:

* early exit: the forward stops inside the deepest requested layer, once its row is recorded;
* prefix reuse: for several phrases on one image, the shared prefix (everything up to the first differing token,
  the image included) runs once; its KV cache is copied for the batch of suffixes.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .adapters import Adapter, PreparedBatch
from .errors import HeadsMismatchError, InputError
from .geometry import GridGeometry
from .headsfile import validate_heads
from .images import ImageLike, load_image
from .pictures import Drawable

CAPTURE_ATTENTION = "localize_capture"  # no "sdpa" in the name: transformers would run its SDPA support check on it (Gemma 2 declares none)
Head = tuple[int, int]


class _EarlyExit(Exception):
    """Raised inside the deepest requested layer to stop the forward; caught by :func:`capture`."""


@dataclass
class Recorder:
    """Per-call capture request and its results; travels down the forward as ``localize_recorder=``."""

    heads_by_layer: dict[int, torch.Tensor]
    query_positions: torch.Tensor
    stop_after: int | None
    keep_graph: bool = False
    rows: dict[int, torch.Tensor] = field(default_factory=dict)

    def head_rows(self, sample: int, heads: Sequence[Head]) -> torch.Tensor:
        """The recorded rows of ``heads`` for one sample, stacked in the order given: ``[k, K]`` (``[k, Q, K]`` with
        several queries per sample)."""
        slot = {(layer, h): i for layer, ids in self.heads_by_layer.items() for i, h in enumerate(ids.tolist())}
        return torch.stack([self.rows[layer][sample, slot[(layer, h)]] for layer, h in heads])

    def record(
        self, layer: int, module: Any, query: torch.Tensor, key: torch.Tensor, mask: Any, scaling: Any,
        softcap: float | None = None,
    ) -> None:  # fmt: skip
        """Store ``softmax(cap(q·Kᵀ·scale) + mask)`` of this layer's requested heads at the query positions
        (``cap(x) = tanh(x / c) · c`` with a logit ``softcap`` c, as Gemma 2 applies it; else the identity).

        ``query_positions`` ``[B]`` gives ``rows[layer]`` ``[B, h, K]``; ``[B, Q]`` (several queries per sample,
        as fine-tuning uses) gives ``[B, h, Q, K]``.
        """
        batch, num_heads, q_len, head_dim = query.shape
        kv_len = key.shape[2]
        positions = self.query_positions.to(query.device)
        single = positions.dim() == 1
        positions = positions[:, None] if single else positions  # [B, Q]
        local = positions - (kv_len - q_len)
        if bool((local < 0).any()) or bool((local >= q_len).any()):
            raise RuntimeError("query position outside the tokens of this forward pass")
        heads = self.heads_by_layer[layer].to(query.device)
        groups = num_heads // key.shape[1]
        index = local[:, None, :, None].expand(batch, heads.numel(), local.shape[1], head_dim)
        q = query[:, heads].gather(2, index).float()  # [B, h, Q, D]
        k = key[:, heads // groups].float()  # [B, h, K, D]
        scale = scaling if scaling is not None else head_dim**-0.5
        logits = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        if mask is None:  # no padding: plain causal
            allowed = torch.arange(kv_len, device=query.device)[None, None, :] <= positions[:, :, None]
            logits = logits.masked_fill(~allowed[:, None], float("-inf"))
        else:
            full = mask.expand(batch, -1, -1, -1)[:, 0]  # [B, q_len, K]
            mask_rows = full.gather(1, local.to(full.device)[:, :, None].expand(-1, -1, full.shape[-1]))
            mask_rows = mask_rows.to(query.device)
            if mask_rows.dtype == torch.bool:
                logits = logits.masked_fill(~mask_rows[:, None], float("-inf"))
            else:
                logits = logits + mask_rows[:, None].float()
        probs = logits.softmax(dim=-1)
        probs = probs[:, :, 0] if single else probs
        self.rows[layer] = probs if self.keep_graph else probs.detach()


def _capture_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    localize_recorder: Recorder | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA attention that also records the requested query rows (see module docstring)."""
    layer = getattr(module, "layer_idx", None)
    softcap = kwargs.get("softcap")
    if localize_recorder is not None and layer is not None:
        if layer in localize_recorder.heads_by_layer:
            localize_recorder.record(layer, module, query, key, attention_mask, scaling, softcap)
        if localize_recorder.stop_after is not None and layer >= localize_recorder.stop_after:
            raise _EarlyExit
    if softcap is not None:  # SDPA cannot cap logits (F2): the family's own eager attention does
        return _eager_forward(module)(
            module,
            query,
            key,
            value,
            _additive(attention_mask, query.dtype),
            dropout=dropout,
            scaling=scaling,
            **kwargs,
        )
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def _eager_forward(module: torch.nn.Module) -> Any:
    """The ``eager_attention_forward`` of ``module``'s modeling file (Gemma 2's applies the logit softcap)."""
    return sys.modules[type(module).__module__].eager_attention_forward


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """SDPA's boolean mask (True = attend) as the additive float mask eager attention adds to its logits."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def register_capture_attention() -> str:
    """Register the capture attention (and SDPA's mask builder under the same name); returns its name."""
    AttentionInterface.register(CAPTURE_ATTENTION, _capture_attention)
    # Without a mask function of the same name ``create_causal_mask`` returns None and padding is ignored.
    AttentionMaskInterface.register(CAPTURE_ATTENTION, sdpa_mask)
    return CAPTURE_ATTENTION


@dataclass
class AttentionMaps(Drawable):
    """One sample's captured maps: ``maps[i]`` is head ``heads[i]``'s attention over the grounding view's grid.

    ``maps`` is float32 ``[len(heads), rows, cols]``: the query row of the softmax restricted to the grounding
    view's tokens. ``image_mass`` ``[len(heads)]`` is each head's attention on every image token of the sample,
    over all its views (S_img; with one view, ``maps.sum((-1, -2))``).
    """

    maps: torch.Tensor
    heads: tuple[Head, ...]
    geometry: GridGeometry
    query_position: int
    prompt: str
    sample_index: int = 0
    image_mass: torch.Tensor | None = None
    view: str = "image"
    # Every view's (name, maps, geometry), the grounding view first; () when built from maps alone.
    views: tuple[tuple[str, torch.Tensor, GridGeometry], ...] = ()

    def __post_init__(self) -> None:
        if self.image_mass is None:  # built from maps alone (one view)
            self.image_mass = self.maps.sum((-1, -2))
        if not self.views:
            self.views = ((self.view, self.maps, self.geometry),)

    @property
    def view_names(self) -> tuple[str, ...]:
        """This sample's views, the grounding one first."""
        return tuple(name for name, _, _ in self.views)

    def in_view(self, name: str) -> AttentionMaps:
        """The same capture with view ``name``'s maps and geometry as the grounding ones."""
        for view, maps, geometry in self.views:
            if view == name:
                return dataclasses.replace(self, maps=maps, geometry=geometry, view=view)
        raise InputError(f"no view {name!r} in this sample; its views: {', '.join(self.view_names)}")

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of the image-token grid."""
        return self.geometry.rows, self.geometry.cols

    def select(self, heads: Iterable[Head]) -> torch.Tensor:
        """Maps of ``heads`` (each must have been captured), ``[k, rows, cols]``."""
        index = {h: i for i, h in enumerate(self.heads)}
        try:
            return self.maps[[index[tuple(h)] for h in heads]]
        except KeyError as err:
            raise HeadsMismatchError(f"head {err.args[0]} was not captured") from None

    def subset(self, heads: Iterable[Head]) -> AttentionMaps:
        """The same capture restricted to ``heads`` (each must have been captured), in that order, every view."""
        index = {h: i for i, h in enumerate(self.heads)}
        heads = [tuple(h) for h in heads]
        missing = [h for h in heads if h not in index]
        if missing:
            raise HeadsMismatchError(f"head {missing[0]} was not captured")
        rows = [index[h] for h in heads]
        return dataclasses.replace(
            self,
            maps=self.maps[rows],
            heads=tuple(heads),
            image_mass=self.image_mass[rows],
            views=tuple((name, maps[rows], geometry) for name, maps, geometry in self.views),
        )

    def render(self, cols: int = 8) -> Any:
        """The heads' maps as a grid of tiles (PIL image), each labelled with its head and S_img."""
        from .headsfile import format_head
        from .viz import render_head_grid

        maps = self.maps.detach().float().cpu().numpy()
        count, cols = len(self.heads), max(1, min(cols, len(self.heads)))
        rows = -(-count // cols)
        tiles = np.zeros((rows * cols, *maps.shape[1:]), dtype=np.float32)
        tiles[:count] = maps
        mass = self.image_mass.detach().float().cpu().numpy()
        labels = [f"{format_head(h)}\nS_img {m:.2f}" for h, m in zip(self.heads, mass)]
        return render_head_grid(tiles.reshape(rows, cols, *maps.shape[1:]), labels)

    def dense(self, num_layers: int, num_heads: int) -> torch.Tensor:
        """``[num_layers, num_heads, rows, cols]`` with NaN where a head was not captured."""
        out = torch.full(
            (num_layers, num_heads, *self.grid), float("nan"), dtype=self.maps.dtype, device=self.maps.device
        )
        layers = torch.tensor([h[0] for h in self.heads], dtype=torch.long)
        head_ids = torch.tensor([h[1] for h in self.heads], dtype=torch.long)
        out[layers, head_ids] = self.maps
        return out


def all_heads(num_layers: int, num_heads: int, skip_layers: int = 0) -> list[Head]:
    """Every (layer, head) from layer ``skip_layers`` on."""
    return [(layer, head) for layer in range(skip_layers, num_layers) for head in range(num_heads)]


def group_heads_by_layer(heads: Sequence[Head]) -> dict[int, torch.Tensor]:
    """Requested heads by layer, each layer's sorted head indices as a tensor (the order rows are recorded in)."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    return {layer: torch.tensor(sorted(hs), dtype=torch.long) for layer, hs in sorted(by_layer.items())}


def check_phrases(phrases: Sequence[str]) -> list[str]:
    """The phrases stripped; :class:`InputError` for none at all, one that is not a string, or an empty one."""
    if not phrases:
        raise InputError("no phrases given; pass at least one referring expression")
    cleaned = []
    for i, phrase in enumerate(phrases):
        if not isinstance(phrase, str):
            raise InputError(f"phrase {i} is not a string but {type(phrase).__name__} ({str(phrase)[:60]!r})")
        if not phrase.strip():
            raise InputError(f"phrase {i} is empty; give a referring expression such as 'the red car on the left'")
        cleaned.append(phrase.strip())
    return cleaned


def _shared_prefix_length(batch: PreparedBatch, queries: torch.Tensor) -> int:
    """Tokens every sequence shares from the start, capped so each query lies after it (0: no shared image)."""
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    if mask[:, 0].eq(0).any():  # left padding: the sequences do not start alike
        return 0
    same = (ids == ids[:1]).all(dim=0) & mask.bool().all(dim=0)
    length = int(same.long().cumprod(0).sum())
    length = min(length, int(queries.min()))
    last_image = max(int(batch.all_image_positions(b).max()) for b in range(batch.batch_size))
    return length if length > last_image else 0


# Phrases per pass after a shared image prefix. The prefix's keys and values are shared, not copied (see
# _SharedPrefixLayer), so a pass costs only its own suffix: benchmarks/job_speed.py.
SUFFIX_BATCH = 8


class _SharedPrefixLayer(DynamicLayer):
    """One layer's cache for a suffix pass: the prefix's keys/values (batch 1) seen by every sequence of the pass.

    ``update`` returns them broadcast and joined to the suffix's own keys/values, for this layer's attention only;
    nothing is stored, so the prefix is never copied per sequence and the cache ends the pass as it began."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.keys, self.values, self.device, self.is_initialized = keys, values, keys.device, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        batch = key_states.shape[0]
        keys = torch.cat([self.keys.expand(batch, -1, -1, -1), key_states], dim=-2)
        values = torch.cat([self.values.expand(batch, -1, -1, -1), value_states], dim=-2)
        return keys, values


def _shared_prefix_cache(cache: DynamicCache) -> DynamicCache:
    """A cache whose layers hand ``cache``'s prefix to every sequence of a suffix pass without copying it."""
    shared = DynamicCache()  # config-less: sliding-window layers keep every key, so the suffix sees them (F3)
    for layer in cache.layers:
        if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
            break
        shared.layers.append(_SharedPrefixLayer(layer.keys, layer.values))
    return shared


class Capturer:
    """Runs a model with the capture attention; owned by a :class:`~localize.models.VLM` handle."""

    def __init__(self, model: torch.nn.Module, adapter: Adapter) -> None:
        self.model = model
        self.adapter = adapter
        self.forward_calls = 0  # model forwards run, for tests and benchmarks
        adapter.set_attention(register_capture_attention())

    def capture(
        self,
        images: ImageLike | Sequence[ImageLike],
        phrases: str | Sequence[str],
        heads: Sequence[Head] | None = None,
        *,
        query_positions: Sequence[int] | None = None,
        early_exit: bool = True,
        reuse_prefix: bool = True,
        differentiable: bool = False,
        suffix_batch: int = SUFFIX_BATCH,
    ) -> list[AttentionMaps]:
        """Capture ``heads`` (default: all) for each phrase; one :class:`AttentionMaps` per phrase.

        ``images``: one image for every phrase (then the image prefix is computed once), or one per phrase.
        ``query_positions``: per phrase, a token index (negative: counted back from the last real token, -1 = the
        last); default the last input token. ``differentiable`` keeps the autograd graph (fine-tuning).
        ``suffix_batch``: phrases per pass after a shared prefix (the prefix's keys and values are shared, not
        copied; a pass holds its phrases' suffixes and one layer's joined keys at a time).
        """
        if int(suffix_batch) < 1:
            raise InputError(f"suffix_batch must be >= 1, got {suffix_batch!r}")
        phrases = check_phrases([phrases] if isinstance(phrases, str) else list(phrases))
        shared_image = not isinstance(images, (list, tuple))
        pil_images = [load_image(images)] * len(phrases) if shared_image else [load_image(i) for i in images]
        adapter = self.adapter
        capturable = adapter.capturable_layers
        default = [h for h in all_heads(adapter.num_layers, adapter.num_heads) if h[0] in capturable]
        heads = validate_heads(heads or default, adapter.num_layers, adapter.num_heads)
        outside = sorted({layer for layer, _ in heads} - set(capturable))
        if outside:
            raise HeadsMismatchError(
                f"layers {outside} of this {adapter.family} model do not attend to the image; "
                f"capturable: {adapter.capturable_layers_doc}"
            )
        batch = adapter.prepare(pil_images, phrases)
        self._check_length(batch)
        queries = self._query_positions(batch, query_positions)
        recorder = Recorder(
            heads_by_layer=group_heads_by_layer(heads),
            query_positions=queries,
            stop_after=max(h[0] for h in heads) if early_exit else None,
            keep_graph=differentiable,
        )
        reusable = reuse_prefix and adapter.prefix_reuse and shared_image and len(phrases) > 1
        prefix = _shared_prefix_length(batch, queries) if reusable else 0
        with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
            if prefix:
                self._run_with_prefix(batch, recorder, prefix, int(suffix_batch))
            else:
                self._run(dict(batch.inputs), recorder)
        return self._collect(batch, recorder, heads, queries)

    # -- internals ------------------------------------------------------------------------------------------
    def _check_length(self, batch: PreparedBatch) -> None:
        limit = getattr(self.adapter.text_config, "max_position_embeddings", None)
        length = batch.inputs["input_ids"].shape[1]
        if limit is not None and length > int(limit):
            raise InputError(f"prompt of {length} tokens is longer than the model's context of {limit} tokens")

    def _query_positions(self, batch: PreparedBatch, requested: Sequence[int] | None) -> torch.Tensor:
        last = batch.last_positions
        if requested is None:  # the phrase's last token (the adapter says how many tokens its template adds)
            return last - self.adapter.query_offset
        if len(requested) != batch.batch_size:
            raise InputError(f"{len(requested)} query positions for {batch.batch_size} phrases")
        out = torch.tensor([last[b] + 1 + p if p < 0 else p for b, p in enumerate(requested)], dtype=torch.long)
        if bool((out < 0).any()) or bool((out > last).any()):
            raise InputError(f"query positions {requested} outside the prompts (last tokens at {last.tolist()})")
        return out

    def _run(self, inputs: dict[str, torch.Tensor], recorder: Recorder | None, **extra: Any) -> None:
        device = self.model.device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        extra.setdefault("use_cache", False)
        extra.setdefault("logits_to_keep", 1)  # the maps need no logits; skip the LM head over the sequence
        self.forward_calls += 1
        try:
            self.model(**inputs, localize_recorder=recorder, **extra)
        except _EarlyExit:
            pass

    def _run_with_prefix(self, batch: PreparedBatch, recorder: Recorder, length: int, suffix_batch: int) -> None:
        cache = DynamicCache()  # config-less (F3): see _shared_prefix_cache
        prefix_only = Recorder(
            heads_by_layer={}, query_positions=recorder.query_positions, stop_after=recorder.stop_after
        )
        self._run(self.adapter.prefix_inputs(batch, length), prefix_only, use_cache=True, cache=cache)
        suffix = self.adapter.suffix_inputs(batch, length)
        parts: dict[int, list[torch.Tensor]] = {}
        for start in range(0, batch.batch_size, suffix_batch):
            stop = min(start + suffix_batch, batch.batch_size)
            part = dataclasses.replace(recorder, query_positions=recorder.query_positions[start:stop], rows={})
            inputs = self.adapter.slice_suffix(suffix, start, stop)
            self._run(inputs, part, use_cache=True, cache=_shared_prefix_cache(cache))
            for layer, rows in part.rows.items():
                parts.setdefault(layer, []).append(rows)
        recorder.rows = {layer: torch.cat(rows) for layer, rows in parts.items()}

    def _collect(
        self, batch: PreparedBatch, recorder: Recorder, heads: Sequence[Head], queries: torch.Tensor
    ) -> list[AttentionMaps]:
        results = []
        for b in range(batch.batch_size):
            rows = recorder.head_rows(b, heads)
            views = tuple(
                (
                    view.name,
                    rows[:, view.positions.to(rows.device)].reshape(len(heads), view.geometry.rows, view.geometry.cols),
                    view.geometry,
                )
                for view in batch.views[b]
            )
            name, maps, geometry = views[0]
            results.append(
                AttentionMaps(
                    maps=maps,
                    heads=tuple(heads),
                    geometry=geometry,
                    query_position=int(queries[b]),
                    prompt=batch.prompts[b],
                    sample_index=b,
                    image_mass=rows[:, batch.all_image_positions(b).to(rows.device)].sum(-1),
                    view=name,
                    views=views,
                )
            )
        return results


def eager_reference_rows(
    model: torch.nn.Module, adapter: Adapter, batch: PreparedBatch, queries: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """The anchor: per sample the query's full attention row ``[layers, heads, L]`` from eager
    ``output_attentions=True`` (slow). Switches the language model to eager attention for the call and restores
    the capture attention after."""
    queries = batch.last_positions - adapter.query_offset if queries is None else queries
    adapter.set_attention("eager")
    try:
        with torch.no_grad():
            inputs = {k: v.to(model.device) for k, v in batch.inputs.items()}
            out = model(**inputs, output_attentions=True, use_cache=False)
    finally:
        adapter.set_attention(register_capture_attention())
    attentions = torch.stack(out.attentions, dim=1)  # [B, layers, heads, L, L]
    return [attentions[b, :, :, int(queries[b])].float() for b in range(batch.batch_size)]


def eager_reference_maps(
    model: torch.nn.Module, adapter: Adapter, batch: PreparedBatch, queries: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """Per sample ``[layers, heads, rows, cols]`` over the grounding view, from :func:`eager_reference_rows`."""
    maps = []
    for b, row in enumerate(eager_reference_rows(model, adapter, batch, queries)):
        g = batch.geometries[b]
        maps.append(row[:, :, batch.image_positions[b]].reshape(row.shape[0], row.shape[1], g.rows, g.cols))
    return maps
