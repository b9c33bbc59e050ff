"""AM Flow as the paper lays it out: AM/2 (temporal adapters and the aligning encoder in
the first and last blocks, traditional adapters between), the temporal modules' relative sizes,
and the frozen branch's two readings."""
import pytest
import torch
from torch import nn

from featcache.heads.amflow import AligningEncoder, PlainAdapter, TemporalAdapter, TemporalUnit
from featcache.heads.registry import create_head

C, T, GRID, K = 32, 4, (2, 2), 3
# ViT-B's 12 blocks (tiny width): AM/2 is blocks 1 and 12 of 12
BACKBONE = {"model": "vit_small_patch14_dinov2.lvd142m", "args": {"depth": 12, "embed_dim": C, "num_heads": 2,
            "init_values": 1.0}, "weights": {"source": "random", "seed": 0}, "img_size": 28, "cut": 0, "depth": 12}


def amflow(**opts):
    return create_head("adapter", in_dim=C, num_classes=K, num_frames=T, grid=GRID, num_prefix_tokens=1,
                       backbone=BACKBONE, kind="amflow", width=16, position="attn_mlp", **opts)


def temporal_params(head):
    return sum(p.numel() for m in head.modules() if isinstance(m, (TemporalUnit, AligningEncoder))
               for p in m.parameters())


@pytest.mark.parametrize("flow", ["vanilla", "aligned"])
def test_am2_is_temporal_adapters_in_the_first_and_last_block_only(flow):
    am2, am12 = amflow(flow=flow, flow_blocks="ends"), amflow(flow=flow, flow_blocks="all")
    kinds = {k: (type(am2.pre_attn[k]).__name__, type(am2.pre_mlp[k]).__name__) for k in am2.pre_attn}
    assert kinds["0"] == kinds["11"] == ("TemporalAdapter", "TemporalAdapter")
    assert all(kinds[str(i)] == ("PlainAdapter", "PlainAdapter") for i in range(1, 11))
    assert am2.flow_blocks == {0, 11} and set(am2.aligners) == ({"0", "11"} if flow == "aligned" else set())
    assert am2.pre_attn["0"].down.in_features > C and am2.pre_mlp["0"].down.in_features == C  # flow only across MHSA
    # AM Flow Table 3: "1/6th the number of parameters for temporal and aligning encoders" of AM/12
    assert temporal_params(am2) * 6 == temporal_params(am12)
    assert sum(isinstance(m, TemporalAdapter) for m in am12.modules()) == 24


def test_am2_averages_the_temporal_adapters_and_the_frozen_branch():
    torch.manual_seed(0)
    head = amflow(flow="vanilla", flow_blocks="ends").eval()
    x = torch.randn(2, T, 1 + 4, C)
    seen = []
    for a in head.modules():
        if isinstance(a, (TemporalAdapter, PlainAdapter)):
            a.register_forward_hook(lambda m, i, out: seen.append(out[1]))
    with torch.no_grad():
        out = head(x)
    logits = [lg for lg in seen if lg is not None]
    assert len(seen) == 24 and len(logits) == 4  # 2 blocks x 2 temporal adapters carry classifiers
    h = x.reshape(2 * T, 5, C)
    with torch.no_grad():  # the frozen branch, rebuilt: the adapted tail, final norm, CLS of every frame, MLP
        for i, blk in enumerate(head.tail.blocks):
            h, _ = head._block(i, blk, h, T)
        frozen = head.mlp(head.tail.norm(h).reshape(2, T, 5, C)[:, :, 0].mean(dim=1))
    torch.testing.assert_close(out, torch.stack([frozen, *logits]).mean(dim=0), rtol=1e-5, atol=1e-6)


def test_plain_adapter_is_a_scaled_parallel_adapter():
    a = PlainAdapter(C, 8)
    x = torch.randn(6, 5, C)
    update, logits = a(x, T)
    assert logits is None and torch.equal(update, torch.zeros_like(x))  # W_up starts at zero
    nn.init.normal_(a.up.weight)
    with torch.no_grad():
        a.scale.fill_(0.5)
    expected = 0.5 * (torch.relu(x @ a.down.weight.T + a.down.bias) @ a.up.weight.T + a.up.bias)
    torch.testing.assert_close(a(x, T)[0], expected)


def test_capacity_options_give_the_papers_relative_module_sizes():
    # AM Flow Tables 1-2 (ViT-B, 24 adapters): TCN 54 M, transformer 103 M, LSTM 360 M
    units = {tpm: 2 * sum(p.numel() for p in TemporalUnit(tpm, 128, 8, **o).parameters())
             for tpm, o in {"tcn": {"layers": 4}, "transformer": {}, "lstm": {"hidden": 270}}.items()}
    assert units["tcn"] < units["transformer"] < units["lstm"]
    assert units["tcn"] / units["transformer"] == pytest.approx(54 / 103, rel=0.03)
    assert units["lstm"] / units["transformer"] == pytest.approx(360 / 103, rel=0.03)
    # the defaults alone do not: an LSTM of the adapter's width is about the transformer's size
    default = {tpm: sum(p.numel() for p in TemporalUnit(tpm, 128, 8).parameters()) for tpm in ("transformer", "lstm")}
    assert default["lstm"] / default["transformer"] < 1.1
    head = amflow(tpm="lstm", tpm_hidden=40, tpm_layers=2, flow_blocks="ends")
    lstm = head.pre_attn["0"].local.net
    assert (lstm.hidden_size, lstm.num_layers) == (40, 2) and head(torch.randn(1, T, 5, C)).shape == (1, K)
    with pytest.raises(ValueError, match="a TCN's capacity is tpm_layers"):
        amflow(tpm="tcn", tpm_hidden=64)


def test_frozen_branch_last_reads_only_the_final_frame():
    head = create_head("adapter", in_dim=C, num_classes=K, num_frames=T, grid=GRID, num_prefix_tokens=1,
                       backbone=BACKBONE, kind="st", width=8, blocks=1, temporal="last").eval()
    x = torch.randn(2, T, 5, C)
    y = x.clone()
    y[:, :-1] += torch.randn_like(y[:, :-1])  # every frame but the last
    with torch.no_grad():
        torch.testing.assert_close(head(x), head(y))  # fresh ST-Adapters are the identity: frames stay apart
        y[:, -1] += torch.randn_like(y[:, -1])
        assert not torch.allclose(head(x), head(y))
