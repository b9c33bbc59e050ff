"""One suite over every registered head (timm tests/test_models.py style)."""
import pytest
import torch
from torch import nn

from featcache.heads.registry import create_head, head_options, list_heads

B, T, C, K = 4, 8, 32, 5
GRID, PREFIX = (4, 4), 1


# the adapter head runs frozen blocks rebuilt from a cache's provenance: a 2-block random ViT, 32 wide
BACKBONE = {"model": "vit_small_patch14_dinov2.lvd142m", "args": {"depth": 2, "embed_dim": C, "num_heads": 2, "init_values": 1.0},
            "weights": {"source": "random", "seed": 0}, "img_size": 56, "cut": 0, "depth": 2}


def build(name, **opts):
    if name == "adapter":
        opts = {"backbone": BACKBONE, "width": 8, **opts}
    return create_head(name, in_dim=C, num_classes=K, num_frames=T, grid=GRID, num_prefix_tokens=PREFIX, **opts)


def tokens(batch=B):
    return torch.randn(batch, T, PREFIX + GRID[0] * GRID[1], C, generator=torch.Generator().manual_seed(0))


def test_all_heads_registered():
    assert list_heads() == ["adapter", "attentive", "linear", "lstm", "pool", "r3d", "stadapter_posthoc", "tcn",
                            "transformer"]


