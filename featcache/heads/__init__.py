"""Light heads over cached tokens, one file each, registered by name.

Interface: ``forward(tokens)`` takes ``(B, T, N, C)`` (clips, frames, tokens, channels) and
returns logits ``(B, num_classes)``. Token convention: the first ``num_prefix_tokens`` tokens
of every frame are prefix (CLS/register) tokens, the remaining ``grid[0] * grid[1]`` are patch
tokens in row-major order. A view with only CLS tokens has grid (0, 0); a patch-only view has
``num_prefix_tokens == 0``.
"""
from featcache.heads import adapter, attentive, linear, lstm, pool, r3d, stadapter_posthoc, tcn, transformer  # noqa: F401
