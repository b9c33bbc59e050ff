"""Temporal transformer encoder over per-frame features, with a class token and learned
positional embeddings (the 2D-CNN + transformer baseline, and AM Flow's temporal module)."""
from __future__ import annotations

import torch
from torch import nn

from featcache.heads.layers import FrameFeature
from featcache.heads.registry import register_head


@register_head("transformer")
class TemporalTransformerHead(nn.Module):
    def __init__(self, in_dim, num_classes, num_frames, grid, num_prefix_tokens,
                 dim: int = 256, layers: int = 2, heads: int = 4, dropout: float = 0.1,
                 frame_feature: str = "auto", frame_norm: bool = True):
        super().__init__()
        self.frame = FrameFeature(in_dim, num_prefix_tokens, grid, frame_feature, frame_norm)
        self.proj = nn.Linear(self.frame.out_dim, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, num_frames + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.proj(self.frame(x))  # (B, T, dim)
        f = torch.cat([self.cls.expand(len(f), -1, -1), f], dim=1) + self.pos  # (B, T+1, dim)
        return self.fc(self.norm(self.encoder(f)[:, 0]))  # class token -> (B, K)
