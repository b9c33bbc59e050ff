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
@pytest.mark.parametrize("chunk", [1 << 14, 1 << 20, 100, 7])  # groups a step, one step, rows of a group, one row
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_dequantize_is_bit_identical(stored, dtype, chunk, threads, monkeypatch):
    import torch

    monkeypatch.setattr(quant, "_CHUNK", chunk)
    monkeypatch.setattr(quant, "_CHUNK_SERIAL", chunk)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)  # which step size applies
    q, s, ch = stored
    cases = [(q, s, ch[:, None]),  # the store's (T, L, N, C) with (L, 1, C)
             (q[:, 1], s[:, 1], ch[1]),  # one layer: (T, N, C) with (C,)
             (q[4, 0], s[4, 0], ch[0]),  # one frame
             (q[:0, 0], s[:0, 0], ch[0])]  # no frames
    for args in cases:
        got, ref = dequantize(*args, dtype), dequantize_before(*args, dtype)
        assert got.dtype == ref.dtype and got.shape == ref.shape
        np.testing.assert_array_equal(got.view(np.uint8), ref.view(np.uint8))  # bits, not just values


@pytest.mark.parametrize("chunk", [1 << 15, 100])
def test_dequantize_to_float32_via_float16_is_the_float16_view_cast(stored, chunk, monkeypatch):
    """What a head gets from a float16 view (float16 values, cast to float32), in one pass."""
    monkeypatch.setattr(quant, "_CHUNK", chunk)
    monkeypatch.setattr(quant, "_CHUNK_SERIAL", chunk)
    q, s, ch = stored
    got = dequantize(q[:, 1], s[:, 1], ch[1], np.float32, via=np.float16)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, dequantize_before(q[:, 1], s[:, 1], ch[1]).astype(np.float32))
    assert not np.array_equal(got, dequantize_before(q[:, 1], s[:, 1], ch[1], np.float32))  # it did round


def test_dequantize_fills_a_strided_out_in_place(stored):
    q, s, ch = stored
    batch = np.zeros((9, 4, 37, 48), np.float16)
    out = batch[:, 1]  # a non-contiguous slice of a batch
    assert dequantize(q[:, 0], s[:, 0], ch[0], out=out) is out
    np.testing.assert_array_equal(batch[:, 1], dequantize_before(q[:, 0], s[:, 0], ch[0]))
    assert not batch[:, [0, 2, 3]].any()


# ------------------------------------------------------------------ int8 views kept as stored
@pytest.fixture(scope="module")
def int8_store(tmp_path_factory):
    from conftest import TINY_CLI, cli

    from featcache.data.synthetic import make_dataset

    root = tmp_path_factory.mktemp("int8view")
    manifest = make_dataset(str(root), "motion", per_class=3, num_frames=16)
    out = str(root / "q.zarr")
    cli("extract", manifest, "--out", out, *TINY_CLI, "-q", "--frames", "uniform:12,keyframes:4",
        "--layers", "-2,-1", "--dtype", "int8")
    return out


def reference_view(cache, view, split):
    """The float16 view from the stored arrays, with the verbatim numpy dequantisation."""
    from featcache.cache.dataset import frame_positions

    rows = []
    for r in cache.done_records(split):
        entry = cache.video(r["video_id"])
        pos = np.asarray(frame_positions(entry, view.frames))
        layer = view.layers[0] % 2
        q, s, ch = (entry.stored(n) for n in ("tokens", "token_scales", "channel_scales"))
        rows.append(dequantize_before(q[pos, layer], s[pos, layer], ch[layer]))
    return np.stack(rows)  # (V, T, N, C)


def bits(x):
    return np.asarray(x).view(np.uint16)


@pytest.mark.parametrize("spec,layers", [("uniform:12", (-1,)), ("keyframes:4", (-2,)), ("uniform:4", (-1,))])
def test_an_int8_view_stays_int8_and_indexes_to_todays_values(int8_store, spec, layers):
    import torch

    from featcache import open_cache
    from featcache.cache.dataset import materialise
    from featcache.spec.view import View

    cache, view = open_cache(int8_store), View(spec, layers)
    want = reference_view(cache, view, "train")
    data = materialise(cache, view, "train")
    x = data.x
    assert isinstance(x, quant.QuantTokens) and x.shape == want.shape and len(x) == len(want)
    assert x.q.dtype == np.int8 and x.nbytes < want.nbytes * 0.6  # half the bytes, plus the scales
    np.testing.assert_array_equal(bits(x[:]), bits(want))
    np.testing.assert_array_equal(bits(x[1]), bits(want[1]))
    idx = torch.tensor([3, 0, 2])
    np.testing.assert_array_equal(bits(x[idx]), bits(want[[3, 0, 2]]))
    batch = x.take(idx)  # what the training loop gets: still int8
    assert batch.q.dtype == torch.int8 and len(batch) == 3
    head = quant.to_head(batch, torch.device("cpu"))
    assert head.dtype == torch.float32
    np.testing.assert_array_equal(head.numpy(), want[[3, 0, 2]].astype(np.float32))
    # the device formula (plain torch ops) gives the same bits, here run on the CPU
    on_device = quant.dequantize_tensors(batch.q, batch.token_scales, batch.channel_scales)
    np.testing.assert_array_equal(bits(on_device.numpy()), bits(want[[3, 0, 2]]))
    # the streamed path (fill_view -> read_frames_into, the eager pass) reads the same values
    streamed = materialise(cache, view, "train", max_bytes=1).x
    np.testing.assert_array_equal(bits(streamed[:]), bits(want))


