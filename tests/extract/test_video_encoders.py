"""Video encoders in stage 1 (--model tv:NAME): cached clip tokens against a direct forward of
the same clip through the same torchvision model, computed here independently: frames decoded by
PyAV, clip indices from torchvision's own VideoClips / UniformClipSampler code, torchvision's
VideoClassification preset applied to the frames, and the model's own forward with hooks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import cli, pyav_frames, write_manifest

from featcache.cache.store import open_cache
from featcache.data.synthetic import motion_clip, write_video
from featcache.errors import FeatcacheError
from featcache.extract.encoder import EncoderConfig
from featcache.extract.pipeline import ExtractConfig, run_extract

# model -> (builder kwargs, featcache --model-arg overrides of the preset, frames per clip at its rate)
# The ResNets and Swin3D take any size: small crops keep them fast. S3D needs >= 14 frames at 224
# (its AvgPool3d(2, 7, 7)); MViT-V2-S is built for 16 x 224 x 224 (mvit.py L886-888).
SMALL = {"crop_size": 32, "resize_size": [40, 53], "clip_len": 8}
MODELS = {
    "r3d_18": SMALL,
    "mc3_18": SMALL,
    "r2plus1d_18": SMALL,
    "swin3d_t": {"crop_size": 64, "resize_size": [72], "clip_len": 4},
    "s3d": {"clip_len": 16},
    "mvit_v2_s": {},
}
HEAVY = ("s3d", "mvit_v2_s")


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    """60 frames of a moving square at 25 fps, 96x72 (2.4 s: several 16-frame clips at 7.5 fps)."""
    path = str(tmp_path_factory.mktemp("vid") / "long.mp4")
    write_video(path, motion_clip("right", np.random.default_rng(3), num_frames=60, size=(96, 72)))
    return path


def _weights_file(tmp_path, name: str, calibrate: tuple | None = None) -> str:
    """Random weights of the model saved to disk (seed 7): extraction loads the same network.
    ``calibrate`` (an input shape): batch-norm statistics set from one random batch first, as a
    trained network's are; random-init S3D otherwise shrinks its activations to ~1e-7, below
    float16's normal range (6e-5), which no trained network does."""
    import torchvision.models as tvm

    torch.manual_seed(7)
    path = str(tmp_path / f"{name}.pth")
    model = tvm.get_model(name, weights=None)
    if calibrate:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = 1.0
        with torch.no_grad():
            model.train()(torch.randn(calibrate))
    torch.save(model.state_dict(), path)
    return path


def _reference_tokens(name: str, weights_path: str, clip: torch.Tensor, preset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens (1 + T'H'W', C), logits of the model's own forward, logits of its classifier on
    the cached pooled token's reference) for uint8 frames (T, C, H, W), independently of featcache."""
    import torchvision.models as tvm

    model = tvm.get_model(name, weights=None).eval()
    model.load_state_dict(torch.load(weights_path, weights_only=True))
    seen = {}
    hook_on = {"r3d_18": ("layer4", "avgpool"), "mc3_18": ("layer4", "avgpool"), "r2plus1d_18": ("layer4", "avgpool"),
               "s3d": ("features", "avgpool"), "swin3d_t": ("norm", "avgpool"), "mvit_v2_s": ("norm", None)}[name]
    for key, module in zip(("map", "pool"), hook_on):
        if module:
            getattr(model, module).register_forward_hook(lambda m, i, o, key=key: seen.__setitem__(key, o))
    x = preset(clip)[None]  # (1, 3, T, S, S): torchvision's own VideoClassification
    with torch.no_grad():
        logits = model(x)[0]
    f = seen["map"]
    if name == "mvit_v2_s":
        tokens = f[0]  # (1 + T'H'W', C): the class token first
    elif name == "swin3d_t":
        tokens = torch.cat([seen["pool"].flatten(1), f[0].flatten(0, 2)])  # pooled, then (T'H'W', C)
    else:
        pooled = seen["pool"].mean(dim=(2, 3, 4)) if name == "s3d" else seen["pool"].flatten(1)
        tokens = torch.cat([pooled, f[0].flatten(1).T])
    return tokens.numpy(), logits.numpy(), model


def _classify_pooled(name: str, model, pooled: torch.Tensor) -> np.ndarray:
    """The model's own classifier on a pooled vector (C,): what its forward does after pooling."""
    with torch.no_grad():
        if name == "s3d":
            return model.classifier(pooled.view(1, -1, 1, 1, 1)).mean(dim=(2, 3, 4))[0].numpy()
        if name == "mvit_v2_s" or name == "swin3d_t":
            return model.head(pooled[None])[0].numpy()
        return model.fc(pooled[None])[0].numpy()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in MODELS])
