"""Training configuration: a frozen dataclass with commented defaults, merged from a YAML file
and ``key=value`` overrides. Unknown keys and values of the wrong type are errors naming the key.

The view (``view, layers, tokens, spatial, channels, source``) is parsed here, once, into one frozen
:class:`featcache.spec.view.View`; configs and checkpoints keep its flat keys.

:class:`TrainConfig` is the flat surface users write (YAML, ``--set``, a run's config.yaml). Each
of its fields has one owner: :class:`BatchConfig` (what decides the batches: a fused group of heads
shares one, and it is the fusion key) or :class:`HeadConfig` (what each head of a group has for
itself). ``cfg.batch`` and ``cfg.head_config`` split a config, :meth:`TrainConfig.of` joins them;
tests/spec/test_train_config.py checks that every field has exactly one owner.

Long module: the flat surface, the two owners of its fields and the parsing that fills them are one
vocabulary; a field is added to all three at once.

Pure: imports only :mod:`featcache.spec.view`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from featcache.errors import FeatcacheError, OptionError
from featcache.spec.view import VIEW_KEYS, View


class ConfigError(FeatcacheError, ValueError):
    """A config value or file that cannot be used; the message names the key (and the file or ``--set``)."""


@dataclass(frozen=True)
class TrainConfig:
    # A new field also goes into BatchConfig (if it decides the batches or the shared pass) or HeadConfig below.
    # --- model
    head: str = "pool"  # a registered head (featcache heads)
    head_options: dict = field(default_factory=dict)  # set as head.<option>=value
    # --- view of the cache: keys view (frame policy), layers, tokens, spatial, channels, source (featcache.spec.view)
    view: View = field(default_factory=View)
    # --- optimisation
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05  # not applied to biases and norm weights
    optimizer: str = "adamw"  # adamw | sgd
    momentum: float = 0.9  # sgd only
    warmup_epochs: float = 1.0  # linear warm-up, then cosine decay to 0
    grad_clip: float = 1.0  # max gradient norm (0 = off)
    label_smoothing: float = 0.0  # single-label only
    augment: str = "none"  # none | flip | crop_flip: on the token grid (pixel augmentations cannot be replayed)
    train_views: str = "none"  # none (centre crop) | random (one cached training view per video per epoch) | all
    temporal_jitter: str = "none"  # none | a cached dense pool (stride:S, fps:F): train clips start at random each epoch
    task: str = "auto"  # auto | single | multi (auto: multi when any video has several labels)
    pos_weight: Any = None  # multi-label BCE: None, "auto" (negatives/positives per class) or a number
    seed: int = 0
    early_stop: int = 0  # stop after this many epochs without a better val metric (0 = off)
    select: str = "val"  # val: keep the epoch best on the val metric | last: keep the last epoch (no val needed)
    val_fraction: float = 0.0  # without a val split: carve this fraction of train into val (by video id, stable)
    shuffle_window: int = 0  # shuffle blocks of this many neighbouring videos, then within them (0 = full shuffle)
    max_view_memory_gb: float = 0.0  # a split of the view larger than this is streamed from disk (0 = half the free RAM)
    # labels and splits from this training manifest (video_id,label,split), matched to the cache by
    # video_id ("" = the store's own, from its extraction manifest)
    manifest: str = ""
    keep_last: bool = False  # keep last.pt (the resumable state) once the run has finished
    init: str = ""  # a featcache pretrain run (or its .pt) to start the head's transferable part from ("" = none)
    # where per-epoch records go besides log.jsonl: jsonl (only it) | tensorboard | wandb, or several
    # (tensorboard,wandb); see featcache.train.tracking
    log: str = "jsonl"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16/fp16 autocast on CUDA (ignored on CPU)

    @property
    def view_budget(self) -> int | None:
        """Bytes a materialised split may take (None: the default, half the available memory)."""
        return self.batch.view_budget

    @property
    def batch(self) -> BatchConfig:
        """The batch side: cells with equal ones read the same batches in the same order and
        train in one fused pass (the fusion key)."""
        return BatchConfig(**_values(self, BatchConfig))

    @property
    def head_config(self) -> HeadConfig:
        """What this config's head has for itself in a fused group."""
        return HeadConfig(**_values(self, HeadConfig))

    @classmethod
    def of(cls, batch: BatchConfig, head: HeadConfig) -> TrainConfig:
        """The one run's config of ``head`` trained in a group on ``batch``."""
        return cls(**_values(batch, BatchConfig), **_values(head, HeadConfig))


