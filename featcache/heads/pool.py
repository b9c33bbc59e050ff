"""Pooling + MLP: the DINOv2 + ST-Adapter study's baseline (avg vs concat, 0/1/2 MLP layers)."""
from __future__ import annotations

import torch
from torch import nn

from featcache.heads.layers import FrameFeature, mlp
from featcache.heads.registry import register_head


@register_head("pool")
class PoolHead(nn.Module):
    def __init__(self, in_dim, num_classes, num_frames, grid, num_prefix_tokens,
                 temporal: str = "avg", frame_feature: str = "auto", frame_norm: bool = True, mlp_layers: int = 1,
                 mlp_hidden: int = 1024, dropout: float = 0.0):
        super().__init__()
        if temporal not in ("avg", "concat"):
            raise ValueError(f"temporal must be avg or concat, not {temporal!r}")
        self.frame = FrameFeature(in_dim, num_prefix_tokens, grid, frame_feature, frame_norm)
        self.temporal = temporal
        width = self.frame.out_dim * (num_frames if temporal == "concat" else 1)
        self.drop = nn.Dropout(dropout)
        self.mlp = mlp(width, num_classes, mlp_hidden, mlp_layers, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.frame(x)  # (B, T, D)
        f = f.mean(dim=1) if self.temporal == "avg" else f.flatten(1)  # (B, D) or (B, T*D)
        return self.mlp(self.drop(f))