def test_cached_tokens_equal_a_direct_forward(name, long_video, tmp_path):
    from torchvision.datasets.video_utils import VideoClips
    from torchvision.models import get_model_weights
    from torchvision.transforms._presets import VideoClassification

    over = MODELS[name]
    weights = _weights_file(tmp_path, name, (2, 3, 16, 224, 224) if name == "s3d" else None)
    manifest = write_manifest(tmp_path / "m.csv", [{"video_id": "v", "path": long_video, "label": "a", "split": "train"}])
    enc = EncoderConfig(model=f"tv:{name}", weights=weights, precision="fp32", model_args=dict(over))
    s = run_extract(ExtractConfig(manifest=manifest, out=str(tmp_path / "c.zarr"), encoder=enc, frames="clips:2",
                                  batch_size=2), show_progress=False)
    assert s.done == 1 and not s.failed
    cache = open_cache(str(tmp_path / "c.zarr"))
    entry = cache.video("v")
    # the clips: torchvision's own sampling (VideoClips + UniformClipSampler) at the weights' rate
    default = get_model_weights(name).DEFAULT
    docs = default.meta["_docs"]
    rate = float(docs.split("frame_rate=")[1].split("`")[0])
    length = over.get("clip_len") or int(docs.split("clip_len=")[1].split("`")[0])
    frames = pyav_frames(long_video)  # every frame at source size, PyAV in order
    clips, _ = VideoClips.compute_clips_for_video(torch.arange(len(frames)), length, 1, 25.0, rate)
    chosen = clips[torch.linspace(0, len(clips) - 1, steps=2).floor().long()].numpy()
    assert entry.record["clips"]["frame_indices"] == chosen.tolist()
    assert entry.record["policies"] == {"clips:2": [0, 1]}
    assert cache.attrs["preprocess"]["frame_rate"] == rate and cache.attrs["preprocess"]["clip_len"] == length
    base = default.transforms()
    preset = VideoClassification(crop_size=[over["crop_size"]] * 2 if "crop_size" in over else base.crop_size,
                                 resize_size=over.get("resize_size", base.resize_size), mean=base.mean, std=base.std)
    cached = entry.tokens  # (clips, 1, N, C) float16
    assert cached.dtype == np.float16 and cached.shape[:2] == (2, 1)
    g = cache.attrs["tokens"]["clip_grid"]
    assert cached.shape[2] == 1 + g[0] * g[1] * g[2] == cache.attrs["tokens"]["num_tokens"]
    for k, idx in enumerate(chosen):
        clip = torch.from_numpy(frames[idx]).permute(0, 3, 1, 2)  # (T, 3, H, W) uint8
        ref, logits, model = _reference_tokens(name, weights, clip, preset)
        assert ref.shape == cached[k, 0].shape
        cos = _cosines(cached[k, 0], ref)
        assert cos.min() >= 0.999, (name, k, cos.min())
        # the prefix token is the pooled output the model's classifier reads
        out = _classify_pooled(name, model, torch.from_numpy(cached[k, 0, 0].astype(np.float32)))
        assert _cosines(out, logits) >= 0.999


