"""One training forward: next-token loss on the answer plus the supervised heads' attention maps, differentiable.

The sample format is the grounding prompt (the adapter's template around the expression, exactly what inference
feeds) followed by a short answer and EOS. The query row is the prompt's last token, i.e. the expression's last
token: the same position inference reads, and the one whose output predicts the answer's first token. The rows
come from the capture attention (``localize.capture``): the language model keeps SDPA, and only the supervised
heads' query rows are computed again, with their autograd graph. With ``query="expression"`` every expression
token's row is recorded and the maps are averaged over them (the seed paper's "all entity tokens" variant).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from localize.adapters import Adapter, ImageView
from localize.capture import Head, Recorder, group_heads_by_layer
from localize.geometry import GridGeometry

IGNORE_INDEX = -100
QUERY_MODES = ("last", "expression")


@dataclass
class TrainingRecorder(Recorder):
    """The capture recorder with several query positions per sample (``query_positions`` ``[B, Q]``).

    ``rows[layer]`` is ``[B, h_sel, Q, K]`` (softmax rows, graph kept); ``query_mask`` ``[B, Q]`` marks real ones.
    """

    query_mask: torch.Tensor | None = None
    keep_graph: bool = True
    rows: dict[int, torch.Tensor] = field(default_factory=dict)


@dataclass
class TrainingBatch:
    """Prompt + answer sequences (right-padded), answer-only labels, and where the image and query tokens sit."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    views: list[tuple[ImageView, ...]]  # per sample, the grounding view first (as PreparedBatch.views)
    query_positions: torch.Tensor  # [B, Q]
    query_mask: torch.Tensor  # [B, Q] bool
    prompts: list[str]
    answers: list[str]

    @property
    def batch_size(self) -> int:
        """Number of samples."""
        return len(self.prompts)

    @property
    def geometries(self) -> list[GridGeometry]:
        """Per sample, the grounding view's geometry (the supervised maps' grid)."""
        return [views[0].geometry for views in self.views]

    def to(self, device: torch.device | str) -> TrainingBatch:
        """The batch with its tensors on ``device``."""
        self.inputs = {k: v.to(device) for k, v in self.inputs.items()}
        self.labels = self.labels.to(device)
        return self


def _ids(tokenizer: Any, text: str, special: bool = True) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _answer_ids(tokenizer: Any, prompt: str, answer: str, add_eos: bool) -> list[int]:
    """Tokens of ``answer`` as they follow ``prompt`` + a space (in-context tokenization when it extends the prompt's)."""
    prompt_ids, full_ids = _ids(tokenizer, prompt), _ids(tokenizer, f"{prompt} {answer}")
    if full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
        ids = full_ids[len(prompt_ids) :]
    else:
        ids = _ids(tokenizer, f" {answer}", special=False)
    if add_eos and tokenizer.eos_token_id is not None:
        ids = [*ids, int(tokenizer.eos_token_id)]
    return ids


def _expression_span(adapter: Adapter, tokenizer: Any, phrase: str, prompt_len: int) -> tuple[int, int]:
    """[first, last] token index of the expression inside a prompt of ``prompt_len`` (expanded) tokens."""
    before, _, after = adapter.template.partition("{phrase}")
    n_prompt = len(_ids(tokenizer, adapter.format_prompt(phrase)))
    n_before = len(_ids(tokenizer, before))
    n_upto = len(_ids(tokenizer, before + phrase))
    prompt_len -= adapter.query_offset  # tokens the processor adds after the prompt (PaliGemma's \n)
    shift = prompt_len - n_prompt  # image placeholder expansion (and <bos>), which precede the phrase
    last = prompt_len - 1 - (n_prompt - n_upto)
    first = min(max(n_before + shift, 0), last)
    return first, last


