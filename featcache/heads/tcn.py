"""Temporal convolutional network over per-frame features: residual dilated 1D convolutions."""
from __future__ import annotations

import torch
from torch import nn

from featcache.heads.layers import FrameFeature
from featcache.heads.registry import register_head


@register_head("tcn")
class TCNHead(nn.Module):
    def __init__(self, in_dim, num_classes, num_frames, grid, num_prefix_tokens,
                 hidden: int = 256, levels: int = 3, kernel: int = 3, dropout: float = 0.0,
                 frame_feature: str = "auto", frame_norm: bool = True):
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"kernel must be odd, not {kernel}")
        self.frame = FrameFeature(in_dim, num_prefix_tokens, grid, frame_feature, frame_norm)
        self.proj = nn.Conv1d(self.frame.out_dim, hidden, 1)
        self.levels = nn.ModuleList(
            nn.Sequential(nn.Conv1d(hidden, hidden, kernel, padding=(kernel // 2) * 2 ** i, dilation=2 ** i),
                          nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(dropout))
            for i in range(levels))
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(self.frame(x).transpose(1, 2))  # (B, T, D) -> (B, hidden, T)
        for level in self.levels:
            h = h + level(h)  # same length: padding matches the dilation
        return self.fc(h.mean(dim=2))  # (B, hidden) -> (B, K)
