"""ST-Adapters *after* the frozen model: adapter blocks on its cached output tokens, then pooling +
MLP. Nothing frozen runs after them, so this is not the placement of the ST-Adapter paper or of
the DINOv2 + ST-Adapter study (adapters inside every ViT block, before attention): that is the ``adapter`` head, which
runs the frozen blocks after a cached cut. This head is the cheap post-hoc variant; its blocks are
the released ST-Adapter (heads/layers.py ``STAdapter``: kt x 1 x 1 depthwise kernel, identity at
start) stacked on the final tokens.
"""
from __future__ import annotations

import torch
from torch import nn

from featcache.heads.layers import FrameFeature, STAdapter, mlp
from featcache.heads.registry import register_head


@register_head("stadapter_posthoc")
class PostHocSTAdapterHead(nn.Module):
    def __init__(self, in_dim, num_classes, num_frames, grid, num_prefix_tokens,
                 width: int = 128, temporal_kernel: int = 3, blocks: int = 1,
                 frame_feature: str = "mean", frame_norm: bool = True, mlp_layers: int = 1, mlp_hidden: int = 1024,
                 dropout: float = 0.0):
        super().__init__()
        self.adapters = nn.ModuleList([STAdapter(in_dim, width, temporal_kernel, tuple(grid), num_prefix_tokens)
                                       for _ in range(blocks)])
        self.frame = FrameFeature(in_dim, num_prefix_tokens, grid, frame_feature, frame_norm)
        self.drop = nn.Dropout(dropout)
        self.mlp = mlp(self.frame.out_dim, num_classes, mlp_hidden, mlp_layers, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for adapter in self.adapters:
            x = adapter(x)  # (B, T, N, C)
        return self.mlp(self.drop(self.frame(x).mean(dim=1)))  # (B, T, D) -> (B, D) -> (B, K)
