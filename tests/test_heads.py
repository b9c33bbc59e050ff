"""One suite over every registered head (timm tests/test_models.py style)."""
import pytest
import torch
from torch import nn

from featcache.registry import create_head, head_options, list_heads

B, T, C, K = 4, 8, 32, 5
GRID, PREFIX = (4, 4), 1


def build(name, **opts):
    return create_head(name, in_dim=C, num_classes=K, num_frames=T, grid=GRID, num_prefix_tokens=PREFIX, **opts)


def tokens(batch=B):
    return torch.randn(batch, T, PREFIX + GRID[0] * GRID[1], C, generator=torch.Generator().manual_seed(0))


def test_all_heads_registered():
    assert list_heads() == ["linear", "lstm", "pool", "r3d", "stadapter", "tcn", "transformer"]


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


@pytest.mark.parametrize("name", ["r3d", "stadapter"])
def test_grid_heads_need_patches(name):
    with pytest.raises(ValueError, match="needs patch tokens"):
        create_head(name, in_dim=C, num_classes=K, num_frames=T, grid=(0, 0), num_prefix_tokens=1)


def test_unknown_head_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown head 'r2d2'; available: linear, lstm, pool"):
        build("r2d2")


def test_r3d_is_advise_tmm():
    head = build("r3d", temporal_kernel=5, blocks=2)
    convs = [m for m in head.blocks.modules() if isinstance(m, nn.Conv3d)]
    assert [tuple(c.kernel_size) for c in convs] == [(5, 1, 1), (1, 3, 3), (1, 1, 1)] * 2
    assert all(c.stride == (1, 1, 1) and c.out_channels == 256 for c in convs)  # no down-sampling, hidden 256
    fcs = [m for m in head.mlp if isinstance(m, nn.Linear)]
    assert [(f.in_features, f.out_features) for f in fcs] == [(256, 1024), (1024, K)]  # 2 FC, hidden 1024
    v = head.blocks(head.proj(torch.randn(2, C, T, *GRID)))
    assert v.shape == (2, 256, T, *GRID)


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
        if name == "stadapter":  # starts as the identity; give it a trained-looking up-projection
            nn.init.normal_(head.adapters[0].up.weight, std=0.5)
        with torch.no_grad():
            same = torch.allclose(head(x), head(reversed_x), atol=1e-5)
        assert same == (name in ("pool", "linear")), name


def test_stadapter_kernel_and_identity_start():
    head = build("stadapter", temporal_kernel=5)
    assert head.adapters[0].conv.kernel_size == (5, 3, 3) and head.adapters[0].conv.groups == 128
    x = tokens()
    torch.testing.assert_close(head.adapters(x), x)  # zero-initialised up-projection