def test_the_dequantised_batch_matches_the_float16_batch_the_loop_used_to_move(int8_store):
    """The training loop's batch step: an int8 batch through ``.to(device).float()`` (and
    quant.to_head) equals today's float16 batch (dequantised on the host, then
    ``.to(device).float()``), for every batch of an epoch."""
    import torch

    from featcache import open_cache
    from featcache.cache.dataset import materialise
    from featcache.cache.stream import batches, epoch_order
    from featcache.spec.view import View

    cache = open_cache(int8_store)
    x = materialise(cache, View("uniform:12"), "train").x
    whole = torch.from_numpy(dequantize_before(x.q, x.token_scales, x.channel_scales[:, None, None, :]))
    seen = 0
    for idx, batch in batches(x, epoch_order(len(x), 0, 0), 4):
        assert isinstance(batch, quant.QuantBatch)
        want = whole[idx].float()
        torch.testing.assert_close(quant.to_head(batch, torch.device("cpu")), want, rtol=0, atol=0)
        moved = batch.to(torch.device("cpu"), non_blocking=True).float()  # the training loop's own line
        assert moved.dtype == torch.float32 and torch.equal(moved, want)
        seen += len(idx)
    assert seen == len(x)


def test_training_from_an_int8_store_in_memory_equals_streamed(int8_store, tmp_path):
    """The same run from the int8 view kept quantised (dequantised batch by batch) and streamed
    (dequantised per video on the way in): same values, so the same losses, epoch by epoch."""
    import json

    import yaml
    from conftest import cli

    logs = {}
    for name, extra in (("memory", []), ("streamed", ["--set", "max_view_memory_gb=0.000001"])):
        out = tmp_path / name
        cli("train", int8_store, "--head", "pool", "--view", "uniform:4", "--set", "epochs=3", "--out", str(out),
            "-q", *extra)
        logs[name] = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        assert ("train" in yaml.safe_load((out / "config.yaml").read_text())["streamed"]) == (name == "streamed")
    assert len(logs["memory"]) == 3
    for a, b in zip(logs["memory"], logs["streamed"]):
        assert (a["train/loss"], a["val/loss"], a["val/top1"]) == (b["train/loss"], b["val/loss"], b["val/top1"])


@pytest.mark.slow
def test_bench_formats_runs_at_a_tiny_size(tmp_path):
    """benchmarks/bench_formats.py end to end (reads only), as a user runs it: every kernel
    candidate's bits are checked inside, and both read measures are reported per format."""
    import json
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "bench_formats.py")
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    r = subprocess.run([sys.executable, script, "--videos", "8", "--rounds", "1", "--reads-only", "--vit-s-videos", "4"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    summaries = [x for x in lines if "summary" in x]
    assert "dequantize -> float16 (this round)" in summaries[0]
    for measure in summaries[1:3]:
        assert set(measure) >= {"float16", "int8", "int8 eager", "pool2", "mean"}
        assert measure["float16"]["ratio"] == 1.0 and measure["int8"]["frames_per_s"] > 0
    for measure in summaries[3:5]:  # the same reads on stores of ViT-S/14's real rows
        assert measure["rows"].startswith("257 tokens x 384") and set(measure) >= {"float16", "int8", "int8 eager"}
        assert measure["float16"]["ratio"] == 1.0 and measure["int8"]["frames_per_s"] > 0


def test_a_dataloader_hands_int8_over_and_to_head_gives_the_float32_items(int8_store):
    import torch

    from featcache import open_cache
    from featcache.errors import FeatcacheError

    cache = open_cache(int8_store)
    plain = cache.dataset(view="uniform:12", split="train")
    packed = cache.dataset(view="uniform:12", split="train", quantized=True)
    tokens, target = packed[2]
    assert tokens["q"].dtype == torch.int8 and tokens["q"].shape == plain[2][0].shape
    loader = torch.utils.data.DataLoader(packed, batch_size=3, num_workers=1)
    seen = 0
    for tokens, target in loader:
        x = quant.to_head(tokens, "cpu")
        want = torch.stack([plain[seen + j][0] for j in range(len(x))])  # float32 items of the float16 view
        assert x.dtype == torch.float32 and torch.equal(x, want)
        assert torch.equal(target, plain.targets[seen:seen + len(x)])
        seen += len(x)
    assert seen == len(plain)
    for kw in ({"stream": True}, {"tokens": "cls"}):
        with pytest.raises(FeatcacheError, match="quantized=True needs an int8 store"):
            cache.dataset(view="uniform:12", split="train", quantized=True, **kw)


def test_a_quantised_batch_dequantises_to_any_float_dtype(stored):
    import torch

    q, s, ch = stored  # read as 9 videos x 2 frames x 37 tokens x 48 channels, one channel-scale row
    batch = quant.QuantBatch(torch.from_numpy(q), torch.from_numpy(s), torch.from_numpy(np.repeat(ch[:1], len(q), 0)))
    want = torch.from_numpy(dequantize_before(q, s, ch[0]))  # float16
    for dtype in (torch.float16, torch.float32, torch.bfloat16):
        got = batch.dequantize(dtype)
        assert got.dtype == dtype
        torch.testing.assert_close(got, want.to(dtype), rtol=0, atol=0)
