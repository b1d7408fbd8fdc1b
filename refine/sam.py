"""SAM refinement of an attention-derived grounding (Kang et al., CVPR 2025, §5): box and/or point prompts -> mask.

Prompts: the box (Kang et al. §5: the bounding box prompts SAM for RES), the argmax point (Cao et al.,
attend-and-segment, sec. 3: "the coordinate that has the highest normalized attention"), or points sampled as in
Look&Learn appendix C.2 (:func:`sample_points`).

Coordinates: the toolkit's boxes and points are continuous original-image pixels (pixel ``x`` spans ``[x, x + 1)``).
``SamPredictor`` takes original-image coordinates, applies its own ResizeLongestSide transform, and its prompt
encoder adds 0.5 ("shift to center of pixel"), i.e. it reads coordinates as pixel indices. So a point at the centre
of pixel (row r, col c) is passed as (c, r), and a box is passed as the indices of its boundary pixels,
(x0, y0, x1 - 1, y1 - 1) -- SAM's own mask-to-box convention (``segment_anything.utils.amg.batched_mask_to_box``).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np
import torch
from PIL import Image

from .errors import SamCheckpointError, SamInputError

PROMPTS = ("box", "point", "points", "box+points")
_EMBED_DIM_TO_TYPE = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}


def _preview(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{f', ... (+{len(keys) - limit} more)' if len(keys) > limit else ''}]"


def load_sam(checkpoint: str | os.PathLike, model_type: str = "vit_h", device: str | torch.device = "cpu"):
    """Build ``sam_model_registry[model_type]`` and load ``checkpoint`` (``torch.load(weights_only=True)``) into it."""
    from segment_anything import sam_model_registry

    if model_type not in sam_model_registry:
        raise SamCheckpointError(f"unknown SAM model type {model_type!r}; expected one of {sorted(sam_model_registry)}")
    path = os.fspath(checkpoint)
    if not os.path.isfile(path):
        raise SamCheckpointError(f"SAM checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refused or corrupt file
        raise SamCheckpointError(f"cannot read SAM checkpoint {path} as a weights-only state dict: {err}") from err
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and set(state) == {wrapper} and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SamCheckpointError(f"{path} does not hold a state dict of tensors")

    # Compare keys and shapes on a meta-device model first: a wrong checkpoint fails before any allocation.
    with torch.device("meta"):
        expected = {k: v.shape for k, v in sam_model_registry[model_type]().state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k])}"
        for k in set(expected) & set(state)
        if state[k].shape != expected[k]
    )
    if missing or unexpected or mismatched:
        embed = state.get("image_encoder.patch_embed.proj.weight")
        guess = _EMBED_DIM_TO_TYPE.get(int(embed.shape[0])) if embed is not None and embed.ndim == 4 else None
        looks = f" (it looks like a {guess} checkpoint)" if guess and guess != model_type else ""
        parts = [
            f"{name} {_preview(keys)}"
            for name, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", mismatched),
            )
            if keys
        ]
        raise SamCheckpointError(f"{path} is not a SAM {model_type} checkpoint{looks}: " + "; ".join(parts))
    sam = sam_model_registry[model_type]()
    sam.load_state_dict(state)
    return sam.to(device).eval()


def sample_points(
    heatmap: np.ndarray,
    n_pos: int = 3,
    n_neg: int = 3,
    tau_pos: float = 0.5,
    tau_neg: float = 0.2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Positive/negative point prompts from a ``[H, W]`` map (Look&Learn, appendix C.2.3-C.2.4).

    Differs from C.2: negatives are ``<= tau_neg`` (paper ``<``); too few positive candidates give fewer points
    (the paper samples with replacement up to ``N_pos``); the map is max-normalised before the thresholds.

    The map is normalised by its max; positives are drawn without replacement among pixels >= ``tau_pos`` with
    probability proportional to the map (the argmax pixel when none qualifies; none for an all-zero map),
    negatives uniformly among pixels <= ``tau_neg``; fewer candidates than asked give fewer points. Returns (``[N, 2]`` float (x, y) pixel centres in continuous pixels, ``[N]`` int labels 1/0).
    """
    heat = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float64)), 0.0, None)
    if heat.ndim != 2:
        raise SamInputError(f"heatmap must be [H, W], got shape {heat.shape}")
    peak = heat.max(initial=0.0)
    heat = heat / peak if peak > 0 else heat
    rng = np.random.default_rng(seed)
    flat = heat.ravel()
    positives = negatives = np.empty(0, dtype=np.int64)
    if n_pos > 0 and peak > 0:
        candidates = np.flatnonzero((flat >= tau_pos) & (flat > 0))
        if candidates.size == 0:
            candidates = np.array([int(np.argmax(flat))])
        weights = flat[candidates] / flat[candidates].sum()
        positives = rng.choice(candidates, size=min(n_pos, candidates.size), replace=False, p=weights)
    if n_neg > 0:
        candidates = np.flatnonzero(flat <= tau_neg)
        if candidates.size:
            negatives = rng.choice(candidates, size=min(n_neg, candidates.size), replace=False)
    rows, cols = np.unravel_index(np.concatenate([positives, negatives]).astype(np.int64), heat.shape)
    coords = np.stack([cols + 0.5, rows + 0.5], axis=1).astype(np.float64).reshape(-1, 2)
    labels = np.concatenate([np.ones(len(positives), dtype=np.int64), np.zeros(len(negatives), dtype=np.int64)])
    return coords, labels


