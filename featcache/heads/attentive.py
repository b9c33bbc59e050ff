"""Attentive probe (V-JEPA / V-JEPA 2): learnable queries cross-attend every token of every frame.

As ``facebookresearch/jepa`` ``src/models/attentive_pooler.py`` (``AttentivePooler``,
``AttentiveClassifier``): query tokens (truncated-normal init, std 0.02) go through one
cross-attention block, ``q = q + xattn(q, norm(x)); q = q + mlp(norm(q))``, then a linear
classifier (on the mean of the queries when there are several). ``blocks`` optional pre-norm
self-attention blocks run over the tokens first (V-JEPA 2's probe uses 4). Image-model tokens
carry no frame order, so a learnable temporal position embedding is added to every token of a
frame before any attention.
"""
from __future__ import annotations

import torch
from torch import nn

from featcache.heads.registry import register_head


@register_head("attentive")
class AttentiveProbe(nn.Module):
    def __init__(self, in_dim, num_classes, num_frames, grid, num_prefix_tokens,
                 dim: int = 0, heads: int = 8, queries: int = 1, blocks: int = 0, mlp_ratio: float = 4.0,
                 temporal_embed: bool = True, dropout: float = 0.0):
        super().__init__()
        dim = dim or in_dim
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        if queries < 1 or blocks < 0:
            raise ValueError(f"queries must be >= 1 and blocks >= 0, got {queries} and {blocks}")
        self.proj = nn.Linear(in_dim, dim) if dim != in_dim else nn.Identity()
        self.time = nn.Parameter(torch.zeros(1, num_frames, 1, dim)) if temporal_embed else None
        self.blocks = nn.ModuleList([
            nn.TransformerEncoderLayer(dim, heads, int(dim * mlp_ratio), dropout, activation="gelu",
                                       batch_first=True, norm_first=True) for _ in range(blocks)])
        self.query = nn.Parameter(torch.zeros(1, queries, dim))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.xattn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))
        self.linear = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.query, std=0.02)
        if self.time is not None:
            nn.init.trunc_normal_(self.time, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, T, N, D)
        if self.time is not None:
            x = x + self.time  # the frame's position in time, for every token of the frame
        x = x.flatten(1, 2)  # (B, T*N, D)
        for block in self.blocks:
            x = block(x)
        kv = self.norm1(x)
        q = self.query.expand(len(x), -1, -1)  # (B, Q, D)
        q = q + self.xattn(q, kv, kv, need_weights=False)[0]
        q = q + self.mlp(self.norm2(q))
        return self.linear(q.mean(dim=1))  # (B, K)
