"""Dense frame pools (stride:S), AdViSe's PRP pre-training from them, and fine-tuning with --init."""
import json
import os

import numpy as np
import pytest
import torch
from conftest import TINY_CLI
from typer.testing import CliRunner

from featcache import open_cache
from featcache.cli import app
from featcache.data.synthetic import make_dataset
from featcache.errors import FeatcacheError
from featcache.heads.registry import create_head
from featcache.spec.config import build_config
from featcache.spec.policy import StridePolicy
from featcache.spec.view import View
from featcache.train import checkpoint, rundir
from featcache.train.pretrain import PRP, make_clips, prp_indices, read_pools
from featcache.video.select import parse_policies, select_frames

runner = CliRunner()
# a 2-block ViT at 112x112 (8x8 patch grid): the grid must be fine enough to see a 2 px/frame scroll
MODEL = ["--weights", "random", "--img-size", "112", "--precision", "fp32", "--model-arg", "depth=2",
         "--model-arg", "embed_dim=96", "--model-arg", "num_heads=2"]


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """40 clips (2 directions x 20) of a texture scrolling at 2 px/frame, 96 frames, every frame cached."""
    root = tmp_path_factory.mktemp("texture")
    manifest = make_dataset(str(root), "texture", per_class=20, num_frames=96, size=(112, 112))
    out = str(root / "c.zarr")
    r = runner.invoke(app, ["extract", manifest, "--out", out, "--frames", "stride:1", *MODEL, "-q"])
    assert r.exit_code == 0, r.output
    return out


def test_prp_indices_follow_advise_sampling():
    # span = 8 frames x base stride 2 x rate 2 x jitter 1 = 32: linspace(10, 42, 8, endpoint=False)
    assert prp_indices(96, start=10, rate=2, jitter=1.0).tolist() == [10, 14, 18, 22, 26, 30, 34, 38]
    # rate 4, span 64 from 30 wraps past the end of a 40-frame video (mod L)
    assert prp_indices(40, start=30, rate=4, jitter=1.0).tolist() == [30, 38, 6, 14, 22, 30, 38, 6]
    # jitter 1.2 at rate 1: span 19.2, floor of 0, 2.4, 4.8, ...
    assert prp_indices(96, start=0, rate=1, jitter=1.2).tolist() == [0, 2, 4, 7, 9, 12, 14, 16]


def test_stride_policy_is_a_dense_pool():
    assert parse_policies("stride:2") == (StridePolicy(2),)
    pool, positions = select_frames(parse_policies("stride:3,uniform:2"), 10, None)
    assert pool.tolist() == [0, 2, 3, 6, 7, 9] and positions["stride:3"] == [0, 2, 3, 5]
    assert StridePolicy(3).length(10) == 4 and not StridePolicy(3).fixed