def argmax_point(heatmap: np.ndarray) -> np.ndarray:
    """The map's maximum as a ``[1, 2]`` (x, y) pixel centre in continuous pixels (attend-and-segment's SAM prompt)."""
    heat = np.nan_to_num(np.asarray(heatmap, dtype=np.float64), nan=-np.inf)
    row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return np.array([[col + 0.5, row + 0.5]])


def _sam_points(coords: np.ndarray) -> np.ndarray:
    """Continuous pixel coordinates -> SAM's pixel-index coordinates (its prompt encoder adds 0.5 back)."""
    return np.asarray(coords, dtype=np.float64) - 0.5


def _sam_box(box: Any) -> np.ndarray:
    """Continuous (x0, y0, x1, y1) -> the indices of its boundary pixels (SAM's mask-to-box convention)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.array([x0, y0, max(x0, x1 - 1.0), max(y0, y1 - 1.0)])


class SamRefiner:
    """Refines attention groundings with SAM: ``set_image`` once per image, then ``refine`` per expression.

    ``model`` is a checkpoint path (loaded as ``model_type``: vit_b / vit_l / vit_h) or an already-built ``Sam``.
    """

    def __init__(self, model: Any, model_type: str = "vit_h", device: str | torch.device | None = None) -> None:
        from segment_anything import SamPredictor

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if isinstance(model, (str, os.PathLike)):
            model = load_sam(model, model_type, device)
        else:
            model = model.to(device).eval()
        self.predictor = SamPredictor(model)
        self._image_key: tuple | None = None

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(width, height) of the current image, or None before :meth:`set_image`."""
        if self._image_key is None:
            return None
        height, width = self._image_key[0][:2]
        return int(width), int(height)

    def set_image(self, image: np.ndarray | Image.Image) -> None:
        """Embed an RGB image (``[H, W, 3]`` uint8 or PIL); a no-op when it equals the current image."""
        array = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image)
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise SamInputError(f"SAM needs an [H, W, 3] uint8 RGB image, got {array.shape} {array.dtype}")
        array = np.ascontiguousarray(array)
        key = (array.shape, hashlib.blake2b(array.tobytes(), digest_size=16).hexdigest())
        if key == self._image_key:
            return
        self._image_key = None
        self.predictor.set_image(array, image_format="RGB")
        self._image_key = key

    def refine(
        self,
        heatmap: np.ndarray,
        box: Any = None,
        prompt: str = "box",
        n_pos: int = 3,
        n_neg: int = 3,
        tau_pos: float = 0.5,
        tau_neg: float = 0.2,
        seed: int = 0,
        multimask: bool = True,
    ) -> tuple[np.ndarray, float]:
        """SAM mask ``[H, W]`` bool and its predicted IoU from a ``[H, W]`` map in [0, 1] and/or a continuous box.

        ``prompt``: ``"box"`` (paper default), ``"point"`` (argmax), ``"points"`` (sampled, see
        :func:`sample_points`) or ``"box+points"``. With ``multimask`` the mask with the best predicted IoU is kept.
        """
        coords, labels, box = self.prompts(heatmap, box, prompt, n_pos, n_neg, tau_pos, tau_neg, seed)
        masks, scores, _ = self.predictor.predict(
            point_coords=None if coords is None else _sam_points(coords),
            point_labels=labels,
            box=None if box is None else _sam_box(box),
            multimask_output=multimask,
        )
        best = int(np.argmax(scores))
        return np.asarray(masks[best], dtype=bool), float(scores[best])

    def prompts(
        self,
        heatmap: np.ndarray,
        box: Any = None,
        prompt: str = "box",
        n_pos: int = 3,
        n_neg: int = 3,
        tau_pos: float = 0.5,
        tau_neg: float = 0.2,
        seed: int = 0,
    ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """The prompts :meth:`refine` uses, in continuous pixels: (points ``[N, 2]`` (x, y), labels, box), None when unused."""
        if self._image_key is None:
            raise SamInputError("call set_image() before refine()")
        if prompt not in PROMPTS:
            raise SamInputError(f"prompt must be one of {PROMPTS}, got {prompt!r}")
        heatmap = np.asarray(heatmap)
        width, height = self.image_size
        if heatmap.shape != (height, width):
            raise SamInputError(f"heatmap of shape {heatmap.shape} does not match the image ({height}, {width})")
        prompt_box = None
        if "box" in prompt:
            if box is None:
                raise SamInputError(f"prompt {prompt!r} needs a box")
            prompt_box = np.asarray(box, dtype=np.float64).reshape(4)
        coords = labels = None
        if prompt == "point":
            coords, labels = argmax_point(heatmap), np.ones(1, dtype=int)
        elif prompt.endswith("points"):
            coords, labels = sample_points(heatmap, n_pos, n_neg, tau_pos, tau_neg, seed)
            if len(coords) == 0:
                coords = labels = None
        if coords is None and prompt_box is None:
            raise SamInputError("no prompt to give SAM: n_pos and n_neg are both 0 and there is no box")
        return coords, labels, prompt_box
