"""Adapters inside the frozen backbone, trained from a partial cache (the DINOv2 + ST-Adapter study's setup).

The cache holds the residual stream entering block J (``extract --cut-block J``). This head
rebuilds the frozen blocks J.. and the final norm from the cache's provenance (backbone.py),
inserts ST-Adapters into the last ``blocks`` of them and runs them at training time, then reads
out one vector per frame (CLS, or the mean of the patches), combines frames (average or concat)
and classifies with an MLP.

Placement as the ST-Adapter release (linziyi96/st-adapter ``models_adapter.py``
``ResidualAttentionBlock.forward`` L118-127): ``position=attn`` rewrites the residual stream
before attention (the DINOv2 + ST-Adapter study, section 4.2: "before Multi-Head Self-Attention for each layer"),
``attn_mlp`` also before the MLP (the release's 24x384 SSv2 model), ``mlp`` before the MLP only
(its 12x384 K400 model); adapters go in the last ``blocks`` blocks as ``i >= layers -
adapter_layers`` (L151). That study's head: width 384, kernel 3x1x1, frames averaged or
concatenated, an MLP with 512 hidden units; ``mlp_layers`` counts extra hidden layers in the
paper's sense (0 = the 512-unit MLP itself, 1 and 2 add layers).

``kind=amflow`` builds AM Flow's temporal processing adapters instead (heads/amflow.py): in each
adapted block a scaled parallel adapter across attention fed with ``LN(X) || AMflow`` (eq. 6; LN is
the block's own frozen ``norm1``, the input its attention sees), the flow computed online from that
block's frozen Q and K (``flow=vanilla``, eq. 3, or ``flow=aligned``, eqs. 4-5 with a linear-attention
aligning encoder), a temporal processing unit (``tpm=tcn|transformer|lstm``, sized by ``tpm_layers``
and ``tpm_hidden``) inside the adapter and a global one on its token-squeezed embedding with a
linear classifier; ``position=attn_mlp`` adds a second temporal adapter (no flow) across the MLP.
The logits of every temporal adapter and of the frozen branch are averaged (AM Flow,
"Classification Head": average pooling of the 2 x blocks + 1 outputs). The frozen branch is "the
frozen image model taking the final frame as input": featcache reads it as the frozen model's final
layer (readout -> MLP, as for ``st``) over the clip, ``temporal=avg`` averaging the frames' readouts
(the default); ``temporal=last`` takes the clip's final frame only (the literal reading).
``flow_blocks=ends`` is the paper's AM/2 (its Smarthome setting, blocks 1 and 12; section
"Location of AM Flow addition"): temporal adapters with the flow (and the aligning encoder) in the
first and last adapted blocks only, "traditional" adapters (``PlainAdapter``: no flow, no temporal
unit, no classifier) in the others, so 2 / blocks of the temporal and aligning parameters.
``flow=none`` gives the temporal adapters no flow (its Table 4 ablation "w/o AM Flow"). Not built:
the hyperformer adapter variant of its Table 4.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from featcache.heads.amflow import FLOWS, AligningEncoder, PlainAdapter, TemporalAdapter, attention_logits, column_mass, vanilla_flow
from featcache.heads.frozen_tail import FrozenTail
from featcache.heads.layers import STAdapter, mlp
from featcache.heads.registry import register_head

POSITIONS = ("attn", "attn_mlp", "mlp")
KINDS = ("st", "amflow")


@register_head("adapter")
class InBackboneAdapter(nn.Module):
    frozen_prefixes = ("tail.",)  # rebuilt from the cache; never in the optimiser or the checkpoint

    def __init__(self, in_dim, num_classes, num_frames, grid, num_prefix_tokens, backbone: dict | None = None,
                 kind: str = "st", blocks: int = 0, width: int = 384, temporal_kernel: int = 3,
                 position: str = "attn", readout: str = "cls", temporal: str = "avg", mlp_layers: int = 0,
                 mlp_hidden: int = 512, dropout: float = 0.0, checkpointing: bool = False, tpm: str = "tcn",
                 flow: str = "vanilla", flow_blocks: str = "all", aligner_dim: int = 48, tpm_layers: int = 0,
                 tpm_hidden: int = 0):
        super().__init__()
        if backbone is None:
            raise ValueError("the adapter head runs the frozen blocks after a cached cut; extract with --cut-block J")
        if kind not in KINDS or flow not in FLOWS or flow_blocks not in ("all", "ends"):
            raise ValueError(f"kind must be one of {KINDS}, flow one of {FLOWS}, flow_blocks all|ends")
        if kind == "amflow" and position == "mlp":
            raise ValueError("kind=amflow puts the flow adapter across attention: position attn or attn_mlp")
        if position not in POSITIONS or readout not in ("cls", "mean") or temporal not in ("avg", "concat", "last"):
            raise ValueError(f"position must be one of {POSITIONS}, readout cls|mean, temporal avg|concat|last")
        if readout == "cls" and not num_prefix_tokens:
            raise ValueError("readout cls needs a CLS token; use readout=mean")
        self.tail = FrozenTail(backbone)
        after = len(self.tail.blocks)
        blocks = blocks or after
        if not 1 <= blocks <= after:
            raise ValueError(f"blocks: {blocks} adapted blocks asked for, but {after} block(s) run after the cut "
                             f"(block {self.tail.spec.cut} of {self.tail.spec.depth}); extract with a lower --cut-block")
        first = after - blocks

        self.kind = kind
        self.pre_attn, self.pre_mlp, self.aligners = nn.ModuleDict(), nn.ModuleDict(), nn.ModuleDict()
        heads = self.tail.blocks[0].attn.num_heads
        # AM/2 (flow_blocks=ends): temporal adapters in the first and last adapted blocks, plain ones between
        self.temporal_blocks = {i for i in range(first, after) if flow_blocks == "all" or i in (first, after - 1)}
        with_flow = kind == "amflow" and flow != "none"
        self.flow_blocks = self.temporal_blocks if with_flow else set()

        def make(i: int, flow_dim: int = 0) -> nn.Module:
            if kind == "st":
                return STAdapter(in_dim, width, temporal_kernel, tuple(grid), num_prefix_tokens)
            if i not in self.temporal_blocks:
                return PlainAdapter(in_dim, width)
            return TemporalAdapter(in_dim, width, num_classes, num_frames, tpm, flow_dim, tpm_layers, tpm_hidden)

        for i in range(first, after):
            flow_dim = 0
            if i in self.flow_blocks:
                flow_dim = heads if flow == "vanilla" else aligner_dim
                if flow == "aligned":
                    self.aligners[str(i)] = AligningEncoder(heads, num_prefix_tokens + grid[0] * grid[1],
                                                            aligner_dim)
            if position != "mlp":
                self.pre_attn[str(i)] = make(i, flow_dim)
            if position != "attn":
                self.pre_mlp[str(i)] = make(i)
        self.frames, self.prefix, self.readout, self.temporal = num_frames, num_prefix_tokens, readout, temporal
        self.checkpointing = checkpointing
        self.drop = nn.Dropout(dropout)
        self.mlp = mlp(in_dim * (num_frames if temporal == "concat" else 1), num_classes, mlp_hidden, 1 + mlp_layers,
                       dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, n, c = x.shape
        h = x.reshape(b * t, n, c)  # (B*T, N, C): every frame through the frozen tail
        logits: list[torch.Tensor] = []
        for i, block in enumerate(self.tail.blocks):
            if self.checkpointing and self.training:
                h, extra = checkpoint(self._block, i, block, h, t, use_reentrant=False)
            else:
                h, extra = self._block(i, block, h, t)
            logits += extra
        h = self.tail.norm(h).reshape(b, t, n, c)
        frame = h[:, :, 0] if self.readout == "cls" else h[:, :, self.prefix:].mean(dim=2)  # (B, T, C)
        if self.temporal == "last":
            video = frame[:, -1]  # (B, C): the clip's final frame only
        else:
            video = frame.mean(dim=1) if self.temporal == "avg" else frame.flatten(1)  # (B, C) or (B, T*C)
        out = self.mlp(self.drop(video))
        if not logits:
            return out
        return torch.stack([out, *logits]).mean(dim=0)  # amflow: every adapter's logits and the frozen branch's

    def _block(self, i: int, block: nn.Module, x: torch.Tensor, frames: int) -> tuple[torch.Tensor, list]:
        """One frozen block with its adapters: the new residual stream and any adapter logits."""
        key = str(i)
        if self.kind == "amflow":
            return self._amflow_block(i, block, x, frames)
        if key in self.pre_attn:
            x = self.pre_attn[key](x, frames)  # rewrites the residual stream before attention
        if key not in self.pre_mlp:
            return block(x), []
        # timm Block.forward with an adapter between the attention and MLP residuals
        x = x + block.drop_path1(block.ls1(block.attn(block.norm1(x))))
        x = self.pre_mlp[key](x, frames)
        return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x)))), []

    def _amflow_block(self, i: int, block: nn.Module, x: torch.Tensor, frames: int) -> tuple[torch.Tensor, list]:
        """timm ``Block.forward`` with AM Flow's parallel adapters beside attention (and the MLP)."""
        key, logits = str(i), []
        normed = block.norm1(x)
        update = block.drop_path1(block.ls1(block.attn(normed)))
        if key in self.pre_attn:
            flow = None
            if i in self.flow_blocks:
                att = attention_logits(block.attn, normed)  # the frozen Q, K of this block, online
                flow = self.aligners[key](column_mass(att), frames) if key in self.aligners else \
                    vanilla_flow(att, frames)
            delta, lg = self.pre_attn[key](normed, frames, flow)
            update, logits = update + delta, [lg] if lg is not None else []
        x = x + update
        normed = block.norm2(x)
        update = block.drop_path2(block.ls2(block.mlp(normed)))
        if key in self.pre_mlp:
            delta, lg = self.pre_mlp[key](normed, frames)
            update, logits = update + delta, logits + ([lg] if lg is not None else [])
        return x + update, logits
