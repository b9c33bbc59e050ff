"""int8 token storage that survives outlier channels.

Residual-stream features of ViTs carry a few channels far larger than the rest (the "massive
activations" of Sun et al. 2024; DINOv2's high-norm channels). Scaling each token by its own
absmax lets those channels set the step for every other channel of the token, so the small ones
round to a handful of levels. featcache's scheme (``channel_token``) first divides each channel by
its absmax over the video's frames and tokens (per layer), then scales each token to [-127, 127]:

    ch[l, c]   = max_{t, n} |x[t, l, n, c]|                     (float32, stored per video)
    s[t, l, n] = max_c |x[t, l, n, c] / ch[l, c]| / 127        (float16, stored per token)
    q          = round(x / ch / s)                             (int8)
    x_hat      = q * s * ch

``token`` (per-token absmax only) is kept for comparison: tests show it fails where
``channel_token`` holds (two channels x50: relative L2 error ~9% vs < 1%).
"""
from __future__ import annotations

import numpy as np

SCHEMES = ("channel_token", "token")
DESCRIPTION = ("int8 q with per-channel absmax (channel_scales, per video and layer) then per-token absmax "
               "(token_scales): x = q * token_scales[..., None] * channel_scales")
_TINY = np.float32(1e-12)


def quantize(x: np.ndarray, scheme: str = "channel_token") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T, L, N, C) floats -> (int8 q, float16 token scales (T, L, N), float32 channel scales (L, C))."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, not {scheme!r}")
    x = np.asarray(x, dtype=np.float32)
    if scheme == "channel_token":
        ch = np.maximum(np.abs(x).max(axis=(0, 2)), _TINY)  # (L, C)
    else:
        ch = np.ones(x.shape[1::2], np.float32)
    y = x / ch[None, :, None, :]
    s = (np.abs(y).max(axis=-1) / 127.0).astype(np.float16)  # (T, L, N)
    s = np.maximum(s, np.float16(np.finfo(np.float16).tiny))  # an all-zero token: any positive scale
    q = np.clip(np.rint(y / s.astype(np.float32)[..., None]), -127, 127).astype(np.int8)
    return q, s, ch.astype(np.float32)


# Elements per step: torch runs an op on its thread pool only above its grain (32768 elements), so
# every op here runs on the calling thread (a parallel version stalled by 10-100x on a loaded
# machine, and ~400x once with two threads on small videos), and the float32 scratch (128 KiB)
# stays in L2. Larger steps would amortise torch's per-op cost (a few us) but cross the grain.
_CHUNK = 1 << 15
# With one intra-op thread (DataLoader workers, --threads 1) nothing runs on a pool: larger steps
# (256 KiB of float32 scratch) halve the per-op cost; measured 1.3-1.9x the 32768 step there.
_CHUNK_SERIAL = 1 << 16


def dequantize(q: np.ndarray, token_scales: np.ndarray, channel_scales: np.ndarray,
               dtype=np.float16, out: np.ndarray | None = None, via=None) -> np.ndarray:
    """int8 (..., N, C) with token scales (..., N) and channel scales (C,) or (L, C) broadcastable.

    ``x = float32(q) * float32(token_scale) * channel_scale`` (in that order, in float32), then
    cast to ``dtype``: bit-identical to the three whole-array numpy steps it replaces, in one
    pass over the data: rows of tokens in steps of ``_CHUNK`` values, four torch ops a step on
    a float32 scratch (int8 -> float32, times the token scales, times the channel scales, cast
    into ``out``), single-threaded. ``out`` (shape of ``q``, any strides, e.g. a slice of a
    batch) is filled in place and returned; else a new array.
    ``via=np.float16`` with a float32 ``dtype`` rounds to float16 first (in the same step): the
    float32 of the float16 values, what a head gets from a float16 view, in one pass.
    """
    import warnings

    import torch

    q = np.asarray(q)
    if out is None:
        out = np.empty(q.shape, dtype)
    ts = np.asarray(token_scales)[..., None]
    ch = np.asarray(channel_scales, dtype=np.float32)
    ts = ts.reshape((1,) * (q.ndim - ts.ndim) + ts.shape)
    ch = ch.reshape((1,) * (q.ndim - ch.ndim) + ch.shape)
    with torch.inference_mode(), warnings.catch_warnings():
        # inputs are often read-only memory maps of the store: torch only reads them here
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        _dequantize_into(torch, out, q, ts, ch, None if via is None else getattr(torch, np.dtype(via).name))
    return out


