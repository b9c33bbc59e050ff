"""LSTM over per-frame features (AM Flow's recurrent temporal module)."""
from __future__ import annotations

import torch
from torch import nn

from featcache.heads.layers import FrameFeature
from featcache.heads.registry import register_head


@register_head("lstm")
class LSTMHead(nn.Module):
    def __init__(self, in_dim, num_classes, num_frames, grid, num_prefix_tokens,
                 hidden: int = 256, layers: int = 1, bidirectional: bool = False, dropout: float = 0.0,
                 frame_feature: str = "auto", frame_norm: bool = True):
        super().__init__()
        self.frame = FrameFeature(in_dim, num_prefix_tokens, grid, frame_feature, frame_norm)
        self.lstm = nn.LSTM(self.frame.out_dim, hidden, layers, batch_first=True,
                            dropout=dropout if layers > 1 else 0.0, bidirectional=bidirectional)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden * (2 if bidirectional else 1), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(self.frame(x))  # h: (layers * dirs, B, hidden)
        last = torch.cat([h[-2], h[-1]], dim=-1) if self.lstm.bidirectional else h[-1]  # (B, hidden*dirs)
        return self.fc(self.drop(last))
