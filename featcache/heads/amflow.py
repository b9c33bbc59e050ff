"""AM flow and temporal processing adapters (AM Flow, eqs. 1-6), used by the ``adapter`` head
with ``kind=amflow``.

Attention logits come from the frozen block's own Q and K, computed online inside the frozen tail,
so the flow is exact even with adapters in earlier blocks (a cached flow would only be the frozen
backbone's). Q and K are rebuilt as timm's ``Attention.forward`` does (timm 1.0.31
``layers/attention.py`` L111-113: ``qkv`` reshaped to (3, B, heads, N, head_dim), ``q_norm`` /
``k_norm``, then ``scale``); tests check the probabilities against the block's unfused path.

Flow layout: one value per head per token, ``(B*T, N, heads)``: the paper's ``1`` "shaped like V"
repeats each head's value ``head_dim`` times, which is linear and folds into ``W_down``.
The last frame has no successor: its pair is itself, i.e. the flow of a still frame (all ones for
the vanilla flow, zeros for the aligned one).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FLOWS = ("vanilla", "aligned", "none")  # none: temporal adapters without flow (AM Flow Table 4, "w/o AM Flow")
TPMS = ("tcn", "transformer", "lstm")


def attention_logits(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, N, C) input of the attention (after norm1) -> (B, heads, N, N) pre-softmax logits, eq. 2."""
    b, n, _ = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    return (q * attn.scale) @ k.transpose(-2, -1)


def _next(x: torch.Tensor, frames: int) -> torch.Tensor:
    """(B*T, ...) -> each frame's successor in its clip (the last frame pairs with itself)."""
    v = x.reshape(-1, frames, *x.shape[1:])
    return torch.cat([v[:, 1:], v[:, -1:]], dim=1).reshape(x.shape)


def vanilla_flow(logits: torch.Tensor, frames: int) -> torch.Tensor:
    """Eq. 3: softmax(|X_t - X_{t+1}|)^T 1 -- softmax over keys, then summed over queries.
    (B*T, heads, N, N) -> (B*T, N, heads)."""
    diff = (logits - _next(logits, frames)).abs()
    return diff.softmax(dim=-1).sum(dim=-2).transpose(1, 2)


def column_mass(logits: torch.Tensor) -> torch.Tensor:
    """softmax(X_t)^T 1, the input of the aligning encoder (eq. 4). -> (B*T, N, heads)."""
    return logits.softmax(dim=-1).sum(dim=-2).transpose(1, 2)


class LinearAttentionLayer(nn.Module):
    """A transformer encoder layer with the linear ("fast") attention of Katharopoulos et al. 2020:
    feature map elu(x) + 1, attention phi(Q) (phi(K)^T V) normalised by phi(Q) phi(K)^T 1."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"aligning encoder: dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k = F.elu(q) + 1, F.elu(k) + 1  # (B, h, N, d)
        kv = k.transpose(-2, -1) @ v  # (B, h, d, d)
        norm = q @ k.sum(dim=-2, keepdim=True).transpose(-2, -1)  # (B, h, N, 1)
        y = ((q @ kv) / norm.clamp_min(1e-6)).transpose(1, 2).reshape(b, n, c)
        x = x + self.proj(y)
        return x + self.ff(self.norm2(x))


class AligningEncoder(nn.Module):
    """Eqs. 4-5: the column mass of each frame's attention map through a shared encoder over the
    tokens; the flow is |Enc(s_t) - Enc(s_{t+1})|. (B*T, N, heads) -> (B*T, N, dim)."""

    def __init__(self, heads: int, tokens: int, dim: int = 48, enc_heads: int = 12):
        super().__init__()
        self.embed = nn.Linear(heads, dim)
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.layer = LinearAttentionLayer(dim, enc_heads)

    def forward(self, mass: torch.Tensor, frames: int) -> torch.Tensor:
        enc = self.layer(self.embed(mass) + self.pos)
        return (enc - _next(enc, frames)).abs()


class TemporalUnit(nn.Module):
    """A temporal processing module over (S, T, D) sequences, residual, same shape out:
    ``tcn`` (``layers`` dilated depthwise-separable temporal convolutions, dilations 1, 2, 4, ...;
    default 2), ``transformer`` (``layers`` pre-norm encoder layers, feed-forward width ``hidden``
    (default 2D), a learned temporal position embedding; default 1 layer) or ``lstm`` (``layers``
    layers of ``hidden`` units (default D), projected back to D when ``hidden != D``; default 1).
    ``layers`` and ``hidden`` are the capacity knobs: the paper (AM Flow Tables 1-2) gives only
    the modules' totals, TCN < transformer < LSTM (54 / 103 / 360 M in ViT-B), not their shapes."""

    def __init__(self, kind: str, dim: int, frames: int, layers: int = 0, hidden: int = 0):
        super().__init__()
        if kind not in TPMS:
            raise ValueError(f"tpm must be one of {TPMS}, not {kind!r}")
        if layers < 0 or hidden < 0:
            raise ValueError(f"tpm_layers and tpm_hidden must be >= 0 (0 = the default), got {layers} and {hidden}")
        if kind == "tcn" and hidden:
            raise ValueError("tpm_hidden sets the transformer's feed-forward width and the LSTM's hidden size; "
                             "a TCN's capacity is tpm_layers")
        self.kind = kind
        if kind == "tcn":
            self.net = nn.ModuleList(nn.Sequential(nn.Conv1d(dim, dim, 3, padding=d, dilation=d, groups=dim),
                                                   nn.Conv1d(dim, dim, 1), nn.ReLU())
                                     for d in (2 ** i for i in range(layers or 2)))
        elif kind == "transformer":
            heads = next(h for h in (8, 4, 2, 1) if dim % h == 0)
            self.pos = nn.Parameter(torch.zeros(1, frames, dim))
            layer = nn.TransformerEncoderLayer(dim, heads, hidden or 2 * dim, dropout=0.0, batch_first=True,
                                               norm_first=True)
            # one layer stays a bare layer (the state-dict keys of earlier checkpoints)
            self.net = layer if (layers or 1) == 1 else nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        else:
            hidden = hidden or dim
            self.net = nn.LSTM(dim, hidden, layers or 1, batch_first=True)
            self.proj = nn.Linear(hidden, dim) if hidden != dim else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "tcn":
            h = x.transpose(1, 2)  # (S, D, T)
            for level in self.net:
                h = h + level(h)
            return h.transpose(1, 2)
        if self.kind == "transformer":
            return self.net(x + self.pos[:, :x.shape[1]])
        return x + self.proj(self.net(x)[0])


