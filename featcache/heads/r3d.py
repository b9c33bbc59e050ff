"""AdViSe's temporal modelling module (TMM) as released: one SlowFast ``ResStage`` of R3D
bottleneck blocks over the patch grid, then global average pooling and a 2-FC MLP head.

Released code (JingwWu/advise-video-ssl): ``models/temporal_modeling.py`` ``load_temporal_model``
(``resnet3d`` branch, L67-87) builds ``ResStage(dim_in=[C], dim_inner=[TEMPORAL_HIDDEN_DIM],
dim_out=[TEMPORAL_EMBEDDING_DIM], num_blocks=[TM.NUM_BLOCKS], ...)`` and ``load_head`` a
``ResNetBasicHead`` whose ``MLPHead`` (``models/head_helper.py``) is Linear(out, MLP_DIM) -> ReLU
-> Linear(MLP_DIM, classes) with ``SSL.NUM_MLP_LAYERS = 2``, ``MLP_DIM = 1024``
(``configs/pretrain/AdViSe.yaml``: hidden 256, embedding 512, 4 blocks). The block is SlowFast's
``slowfast/models/resnet_helper.py`` ``ResBlock`` + ``BottleneckTransform``:

    a: Conv3d [kt,1,1] dim_in -> hidden, BN, ReLU
    b: Conv3d [1,3,3]  hidden -> hidden, BN, ReLU   (stride 1: no down-sampling)
    c: Conv3d [1,1,1]  hidden -> out,    BN
    shortcut: identity, or Conv3d [1,1,1] + BN when dim_in != out (the first block); ReLU after the sum

So ``hidden`` is the bottleneck width and ``out_dim`` the TMM's output (what the paper's Table 3
calls "hidden" is ``hidden`` here). One discrepancy, recorded rather than copied: the released call
passes ``temp_kernel_sizes=[[1]]`` (L75), which SlowFast's ``ResStage`` expands to a temporal kernel
of 1 in every block, i.e. no temporal mixing; the paper describes 3x1x1 kernels and its Table 3 rows
for 2-8 blocks match kt=3. featcache follows the paper (``temporal_kernel=3``);
``temporal_kernel=1`` reproduces the literal released call.
"""
from __future__ import annotations

import torch
from torch import nn

from featcache.heads.layers import patch_volume
from featcache.registry import register_head


def _conv_bn(dim_in: int, dim_out: int, kernel: tuple[int, int, int]) -> list[nn.Module]:
    padding = tuple(k // 2 for k in kernel)
    return [nn.Conv3d(dim_in, dim_out, kernel, padding=padding, bias=False), nn.BatchNorm3d(dim_out)]


class Bottleneck(nn.Module):
    """One R3D bottleneck block (SlowFast ResBlock with BottleneckTransform)."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int, temporal_kernel: int):
        super().__init__()
        kt = temporal_kernel
        self.body = nn.Sequential(
            *_conv_bn(dim_in, hidden, (kt, 1, 1)), nn.ReLU(),
            *_conv_bn(hidden, hidden, (1, 3, 3)), nn.ReLU(),
            *_conv_bn(hidden, dim_out, (1, 1, 1)),
        )
        self.shortcut = nn.Sequential(*_conv_bn(dim_in, dim_out, (1, 1, 1))) if dim_in != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.shortcut(x) + self.body(x))  # (B, dim_out, T, H, W)


@register_head("r3d")
class R3DHead(nn.Module):
    transferable = ("stage.",)  # what `train --init` takes from a pre-trained TMM (the head is new)

    def __init__(self, in_dim, num_classes, num_frames, grid, num_prefix_tokens,
                 hidden: int = 256, out_dim: int = 512, blocks: int = 1, temporal_kernel: int = 3,
                 mlp_hidden: int = 1024, dropout: float = 0.0):
        super().__init__()
        if temporal_kernel % 2 == 0 or temporal_kernel < 1:
            raise ValueError(f"temporal_kernel must be odd, not {temporal_kernel}")
        if blocks < 1:
            raise ValueError(f"blocks must be at least 1, not {blocks}")
        self.prefix, self.grid = num_prefix_tokens, tuple(grid)
        if self.grid[0] * self.grid[1] == 0:
            raise ValueError("r3d needs patch tokens, but the view has none (tokens: cls)")
        dims = [in_dim] + [out_dim] * blocks
        self.stage = nn.Sequential(*[Bottleneck(dims[i], hidden, out_dim, temporal_kernel) for i in range(blocks)])
        self.drop = nn.Dropout(dropout)
        self.mlp = nn.Sequential(nn.Linear(out_dim, mlp_hidden), nn.ReLU(), nn.Linear(mlp_hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.stage(patch_volume(x, self.prefix, self.grid))  # (B, C, T, H, W) -> (B, out_dim, T, H, W)
        return self.mlp(self.drop(v.mean(dim=(2, 3, 4))))  # (B, out_dim) -> (B, K)