@dataclass(frozen=True)
class BatchConfig:
    """What decides the batches, shared by every head of a fused pass (hashable: the fusion key).
    The defaults are :class:`TrainConfig`'s (``TrainConfig().batch``)."""

    view: View  # which tokens of which frames (and the source the head reads: tokens or cut)
    manifest: str  # labels and splits
    val_fraction: float  # val carved from train
    max_view_memory_gb: float  # how the view is read (in memory or streamed): one read per pass
    batch_size: int
    epochs: int
    seed: int  # the epochs' order and the augmentation draws (and each head's initialisation)
    shuffle_window: int
    task: str  # single or multi: the targets every head is scored on
    augment: str  # one draw per batch, shared by the heads
    train_views: str  # which cached training view each video shows in an epoch (one draw, shared)
    temporal_jitter: str  # where each training clip starts in an epoch (one draw, shared)
    device: str
    amp: bool  # autocast of the shared pass

    @property
    def view_budget(self) -> int | None:
        """Bytes a materialised split may take (None: the default, half the available memory)."""
        return int(self.max_view_memory_gb * 1e9) if self.max_view_memory_gb > 0 else None


@dataclass(frozen=True)
class HeadConfig:
    """What each head of a fused pass has for itself: the head, its optimiser and schedule, its
    loss, its selection and early stop, its start (``init``), checkpoints and logging."""

    head: str
    head_options: dict
    lr: float
    weight_decay: float
    optimizer: str
    momentum: float
    warmup_epochs: float
    grad_clip: float
    label_smoothing: float
    pos_weight: Any
    early_stop: int
    select: str
    keep_last: bool
    init: str
    log: str