@pytest.mark.slow
def test_windows_on_the_real_clip(city_clip, tmp_path):
    """fps:4,windows:4/2 on real footage (720x405, 25 fps MPEG-2): the windows of every video's
    record are computed here from PyAV's own frame times, and a window's tokens equal a direct
    forward of its frames."""
    import av
    from torchvision.models import get_model_weights
    from torchvision.transforms._presets import VideoClassification

    with av.open(city_clip) as c:
        times = np.array([f.time for f in c.decode(video=0)])
    times = times - times[0]
    manifest = write_manifest(tmp_path / "m.csv", [{"video_id": "city", "path": city_clip, "label": "a", "split": "test"}])
    weights = _weights_file(tmp_path, "r2plus1d_18")
    enc = EncoderConfig(model="tv:r2plus1d_18", weights=weights, precision="fp32", model_args=dict(SMALL))
    s = run_extract(ExtractConfig(manifest=manifest, out=str(tmp_path / "c.zarr"), encoder=enc,
                                  frames="fps:4,windows:4/2"), show_progress=False)
    assert s.done == 1, s.failed
    entry = open_cache(str(tmp_path / "c.zarr")).video("city")
    pool = [int(np.argmin(np.abs(times - k / 4))) for k in range(int(times[-1] * 4) + 1)]  # nearest frame to k/4 s
    wins = [pool[i:i + 4] for i in range(0, len(pool) - 3, 2)]
    assert entry.record["clips"]["frame_indices"] == wins
    assert entry.record["policies"] == {"windows:4/2@fps:4": list(range(len(wins)))}
    np.testing.assert_allclose(entry.record["clips"]["timestamps"], times[np.array(wins)], atol=1e-6)
    assert entry.record["clips"]["rate"] == 4
    frames = pyav_frames(city_clip)
    base = get_model_weights("r2plus1d_18").DEFAULT.transforms()
    preset = VideoClassification(crop_size=(32, 32), resize_size=(40, 53), mean=base.mean, std=base.std)
    k = len(wins) // 2
    ref, _, _ = _reference_tokens("r2plus1d_18", weights, torch.from_numpy(frames[wins[k]]).permute(0, 3, 1, 2), preset)
    assert _cosines(entry.tokens[k, 0], ref).min() >= 0.999


def test_short_video_is_one_repeated_clip(videos, tmp_path):
    """40 frames at 25 fps resampled to 15 fps are 24 frames: fewer than one 32-frame clip."""
    manifest = write_manifest(tmp_path / "m.csv", [{"video_id": "s", "path": videos[".mp4"], "label": "a",
                                                     "split": "train"}])
    args = dict(SMALL, clip_len=32)
    enc = EncoderConfig(model="tv:r3d_18", weights="random", precision="fp32", model_args=args)
    s = run_extract(ExtractConfig(manifest=manifest, out=str(tmp_path / "c.zarr"), encoder=enc, frames="clips:3"),
                    show_progress=False)
    assert s.done == 1 and any("shorter than one clip" in w for w in s.warnings)
    entry = open_cache(str(tmp_path / "c.zarr")).video("s")
    resampled = np.floor(np.arange(24, dtype=np.float32) * np.float32(25 / 15)).astype(int)
    expected = np.concatenate([resampled, [resampled[-1]] * 8])
    assert entry.record["clips"]["frame_indices"] == [expected.tolist()]  # stored once
    assert entry.record["policies"] == {"clips:3": [0, 0, 0]} and entry.record["short"]
    fail = run_extract(ExtractConfig(manifest=manifest, out=str(tmp_path / "f.zarr"), encoder=enc, frames="clips:3",
                                     short_videos="fail"), show_progress=False)
    assert "shorter than one 32-frame clip" in fail.failed["s"]


