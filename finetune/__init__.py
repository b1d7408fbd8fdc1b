"""Where-to-Look fine-tuning of a VLM's localization heads: targets, attention losses, LoRA training, export.

``localize finetune --model M --heads H --data shapes --out DIR`` (see :mod:`localize.finetune.train`).
"""

from .losses import attention_loss, kl_attention_loss, lambda_schedule, where_to_look_loss
from .targets import sample_target, target_grid
from .train import TrainConfig, TrainResult, train

__all__ = [
    "TrainConfig",
    "TrainResult",
    "attention_loss",
    "kl_attention_loss",
    "lambda_schedule",
    "sample_target",
    "target_grid",
    "train",
    "where_to_look_loss",
]