@pytest.mark.slow
def test_dense_pool_serves_uniform_views_and_is_refused_for_training(dense, tmp_path):
    cache = open_cache(dense)
    assert cache.verify() == []
    entry = cache.video(cache.video_ids()[0])
    assert len(entry.frame_indices) == 96 and entry.policies["stride:1"] == list(range(96))
    from featcache.cache.dataset import materialise

    val = materialise(cache, View("uniform:8"), "val")  # served from the dense pool: frames 6, 18, ..., 90
    entry = cache.video(val.video_ids[0])
    np.testing.assert_array_equal(val.x[0].numpy(), entry.tokens[[6, 18, 30, 42, 54, 66, 78, 90], 0])
    r = runner.invoke(app, ["train", dense, "--head", "r3d", "--view", "stride:1", "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "a dense pool has a different number of frames per video" in r.stderr
    with pytest.raises(FeatcacheError, match="not this dense pool"):
        View("stride:2").check(cache.attrs, dense=True)


def test_clips_round_to_the_nearest_cached_frame(dense):
    cache = open_cache(dense)
    pools = read_pools(cache, View("stride:1", spatial=2), "val")
    x, y, rounded = make_clips(pools, np.random.default_rng(0), PRP())
    assert x.shape == (len(pools) * 4, 8, 1 + 4, 96) and set(y.tolist()) <= {0, 1, 2, 3} and rounded == 0
    half = [type(p)(p.tokens[::2], p.frame_indices[::2], p.num_frames) for p in pools]  # as if stride:2
    _, _, rounded = make_clips(half, np.random.default_rng(0), PRP())
    assert rounded > 0


@pytest.mark.slow
def test_prp_pretraining_learns_rate_where_frame_averaging_cannot(dense, tmp_path):
    common = ["pretrain", dense, "--task", "prp", "--view", "stride:1", "-q"]
    r = runner.invoke(app, [*common, "--head", "r3d", "--set", "head.hidden=64", "--set", "head.out_dim=128",
                            "--out", str(tmp_path / "prp")])
    assert r.exit_code == 0, r.output
    r3d = json.load(open(tmp_path / "prp" / "metrics.json"))
    r = runner.invoke(app, [*common, "--head", "pool", "--set", "head.frame_feature=mean",
                            "--out", str(tmp_path / "avg")])
    assert r.exit_code == 0, r.output
    avg = json.load(open(tmp_path / "avg" / "metrics.json"))
    # measured: r3d 0.84, frame averaging 0.34 on the 32 held-out clips (chance 0.25)
    assert r3d["val/top1"] >= 0.65 and r3d["val/top1"] >= avg["val/top1"] + 0.3, (r3d, avg)
    assert r3d["prp/val_clips"] == 32 and r3d["prp/train_clips_rounded"] == 0
    for name in ("config.yaml", "log.jsonl", "best.pt", "curves.png"):
        assert (tmp_path / "prp" / name).exists()
    meta = rundir.read_meta(str(tmp_path / "prp"))  # a pre-training's record reads back exactly
    assert meta.to_json() == rundir.read_config(str(tmp_path / "prp")) and meta.pretext.name == "prp"
    assert meta.pretext.extra["rates"] == [1, 2, 4, 8] and checkpoint.read(str(tmp_path / "prp" / "best.pt")).is_pretraining
    assert len(open(tmp_path / "prp" / "log.jsonl").read().splitlines()) == 15

    # fine-tune from it: the TMM stage starts as pre-trained, the classifier is new
    ft = runner.invoke(app, ["train", dense, "--head", "r3d", "--view", "uniform:8", "--init", str(tmp_path / "prp"),
                             "--set", "head.hidden=64", "--set", "head.out_dim=128", "--set", "epochs=3",
                             "--out", str(tmp_path / "ft"), "-q"])
    assert ft.exit_code == 0, ft.output
    assert "init: " in open(tmp_path / "ft" / "config.yaml").read()
    # a different token selection is refused in one line
    bad = runner.invoke(app, ["train", dense, "--head", "r3d", "--view", "uniform:8", "--init", str(tmp_path / "prp"),
                              "--set", "spatial=4", "--set", "head.hidden=64", "--set", "head.out_dim=128",
                              "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "token selection (layers=[-1], tokens=all, spatial=0, channels=0) differs" in bad.stderr
    wide = runner.invoke(app, ["train", dense, "--head", "r3d", "--view", "uniform:8", "--init", str(tmp_path / "prp"),
                               "--out", str(tmp_path / "wide")])
    assert wide.exit_code == 2 and "give the head the pre-training's options" in wide.stderr
    ev = runner.invoke(app, ["eval", str(tmp_path / "prp")])
    assert ev.exit_code == 2 and "pre-training" in ev.stderr

    # Acc_ft and delta Acc as a sweep: init none vs the PRP run, fused in one pass
    sweep = tmp_path / "ft.yaml"
    sweep.write_text("base: {head: r3d, head.hidden: 64, head.out_dim: 128, view: uniform:8, epochs: 2}\n"
                     f"parameters:\n  init: {{values: [none, {tmp_path / 'prp'}]}}\n")
    r = runner.invoke(app, ["ablate", str(sweep), "--cache", dense, "--out", str(tmp_path / "sw"), "-q"])
    assert r.exit_code == 0, r.output
    assert "2 cells in 1 fused pass(es)" in r.output
    assert "- **init**: none: " in open(tmp_path / "sw" / "leaderboard.md").read()
    assert "; difference " in open(tmp_path / "sw" / "leaderboard.md").read()
    sweep.write_text(f"base: {{head: r3d, view: uniform:8}}\nparameters:\n  init: {{values: [{tmp_path / 'prp'}]}}\n")
    r = runner.invoke(app, ["ablate", str(sweep), "--cache", dense, "--out", str(tmp_path / "sw2"), "--dry-run"])
    assert r.exit_code == 2 and "init=" in r.stderr and "give the head the pre-training's options" in r.stderr


def test_init_copies_the_stage_and_keeps_the_new_classifier(dense, tmp_path):
    kw = dict(in_dim=96, num_frames=8, grid=(8, 8), num_prefix_tokens=1, hidden=16, out_dim=32)
    torch.manual_seed(1)
    pre = create_head("r3d", num_classes=4, **kw)
    cfg = build_config({"head": "r3d", "view": "stride:1"})
    checkpoint.save(str(tmp_path / "best.pt"), head="r3d", head_args={}, config={**cfg.view.as_dict()},
                    state_dict=pre.state_dict())
    torch.manual_seed(2)
    head = create_head("r3d", num_classes=2, **kw)
    fresh_mlp = {k: v.clone() for k, v in head.state_dict().items() if k.startswith("mlp.")}
    checkpoint.init_from(head, "r3d", View("uniform:8").as_dict(), str(tmp_path))
    for name, value in head.state_dict().items():
        if name.startswith("stage."):
            torch.testing.assert_close(value, pre.state_dict()[name], rtol=0, atol=0)
        else:
            torch.testing.assert_close(value, fresh_mlp[name], rtol=0, atol=0)


def test_stride_extraction_cli_and_verify(tmp_path):
    manifest = make_dataset(str(tmp_path), "texture", per_class=2, num_frames=20, size=(64, 64))
    out = str(tmp_path / "c.zarr")
    r = runner.invoke(app, ["extract", manifest, "--out", out, "--frames", "stride:3,uniform:4", *TINY_CLI, "-q"])
    assert r.exit_code == 0, r.output
    cache = open_cache(out)
    entry = cache.video(cache.video_ids()[0])
    assert entry.frame_indices[entry.policies["stride:3"]].tolist() == [0, 3, 6, 9, 12, 15, 18]
    assert cache.verify() == [] and not entry.record["short"]
    assert os.path.isdir(out)


def test_prp_clips_for_a_seed_are_pinned():
    """The (indices, rate class) a seed draws: label, then jitter, then start (this order, from one
    numpy Generator), pinned so that a change of the sampling shows here."""
    from featcache.train.pretrain import sample_clip

    rng = np.random.default_rng(0)
    drawn = [sample_clip(rng, 96) for _ in range(4)]
    assert [(i.tolist(), label) for i, label in drawn] == [
        ([51, 65, 80, 94, 13, 27, 42, 56], 3), ([3, 6, 9, 12, 15, 19, 22, 25], 1),
        ([65, 67, 69, 71, 74, 76, 78, 81], 0), ([49, 57, 66, 75, 83, 92, 5, 14], 2)]
    again = np.random.default_rng(0)  # the same draws by hand: rate class, jitter in [0.8, 1.2], start in [0, L - 16]
    for indices, label in drawn:
        want = int(again.integers(4))
        jitter = again.uniform(0.8, 1.2)
        start = int(again.integers(0, 96 - 16 + 1))
        assert label == want and indices.tolist() == prp_indices(96, start, (1, 2, 4, 8)[want], jitter).tolist()


def _reference_prp(cache, cfg, task=PRP()):
    """AdViSe PRP trained by a plain loop written here (the loop featcache had before pretraining
    ran on the training loop of fit): per epoch fresh clips from seed * 100003 + epoch, shuffled by a
    generator of the same seed, AdamW, warm-up + cosine per step, gradients clipped to norm 1,
    cross-entropy smoothed 0.05."""
    import math

    from torch import nn

    from featcache.train.optim import lr_factor, optimizer

    train, val = read_pools(cache, cfg.view, "train"), read_pools(cache, cfg.view, "val")
    layout = cfg.view.layout(cache.attrs)
    torch.manual_seed(cfg.seed)
    head = create_head(cfg.head, in_dim=layout.dim, num_classes=4, num_frames=8, grid=layout.grid,
                       num_prefix_tokens=layout.num_prefix_tokens, **cfg.head_options)
    val_x, val_y, _ = make_clips(val, np.random.default_rng(cfg.seed + 1), task)
    steps = math.ceil(len(train) * task.clips_per_video / cfg.batch_size)
    opt = optimizer(cfg, head)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.warmup_epochs * steps, cfg.epochs * steps))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=task.label_smoothing)
    log = []
    for epoch in range(cfg.epochs):
        x, y, _ = make_clips(train, np.random.default_rng(cfg.seed * 100_003 + epoch), task)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        head.train()
        total = 0.0
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            loss = loss_fn(head(x[idx].float()).float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(head.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        head.eval()
        with torch.no_grad():
            scores = head(val_x.float()).float()
            top1 = float((scores.argmax(1) == val_y).float().mean())
            val_loss = float(loss_fn(scores, val_y))  # the loss the head trains on: what breaks ties on val
        log.append({"train/loss": total / len(x), "val/top1": top1, "val/loss": val_loss, "lr": sched.get_last_lr()[0]})
    return log


@pytest.mark.slow  # whole trainings
def test_pretrain_equals_a_plain_reference_loop(dense, tmp_path):
    from featcache.train.pretrain import run_pretrain

    cfg = build_config({"head": "r3d", "view": "stride:1", "spatial": 2, "epochs": 3, "batch_size": 16,
                        "head.hidden": 16, "head.out_dim": 32})
    results = run_pretrain(dense, cfg, str(tmp_path / "prp"), show_progress=False)
    log = [json.loads(line) for line in open(tmp_path / "prp" / "log.jsonl")]
    want = _reference_prp(open_cache(dense), cfg)
    assert [r["epoch"] for r in log] == [0, 1, 2]
    for got, ref in zip(log, want):
        assert got["train/loss"] == pytest.approx(ref["train/loss"], rel=1e-6)
        assert got["val/top1"] == pytest.approx(ref["val/top1"], abs=1e-9)
        assert got["lr"] == pytest.approx(ref["lr"], rel=1e-12)
        assert got["val/loss"] == pytest.approx(ref["val/loss"], rel=1e-5)
    # select: val keeps the best val top-1, ties broken on the lower val loss (issue 34 item 9)
    assert results["best_epoch"] == max(range(3), key=lambda e: (want[e]["val/top1"], -want[e]["val/loss"]))
    n_train = len(read_pools(open_cache(dense), cfg.view, "train"))
    assert results["prp/train_clips"] == 3 * n_train * 4 and results["prp/val_clips"] == 32


@pytest.mark.slow  # whole trainings
def test_pretrain_resumes_and_fuses_on_the_training_loop(dense, tmp_path):
    """On fit's loop pretrain gains --resume (interrupted after epoch 1, continued: equal to the
    run never interrupted) and fused groups (two heads on the same clips: each equals its run alone)."""
    from conftest import ctrl_c_after_epoch

    from featcache.train.pretrain import pretrain_group, run_pretrain

    sets = {"view": "stride:1", "spatial": 2, "epochs": 3, "batch_size": 16, "keep_last": True}
    cfg = build_config({"head": "r3d", "head.hidden": 16, "head.out_dim": 32, **sets})
    full = run_pretrain(dense, cfg, str(tmp_path / "full"), show_progress=False)
    args = ["pretrain", dense, "--view", "stride:1", "--head", "r3d", "-q", "--out", str(tmp_path / "part"),
            *[f for k, v in sets.items() if k != "view" for f in ("--set", f"{k}={v}")],
            "--set", "head.hidden=16", "--set", "head.out_dim=32"]
    with ctrl_c_after_epoch(1):
        r = runner.invoke(app, args)
    assert r.exit_code == 130 and len(open(tmp_path / "part" / "log.jsonl").read().splitlines()) == 2
    hint = r.output.strip().splitlines()[-1]
    assert hint.startswith("featcache: interrupted; resume with: featcache pretrain ") and hint.endswith("--resume")
    import shlex

    r = runner.invoke(app, shlex.split(hint.split("resume with: ", 1)[1])[1:])  # the command it says, as given
    assert r.exit_code == 0, r.output
    assert json.load(open(tmp_path / "part" / "metrics.json")) == full
    logs = [[{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in open(tmp_path / d / "log.jsonl")]
            for d in ("full", "part")]
    assert logs[0] == logs[1]

    other = build_config({"head": "pool", "head.dropout": 0.3, **sets})
    fused = pretrain_group(dense, cfg.batch, [cfg.head_config, other.head_config], [str(tmp_path / "f0"), str(tmp_path / "f1")],
                           show_progress=False)
    tracked = build_config({"head": "pool", "head.dropout": 0.3, "log": "tensorboard", **sets})
    alone = run_pretrain(dense, tracked, str(tmp_path / "alone"), show_progress=False)
    assert fused[0] == full and fused[1] == alone

    # tracking as train's: one tensorboard point per epoch, equal to the log
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "alone"))
    events.Reload()
    log = [json.loads(line) for line in open(tmp_path / "alone" / "log.jsonl")]
    assert [(e.step, pytest.approx(e.value)) for e in events.Scalars("val/top1")] == [(r["epoch"], r["val/top1"]) for r in log]


def test_clip_source_keeps_its_rounding_count_across_a_resume(dense):
    from featcache.train.pretrain import ClipBatches

    cache = open_cache(dense)
    view = View("stride:1", spatial=2)
    pools = read_pools(cache, view, "train")
    half = [type(p)(p.tokens[::2], p.frame_indices[::2], p.num_frames) for p in pools]  # as if stride:2
    cfg = build_config({"head": "r3d", "view": "stride:1", "spatial": 2, "batch_size": 16})
    layout = view.layout(cache.attrs)
    whole = ClipBatches(cfg.batch, half, [], layout, PRP(), "prp")
    for epoch in (0, 1):
        list(whole.epoch(epoch))
    first = ClipBatches(cfg.batch, half, [], layout, PRP(), "prp")
    list(first.epoch(0))
    again = ClipBatches(cfg.batch, half, [], layout, PRP(), "prp")
    again.load_state_dict(first.state_dict())
    batches = list(again.epoch(1))
    assert again.rounded == whole.rounded > first.rounded > 0
    assert sum(len(y) for _, y in batches) == len(again) == 4 * len(half) and again.val(8) is None
