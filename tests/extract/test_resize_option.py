"""``featcache extract --resize pil``: tokens of the frames torchvision's preprocessing gives, recorded
in the store's preprocessing facts (issue 34 item 25)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from conftest import TINY_ARGS, TINY_CLI, TINY_SIZE, cli, tiny_encoder_config, write_manifest

from featcache import open_cache
from featcache.data.synthetic import make_dataset, texture_clip, write_video
from featcache.errors import FeatcacheError
from featcache.extract.pipeline import ExtractConfig, run_extract
from featcache.spec.config import build_config
from featcache.train.fit import run_training


def extract(manifest, out, **kw):
    cfg = ExtractConfig(manifest=manifest, out=str(out), encoder=kw.pop("encoder", tiny_encoder_config()), **kw)
    return run_extract(cfg, show_progress=False)


@pytest.fixture(scope="module")
def texture_manifest(tmp_path_factory):
    """Two 10-frame scrolling textures at 100x72 (the tiny model resizes to short side 56: 77x56,
    a centre crop at column 10, torchvision's round-half-to-even of 10.5)."""
    root = tmp_path_factory.mktemp("tex")
    rows = []
    for i, label in enumerate(("left", "up")):
        path = str(root / f"t{i}.mp4")
        write_video(path, texture_clip(label, np.random.default_rng(i), num_frames=10, size=(100, 72)))
        rows.append({"video_id": f"t{i}", "path": path})
    return write_manifest(root / "m.csv", rows)


@pytest.fixture(scope="module")
def pil_cache(texture_manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("c") / "pil.zarr"
    s = extract(texture_manifest, out, frames="uniform:4", dtype="float32", resize="pil")
    assert s.done == 2 and not s.failed
    return str(out)


def test_pil_tokens_equal_the_bare_timm_model_on_its_own_eval_transform(pil_cache, texture_manifest):
    """Independent path: frames decoded in order by PyAV as PIL images, timm's own eval transform
    for the model (``create_transform(**resolve_data_config(model=...))``: torchvision Resize on
    PIL images, CenterCrop, ToTensor, Normalize), a freshly built model's ``forward_features``."""
    import av

    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch14_dinov2.lvd142m", img_size=TINY_SIZE, **TINY_ARGS).eval()
    config = timm.data.resolve_data_config({"input_size": (3, TINY_SIZE, TINY_SIZE)}, model=model)
    transform = timm.data.create_transform(**config)
    assert config["interpolation"] == "bicubic"  # the store's preprocess.interpolation, PIL's bicubic filter
    cache = open_cache(pil_cache)
    paths = {row.split(",")[0]: row.split(",")[1] for row in open(texture_manifest).read().split()[1:]}
    for vid in ("t0", "t1"):
        v = cache.video(vid)
        with av.open(paths[vid]) as c:
            images = [f.to_image() for f in c.decode(video=0)]
        x = torch.stack([transform(images[i]) for i in v.frame_indices])  # (T, 3, 56, 56)
        with torch.inference_mode():
            ref = model.forward_features(x).numpy()  # (T, 17, 64)
        got = v.tokens[:, 0]
        cos = (got * ref).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(ref, axis=-1)
        assert cos.min() >= 0.9999, cos.min()
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_the_store_records_the_resize_and_cache_info_shows_it(pil_cache, texture_manifest, tmp_path):
    attrs = open_cache(pil_cache).attrs
    assert attrs["preprocess"]["resizer"] == "pil"
    assert attrs["preprocess"]["resize_backend"].startswith("PIL Image.resize")
    assert open_cache(pil_cache).facts.preprocess.resizer == "pil"
    assert "resize short side 56 (bicubic, PIL)" in cli("cache", "info", pil_cache).output
    sw = tmp_path / "sw.zarr"
    extract(texture_manifest, sw, frames="uniform:4", dtype="float32")
    assert "resizer" not in open_cache(str(sw)).attrs["preprocess"]  # swscale: stored as before this option
    assert "resize short side 56 (bicubic, swscale)" in cli("cache", "info", str(sw)).output
    assert json.loads(cli("cache", "info", pil_cache, "--json").output)["preprocess"]["resizer"] == "pil"


def test_a_store_refuses_another_resize_either_way(pil_cache, texture_manifest, tmp_path):
    """Extending a store with another --resize is refused, one line naming the fact, both ways."""
    with pytest.raises(FeatcacheError, match=r"different settings \(preprocess.resize_backend, preprocess.resizer\)"):
        extract(texture_manifest, pil_cache, frames="uniform:4", dtype="float32")
    sw = tmp_path / "sw.zarr"
    extract(texture_manifest, sw, frames="uniform:4", dtype="float32")
    r = cli("extract", texture_manifest, "--out", sw, "--frames", "uniform:4", "--dtype", "float32",
            "--resize", "pil", "-q", *TINY_CLI, code=2)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "the cache was made with different settings (preprocess.resize_backend, preprocess.resizer)" in r.stderr


def test_bad_resize_values_are_one_line():
    r = cli("extract", "m.csv", "--out", "x.zarr", "--resize", "area", code=2)
    assert r.stderr.strip() == "featcache: error: --resize: unknown 'area'; expected one of swscale, pil"
    r = cli("extract", "m.csv", "--out", "x.zarr", "--model", "tv:r3d_18", "--frames", "clips:2", "--resize", "pil",
            code=2)
    assert "--resize pil: tv:r3d_18 is a video encoder" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_eval_refuses_a_cache_of_the_other_resize(tmp_path):
    """A head trained on a swscale cache is not evaluated on a PIL one: the refusal names the fact."""
    manifest = make_dataset(str(tmp_path / "ds"), "motion", per_class=5, num_frames=8)
    caches = {}
    for resize in ("swscale", "pil"):
        caches[resize] = str(tmp_path / f"{resize}.zarr")
        extract(manifest, caches[resize], frames="uniform:4", resize=resize)
    run = str(tmp_path / "run")
    run_training(caches["swscale"], build_config({"head": "pool", "view": "uniform:4", "epochs": 1, "batch_size": 8}),
                 run, show_progress=False)
    r = cli("eval", run, "--cache", caches["pil"], code=2)
    assert r.stderr.strip().endswith(f"these facts differ from {caches['swscale']}'s: preprocess.resize_backend, "
                                     "preprocess.resizer"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_resize_pil_through_the_command_line(pil_cache, texture_manifest, tmp_path):
    """A real subprocess: the same tokens as the library's extraction, key frames and 3 crops along."""
    out = tmp_path / "cli.zarr"
    import featcache

    root = os.path.dirname(os.path.dirname(featcache.__file__))  # this checkout's featcache, not another install
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "featcache.cli", "extract", texture_manifest, "--out", str(out),
                        "--frames", "uniform:4,keyframes:2", "--crops", "3", "--dtype", "float32", "--resize", "pil",
                        "--decode-workers", "1", "-q", *TINY_CLI], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    cache, ref = open_cache(str(out)), open_cache(pil_cache)
    assert cache.attrs["preprocess"]["resizer"] == "pil"
    for vid in ("t0", "t1"):
        v, w = cache.video(vid), ref.video(vid)
        at = np.searchsorted(v.frame_indices, w.frame_indices)
        np.testing.assert_allclose(v.tokens[at], w.tokens, rtol=1e-5, atol=1e-5)


def test_a_torchvision_resnets_sizes_are_its_presets():
    """resnet50.tv_in1k (torchvision's ResNet-50 weights in timm): the short side and crop
    featcache resizes to are those of torchvision's own preset for those weights
    (ResNet50_Weights.IMAGENET1K_V1.transforms(): ImageClassification(crop_size=224), resize 256,
    bilinear; torchvision 0.29.1 models/resnet.py L356-359), so --resize pil gives exactly its input."""
    import torchvision.models as tvm

    from featcache.extract.encoder import EncoderConfig, FrozenEncoder

    preset = tvm.ResNet50_Weights.IMAGENET1K_V1.transforms()
    enc = FrozenEncoder(EncoderConfig(model="resnet50.tv_in1k", weights="random", precision="fp32", device="cpu"))
    p = enc.preprocess_facts
    assert [p.resize_short_side] == list(preset.resize_size) == [256]
    assert [p.input_size[-1]] == list(preset.crop_size) == [224]
    assert p.interpolation == preset.interpolation.value == "bilinear"
    assert list(p.mean) == list(preset.mean) and list(p.std) == list(preset.std)
