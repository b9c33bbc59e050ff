"""Hugging Face video encoders (--model hf:NAME, the hf extra): tiny VideoMAE and V-JEPA 2 models
saved to a local folder with their video processors; the cached clip tokens against the model's
own processor and forward on the same clip, computed here."""
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

transformers = pytest.importorskip("transformers")

TINY = {"videomae": {"image_size": 32, "patch_size": 8, "num_frames": 4, "tubelet_size": 2, "hidden_size": 32, "num_hidden_layers": 2,
                         "num_attention_heads": 2, "intermediate_size": 64},
        "vjepa2": {"crop_size": 32, "patch_size": 8, "frames_per_clip": 4, "tubelet_size": 2, "hidden_size": 32, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "mlp_ratio": 2.0, "pred_hidden_size": 32, "pred_num_hidden_layers": 1,
                       "pred_num_attention_heads": 2}}


def _tiny_model(root, kind: str) -> str:
    """A random tiny model with its video processor in a folder (what a hub snapshot holds)."""
    torch.manual_seed(3)
    if kind == "videomae":
        model = transformers.VideoMAEModel(transformers.VideoMAEConfig(**TINY[kind]))
        processor = transformers.VideoMAEVideoProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32})
    else:
        model = transformers.VJEPA2Model(transformers.VJEPA2Config(**TINY[kind]))
        processor = transformers.VJEPA2VideoProcessor(crop_size=32)
    path = str(root / kind)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.mark.parametrize("kind", ["videomae", "vjepa2"])
def test_cached_tokens_equal_the_models_own_processor_and_forward(kind, tmp_path):
    from torchvision.datasets.video_utils import VideoClips

    video = str(tmp_path / "v.mp4")
    write_video(video, motion_clip("up", np.random.default_rng(4), num_frames=40, size=(64, 48)))
    folder = _tiny_model(tmp_path, kind)
    manifest = write_manifest(tmp_path / "m.csv", [{"video_id": "v", "path": video, "label": "a", "split": "train"}])
    enc = EncoderConfig(model=f"hf:{folder}", weights="hub", precision="fp32", model_args={"frame_rate": 15})
    s = run_extract(ExtractConfig(manifest=manifest, out=str(tmp_path / "c.zarr"), encoder=enc, frames="clips:2"),
                    show_progress=False)
    assert s.done == 1, s.failed
    cache = open_cache(str(tmp_path / "c.zarr"))
    entry = cache.video("v")
    frames = pyav_frames(video)
    clips, _ = VideoClips.compute_clips_for_video(torch.arange(len(frames)), 4, 1, 25.0, 15.0)
    chosen = clips[torch.linspace(0, len(clips) - 1, steps=2).floor().long()].numpy()
    assert entry.record["clips"]["frame_indices"] == chosen.tolist()
    assert cache.attrs["tokens"]["clip_grid"] == [2, 4, 4] and cache.attrs["model"]["weights"]["hf_hub_id"] == folder
    model = transformers.AutoModel.from_pretrained(folder).eval()
    processor = transformers.AutoVideoProcessor.from_pretrained(folder)
    for k, idx in enumerate(chosen):
        x = processor([frames[idx]], return_tensors="pt")
        x = x["pixel_values"] if kind == "videomae" else x["pixel_values_videos"]
        with torch.no_grad():
            out = (model(pixel_values=x) if kind == "videomae" else model(pixel_values_videos=x, skip_predictor=True))
        ref = out.last_hidden_state[0].numpy()
        ref = np.concatenate([ref.mean(0, keepdims=True), ref]).astype(np.float64)
        got = entry.tokens[k, 0].astype(np.float64)
        cos = (ref * got).sum(-1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1))
        assert cos.min() >= 0.999, (kind, cos.min())


def test_hf_needs_a_rate_for_clips_and_a_readable_source(tmp_path):
    folder = _tiny_model(tmp_path, "videomae")
    from featcache.extract.video_encoders import make_encoder
    from featcache.video.select import parse_policies

    with pytest.raises(FeatcacheError, match="give --model-arg frame_rate=R"):
        make_encoder(EncoderConfig(model=f"hf:{folder}", weights="random"), parse_policies("clips:2"))
    enc = make_encoder(EncoderConfig(model=f"hf:{folder}", weights="random"), parse_policies("fps:4,windows:4/4"))
    assert enc.rate == 4 and enc.frames == 4  # windows bring their own rate
    with pytest.raises(FeatcacheError, match="cannot read its config and video processor"):
        make_encoder(EncoderConfig(model=f"hf:{tmp_path / 'nothing'}", weights="random"))


def test_hf_extract_through_the_cli(tmp_path, videos):
    folder = _tiny_model(tmp_path, "vjepa2")
    manifest = write_manifest(tmp_path / "m.csv", [{"video_id": "v", "path": videos[".mp4"], "label": "a", "split": "train"}])
    cli("extract", manifest, "--out", tmp_path / "c.zarr", "--model", f"hf:{folder}", "--weights", "random",
        "--precision", "fp32", "--frames", "fps:8,windows:4/4", "-q")
    info = cli("cache", "info", tmp_path / "c.zarr").output
    assert "1 pooled + 2x4x4 (T'xH'xW') tokens" in info and "VJEPA2VideoProcessor" in info