@pytest.mark.parametrize("args, message", [
    (["--model", "tv:r3d_18", "--frames", "uniform:8"], "is a video encoder; it takes a clip policy"),
    (["--frames", "clips:4"], "clip policies are for video encoders"),
    (["--model", "tv:resnet50", "--frames", "clips:4"], "unknown torchvision video model 'resnet50'"),
    (["--model", "hf:MCG-NJU/videomae-base", "--frames", "clips:4"], "hf:MCG-NJU/videomae-base: "),
    (["--model", "tv:r3d_18", "--frames", "fps:4,windows:8/4", "--layers", "-2"], "last feature map only"),
    (["--model", "tv:r3d_18", "--frames", "clips:2", "--crops", "3"], "centre crop only"),
    (["--model", "tv:r3d_18", "--frames", "windows:8/4"], "needs one fps:F pool"),
    (["--model", "tv:mvit_v2_s", "--frames", "fps:4,windows:8/8"], "cannot run a 8-frame 224x224 clip"),
])
def test_bad_options_are_one_line(args, message, tmp_path, videos, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # hf: on a closed network, without the reachability probe
    manifest = write_manifest(tmp_path / "m.csv", [{"video_id": "v", "path": videos[".mp4"], "label": "a", "split": "train"}])
    result = cli("extract", manifest, "--out", tmp_path / "c.zarr", "--weights", "random", *args, code=2)
    assert message in result.output and "Traceback" not in result.output
    assert len([ln for ln in result.output.splitlines() if ln.strip()]) == 1, result.output


def test_hub_weights_unreachable_is_one_line(tmp_path, videos, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no cached checkpoint
    with pytest.raises(FeatcacheError, match="--weights hub: cannot load https://download.pytorch.org/models/r3d_18"):
        from featcache.extract.video_encoders import make_encoder

        make_encoder(EncoderConfig(model="tv:r3d_18", weights="hub", model_args=dict(SMALL)))


def test_weights_file_of_another_model_is_refused(tmp_path):
    from featcache.extract.video_encoders import make_encoder

    path = _weights_file(tmp_path, "mc3_18")
    with pytest.raises(FeatcacheError, match="is it a checkpoint of this --model"):
        make_encoder(EncoderConfig(model="tv:r2plus1d_18", weights=path, model_args=dict(SMALL)))


def test_clips_on_the_real_clip_are_torchvisions(city_clip, tmp_path):
    """clips:3 of r3d_18's own sampling (16 frames at 15 fps) on the real 25 fps MPEG-2 clip:
    torchvision's VideoClips + UniformClipSampler over its 190 frames, and PyAV's frame times."""
    import av
    from torchvision.datasets.video_utils import VideoClips

    with av.open(city_clip) as c:
        stream = c.streams.video[0]
        fps = float(stream.average_rate)
        times = np.array([f.time for f in c.decode(video=0)])
    manifest = write_manifest(tmp_path / "m.csv", [{"video_id": "city", "path": city_clip, "label": "a", "split": "test"}])
    args = {k: v for k, v in SMALL.items() if k != "clip_len"}  # the weights' own 16 frames at 15 fps
    enc = EncoderConfig(model="tv:r3d_18", weights="random", precision="fp32", model_args=args)
    s = run_extract(ExtractConfig(manifest=manifest, out=str(tmp_path / "c.zarr"), encoder=enc, frames="clips:3"),
                    show_progress=False)
    assert s.done == 1, s.failed
    entry = open_cache(str(tmp_path / "c.zarr")).video("city")
    clips, _ = VideoClips.compute_clips_for_video(torch.arange(len(times)), 16, 1, fps, 15.0)
    chosen = clips[torch.linspace(0, len(clips) - 1, steps=3).floor().long()].numpy()
    assert fps == 25.0 and len(times) == 190 and entry.record["clips"]["frame_indices"] == chosen.tolist()
    np.testing.assert_allclose(entry.record["clips"]["timestamps"], (times - times[0])[chosen], atol=1e-6)
    assert entry.record["clips"]["rate"] == 15.0 and entry.tokens.shape[:2] == (3, 1)
