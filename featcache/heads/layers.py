"""Blocks shared by the heads."""
from __future__ import annotations

import torch
from torch import nn

FRAME_FEATURES = ("auto", "cls", "mean", "cls_mean", "patches", "weighted")


def mlp(in_dim: int, out_dim: int, hidden: int, layers: int, dropout: float) -> nn.Sequential:
    """``layers`` hidden layers of width ``hidden`` (0 = a single linear layer)."""
    mods: list[nn.Module] = []
    for _ in range(layers):
        mods += [nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout)]
        in_dim = hidden
    mods.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*mods)


class FrameFeature(nn.Module):
    """(B, T, N, C) tokens -> (B, T, D) one vector per frame, layer-normalised unless ``norm`` is
    False (the Charades video-transformer study's best head has "LayerNorm: False"; heads expose it as ``frame_norm``).

    ``cls``: the first prefix token; ``mean``: mean of the patch tokens; ``cls_mean``: both,
    concatenated (D = 2C); ``patches``: all patch tokens concatenated in grid order (D = H*W*C;
    keeps where things are, e.g. with a view pooled to a 2x2 grid); ``weighted``: a learnable
    weighted average over all tokens of the frame, prefix and patches (softmax of one logit per
    token position, starting uniform: the Charades video-transformer study's "all tokens with a learnable weighted average"
    against CLS only); ``auto``: cls when the view has prefix tokens, else mean.
    """

    def __init__(self, dim: int, num_prefix_tokens: int, grid: tuple[int, int], mode: str = "auto",
                 norm: bool = True):
        super().__init__()
        if mode not in FRAME_FEATURES:
            raise ValueError(f"frame_feature must be one of {FRAME_FEATURES}, not {mode!r}")
        has_patches = grid[0] * grid[1] > 0
        if mode == "auto":
            mode = "cls" if num_prefix_tokens else "mean"
        if mode in ("cls", "cls_mean") and not num_prefix_tokens:
            raise ValueError(f"frame_feature={mode!r} needs CLS tokens, but the view has none")
        if mode in ("mean", "cls_mean", "patches") and not has_patches:
            raise ValueError(f"frame_feature={mode!r} needs patch tokens, but the view has none")
        self.mode, self.prefix = mode, num_prefix_tokens
        self.out_dim = {"cls_mean": 2 * dim, "patches": grid[0] * grid[1] * dim}.get(mode, dim)
        if mode == "weighted":
            self.token_logits = nn.Parameter(torch.zeros(num_prefix_tokens + grid[0] * grid[1]))
        self.norm = nn.LayerNorm(self.out_dim) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "cls":
            feats = x[:, :, 0]  # (B, T, C)
        elif self.mode == "mean":
            feats = x[:, :, self.prefix:].mean(dim=2)  # (B, T, C)
        elif self.mode == "patches":
            feats = x[:, :, self.prefix:].flatten(2)  # (B, T, H*W*C)
        elif self.mode == "weighted":
            w = torch.softmax(self.token_logits, dim=0)  # (N,)
            feats = (x * w[:, None]).sum(dim=2)  # (B, T, C)
        else:
            feats = torch.cat([x[:, :, 0], x[:, :, self.prefix:].mean(dim=2)], dim=-1)  # (B, T, 2C)
        return self.norm(feats)


def patch_volume(x: torch.Tensor, num_prefix_tokens: int, grid: tuple[int, int]) -> torch.Tensor:
    """(B, T, N, C) tokens -> (B, C, T, H, W) patch volume (prefix tokens dropped)."""
    h, w = grid
    if h * w == 0:
        raise ValueError("this head needs patch tokens, but the view has none (tokens: cls)")
    b, t, _, c = x.shape
    patches = x[:, :, num_prefix_tokens:]  # (B, T, H*W, C)
    return patches.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)  # (B, C, T, H, W)


class STAdapter(nn.Module):
    """The ST-Adapter of Pan et al. as released (linziyi96/st-adapter ``models_adapter.py``
    ``Adapter``, L18-55): fc1 down-projection -> depthwise Conv3d with kernel (kt, 1, 1) over
    (time, grid) -> fc2 up-projection, added to the residual stream; the conv weights and every
    bias start at zero, so a fresh adapter is the identity; prefix (CLS/register) tokens bypass it.
    Works on (B*T, N, C) with ``frames`` = T (inside a ViT block) or on (B, T, N, C)."""

    def __init__(self, dim: int, width: int, temporal_kernel: int, grid: tuple[int, int], prefix: int):
        super().__init__()
        if temporal_kernel % 2 == 0 or temporal_kernel < 1:
            raise ValueError(f"temporal_kernel must be odd, not {temporal_kernel}")
        if grid[0] * grid[1] == 0:
            raise ValueError("an ST-Adapter needs patch tokens, but the view has none (tokens: cls)")
        self.grid, self.prefix = tuple(grid), prefix
        self.fc1 = nn.Linear(dim, width)
        self.conv = nn.Conv3d(width, width, (temporal_kernel, 1, 1), padding=(temporal_kernel // 2, 0, 0), groups=width)
        self.fc2 = nn.Linear(width, dim)
        for p in (self.conv.weight, self.conv.bias, self.fc1.bias, self.fc2.bias):
            nn.init.zeros_(p)

    def forward(self, x: torch.Tensor, frames: int | None = None) -> torch.Tensor:
        shape = x.shape
        if frames is not None:  # (B*T, N, C) -> (B, T, N, C)
            x = x.reshape(-1, frames, *shape[1:])
        b, t, n, c = x.shape
        h, w = self.grid
        z = self.fc1(x[:, :, self.prefix:]).reshape(b, t, h, w, -1).permute(0, 4, 1, 2, 3)  # (B, r, T, H, W)
        # contiguous before fc2 as released (L52): a strided input takes another GEMM path, other rounding
        z = self.conv(z).permute(0, 2, 3, 4, 1).contiguous().view(b, t, h * w, -1)  # (B, T, HW, r)
        patches = x[:, :, self.prefix:] + self.fc2(z)  # (B, T, HW, C)
        return torch.cat([x[:, :, :self.prefix], patches], dim=2).reshape(shape)
