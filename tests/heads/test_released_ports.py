"""featcache against ports of the released code it reproduces (each port written from the
reference file named in its docstring, not from featcache): AdViSe's TMM + MLP head and its
Table 3, the ST-Adapter ``Adapter`` and its placements, Charades mAP, PRP clip indices."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from featcache.heads.registry import create_head


# ----------------------------------------------------------------------------- AdViSe TMM
class PortBottleneckTransform(nn.Module):
    """SlowFast ``BottleneckTransform`` as copied into JingwWu/advise-video-ssl
    ``models/resnet_helper.py`` L321-394 (stride 1, one group, no dilation: the release's call)."""

    def __init__(self, dim_in, dim_out, temp_kernel_size, dim_inner):
        super().__init__()
        self.a = nn.Conv3d(dim_in, dim_inner, [temp_kernel_size, 1, 1], stride=[1, 1, 1],
                           padding=[temp_kernel_size // 2, 0, 0], bias=False)
        self.a_bn = nn.BatchNorm3d(dim_inner, eps=1e-5, momentum=0.1)
        self.b = nn.Conv3d(dim_inner, dim_inner, [1, 3, 3], stride=[1, 1, 1], padding=[0, 1, 1], bias=False)
        self.b_bn = nn.BatchNorm3d(dim_inner, eps=1e-5, momentum=0.1)
        self.c = nn.Conv3d(dim_inner, dim_out, [1, 1, 1], bias=False)
        self.c_bn = nn.BatchNorm3d(dim_out, eps=1e-5, momentum=0.1)

    def forward(self, x):
        x = torch.relu(self.a_bn(self.a(x)))
        x = torch.relu(self.b_bn(self.b(x)))
        return self.c_bn(self.c(x))


class PortResBlock(nn.Module):
    """``ResBlock`` (L470-525): projection shortcut when dim_in != dim_out, ReLU after the sum."""

    def __init__(self, dim_in, dim_out, temp_kernel_size, dim_inner):
        super().__init__()
        if dim_in != dim_out:
            self.branch1 = nn.Conv3d(dim_in, dim_out, kernel_size=1, bias=False)
            self.branch1_bn = nn.BatchNorm3d(dim_out, eps=1e-5, momentum=0.1)
        self.branch2 = PortBottleneckTransform(dim_in, dim_out, temp_kernel_size, dim_inner)

    def forward(self, x):
        f_x = self.branch2(x)
        x = self.branch1_bn(self.branch1(x)) + f_x if hasattr(self, "branch1") else x + f_x
        return torch.relu(x)


class PortMLPHead(nn.Module):
    """``models/head_helper.py`` ``MLPHead`` L20-65: ``b = False if bn_on else bias`` for the
    first Linear, BatchNorm1d + ReLU between layers, the last Linear with its bias."""

    def __init__(self, dim_in, dim_out, mlp_dim, num_layers, bn_on):
        super().__init__()
        b = False if bn_on else True
        layers = [nn.Linear(dim_in, mlp_dim, bias=b)]
        for i in range(1, num_layers):
            if bn_on:
                layers.append(nn.BatchNorm1d(num_features=mlp_dim))
            layers.append(nn.ReLU(inplace=True))
            if i == num_layers - 1:
                d, b = dim_out, True
            else:
                d = mlp_dim
            layers.append(nn.Linear(mlp_dim, d, bias=b))
        self.projection = nn.Sequential(*layers)

    def forward(self, x):
        return self.projection(x)


class PortTMM(nn.Module):
    """``load_temporal_model`` (``models/temporal_modeling.py`` L67-87): a ``ResStage`` whose
    ``temp_kernel_sizes`` expand to one kernel per block (``resnet_helper.py`` L613-616), then
    ``ResNetBasicHead``: global average pool + ``MLPHead(SSL.MLP_DIM, SSL.NUM_MLP_LAYERS,
    bn_on=SSL.BN_MLP)`` (``head_helper.py`` L138-148; ``configs/defaults.py`` L68-72,
    ``configs/pretrain/AdViSe.yaml`` L14-17)."""

    def __init__(self, dim_in, num_classes, hidden=256, out=512, blocks=1, kernel=1, mlp_dim=1024, bn_mlp=True):
        super().__init__()
        self.blocks = nn.ModuleList(PortResBlock(dim_in if i == 0 else out, out, kernel, hidden) for i in range(blocks))
        self.head = PortMLPHead(out, num_classes, mlp_dim, 2, bn_mlp)

    def forward(self, x):  # (B, C, T, H, W)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=(2, 3, 4)))


def ours(blocks=1, hidden=256, kernel=1, mlp_bn=True, in_dim=768, classes=4, grid=(14, 14)):
    return create_head("r3d", in_dim=in_dim, num_classes=classes, num_frames=8, grid=grid, num_prefix_tokens=1,
                       blocks=blocks, hidden=hidden, out_dim=512, temporal_kernel=kernel, mlp_bn=mlp_bn)


def count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def load_port_weights(head: nn.Module, port: PortTMM) -> None:
    """Copy the port's weights into featcache's r3d by role (names differ)."""
    with torch.no_grad():
        for block, ref in zip(head.stage, port.blocks):
            t = ref.branch2
            body = [t.a, t.a_bn, t.b, t.b_bn, t.c, t.c_bn]
            mine = [m for m in block.body if not isinstance(m, nn.ReLU)]
            pairs = list(zip(mine, body))
            if hasattr(ref, "branch1"):
                pairs += list(zip(block.shortcut, [ref.branch1, ref.branch1_bn]))
            for dst, src in pairs:
                dst.load_state_dict(src.state_dict())
        mine = [m for m in head.mlp if not isinstance(m, nn.ReLU)]
        ref = [m for m in port.head.projection if not isinstance(m, nn.ReLU)]
        for dst, src in zip(mine, ref):
            dst.load_state_dict(src.state_dict())


# AdViSe Table 3, trainable parameters (M): 768-channel input (CLIP ViT-B/16), 4 PRP classes
TABLE3_BLOCKS = {1: 1.84, 2: 2.95, 4: 5.18, 6: 7.41, 8: 9.63}
TABLE3_HIDDEN = {64: 0.94, 256: 1.84, 512: 4.07, 1024: 12.06, 2048: 42.21}


@pytest.mark.parametrize("kernel", [1, 3])
@pytest.mark.parametrize("options", [{"blocks": b} for b in TABLE3_BLOCKS] + [{"hidden": h} for h in TABLE3_HIDDEN])
def test_r3d_parameter_count_equals_the_released_module(options, kernel):
    port = PortTMM(768, 4, hidden=options.get("hidden", 256), blocks=options.get("blocks", 1), kernel=kernel)
    assert count(ours(kernel=kernel, **options)) == count(port)


def test_r3d_released_call_gives_table3s_default_cell_and_the_paper_adds_kt3_blocks():
    released = count(ours(kernel=1))  # temp_kernel_sizes=[[1]], BN_MLP True
    assert released == 1_844_228 and round(released / 1e6, 2) == TABLE3_BLOCKS[1]
    assert count(ours(kernel=3)) == 2_237_444  # featcache's default kernel: not the paper's 1.84
    # each block the paper adds (1.84 -> 2.95 -> ... -> 9.63: 1.11-1.115 M) costs what a kt=3 block costs
    per_block = {k: count(ours(blocks=2, kernel=k)) - count(ours(blocks=1, kernel=k)) for k in (1, 3)}
    assert per_block == {1: 854_016, 3: 1_116_160}
    paper = [(TABLE3_BLOCKS[b] - TABLE3_BLOCKS[a]) / (b - a) for a, b in [(1, 2), (2, 4), (4, 6), (6, 8)]]
    assert all(abs(per_block[3] / 1e6 - p) < 0.01 for p in paper), paper
    assert all(abs(per_block[1] / 1e6 - p) > 0.25 for p in paper)
    # the width row (1 block) is closest to the released call; it fits no formula exactly (0.94 at 64)
    width = {h: count(ours(hidden=h, kernel=1)) / 1e6 for h in TABLE3_HIDDEN}
    assert all(abs(width[h] - m) / m < 0.12 for h, m in TABLE3_HIDDEN.items()), width


@pytest.mark.parametrize("kernel,blocks", [(1, 1), (3, 2)])
def test_r3d_forward_equals_the_released_module(kernel, blocks):
    torch.manual_seed(0)
    c, t, grid = 24, 4, (3, 3)
    port = PortTMM(c, 5, hidden=8, out=16, blocks=blocks, kernel=kernel, mlp_dim=32)
    for m in port.modules():  # non-trivial batch-norm statistics and affine terms
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm3d)):
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias)
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    head = create_head("r3d", in_dim=c, num_classes=5, num_frames=t, grid=grid, num_prefix_tokens=1, hidden=8,
                       out_dim=16, blocks=blocks, temporal_kernel=kernel, mlp_hidden=32)
    load_port_weights(head, port)
    head, port = head.double().eval(), port.double().eval()
    x = torch.randn(3, t, 1 + grid[0] * grid[1], c, dtype=torch.float64)  # (B, T, N, C)
    volume = x[:, :, 1:].reshape(3, t, *grid, c).permute(0, 4, 1, 2, 3)  # (B, C, T, H, W)
    torch.testing.assert_close(head(x), port(volume), rtol=0, atol=1e-12)
    head.train(), port.train()  # training mode: batch statistics in every BN, as released
    torch.testing.assert_close(head(x), port(volume), rtol=0, atol=1e-12)


