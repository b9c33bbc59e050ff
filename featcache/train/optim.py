"""The optimiser and learning-rate schedule every training loop uses."""
from __future__ import annotations

import math

import torch
from torch import nn

from featcache.spec.config import TrainConfig


def optimizer(cfg: TrainConfig, head: nn.Module) -> torch.optim.Optimizer:
    """AdamW (or SGD with momentum) over the trainable parameters; no weight decay on biases, norms, tokens."""
    params = [p for p in head.parameters() if p.requires_grad]  # frozen parts never enter the optimiser
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]  # biases, norms, tokens
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_factor(step: int, warmup: float, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1.0, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
