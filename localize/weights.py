"""A model folder's weights checked against its config before anything is allocated.

A ``config.json`` that lost its sizes (``{"model_type": "llava"}``) makes transformers build the default-size model
(7B for LLaVA: ~25 GB of RAM) before it notices the weights do not fit. Here the config's model is built on the
meta device (no memory), its parameters counted, and compared with the tensor shapes in the safetensors headers
(read without loading a tensor). The headers and a few sampled chunks give a cheap fingerprint of the weights for
result manifests.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any

from .errors import UnknownModelError

# Parameters the weights may lack or add beyond the config's model (buffers, tied or untied heads) before a folder
# counts as mismatched: far below any real size mismatch (a 7B config beside 1M weights is 7000x).
TOLERANCE = 0.25


def weight_files(folder: str | os.PathLike) -> list[Path]:
    """The folder's safetensors files (sharded or not); ``[]`` when it holds none."""
    return sorted(Path(folder).glob("*.safetensors"))


def stored_parameters(files: list[Path]) -> int:
    """Number of values in the tensors of ``files``, from their headers alone (an unreadable file is an error)."""
    from safetensors import safe_open

    total = 0
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                total += sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys())
        except Exception as err:  # safetensors raises its own error types for a torn or foreign file
            raise UnknownModelError(
                f"weights file {path} cannot be read ({err}); is it truncated? download it again"
            ) from None
    return total


def config_parameters(config: Any, model_class: type) -> int:
    """Parameters of ``model_class`` built from ``config`` on the meta device (nothing allocated)."""
    import torch

    with torch.device("meta"):
        model = model_class.from_config(config)
    return sum(p.numel() for p in model.parameters())


def check_weights_fit(folder: str | os.PathLike, config: Any, model_class: type) -> None:
    """Refuse a local model folder whose weights are missing, unreadable, or of another size than its config."""
    files = weight_files(folder)
    if not files:
        if any(Path(folder).glob("*.bin")):
            return  # PyTorch pickles: transformers reads them weights-only; no header to check cheaply
        raise UnknownModelError(f"{folder} has no weight files (*.safetensors); is the download complete?")
    stored = stored_parameters(files)
    if getattr(config, "quantization_config", None):
        return  # packed quantized tensors hold fewer values than the parameters they stand for
    expected = config_parameters(config, model_class)
    if abs(stored - expected) > TOLERANCE * expected:
        raise UnknownModelError(
            f"the weights in {folder} hold {_count(stored)} values but its config.json describes a "
            f"{config.model_type} model of {_count(expected)} parameters: config and weights do not match "
            "(a config.json without its sizes?); nothing was loaded"
        )


def weights_fingerprint(folder: str | os.PathLike, samples: int = 16, chunk: int = 65536) -> str | None:
    """A short hash of a local model's weights: each safetensors file's name, size and header, and ``samples``
    chunks of its tensor data at evenly spaced offsets (a retrained model has the same header, not the same
    bytes); ~1 MB read per file. ``None`` for a hub id or a folder without safetensors."""
    files = weight_files(folder) if os.path.isdir(folder) else []
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}:".encode())
        with open(path, "rb") as handle:
            header = int.from_bytes(handle.read(8), "little")
            digest.update(handle.read(min(header, 100_000_000)))
            start = 8 + header
            for i in range(samples):
                handle.seek(start + (size - start) * i // samples)
                digest.update(handle.read(chunk))
    return digest.hexdigest()[:16]


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)
