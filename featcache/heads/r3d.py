"""AdViSe's temporal modelling module (TMM): residual R3D blocks over the patch grid.

Each block: Conv3D (k_t x 1 x 1) -> Conv3D (1 x 3 x 3) -> Conv3D (1 x 1 x 1), batch norm and
ReLU between, a residual connection, no down-sampling; then global average pooling and an MLP
head of 2 FC layers (hidden 1024).
"""
from __future__ import annotations

import torch
from torch import nn

from featcache.heads.layers import mlp, patch_volume
from featcache.registry import register_head


class R3DBlock(nn.Module):
    def __init__(self, width: int, temporal_kernel: int):
        super().__init__()
        kt = temporal_kernel
        self.body = nn.Sequential(
            nn.Conv3d(width, width, (kt, 1, 1), padding=(kt // 2, 0, 0), bias=False), nn.BatchNorm3d(width), nn.ReLU(),
            nn.Conv3d(width, width, (1, 3, 3), padding=(0, 1, 1), bias=False), nn.BatchNorm3d(width), nn.ReLU(),
            nn.Conv3d(width, width, 1, bias=False), nn.BatchNorm3d(width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))  # (B, W, T, H, W') unchanged


@register_head("r3d")
class R3DHead(nn.Module):
    def __init__(self, in_dim, num_classes, num_frames, grid, num_prefix_tokens,
                 hidden: int = 256, blocks: int = 1, temporal_kernel: int = 3,
                 mlp_hidden: int = 1024, dropout: float = 0.0):
        super().__init__()
        if temporal_kernel % 2 == 0:
            raise ValueError(f"temporal_kernel must be odd, not {temporal_kernel}")
        self.prefix, self.grid = num_prefix_tokens, tuple(grid)
        if self.grid[0] * self.grid[1] == 0:
            raise ValueError("r3d needs patch tokens, but the view has none (tokens: cls)")
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Sequential(nn.Conv3d(in_dim, hidden, 1, bias=False), nn.BatchNorm3d(hidden), nn.ReLU())
        self.blocks = nn.Sequential(*[R3DBlock(hidden, temporal_kernel) for _ in range(blocks)])
        self.drop = nn.Dropout(dropout)
        self.mlp = mlp(hidden, num_classes, mlp_hidden, 1, dropout)  # 2 FC layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = patch_volume(self.norm(x), self.prefix, self.grid)  # (B, C, T, H, W)
        v = self.blocks(self.proj(v))  # (B, hidden, T, H, W)
        return self.mlp(self.drop(v.mean(dim=(2, 3, 4))))  # (B, hidden) -> (B, K)