def _dequantize_into(torch, out, q, ts, ch, via) -> None:
    """Down the leading axes until ``q`` / ``out`` flatten to groups of token rows (G, R, C) with
    one row of channel scales per group (a frame, a video, a batch of videos), then
    :func:`_dequantize_groups`."""
    c = q.shape[-1]
    if not q.size:
        return
    if q.ndim <= 2:
        _dequantize_groups(torch, out.reshape(1, -1, c), q.reshape(1, -1, c),
                           np.broadcast_to(ts, (*q.shape[:-1], 1)).reshape(1, -1, 1), ch.reshape(1, -1, c)[:, -1:], via)
        return
    if (ts.shape[:-1] == q.shape[:-1] and ch.size == ch.shape[0] * c and ch.shape[0] in (1, q.shape[0])
            and q.flags.c_contiguous and out.flags.c_contiguous):
        g = q.shape[0]
        _dequantize_groups(torch, out.reshape(g, -1, c), q.reshape(g, -1, c), ts.reshape(g, -1, 1),
                           np.broadcast_to(ch.reshape(-1, 1, c), (g, 1, c)), via)
        return
    for i in range(q.shape[0]):  # a leading axis of 1 broadcasts
        _dequantize_into(torch, out[i], q[i], ts[min(i, len(ts) - 1)], ch[min(i, len(ch) - 1)], via)


