"""In-backbone adapters from a partial cache: the cut, the frozen tail rebuilt from provenance, the
ST-Adapter inside it, and what is (not) trained."""
import os

import numpy as np
import pytest
import timm
import torch
from conftest import TINY_ARGS, TINY_CLI, TINY_SIZE
from typer.testing import CliRunner

from featcache import open_cache
from featcache.cli import app
from featcache.data.synthetic import make_dataset
from featcache.heads.frozen_tail import backbone_spec
from featcache.heads.registry import create_head
from featcache.spec.config import build_config
from featcache.train.fit import run_training
from featcache.train.optim import optimizer

runner = CliRunner()
FP32 = ["--precision", "fp32", "--dtype", "float32"]


@pytest.fixture(scope="module")
def motion(tmp_path_factory):
    """160 clips whose classes differ only by motion, with the cut at block 0 cached (all blocks adaptable)."""
    root = tmp_path_factory.mktemp("adapter")
    manifest = make_dataset(str(root), "motion", per_class=40, num_frames=16)
    out = str(root / "c.zarr")
    r = runner.invoke(app, ["extract", manifest, "--out", out, "--frames", "uniform:8", *TINY_CLI, "--dtype",
                            "float32", "--cut-block", "0", "-q"])
    assert r.exit_code == 0, r.output
    return out


def test_cut_is_cached_verified_and_described(motion):
    cache = open_cache(motion)
    assert cache.attrs["cut"]["block"] == 0 and cache.attrs["cut"]["depth"] == 2 and cache.verify() == []
    entry = cache.video(cache.video_ids()[0])
    assert entry.cut.shape == (8, 17, 64) and entry.cut.dtype == np.float16
    info = runner.invoke(app, ["cache", "info", motion])
    assert "cut" in info.output


@pytest.mark.parametrize("options", [{}, {"kind": "amflow", "position": "attn_mlp"},
                                     {"kind": "amflow", "flow": "aligned", "tpm": "lstm"}])
def test_fresh_adapters_and_the_tail_reproduce_the_cached_final_tokens(motion, options):
    cache = open_cache(motion)
    spec = backbone_spec(cache.attrs)
    head = create_head("adapter", in_dim=64, num_classes=4, num_frames=8, grid=(4, 4), num_prefix_tokens=1,
                       backbone=spec, **options).eval()
    entry = cache.video(cache.video_ids()[0])
    h = torch.from_numpy(entry.cut.astype(np.float32))  # (T, N, C)
    with torch.no_grad():
        for i, block in enumerate(head.tail.blocks):
            h, _ = head._block(i, block, h, 8)  # zero-initialised adapters in every block: the identity
        final = head.tail.norm(h)
    cached = torch.from_numpy(entry.tokens[:, 0])  # fp32 final tokens (final norm applied)
    cos = torch.nn.functional.cosine_similarity(final.flatten(1), cached.flatten(1), dim=1)
    assert cos.min() >= 0.9999, cos  # the cut is stored in fp16


def test_cut_through_the_tail_equals_the_full_forward():
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch14_dinov2.lvd142m", pretrained=False, img_size=TINY_SIZE,
                              **TINY_ARGS).eval()
    x = torch.randn(3, 3, TINY_SIZE, TINY_SIZE)
    for cut in (0, 1):
        seen = []
        hook = model.blocks[cut].register_forward_pre_hook(lambda m, a, seen=seen: seen.append(a[0]))
        with torch.no_grad():
            full = model.forward_features(x)
            hook.remove()
            h = seen[0]
            for block in model.blocks[cut:]:
                h = block(h)
            torch.testing.assert_close(model.norm(h), full, rtol=0, atol=0)


@pytest.mark.parametrize("options", [{}, {"kind": "amflow", "tpm": "tcn"},
                                     {"kind": "amflow", "flow": "aligned", "tpm": "transformer"},
                                     {"kind": "amflow", "tpm": "lstm", "flow_blocks": "ends"}])