@pytest.mark.parametrize("name", list_heads())
def test_forward_backward_and_one_step_lowers_the_loss(name):
    torch.manual_seed(0)
    head = build(name).train()
    x, y = tokens(), torch.tensor([0, 1, 2, 3])
    out = head(x)
    assert out.shape == (B, K) and torch.isfinite(out).all()
    opt = torch.optim.SGD(head.parameters(), lr=1e-2)

    def loss():
        torch.manual_seed(1)  # same dropout masks before and after the step
        return nn.functional.cross_entropy(head(x), y)

    before = loss()
    opt.zero_grad()
    before.backward()
    grads = [p.grad for p in head.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    opt.step()
    assert loss().item() < before.item()


@pytest.mark.parametrize("name", list_heads())
def test_options_exposed_and_unknown_ones_refused(name):
    assert head_options(name) or name == "linear"
    with pytest.raises(ValueError, match=f"head '{name}' has no option bogus; options: "):
        build(name, bogus=1)


@pytest.mark.parametrize("name", ["pool", "linear", "transformer", "lstm", "tcn"])
def test_per_frame_heads_work_on_cls_only_views(name):
    head = create_head(name, in_dim=C, num_classes=K, num_frames=T, grid=(0, 0), num_prefix_tokens=1)
    assert head(torch.randn(2, T, 1, C)).shape == (2, K)


@pytest.mark.parametrize("name", ["r3d", "stadapter_posthoc"])
def test_grid_heads_need_patches(name):
    with pytest.raises(ValueError, match="needs patch tokens"):
        create_head(name, in_dim=C, num_classes=K, num_frames=T, grid=(0, 0), num_prefix_tokens=1)


def test_unknown_head_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown head .r2d2.; available: adapter, attentive, linear, lstm, pool"):
        build("r2d2")


def test_r3d_is_the_released_tmm():
    head = build("r3d", temporal_kernel=5, blocks=2, hidden=32, out_dim=48)
    convs = [m for m in head.stage.modules() if isinstance(m, nn.Conv3d)]
    # block 1: a, b, c, projection shortcut (C != out_dim); block 2: a, b, c (identity shortcut)
    assert [tuple(c.kernel_size) for c in convs] == [(5, 1, 1), (1, 3, 3), (1, 1, 1), (1, 1, 1),
                                                    (5, 1, 1), (1, 3, 3), (1, 1, 1)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(C, 32), (32, 32), (32, 48), (C, 48),
                                                               (48, 32), (32, 32), (32, 48)]
    assert all(c.stride == (1, 1, 1) for c in convs)  # no down-sampling
    fcs = [m for m in head.mlp if isinstance(m, nn.Linear)]
    assert [(f.in_features, f.out_features) for f in fcs] == [(48, 1024), (1024, K)]  # 2 FC, hidden 1024
    v = head.stage(torch.randn(2, C, T, *GRID))
    assert v.shape == (2, 48, T, *GRID)


# AdViSe Table 3 and the released TMM + MLP head: tests/heads/test_released_ports.py (exact, against a port).


@pytest.mark.parametrize("temporal,layers,width", [("avg", 0, C), ("avg", 2, C), ("concat", 1, T * C)])
def test_pool_avg_concat_and_mlp_depth(temporal, layers, width):
    head = build("pool", temporal=temporal, mlp_layers=layers, frame_feature="cls")
    fcs = [m for m in head.mlp if isinstance(m, nn.Linear)]
    assert len(fcs) == layers + 1 and fcs[0].in_features == width


def test_pool_avg_ignores_frame_order_and_temporal_heads_do_not():
    x = tokens()
    reversed_x = x.flip(1)
    for name in list_heads():
        torch.manual_seed(0)
        head = build(name).eval()
        if name == "stadapter_posthoc":  # starts as the identity; give it a trained-looking temporal conv
            nn.init.normal_(head.adapters[0].conv.weight, std=0.5)
        if name == "adapter":
            for a in head.pre_attn.values():
                nn.init.normal_(a.conv.weight, std=0.5)
        with torch.no_grad():
            same = torch.allclose(head(x), head(reversed_x), atol=1e-5)
        assert same == (name in ("pool", "linear")), name


def test_st_adapter_is_the_released_one():
    head = build("stadapter_posthoc", temporal_kernel=5)
    a = head.adapters[0]
    assert a.conv.kernel_size == (5, 1, 1) and a.conv.groups == 128  # depthwise, kt x 1 x 1
    assert all(float(p.detach().abs().sum()) == 0 for p in (a.conv.weight, a.conv.bias, a.fc1.bias, a.fc2.bias))
    x = tokens()
    torch.testing.assert_close(a(x), x)  # a fresh adapter is the identity
    nn.init.normal_(a.conv.weight)
    y = a(x)
    torch.testing.assert_close(y[:, :, :PREFIX], x[:, :, :PREFIX])  # the CLS token bypasses it
    flat = a(x.flatten(0, 1), frames=T)  # inside a ViT block: (B*T, N, C)
    torch.testing.assert_close(flat, y.flatten(0, 1))


def test_token_grid_augmentations():
    from featcache.train.augment import augment_tokens

    x = torch.randn(4, T, 1 + 4 * 4, C)
    g = torch.Generator().manual_seed(0)
    flipped = augment_tokens(x, 1, (4, 4), "flip", g)
    torch.testing.assert_close(flipped[:, :, 0], x[:, :, 0])  # CLS untouched
    grid, out = x[:, :, 1:].reshape(4, T, 4, 4, C), flipped[:, :, 1:].reshape(4, T, 4, 4, C)
    for b in range(4):  # each clip is either unchanged or mirrored left-right in every frame
        assert torch.equal(out[b], grid[b]) or torch.equal(out[b], grid[b].flip(2))
    assert any(torch.equal(out[b], grid[b].flip(2)) for b in range(4))
    a = augment_tokens(x, 1, (4, 4), "crop_flip", torch.Generator().manual_seed(3))
    b2 = augment_tokens(x, 1, (4, 4), "crop_flip", torch.Generator().manual_seed(3))
    assert a.shape == x.shape and torch.equal(a, b2) and not torch.equal(a, x)  # seeded: fused heads agree
    assert augment_tokens(x, 1, (4, 4), "none", g) is x


def test_attentive_probe_structure_and_temporal_embedding():
    head = build("attentive", blocks=2, queries=3, dim=16, heads=4)
    assert head.query.shape == (1, 3, 16) and head.time.shape == (1, T, 1, 16) and len(head.blocks) == 2
    assert head(tokens()).shape == (B, K)
    plain = build("attentive", temporal_embed=False).eval()
    x = tokens()
    with torch.no_grad():  # without temporal embeddings, attention pooling cannot see frame order
        torch.testing.assert_close(plain(x), plain(x.flip(1)), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="not divisible by heads"):
        build("attentive", dim=30, heads=8)


def test_weighted_frame_feature_starts_as_the_mean_of_all_tokens():
    from featcache.heads.layers import FrameFeature

    f = FrameFeature(C, PREFIX, GRID, "weighted")
    x = tokens()
    ref = nn.functional.layer_norm(x.mean(dim=2), (C,))
    torch.testing.assert_close(f(x), ref, rtol=1e-5, atol=1e-5)
    assert f.token_logits.shape == (PREFIX + 16,)
    with torch.no_grad():
        f.token_logits[0] = 50.0  # all weight on the CLS token = the cls feature
    torch.testing.assert_close(f(x), nn.functional.layer_norm(x[:, :, 0], (C,)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["pool", "linear", "lstm", "tcn", "transformer", "stadapter_posthoc"])
def test_frame_norm_switch_drops_the_layer_norm(name):
    head = build(name, frame_norm=False, frame_feature="cls")
    assert not any(isinstance(m, nn.LayerNorm) for m in head.frame.modules())
    x = tokens()
    torch.testing.assert_close(head.frame(x), x[:, :, 0])  # the raw CLS token of each frame
    assert isinstance(build(name, frame_feature="cls").frame.norm, nn.LayerNorm)  # default as before


def test_an_r3d_checkpoint_from_before_the_batch_norm_default_still_loads():
    """Runs trained before r3d's MLP got the released batch norm record no mlp_bn and hold a
    biased first Linear and no BN statistics: they rebuild as trained, with the same outputs."""
    from featcache.train.checkpoint import build_head

    common = dict(in_dim=C, num_classes=K, num_frames=T, grid=GRID, num_prefix_tokens=PREFIX)
    old = build("r3d", mlp_bn=False, hidden=16).eval()
    ckpt = {"head": "r3d", "head_args": {**common, "hidden": 16}, "state_dict": old.state_dict()}
    rebuilt = build_head(ckpt)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in rebuilt.modules())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(tokens()), old(tokens()))
    new = build("r3d", hidden=16).eval()  # today's default: its checkpoints rebuild with batch norm
    rebuilt = build_head({"head": "r3d", "head_args": {**common, "hidden": 16}, "state_dict": new.state_dict()})
    assert any(isinstance(m, nn.BatchNorm1d) for m in rebuilt.modules())
