"""Adapters inside the frozen backbone, trained from a partial cache (seed 000's ST-Adapter setup).

The cache holds the residual stream entering block J (``extract --cut-block J``). This head
rebuilds the frozen blocks J.. and the final norm from the cache's provenance (backbone.py),
inserts ST-Adapters into the last ``blocks`` of them and runs them at training time, then reads
out one vector per frame (CLS, or the mean of the patches), combines frames (average or concat)
and classifies with an MLP.

Placement as the ST-Adapter release (linziyi96/st-adapter ``models_adapter.py``
``ResidualAttentionBlock.forward`` L118-127): ``position=attn`` rewrites the residual stream
before attention (seed 000 section 4.2: "before Multi-Head Self-Attention for each layer"),
``attn_mlp`` also before the MLP (the release's 24x384 SSv2 model), ``mlp`` before the MLP only
(its 12x384 K400 model); adapters go in the last ``blocks`` blocks as ``i >= layers -
adapter_layers`` (L151). Seed 000's head: width 384, kernel 3x1x1, frames averaged or
concatenated, an MLP with 512 hidden units; ``mlp_layers`` counts extra hidden layers in the
paper's sense (0 = the 512-unit MLP itself, 1 and 2 add layers).

Seed 002's AM-flow adapters (``kind=amflow``) are not built.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from featcache.backbone import FrozenTail
from featcache.heads.layers import STAdapter, mlp
from featcache.registry import register_head

POSITIONS = ("attn", "attn_mlp", "mlp")


@register_head("adapter")
class InBackboneAdapter(nn.Module):
    frozen_prefixes = ("tail.",)  # rebuilt from the cache; never in the optimiser or the checkpoint

    def __init__(self, in_dim, num_classes, num_frames, grid, num_prefix_tokens, backbone: dict | None = None,
                 kind: str = "st", blocks: int = 0, width: int = 384, temporal_kernel: int = 3,
                 position: str = "attn", readout: str = "cls", temporal: str = "avg", mlp_layers: int = 0,
                 mlp_hidden: int = 512, dropout: float = 0.0, checkpointing: bool = False):
        super().__init__()
        if backbone is None:
            raise ValueError("the adapter head runs the frozen blocks after a cached cut; extract with --cut-block J")
        if kind != "st":
            raise ValueError(f"kind {kind!r}: only 'st' (ST-Adapter) is built; seed 002's amflow adapters are not")
        if position not in POSITIONS or readout not in ("cls", "mean") or temporal not in ("avg", "concat"):
            raise ValueError(f"position must be one of {POSITIONS}, readout cls|mean, temporal avg|concat")
        if readout == "cls" and not num_prefix_tokens:
            raise ValueError("readout cls needs a CLS token; use readout=mean")
        self.tail = FrozenTail(backbone)
        after = len(self.tail.blocks)
        blocks = blocks or after
        if not 1 <= blocks <= after:
            raise ValueError(f"blocks: {blocks} adapted blocks asked for, but {after} block(s) run after the cut "
                             f"(block {backbone['cut']} of {backbone['depth']}); extract with a lower --cut-block")
        first = after - blocks

        def make():
            return STAdapter(in_dim, width, temporal_kernel, tuple(grid), num_prefix_tokens)

        self.pre_attn = nn.ModuleDict({str(i): make() for i in range(first, after) if position != "mlp"})
        self.pre_mlp = nn.ModuleDict({str(i): make() for i in range(first, after) if position != "attn"})
        self.frames, self.prefix, self.readout, self.temporal = num_frames, num_prefix_tokens, readout, temporal
        self.checkpointing = checkpointing
        self.drop = nn.Dropout(dropout)
        self.mlp = mlp(in_dim * (num_frames if temporal == "concat" else 1), num_classes, mlp_hidden, 1 + mlp_layers,
                       dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, n, c = x.shape
        h = x.reshape(b * t, n, c)  # (B*T, N, C): every frame through the frozen tail
        for i, block in enumerate(self.tail.blocks):
            if self.checkpointing and self.training:
                h = checkpoint(self._block, i, block, h, t, use_reentrant=False)
            else:
                h = self._block(i, block, h, t)
        h = self.tail.norm(h).reshape(b, t, n, c)
        frame = h[:, :, 0] if self.readout == "cls" else h[:, :, self.prefix:].mean(dim=2)  # (B, T, C)
        video = frame.mean(dim=1) if self.temporal == "avg" else frame.flatten(1)  # (B, C) or (B, T*C)
        return self.mlp(self.drop(video))

    def _block(self, i: int, block: nn.Module, x: torch.Tensor, frames: int) -> torch.Tensor:
        key = str(i)
        if key in self.pre_attn:
            x = self.pre_attn[key](x, frames)  # rewrites the residual stream before attention
        if key not in self.pre_mlp:
            return block(x)
        # timm Block.forward with an adapter between the attention and MLP residuals
        x = x + block.drop_path1(block.ls1(block.attn(block.norm1(x))))
        x = self.pre_mlp[key](x, frames)
        return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