def _dequantize_groups(torch, out, q, ts, ch, via=None) -> None:
    """(G, R, C) int8 rows, (G, R, 1) token scales, (G, 1, C) channel scales -> ``out`` (G, R, C),
    in place (through ``via``, a torch dtype, when given); steps of at most ``_CHUNK`` values
    (``_CHUNK_SERIAL`` with one torch thread): whole groups when a group is smaller, else rows
    of one group."""
    groups, rows, c = q.shape
    if not groups or not rows or not c:
        return
    per = max(1, (_CHUNK if torch.get_num_threads() > 1 else _CHUNK_SERIAL) // c)  # rows a step
    g_step, r_step = (max(1, per // rows), rows) if rows <= per else (1, per)
    o, x = torch.from_numpy(out), torch.from_numpy(q)
    s = torch.from_numpy(np.ascontiguousarray(ts)).to(torch.float32)  # float16 -> float32, exact
    chan = torch.from_numpy(np.ascontiguousarray(ch))
    size = min(g_step, groups) * min(r_step, rows) * c
    tmp = torch.empty(size, dtype=torch.float32)
    mid = None if via is None else torch.empty(size, dtype=via)
    for a in range(0, groups, g_step):
        b = min(a + g_step, groups)
        for r in range(0, rows, r_step):
            e = min(r + r_step, rows)
            shape = (b - a, e - r, c)
            t = tmp[:(b - a) * (e - r) * c].view(shape)
            t.copy_(x[a:b, r:e])  # int8 -> float32, exact
            t.mul_(s[a:b, r:e])  # rounded to float32, as numpy's q * s
            if o.dtype == torch.float32 and mid is None:
                torch.mul(t, chan[a:b], out=o[a:b, r:e])
                continue
            t.mul_(chan[a:b])  # then cast in a copy: a multiply storing float16 straight runs unvectorised (~2x slower)
            if mid is not None:
                t = mid[:t.numel()].view(shape).copy_(t)  # rounded to float16
            o[a:b, r:e].copy_(t)


class QuantTokens:
    """A materialised view of an int8 store, kept as stored: int8 ``q`` (V, T, N, C), float16
    token scales (V, T, N) and float32 channel scales (V, C), half the bytes of the float16 view.

    It stands where the float16 ``(V, T, N, C)`` tensor would (``len``, ``shape``, indexing by an
    int, a slice or an index tensor give that tensor's values, dequantised on the spot), so
    evaluation and probes work unchanged; :meth:`take` hands a batch over still quantised
    (:class:`QuantBatch`), for the training loop to dequantise on the head's device.
    """

    def __init__(self, q: np.ndarray, token_scales: np.ndarray, channel_scales: np.ndarray):
        import torch

        self.q, self.token_scales, self.channel_scales = q, token_scales, channel_scales
        self.shape = torch.Size(q.shape)
        self.dtype = torch.float16  # what indexing gives

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return self.q.nbytes + self.token_scales.nbytes + self.channel_scales.nbytes

    def _rows(self, index):
        import torch

        if isinstance(index, (int, np.integer)):
            return int(index)
        if isinstance(index, slice):
            return index
        return torch.as_tensor(index).reshape(-1).numpy()

    def __getitem__(self, index):
        import torch

        rows = self._rows(index)
        ch = self.channel_scales[rows]  # (C,) or (B, C)
        ch = ch[..., None, None, :] if ch.ndim == 2 else ch
        return torch.from_numpy(dequantize(self.q[rows], self.token_scales[rows], ch))

    def take(self, index) -> "QuantBatch":
        """The videos at ``index`` (an index tensor or a slice), still int8."""
        import torch

        rows = self._rows(index)
        if isinstance(rows, int):
            rows = [rows]
        return QuantBatch(torch.from_numpy(self.q[rows]), torch.from_numpy(self.token_scales[rows]),
                          torch.from_numpy(self.channel_scales[rows]))


class QuantBatch:
    """A batch of int8 views: ``q`` (B, T, N, C) int8, ``token_scales`` (B, T, N) float16,
    ``channel_scales`` (B, C) float32, as torch tensors on one device. Like a float16 batch it
    has ``to(device, non_blocking=)`` and ``float()`` (the float32 values of the float16 view)."""

    def __init__(self, q, token_scales, channel_scales):
        self.q, self.token_scales, self.channel_scales = q, token_scales, channel_scales

    def __len__(self) -> int:
        return len(self.q)

    @property
    def device(self):
        return self.q.device

    def to(self, device, non_blocking: bool = False) -> "QuantBatch":
        return QuantBatch(*(t.to(device, non_blocking=non_blocking)
                            for t in (self.q, self.token_scales, self.channel_scales)))

    def float(self):
        """``dequantize()``: so the training loop's ``x.to(device, non_blocking=True).float()``
        moves an int8 batch as int8 + scales and dequantises it on the device, unchanged."""
        return self.dequantize()

    def dequantize(self, dtype=None):
        """(B, T, N, C) on the batch's device: exactly the float16 view's values (``float32(q) *
        float32(token_scale) * channel_scale`` in float32, rounded to float16, as
        :func:`dequantize`), then cast to ``dtype`` (default float32, what heads consume)."""
        import torch

        dtype = dtype or torch.float32
        if self.q.device.type != "cpu":
            return dequantize_tensors(self.q, self.token_scales, self.channel_scales).to(dtype)
        half = dtype == torch.float16  # else float32 through float16, in the same chunked pass
        ch = self.channel_scales.numpy()[:, None, None, :]  # (B, 1, 1, C)
        x = torch.from_numpy(dequantize(self.q.numpy(), self.token_scales.numpy(), ch,
                                        np.float16 if half else np.float32, via=None if half else np.float16))
        return x if dtype in (torch.float16, torch.float32) else x.to(dtype)


def dequantize_tensors(q, token_scales, channel_scales):
    """:func:`dequantize` of a batch in plain torch ops, on the tensors' device (a GPU: a few
    elementwise kernels over data already there): (B, T, N, C) int8, (B, T, N), (B, C) -> float16.
    Separate multiplies in the same order, IEEE float32 rounding, round-to-nearest-even to
    float16: the same bits as the CPU pass (tested on the CPU)."""
    import torch

    x = q.to(torch.float32).mul_(token_scales.to(torch.float32)[..., None])  # (B, T, N, C)
    return x.mul_(channel_scales[:, None, None, :]).to(torch.float16)


def to_head(x, device, dtype=None):
    """A batch as the head consumes it: on ``device``, float32 (or ``dtype``). A float16 batch is
    moved, then cast; an int8 :class:`QuantBatch` (or the dict of ``q``, ``token_scales``,
    ``channel_scales`` a DataLoader collates from ``CacheDataset(quantized=True)``) is moved as
    int8 + scales (half the bytes) and dequantised there, to the same values."""
    import torch

    dtype = dtype or torch.float32
    if isinstance(x, dict):  # a DataLoader's collated CacheDataset(quantized=True) items
        x = QuantBatch(x["q"], x["token_scales"], x["channel_scales"])
    if isinstance(x, QuantBatch):
        return x.to(device, non_blocking=True).dequantize(dtype)
    return x.to(device, non_blocking=True).to(dtype)