def build_training_batch(
    adapter: Adapter,
    images: Sequence[Image.Image],
    expressions: Sequence[str],
    answers: Sequence[str],
    *,
    query: str = "last",
    add_eos: bool = True,
) -> TrainingBatch:
    """Tokenize ``prompt(expression) + " " + answer + EOS`` per sample; labels cover the answer (and EOS) only."""
    if query not in QUERY_MODES:
        raise ValueError(f"query must be one of {', '.join(QUERY_MODES)}, got {query!r}")
    prepared = adapter.prepare(list(images), list(expressions))
    tokenizer = adapter.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    seq_keys = [k for k, v in prepared.inputs.items() if v.dim() == 2 and v.shape == prepared.inputs["input_ids"].shape]
    rows: list[dict[str, torch.Tensor]] = []
    spans: list[tuple[int, int]] = []
    label_rows: list[torch.Tensor] = []
    first_real = []  # a left-padded row's tokens move back by its padding when re-laid
    for b, (prompt, answer) in enumerate(zip(prepared.prompts, answers)):
        real = prepared.inputs["attention_mask"][b].bool()
        first_real.append(int(real.nonzero()[0]))
        prompt_len = int(real.sum())
        answer_ids = torch.tensor(_answer_ids(tokenizer, prompt, answer, add_eos), dtype=torch.long)
        row = {}
        for key in seq_keys:
            tokens = prepared.inputs[key][b][real]
            if key == "input_ids":
                extra = answer_ids.to(tokens.dtype)
            elif key == "attention_mask":
                extra = torch.ones(len(answer_ids), dtype=tokens.dtype)
            else:  # token-type ids and the like: the answer's type is the adapter's (text 0; a prefix-LM's suffix 1)
                extra = torch.full((len(answer_ids),), adapter.answer_token_type, dtype=tokens.dtype)
            row[key] = torch.cat([tokens, extra])
        rows.append(row)
        labels = torch.full((prompt_len + len(answer_ids),), IGNORE_INDEX, dtype=torch.long)
        labels[prompt_len:] = answer_ids
        label_rows.append(labels)
        if query == "last":  # the expression's last token (before the tokens the template adds after it)
            spans.append((prompt_len - 1 - adapter.query_offset,) * 2)
        else:
            spans.append(_expression_span(adapter, tokenizer, expressions[b], prompt_len))
    length = max(len(r["input_ids"]) for r in rows)
    inputs = dict(prepared.inputs)
    for key in seq_keys:
        fill = pad_id if key == "input_ids" else 0
        inputs[key] = torch.stack([F.pad(r[key], (0, length - len(r[key])), value=fill) for r in rows])
    labels = torch.stack([F.pad(lab, (0, length - len(lab)), value=IGNORE_INDEX) for lab in label_rows])
    width = max(last - first + 1 for first, last in spans)
    query_positions = torch.zeros(len(rows), width, dtype=torch.long)
    query_mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for b, (first, last) in enumerate(spans):
        n = last - first + 1
        query_positions[b, :n] = torch.arange(first, last + 1)
        query_positions[b, n:] = last  # padding slots repeat a real query; masked out
        query_mask[b, :n] = True
    return TrainingBatch(
        inputs=inputs,
        labels=labels,
        views=[tuple(v.shifted(-first) for v in prepared.views[b]) for b, first in enumerate(first_real)],
        query_positions=query_positions,
        query_mask=query_mask,
        prompts=prepared.prompts,
        answers=list(answers),
    )


def forward_with_attention(
    model: torch.nn.Module, batch: TrainingBatch, heads: Sequence[Head]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One forward: (mean next-token loss over answer tokens, per sample ``[k, rows, cols]`` maps of ``heads``).

    Logits are kept only from the earliest query position on (``logits_to_keep``): the image never needs them.
    """
    device = batch.labels.device
    recorder = TrainingRecorder(
        heads_by_layer=group_heads_by_layer(list(heads)),
        query_positions=batch.query_positions.to(device),
        stop_after=None,
        query_mask=batch.query_mask.to(device),
    )
    length = batch.labels.shape[1]
    start = int(batch.query_positions[:, -1].min())  # predicts the first answer token of the shortest prompt
    out = model(**batch.inputs, use_cache=False, logits_to_keep=length - start, localize_recorder=recorder)
    logits = out.logits[:, :-1].float()
    labels = batch.labels[:, start + 1 :]
    if bool((labels != IGNORE_INDEX).any()):
        ntp = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)
    else:
        ntp = logits.sum() * 0.0
    return ntp, collect_maps(recorder, batch, heads)


def collect_maps(recorder: TrainingRecorder, batch: TrainingBatch, heads: Sequence[Head]) -> list[torch.Tensor]:
    """Per sample ``[k, rows, cols]``: each head's query rows over the image tokens, averaged over real queries."""
    out = []
    for b in range(batch.batch_size):
        view = batch.views[b][0]
        rows = recorder.head_rows(b, heads)  # [k, Q, K]
        rows = rows[:, :, view.positions.to(rows.device)]  # [k, Q, n_img]
        weight = recorder.query_mask[b].to(rows.dtype)[None, :, None]
        maps = (rows * weight).sum(1) / weight.sum()
        out.append(maps.reshape(len(heads), view.geometry.rows, view.geometry.cols))
    return out