def test_a_step_moves_every_adapter_parameter_and_no_frozen_one(motion, options):
    cache = open_cache(motion)
    head = create_head("adapter", in_dim=64, num_classes=4, num_frames=8, grid=(4, 4), num_prefix_tokens=1,
                       backbone=backbone_spec(cache.attrs), position="attn_mlp", width=16, readout="mean",
                       **options)
    # (with readout=cls the last block's pre-MLP adapter cannot reach the CLS token: no attention follows it)
    frozen = {k: v.clone() for k, v in head.state_dict().items() if k.startswith("tail.")}
    trained = {k: v.clone() for k, v in head.named_parameters() if v.requires_grad}
    assert frozen and all(not p.requires_grad for n, p in head.named_parameters() if n.startswith("tail."))
    opt = optimizer(build_config({"head": "adapter", "weight_decay": 0.0, "lr": 1e-2}), head)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(trained)
    x, y = torch.randn(4, 8, 17, 64), torch.tensor([0, 1, 2, 3])
    head.train()
    for _ in range(2):  # zero-initialised convs / W_up: the weights before them move from the second step on
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(x), y).backward()
        opt.step()
    for k, v in head.state_dict().items():
        if k.startswith("tail."):
            assert torch.equal(v, frozen[k]), k  # bit-identical
    moved = {k: not torch.equal(p, trained[k]) for k, p in head.named_parameters() if p.requires_grad}
    assert all(moved.values()), [k for k, m in moved.items() if not m]


def test_checkpoints_hold_only_what_is_trained_and_eval_rebuilds_the_tail(motion, tmp_path):
    cfg = build_config({"head": "adapter", "head.width": 16, "view": "uniform:8", "epochs": 1, "batch_size": 16})
    assert cfg.view.source == "cut"
    out = str(tmp_path / "run")
    results = run_training(motion, cfg, out, show_progress=False)
    ckpt = torch.load(os.path.join(out, "best.pt"), weights_only=True)
    assert not any(k.startswith("tail.") for k in ckpt["state_dict"])
    head = create_head("adapter", in_dim=64, num_classes=4, num_frames=8, grid=(4, 4), num_prefix_tokens=1,
                       backbone=backbone_spec(open_cache(motion).attrs), width=16)
    assert results["params"] == sum(p.numel() for p in head.parameters() if p.requires_grad)
    e = runner.invoke(app, ["eval", out])
    assert e.exit_code == 0, e.output
    import json

    assert json.loads(e.output)["test/top1"] == pytest.approx(results["test/top1"])