class TemporalAdapter(nn.Module):
    """A scaled parallel adapter (eq. 1, He et al. 2022) with a temporal processing unit:
    ``E = ReLU(W_down(x || flow))`` (eq. 6), the unit along time for every token, then
    ``s * W_up``. ``W_up`` starts at zero (a fresh adapter adds nothing); ``s`` is a learnable
    scalar. The global branch squeezes E over tokens, runs its own unit over time and classifies
    (one set of logits per adapter, averaged by the head)."""

    def __init__(self, dim: int, width: int, num_classes: int, frames: int, tpm: str, flow_dim: int = 0,
                 tpm_layers: int = 0, tpm_hidden: int = 0):
        super().__init__()
        self.down = nn.Linear(dim + flow_dim, width)
        self.local = TemporalUnit(tpm, width, frames, tpm_layers, tpm_hidden)
        self.up = nn.Linear(width, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scale = nn.Parameter(torch.ones(()))
        self.glob = TemporalUnit(tpm, width, frames, tpm_layers, tpm_hidden)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor, frames: int, flow: torch.Tensor | None = None):
        """(B*T, N, C) normed block input (+ (B*T, N, F) flow) -> (B*T, N, C) residual update, (B, K) logits."""
        bt, n, _ = x.shape
        e = F.relu(self.down(x if flow is None else torch.cat([x, flow.to(x.dtype)], dim=-1)))  # (B*T, N, r)
        seq = e.reshape(-1, frames, n, e.shape[-1]).transpose(1, 2)  # (B, N, T, r)
        b = seq.shape[0]
        local = self.local(seq.reshape(b * n, frames, -1)).reshape(b, n, frames, -1).transpose(1, 2)
        update = self.scale * self.up(local.reshape(bt, n, -1))
        logits = self.fc(self.glob(e.reshape(b, frames, n, -1).mean(dim=2)).mean(dim=1))  # squeeze, TPU, linear
        return update, logits


class PlainAdapter(nn.Module):
    """A "traditional" scaled parallel adapter (eq. 1): ``s * W_up(ReLU(W_down x))``, no flow, no
    temporal unit, no classifier; AM/2 puts these in the blocks between the first and last.
    ``W_up`` starts at zero."""

    def __init__(self, dim: int, width: int):
        super().__init__()
        self.down, self.up = nn.Linear(dim, width), nn.Linear(width, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor, frames: int, flow: torch.Tensor | None = None):
        """(B*T, N, C) normed block input -> (B*T, N, C) residual update, no logits."""
        return self.scale * self.up(F.relu(self.down(x))), None