def _values(obj, cls) -> dict:
    """``obj``'s values of the fields of ``cls`` (shallow: the view stays one View)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(cls)}


# heads that read something other than the cached tokens (in-backbone adapters read the cut)
HEAD_SOURCES = {"adapter": "cut"}


_CHOICES = {"optimizer": ("adamw", "sgd"), "task": ("auto", "single", "multi"),
            "augment": ("none", "flip", "crop_flip"), "select": ("val", "last"),
            "train_views": ("none", "random", "all")}

# numeric ranges checked at parse time: key -> (lowest, highest, lowest allowed?, highest allowed?)
_RANGES = {"epochs": (1, None, True, True), "batch_size": (1, None, True, True), "lr": (0, None, False, True),
           "weight_decay": (0, None, True, True), "momentum": (0, 1, True, False),
           "warmup_epochs": (0, None, True, True), "grad_clip": (0, None, True, True),
           "label_smoothing": (0, 1, True, False), "early_stop": (0, None, True, True),
           "shuffle_window": (0, None, True, True), "max_view_memory_gb": (0, None, True, True),
           "val_fraction": (0, 1, True, False)}


def _check_range(key: str, value, where: str) -> None:
    low, high, low_ok, high_ok = _RANGES[key]
    bad = (low is not None and (value < low or (value == low and not low_ok))) or \
          (high is not None and (value > high or (value == high and not high_ok)))
    if bad:
        lower = "" if low is None else f"{'>=' if low_ok else '>'} {low}"
        upper = "" if high is None else f"{'<=' if high_ok else '<'} {high}"
        raise ConfigError(f"{where}{key}: must be {' and '.join(p for p in (lower, upper) if p)}, got {value!r}")


def _coerce(key: str, value: Any, default: Any, where: str) -> Any:
    if key in ("init", "manifest") and value in (None, "none", "None"):  # no pre-trained start / the store's own
        value = ""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        raise ConfigError(f"{where}{key}: expected {type(default).__name__}, got {value!r}")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ConfigError(f"{where}{key}: {value!r} is not one of {', '.join(_CHOICES[key])}")
    if key == "log":
        value = ",".join(parse_log(value, where))
    if key in _RANGES:
        _check_range(key, value, where)
    if key == "pos_weight" and value in ("none", "None"):
        value = None
    if key == "pos_weight" and not (value is None or value == "auto" or isinstance(value, (int, float))):
        raise ConfigError(f"{where}pos_weight: expected none, auto or a number, got {value!r}")
    return value


LOGGERS = ("jsonl", "tensorboard", "wandb")


def parse_log(value: str, where: str = "") -> tuple[str, ...]:
    """``"tensorboard,wandb"`` -> ("tensorboard", "wandb"); ConfigError naming a bad one."""
    names = tuple(v.strip() for v in str(value).split(",") if v.strip())
    bad = [n for n in names if n not in LOGGERS]
    if bad or not names:
        raise ConfigError(f"{where}log: {bad[0] if bad else value!r} is not one of {', '.join(LOGGERS)} "
                         "(several: log=tensorboard,wandb)")
    return names


def flatten(mapping: dict, prefix: str = "") -> dict:
    """{"head": {"name": "r3d", "hidden": 64}} -> {"head": "r3d", "head.hidden": 64}."""
    out = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name in ("head", "head_options"):
            for k, v in value.items():
                out["head" if k == "name" and name == "head" else f"head.{k}"] = v
        else:
            out[name] = value
    return out


def build_config(values: dict, base: TrainConfig | None = None, where: str = "") -> TrainConfig:
    """A TrainConfig from flat keys (``epochs``, ``head.hidden``, ``view``); ``where`` prefixes
    errors. Changing the head drops the options of the previous head: only the ``head.*`` keys
    given together with the new head apply to it."""
    base = base or TrainConfig()
    defaults = TrainConfig()
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(TrainConfig)}
    view = base.view.as_dict()
    flat = flatten(values)
    given_options = {k[5:]: v for k, v in flat.items() if k.startswith("head.")}
    for key, value in flat.items():
        if key.startswith("head."):
            continue
        if key in VIEW_KEYS:
            view[key] = _coerce(key, value, defaults.view.as_dict()[key], where) if key != "layers" else value
        elif key in fields and key not in ("head_options", "view"):
            fields[key] = _coerce(key, value, getattr(defaults, key), where)
        else:
            valid = ", ".join([*(f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("head_options", "view")),
                               *VIEW_KEYS])
            raise ConfigError(f"{where}unknown key {key!r}; valid keys: {valid}, head.<option>")
    kept = base.head_options if fields["head"] == base.head else {}  # another head's options do not carry over
    fields["head_options"] = {**kept, **given_options}
    if "source" not in flat:  # what the head reads follows the head unless given
        view["source"] = HEAD_SOURCES.get(fields["head"], "tokens")
    try:
        fields["view"] = View(view["view"], view["layers"], view["tokens"], view["spatial"], view["channels"],
                              source=view["source"])
    except ValueError as exc:
        raise ConfigError(f"{where}{exc}") from None
    return TrainConfig(**fields)


def parse_assignments(pairs: list[str]) -> dict:
    """["epochs=3", "head.hidden=64"] -> {"epochs": 3, "head.hidden": 64} (values parsed as YAML)."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise OptionError("set", f"expected key=value, got {pair!r}")
        out[key.strip()] = yaml.safe_load(text) if text.strip() else ""
    return out


def to_dict(cfg: TrainConfig) -> dict:
    """Flat, YAML-ready keys (the view as ``view, layers, tokens, spatial, channels, source``); build_config
    reads them back into an equal config."""
    out = {}
    for f in dataclasses.fields(TrainConfig):
        value = getattr(cfg, f.name)
        if f.name == "view":
            out.update(value.as_dict())
        elif not (f.name in ADDED_LATER and value == f.default):
            out[f.name] = dict(value) if isinstance(value, dict) else value
    return out


# fields added after stores, runs and sweeps were already written: kept out of config.yaml while at
# their default, so an earlier run's config reads back equal and a sweep does not retrain its cells
ADDED_LATER = frozenset({"train_views", "temporal_jitter"})


def from_dict(values: dict) -> TrainConfig:
    """The config that :func:`to_dict` wrote (config.yaml, checkpoints)."""
    return build_config(values)


def load_yaml_mapping(path: str, missing: str) -> dict:
    """A YAML file whose top level is a mapping; ConfigError (starting with ``missing`` when the
    file does not exist, else with the path) for anything else."""
    import os

    import yaml

    if not os.path.isfile(path):
        raise ConfigError(f"{missing} {path!r}")
    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return values