def test_r3d_head_without_batch_norm_and_a_batch_of_one():
    plain = ours(mlp_bn=False)
    assert [type(m).__name__ for m in plain.mlp] == ["Linear", "ReLU", "Linear"]
    assert plain.mlp[0].bias is not None
    bn = ours(blocks=1, hidden=8, in_dim=16, grid=(2, 2)).train()
    assert [type(m).__name__ for m in bn.mlp] == ["Linear", "_HeadNorm", "ReLU", "Linear"] and bn.mlp[0].bias is None
    out = bn(torch.randn(1, 8, 5, 16))  # the short last batch of an epoch: running statistics, no error
    assert out.shape == (1, 4) and torch.isfinite(out).all()


# ----------------------------------------------------------------------------- ST-Adapter
class PortAdapter(nn.Module):
    """linziyi96/st-adapter ``models_adapter.py`` ``Adapter`` L18-55 (square grid, one CLS token;
    the cudnn toggle dropped)."""

    def __init__(self, in_channels, adapter_channels, kernel_size):
        super().__init__()
        self.fc1 = nn.Linear(in_channels, adapter_channels)
        self.conv = nn.Conv3d(adapter_channels, adapter_channels, kernel_size=kernel_size, stride=(1, 1, 1),
                              padding=tuple(x // 2 for x in kernel_size), groups=adapter_channels)
        self.fc2 = nn.Linear(adapter_channels, in_channels)

    def forward(self, x, T):
        BT, L, C = x.size()
        B = BT // T
        Ca = self.conv.in_channels
        H = W = round(math.sqrt(L - 1))
        assert L - 1 == H * W
        x_id = x.clone()  # the original adds in place into its input
        x = x[:, 1:, :]
        x = self.fc1(x)
        x = x.view(B, T, H, W, Ca).permute(0, 4, 1, 2, 3).contiguous()
        x = self.conv(x)
        x = x.permute(0, 2, 3, 4, 1).contiguous().view(BT, L - 1, Ca)
        x = self.fc2(x)
        x_id[:, 1:, :] += x
        return x_id


def randomise(m: nn.Module) -> None:
    torch.manual_seed(3)
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.normal_(std=0.3)


@pytest.mark.parametrize("kernel", [3, 5])
def test_st_adapter_equals_the_released_adapter_in_float64(kernel):
    from featcache.heads.layers import STAdapter

    mine = STAdapter(32, 8, kernel, (4, 4), 1).double()
    randomise(mine)
    port = PortAdapter(32, 8, (kernel, 1, 1)).double()
    port.load_state_dict(mine.state_dict())  # same parameter names and shapes as released
    x = torch.randn(2 * 6, 17, 32, dtype=torch.float64)  # (B*T, 1 + H*W, C)
    assert torch.equal(mine(x, frames=6), port(x, 6))
    fresh = PortAdapter(32, 8, (kernel, 1, 1)).double()
    for p in (fresh.conv.weight, fresh.conv.bias, fresh.fc1.bias, fresh.fc2.bias):  # released init, L31-34
        nn.init.constant_(p, 0.0)
    assert torch.equal(fresh(x, 6), x) and torch.equal(STAdapter(32, 8, kernel, (4, 4), 1).double()(x, 6), x)


BACKBONE = {"model": "vit_small_patch14_dinov2.lvd142m", "args": {"depth": 3, "embed_dim": 32, "num_heads": 2,
            "init_values": 1.0}, "weights": {"source": "random", "seed": 0}, "img_size": 56, "cut": 0, "depth": 3}


@pytest.mark.parametrize("position", ["attn", "attn_mlp", "mlp"])
def test_adapter_placements_equal_the_released_block_order(position):
    """``ResidualAttentionBlock.forward`` L118-127: adapter_pre_attn, attention, adapter_pre_mlp,
    MLP; adapters in blocks ``i >= layers - adapter_layers`` (L150-151)."""
    head = create_head("adapter", in_dim=32, num_classes=3, num_frames=4, grid=(4, 4), num_prefix_tokens=1,
                       backbone=BACKBONE, width=8, blocks=2, position=position).double().eval()
    randomise(head)
    ports = {}
    for where, adapters in (("attn", head.pre_attn), ("mlp", head.pre_mlp)):
        for key, a in adapters.items():
            ports[where, int(key)] = PortAdapter(32, 8, (3, 1, 1)).double()
            ports[where, int(key)].load_state_dict(a.state_dict())
    layers = len(head.tail.blocks)
    assert {i for _, i in ports} == {i for i in range(layers) if i >= layers - 2}
    x = torch.randn(2, 4, 17, 32, dtype=torch.float64)
    with torch.no_grad():
        h = x.reshape(8, 17, 32)
        for i, blk in enumerate(head.tail.blocks):
            if ("attn", i) in ports:
                h = ports["attn", i](h, 4)
            h = h + blk.ls1(blk.attn(blk.norm1(h)))
            if ("mlp", i) in ports:
                h = ports["mlp", i](h, 4)
            h = h + blk.ls2(blk.mlp(blk.norm2(h)))
        cls = head.tail.norm(h).reshape(2, 4, 17, 32)[:, :, 0].mean(dim=1)
        expected = head.mlp(cls)
        torch.testing.assert_close(head(x), expected, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- Charades mAP
def port_map(submission_array, gt_array):
    """gsig/charades-algorithms ``pytorch/utils/map.py`` ``map`` L4-28."""
    m_aps = []
    n_classes = submission_array.shape[1]
    for oc_i in range(n_classes):
        sorted_idxs = np.argsort(-submission_array[:, oc_i])
        tp = gt_array[:, oc_i][sorted_idxs] == 1
        fp = np.invert(tp)
        n_pos = tp.sum()
        if n_pos < 0.1:
            m_aps.append(float("nan"))
            continue
        f_pcs = np.cumsum(fp)
        t_pcs = np.cumsum(tp)
        prec = t_pcs / (f_pcs + t_pcs).astype(float)
        avg_prec = 0
        for i in range(submission_array.shape[0]):
            if tp[i]:
                avg_prec += prec[i]
        m_aps.append(avg_prec / n_pos.astype(float))
    m_aps = np.array(m_aps)
    return np.mean(m_aps), m_aps


def port_charades_map(submission_array, gt_array):
    """``charades_map`` L31-39: unlabelled videos scored -inf (``np.NINF``, gone in numpy 2)."""
    fix = submission_array.copy()
    empty = np.sum(gt_array, axis=1) == 0
    fix[empty, :] = -np.inf
    return port_map(fix, gt_array)


def test_multi_label_map_equals_charades_map_with_empty_classes_and_unlabelled_videos():
    from featcache.train.metrics import multi_label

    rng = np.random.default_rng(0)
    scores = rng.normal(size=(300, 12))  # continuous: no ties, so the sort order is unambiguous
    gt = (rng.random((300, 12)) < 0.15).astype(int)
    gt[:, [3, 7]] = 0  # two classes with no positive
    gt[::7] = 0  # unlabelled videos
    m_ap, aps = port_charades_map(scores, gt)
    assert np.isnan(m_ap)  # the released mean is NaN as soon as one class is empty
    got = multi_label(scores, gt)
    assert [a is None for a in got["ap"]] == np.isnan(aps).tolist()
    np.testing.assert_allclose([a for a in got["ap"] if a is not None], aps[~np.isnan(aps)], rtol=0, atol=1e-12)
    assert got["mAP"] == pytest.approx(np.nanmean(aps), abs=1e-12)  # featcache: the mean over scored classes
    assert got["mAP_excluded_classes"] == 2 and got["unlabelled_excluded"] == int((gt.sum(axis=1) == 0).sum()) > len(gt[::7]) - 1


# ----------------------------------------------------------------------------- PRP indices
def port_speed_modeling(video_length, start_idx, speed_rate, speed_jit, frame_nums=8, stride=2):
    """JingwWu/advise-video-ssl ``datasets/sampling.py`` ``speed_modeling`` L116-136 (positive
    rates), with ``clip_lens = length * stride`` (L46)."""
    clip_lens = frame_nums * stride
    return np.mod(np.linspace(start_idx, start_idx + clip_lens * speed_rate * speed_jit, num=frame_nums,
                              endpoint=False, dtype=np.int64), video_length).tolist()


def test_prp_indices_equal_the_released_sampler_on_20000_clips():
    from featcache.train.pretrain import prp_indices

    rng = np.random.default_rng(0)
    for _ in range(20_000):
        length = int(rng.integers(16, 400))
        start = int(rng.integers(0, length - 16 + 1))  # random.randint(0, L - clip_lens), L87
        rate = int(rng.choice([1, 2, 4, 8]))
        jit = 1 + rng.uniform(-0.2, 0.2)
        assert prp_indices(length, start, rate, jit).tolist() == port_speed_modeling(length, start, rate, jit)
