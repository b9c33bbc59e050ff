"""TrainConfig split by who owns each setting: BatchConfig (the batches a fused group shares: the
fusion key) and HeadConfig (what each head of the group has for itself). Pure: no cache, no model;
the sweep planner's grouping by BatchConfig is tested in tests/sweep/test_ablate.py."""
import dataclasses

import pytest
import yaml

from featcache.spec.config import BatchConfig, HeadConfig, TrainConfig, build_config, from_dict, to_dict
from featcache.spec.view import View

# another value of every TrainConfig field: a new field must be given one here, which runs it
# through the fusion test below on the side its owner class puts it
OTHER = {"head": "r3d", "head_options": {"hidden": 64}, "view": View("uniform:16"), "epochs": 3, "batch_size": 8,
         "lr": 0.1, "weight_decay": 0.0, "optimizer": "sgd", "momentum": 0.5, "warmup_epochs": 0.0, "grad_clip": 0.0,
         "label_smoothing": 0.1, "augment": "flip", "task": "multi", "pos_weight": "auto", "seed": 1, "early_stop": 2,
         "select": "last", "val_fraction": 0.2, "shuffle_window": 4, "max_view_memory_gb": 1.0, "manifest": "s2.csv",
         "keep_last": True, "init": "runs/prp", "log": "tensorboard", "device": "cpu", "amp": False,
         "train_views": "random", "temporal_jitter": "stride:2"}


def names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def test_every_field_has_exactly_one_owner():
    batch, head, flat = set(names(BatchConfig)), set(names(HeadConfig)), names(TrainConfig)
    assert not batch & head, f"in both: {sorted(batch & head)}"
    assert set(flat) == batch | head, (f"not in BatchConfig or HeadConfig: {sorted(set(flat) - batch - head)}; "
                                       f"not in TrainConfig: {sorted(batch | head - set(flat))}")
    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    for cls in (BatchConfig, HeadConfig):  # the same type as the user's surface declares
        assert {f.name: f.type for f in dataclasses.fields(cls)} == {k: types[k] for k in names(cls)}, cls.__name__
    assert set(OTHER) == set(flat)  # every field is run through the fusion test


def test_split_and_joined_again_is_the_same_config():
    cfg = build_config({"head": "r3d", "head.hidden": 64, "view": "keyframes:4", "lr": 3e-3, "seed": 2, "log": "tensorboard"})
    assert isinstance(cfg.batch, BatchConfig) and isinstance(cfg.head_config, HeadConfig)
    assert TrainConfig.of(cfg.batch, cfg.head_config) == cfg
    assert TrainConfig().batch.view == View("uniform:8") and TrainConfig().head_config.head == "pool"
    assert hash(cfg.batch) == hash(build_config({"view": "keyframes:4", "seed": 2}).batch)  # hashable: the fusion key


@pytest.mark.parametrize("key", list(OTHER))
def test_a_batch_side_field_changes_fusion_and_a_head_field_does_not(key):
    base = TrainConfig()
    other = dataclasses.replace(base, **{key: OTHER[key]})
    assert getattr(other, key) != getattr(base, key)
    if key in names(BatchConfig):
        assert other.batch != base.batch and other.head_config == base.head_config
    else:
        assert other.batch == base.batch and other.head_config != base.head_config


# config.yaml of a run (and a checkpoint's "config") as the code before the split wrote it (commit 17f47fd)
STORED = """\
config:
  head: r3d
  head_options:
    hidden: 64
  view: keyframes:4
  layers:
  - -2
  - -1
  tokens: all
  spatial: 0
  channels: 0
  source: tokens
  epochs: 3
  batch_size: 32
  lr: 0.003
  weight_decay: 0.05
  optimizer: adamw
  momentum: 0.9
  warmup_epochs: 1.0
  grad_clip: 1.0
  label_smoothing: 0.0
  augment: none
  task: auto
  pos_weight: auto
  seed: 0
  early_stop: 0
  select: val
  val_fraction: 0.0
  shuffle_window: 0
  max_view_memory_gb: 0.0
  manifest: s1.csv
  keep_last: false
  init: runs/prp
  log: tensorboard,wandb
  device: auto
  amp: true
"""


def test_stored_configs_read_back_and_are_written_byte_for_byte_as_before():
    cfg = build_config({"head": "r3d", "head.hidden": 64, "view": "keyframes:4", "layers": [-2, -1], "epochs": 3,
                        "lr": 3e-3, "pos_weight": "auto", "log": "tensorboard,wandb", "manifest": "s1.csv",
                        "init": "runs/prp"})
    assert from_dict(yaml.safe_load(STORED)["config"]) == cfg
    joined = TrainConfig.of(cfg.batch, cfg.head_config)  # what a fused group's member writes
    assert yaml.safe_dump({"config": to_dict(joined)}, sort_keys=False) == STORED