def test_refusals_are_one_line(motion, tmp_path):
    manifest = os.path.join(os.path.dirname(motion), "manifest.csv")
    late = str(tmp_path / "late.zarr")  # cut before the last block: one block to adapt
    r = runner.invoke(app, ["extract", manifest, "--out", late, "--frames", "uniform:2", *TINY_CLI,
                            "--cut-block", "-1", "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["train", late, "--head", "adapter", "--view", "uniform:2", "--set", "head.blocks=2",
                            "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "2 adapted blocks asked for, but 1 block(s) run after the cut (block 1 of 2)" in r.stderr
    r = runner.invoke(app, ["train", motion, "--head", "adapter", "--set", "head.kind=amflow", "--set",
                            "head.position=mlp", "--view", "uniform:8", "--out", str(tmp_path / "a")])
    assert r.exit_code == 2 and "flow adapter across attention" in r.stderr
    no_cut = runner.invoke(app, ["extract", manifest, "--out", str(tmp_path / "n.zarr"), "--frames", "uniform:2",
                                 *TINY_CLI, "-q"])
    assert no_cut.exit_code == 0
    r = runner.invoke(app, ["train", str(tmp_path / "n.zarr"), "--head", "adapter", "--view", "uniform:2",
                            "--out", str(tmp_path / "n")])
    assert r.exit_code == 2 and "holds no cut" in r.stderr and "--cut-block" in r.stderr


def test_a_different_weights_file_is_refused_naming_both_hashes(tmp_path):
    from safetensors.torch import save_file

    manifest = make_dataset(str(tmp_path / "ds"), "motion", per_class=5, num_frames=8)
    torch.manual_seed(1)
    model = timm.create_model("vit_small_patch14_dinov2.lvd142m", pretrained=False, img_size=TINY_SIZE, **TINY_ARGS)
    weights = str(tmp_path / "w.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    args = [a for a in TINY_CLI if a != "random"]
    args[args.index("--weights") + 1:args.index("--weights") + 1] = [weights]
    out = str(tmp_path / "c.zarr")
    r = runner.invoke(app, ["extract", manifest, "--out", out, "--frames", "uniform:2", *args, "--cut-block", "0", "-q"])
    assert r.exit_code == 0, r.output
    recorded = open_cache(out).attrs["model"]["weights"]["sha256"]
    torch.manual_seed(2)
    other = timm.create_model("vit_small_patch14_dinov2.lvd142m", pretrained=False, img_size=TINY_SIZE, **TINY_ARGS)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, weights)  # the file changed since
    r = runner.invoke(app, ["train", out, "--head", "adapter", "--view", "uniform:2", "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert recorded in r.stderr and "is not the cache's" in r.stderr


def test_attention_logits_are_the_blocks_own_attention():
    """Q, K rebuilt from the block's qkv give exactly the probabilities of its unfused attention path."""
    from featcache.heads.amflow import attention_logits

    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch14_dinov2.lvd142m", pretrained=False, img_size=TINY_SIZE,
                              **TINY_ARGS).eval()
    attn = model.blocks[1].attn
    attn.fused_attn = False
    seen = []
    hook = attn.attn_drop.register_forward_hook(lambda m, a, out: seen.append(out))
    x = torch.randn(5, 17, 64)
    with torch.no_grad():
        attn(x)
        hook.remove()
        mine = attention_logits(attn, x).softmax(dim=-1)
    assert mine.shape == (5, 2, 17, 17)
    torch.testing.assert_close(mine, seen[0], rtol=1e-6, atol=1e-7)


def test_vanilla_flow_is_equation_3():
    """softmax over keys of |X_t - X_{t+1}|, summed over queries, against a loop over frames in numpy."""
    from featcache.heads.amflow import column_mass, vanilla_flow

    rng = np.random.default_rng(0)
    b, t, h, n = 2, 4, 3, 5
    logits = rng.normal(size=(b * t, h, n, n))
    got = vanilla_flow(torch.from_numpy(logits), t).numpy()  # (B*T, N, heads)
    clips = logits.reshape(b, t, h, n, n)
    for i in range(b):
        for f in range(t):
            nxt = clips[i, min(f + 1, t - 1)]  # the last frame pairs with itself
            d = np.abs(clips[i, f] - nxt)
            soft = np.exp(d) / np.exp(d).sum(axis=-1, keepdims=True)  # over keys
            want = soft.sum(axis=-2)  # (h, N): summed over queries
            np.testing.assert_allclose(got[i * t + f], want.T, rtol=1e-12)
    assert np.allclose(got.reshape(b, t, n, h)[:, -1], 1.0)  # a still pair: uniform rows, column sums 1
    mass = column_mass(torch.from_numpy(logits)).numpy()
    assert np.allclose(mass.sum(axis=1), n)  # each query's probabilities sum to 1


def test_amflow_adapters_train_and_evaluate_from_the_cli(motion, tmp_path):
    out = str(tmp_path / "run")
    r = runner.invoke(app, ["train", motion, "--head", "adapter", "--view", "uniform:8", "--set", "head.kind=amflow",
                            "--set", "head.tpm=transformer", "--set", "head.width=16", "--set", "epochs=1",
                            "--set", "batch_size=16", "--out", out])
    assert r.exit_code == 0, r.output
    ckpt = torch.load(os.path.join(out, "best.pt"), weights_only=True)
    assert not any(k.startswith("tail.") for k in ckpt["state_dict"])
    assert any(k.startswith("pre_attn.0.local.net") for k in ckpt["state_dict"])
    e = runner.invoke(app, ["eval", out])
    assert e.exit_code == 0, e.output


def test_backbone_spec_is_read_from_the_store_facts_with_its_json_unchanged():
    """backbone_spec takes the store's typed facts (or cache.attrs); the spec saved with a
    checkpoint keeps its keys and their order; the adapter names the cut from the typed spec."""
    from featcache.cache.facts import StoreAttrs

    attrs = {"model": {"name": "vit_small_patch14_dinov2.lvd142m", "args": dict(TINY_ARGS),
                       "weights": {"source": "random", "seed": 0}, "num_params": 1, "kind": "vit"},
             "preprocess": {"input_size": [3, TINY_SIZE, TINY_SIZE]}, "cut": {"block": 1, "depth": 2}}
    spec = backbone_spec(StoreAttrs.from_json(attrs))
    assert list(spec) == ["model", "args", "weights", "img_size", "cut", "depth"]
    assert spec == {"model": attrs["model"]["name"], "args": TINY_ARGS, "weights": {"source": "random", "seed": 0},
                    "img_size": TINY_SIZE, "cut": 1, "depth": 2} == backbone_spec(attrs)
    with pytest.raises(ValueError, match=r"2 adapted blocks asked for, but 1 block\(s\) run after the cut "
                                         r"\(block 1 of 2\)"):
        create_head("adapter", in_dim=64, num_classes=4, num_frames=2, grid=(4, 4), num_prefix_tokens=1,
                    backbone=spec, blocks=2)
