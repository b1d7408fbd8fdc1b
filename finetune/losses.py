"""Attention losses over the localization heads, and the λ schedule of the joint objective.

* ``where-to-look`` (seed paper, Look&Learn, sec. 3.1 eq. 2): ``1 − cos(attention map, target)``; scale-invariant,
  so the heads' total attention mass on the image (S_img) is left to the model and only the map's shape is
  supervised. Differs: on the localization heads' query rows (the paper averages over all layers, Table 9a).
* ``kl`` (KLAL, Esmaeilkhani & Latecki, sec. 3 eqs. 3-4): ``KL(target ‖ attention / attention.sum())``; target
  normalized to sum 1. Differs: eq. 4 averages over all layers the KL of the head-averaged map of the last answer
  token (eq. 3); here only the localization heads, at the query row of ``finetune/attention.py`` (the expression's
  last token by default), and ``combine="mean"`` is eq. 3's average over those heads.

How the heads are combined (``combine``):

* ``"per-head"`` (default): the loss of each head's map, then averaged. Its minimum (every head ∝ target) also
  minimizes the loss of their sum, which is what inference reads (``localize.postprocess`` sums the heads' maps),
  but not conversely: with the mean map one head's error can be cancelled by another's, and with the cosine a head
  with little image mass barely moves the mean, so it would get almost no signal. Per head, every supervised head
  is pulled to the target with equal weight, whichever subset or weighting is read at test time.
* ``"mean"``: one loss on the combined map: the mean of the raw maps for the cosine (exactly the inference sum, up
  to scale), the mean of the per-head normalized maps for KL (KLAL's per-layer ``Q``).
"""

from __future__ import annotations

import torch

ATTENTION_LOSSES = ("where-to-look", "kl")
COMBINE_MODES = ("per-head", "mean")
SCHEDULES = ("constant", "curriculum")


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def where_to_look_loss(
    attn: torch.Tensor, target: torch.Tensor, eps: float = 1e-8, reduction: str = "mean"
) -> torch.Tensor:
    """``1 − cosine(attn, target)`` over the last two (grid) dims (Look&Learn eq. 2); ``target`` broadcasts."""
    attn, target = torch.broadcast_tensors(attn.float(), target.to(attn.device, torch.float32))
    a, t = attn.flatten(-2), target.flatten(-2)
    cos = (a * t).sum(-1) / (a.norm(dim=-1) * t.norm(dim=-1)).clamp_min(eps)
    return _reduce(1.0 - cos, reduction)


def kl_attention_loss(
    attn: torch.Tensor, target: torch.Tensor, eps: float = 1e-8, reduction: str = "mean"
) -> torch.Tensor:
    """``KL(P ‖ Q)`` over the grid with ``P = target / sum``, ``Q = attn / sum`` (KLAL eq. 4's summand); eps-safe."""
    attn, target = torch.broadcast_tensors(attn.float(), target.to(attn.device, torch.float32))
    p = target.flatten(-2).clamp_min(0)
    p = p / p.sum(-1, keepdim=True).clamp_min(eps)
    q = attn.flatten(-2).clamp_min(0)
    q = q / q.sum(-1, keepdim=True).clamp_min(eps)
    kl = torch.xlogy(p, p) - torch.xlogy(p, q.clamp_min(eps))
    return _reduce(kl.sum(-1), reduction)


def attention_loss(
    maps: torch.Tensor, target: torch.Tensor, kind: str = "where-to-look", combine: str = "per-head"
) -> torch.Tensor:
    """Scalar loss of one sample's head maps ``[k, rows, cols]`` against its ``[rows, cols]`` target."""
    if kind not in ATTENTION_LOSSES:
        raise ValueError(f"unknown attention loss {kind!r}; expected one of {', '.join(ATTENTION_LOSSES)}")
    if combine not in COMBINE_MODES:
        raise ValueError(f"unknown combine mode {combine!r}; expected one of {', '.join(COMBINE_MODES)}")
    maps = maps.float()
    if combine == "mean":
        if kind == "kl":
            maps = maps / maps.sum((-1, -2), keepdim=True).clamp_min(1e-8)
        maps = maps.mean(0, keepdim=True)
    loss_fn = where_to_look_loss if kind == "where-to-look" else kl_attention_loss
    return loss_fn(maps, target, reduction="mean")


def lambda_schedule(kind: str, progress: float, base: float = 1.0) -> float:
    """λ at ``progress`` ∈ [0, 1] of training: ``constant`` = base; ``curriculum`` = base for the first third,
    linear decay to 0 over the second third, 0 (next-token loss only) over the last third (Look&Learn, appendix
    "Curriculum Scheduling of Attention Guidance", Table 10)."""
    progress = min(max(float(progress), 0.0), 1.0)
    if kind == "constant":
        return float(base)
    if kind == "curriculum":
        if progress <= 1.0 / 3.0:
            return float(base)
        if progress >= 2.0 / 3.0:
            return 0.0
        return float(base) * (2.0 - 3.0 * progress)
    raise ValueError(f"unknown schedule {kind!r}; expected one of {', '.join(SCHEDULES)}")
