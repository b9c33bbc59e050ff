"""ST-Adapter-style blocks on cached tokens, then pooling + MLP.

Each block: LayerNorm -> down-projection -> depthwise 3D convolution over (time x grid), temporal
kernel 3 or 5 -> up-projection -> residual. The backbone is frozen and cached, so the adapters
run on top of its output tokens rather than inside its blocks; prefix tokens pass unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from featcache.heads.layers import FrameFeature, mlp
from featcache.registry import register_head


class STAdapter(nn.Module):
    def __init__(self, dim: int, bottleneck: int, temporal_kernel: int, grid: tuple[int, int], prefix: int):
        super().__init__()
        kt = temporal_kernel
        self.grid, self.prefix = grid, prefix
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, bottleneck)
        self.conv = nn.Conv3d(bottleneck, bottleneck, (kt, 3, 3), padding=(kt // 2, 1, 1), groups=bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)  # starts as the identity, as in ST-Adapter
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, n, c = x.shape
        h, w = self.grid
        z = self.down(self.norm(x[:, :, self.prefix:]))  # (B, T, HW, r)
        z = z.reshape(b, t, h, w, -1).permute(0, 4, 1, 2, 3)  # (B, r, T, H, W)
        z = self.conv(z).permute(0, 2, 3, 4, 1).reshape(b, t, h * w, -1)  # (B, T, HW, r)
        patches = x[:, :, self.prefix:] + self.up(z)  # (B, T, HW, C)
        return torch.cat([x[:, :, :self.prefix], patches], dim=2)  # (B, T, N, C)


@register_head("stadapter")
class STAdapterHead(nn.Module):
    def __init__(self, in_dim, num_classes, num_frames, grid, num_prefix_tokens,
                 bottleneck: int = 128, temporal_kernel: int = 3, blocks: int = 1,
                 frame_feature: str = "mean", mlp_layers: int = 1, mlp_hidden: int = 1024, dropout: float = 0.0):
        super().__init__()
        if temporal_kernel % 2 == 0:
            raise ValueError(f"temporal_kernel must be odd, not {temporal_kernel}")
        if grid[0] * grid[1] == 0:
            raise ValueError("stadapter needs patch tokens, but the view has none (tokens: cls)")
        self.adapters = nn.Sequential(*[STAdapter(in_dim, bottleneck, temporal_kernel, tuple(grid), num_prefix_tokens)
                                        for _ in range(blocks)])
        self.frame = FrameFeature(in_dim, num_prefix_tokens, grid, frame_feature)
        self.drop = nn.Dropout(dropout)
        self.mlp = mlp(self.frame.out_dim, num_classes, mlp_hidden, mlp_layers, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.frame(self.adapters(x)).mean(dim=1)  # (B, T, N, C) -> (B, T, D) -> (B, D)
        return self.mlp(self.drop(f))
