"""quant.dequantize in one pass gives the values of the three whole-array steps it replaced."""
import numpy as np
import pytest

from featcache.cache import quant
from featcache.cache.quant import dequantize, quantize


def dequantize_before(q, token_scales, channel_scales, dtype=np.float16):
    """featcache's dequantisation before the fused pass, verbatim."""
    out = q.astype(np.float32) * token_scales.astype(np.float32)[..., None]
    out *= channel_scales
    return out.astype(dtype, copy=False)


@pytest.fixture(scope="module")
def stored():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 2, 37, 48)).astype(np.float32)
    x[..., [3, 30]] *= 50  # outlier channels
    x[2, :, 5] = 0  # an all-zero token
    return quantize(x)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("chunk", [1 << 14, 1 << 20, 100, 7])  # one step, steps of whole tokens, the slice recursion
def test_fused_dequantize_is_bit_identical(stored, dtype, chunk, monkeypatch):
    monkeypatch.setattr(quant, "_CHUNK", chunk)
    q, s, ch = stored
    cases = [(q, s, ch[:, None]),  # the store's (T, L, N, C) with (L, 1, C)
             (q[:, 1], s[:, 1], ch[1]),  # one layer: (T, N, C) with (C,)
             (q[4, 0], s[4, 0], ch[0]),  # one frame
             (q[:0, 0], s[:0, 0], ch[0])]  # no frames
    for args in cases:
        got, ref = dequantize(*args, dtype), dequantize_before(*args, dtype)
        assert got.dtype == ref.dtype and got.shape == ref.shape
        np.testing.assert_array_equal(got.view(np.uint8), ref.view(np.uint8))  # bits, not just values


def test_dequantize_fills_a_strided_out_in_place(stored):
    q, s, ch = stored
    batch = np.zeros((9, 4, 37, 48), np.float16)
    out = batch[:, 1]  # a non-contiguous slice of a batch
    assert dequantize(q[:, 0], s[:, 0], ch[0], out=out) is out
    np.testing.assert_array_equal(batch[:, 1], dequantize_before(q[:, 0], s[:, 0], ch[0]))
    assert not batch[:, [0, 2, 3]].any()
