"""The untrained shapes-world LLaVA: a shallow CLIP with a frozen 2-D sin-cos position table and a small Llama."""

from __future__ import annotations

import torch

from localize.data import shapes

from .config import ShapesTrainConfig


def sincos_2d(side: int, dim: int) -> torch.Tensor:
    """``[side * side, dim]`` 2-D sin-cos position table (half the channels for x, half for y)."""
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    ys, xs = torch.meshgrid(
        torch.arange(side, dtype=torch.float32), torch.arange(side, dtype=torch.float32), indexing="ij"
    )
    out = [
        torch.sin(xs.flatten()[:, None] * omega),
        torch.cos(xs.flatten()[:, None] * omega),
        torch.sin(ys.flatten()[:, None] * omega),
        torch.cos(ys.flatten()[:, None] * omega),
    ]
    table = torch.cat(out, dim=1)
    return torch.nn.functional.pad(table, (0, dim - table.shape[1]))


def build_model(config: ShapesTrainConfig):
    """The untrained model and processor (seeded by ``config.seed``), in training mode; image tokens stay local
    through the frozen sin-cos position table."""
    from localize.testing import normalize_words, tiny_llava

    model, processor = tiny_llava(
        words=shapes.vocabulary(),
        image_size=config.image_size,
        patch_size=config.patch_size,
        vision_hidden=config.vision_hidden,
        vision_layers=config.vision_layers,
        vision_heads=4,
        hidden=config.hidden,
        layers=config.layers,
        heads=config.heads,
        kv_heads=config.heads,
        head_dim=config.head_dim,
        intermediate=config.hidden * 2,
        vision_feature_layer=-1,
        seed=config.seed,
    )
    normalize_words(processor.tokenizer)  # "The Red Circle." reads as "the red circle"
    embeddings = model.model.vision_tower.embeddings
    side = config.image_size // config.patch_size
    with torch.no_grad():
        table = torch.zeros_like(embeddings.position_embedding.weight)
        table[1:] = sincos_2d(side, table.shape[1])  # row 0 is the CLS token
        embeddings.position_embedding.weight.copy_(table)
    embeddings.position_embedding.weight.requires_grad_(False)
    return model.train(), processor
