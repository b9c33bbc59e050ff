"""Linear probe on the temporally averaged frame feature."""
from __future__ import annotations

import torch
from torch import nn

from featcache.heads.layers import FrameFeature
from featcache.heads.registry import register_head


@register_head("linear")
class LinearHead(nn.Module):
    def __init__(self, in_dim, num_classes, num_frames, grid, num_prefix_tokens, frame_feature: str = "auto",
                 frame_norm: bool = True):
        super().__init__()
        self.frame = FrameFeature(in_dim, num_prefix_tokens, grid, frame_feature, frame_norm)
        self.fc = nn.Linear(self.frame.out_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.frame(x).mean(dim=1))  # (B, T, D) -> (B, D) -> (B, K)
