"""Your own head, no fork: FILE.py:Class, module:Class and the featcache.heads entry-point group."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from conftest import cli, ctrl_c_after_epoch, extract_motion

HEAD = textwrap.dedent('''
    import torch
    from torch import nn


    class DiffHead(nn.Module):
        """Per-frame patch features, their change from frame to frame, averaged."""

        def __init__(self, in_dim, num_classes, num_frames, grid, num_prefix_tokens, hidden: int = 64, drop: float = 0.0):
            super().__init__()
            self.prefix = num_prefix_tokens
            self.frame = nn.Linear(grid[0] * grid[1] * in_dim, hidden)
            self.out = nn.Sequential(nn.ReLU(), nn.Dropout(drop), nn.Linear(hidden, num_classes))

        def forward(self, x):  # (B, T, N, C)
            h = self.frame(x[:, :, self.prefix:].flatten(2))
            return self.out((h[:, 1:] - h[:, :-1]).mean(1))
''')


@pytest.fixture(scope="module")
def motion(tmp_path_factory):
    return extract_motion(tmp_path_factory, per_class=20, frames="uniform:8,uniform:16")


def write_head(folder, text=HEAD, name="my_heads.py"):
    path = folder / name
    path.write_text(text)
    return path


def test_a_head_in_a_file_trains_with_options_resumes_and_evaluates(motion, tmp_path, monkeypatch):
    path = write_head(tmp_path)
    monkeypatch.chdir(tmp_path)  # the relative name, as a user types it
    spec = "my_heads.py:DiffHead"
    common = ["--set", "epochs=4", "--set", "batch_size=16", "--set", "head.hidden=24", "-q"]
    full = tmp_path / "full"
    cli("train", motion, "--head", spec, *common, "--out", full)
    meta = yaml.safe_load(open(full / "config.yaml"))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert meta["head_source"] == {"kind": "file", "path": str(path), "class": "DiffHead", "sha256": sha, "text": HEAD}
    ckpt = torch.load(full / "best.pt", weights_only=True)
    assert ckpt["head"] == spec and ckpt["head_source"]["sha256"] == sha and ckpt["head_args"]["hidden"] == 24
    assert ckpt["state_dict"]["frame.weight"].shape == (24, 16 * 64)  # --set head.hidden reached the class

    # resume: interrupted after epoch 1, continued, equal to the uninterrupted run
    part = tmp_path / "part"
    with ctrl_c_after_epoch(1):
        assert "interrupted" in cli("train", motion, "--head", spec, *common, "--out", part, code=130).output
    cli("train", motion, "--head", spec, *common, "--out", part, "--resume")
    assert json.load(open(part / "metrics.json")) == json.load(open(full / "metrics.json"))
    stopped = tmp_path / "stopped"  # interrupted, to be resumed after the head file changes below
    with ctrl_c_after_epoch(1):
        cli("train", motion, "--head", spec, *common, "--out", stopped, code=130)

    # eval from elsewhere rebuilds the head from the recorded file; a multi-view protocol too
    monkeypatch.chdir(tmp_path.parent)
    test = json.loads(cli("eval", full, "--split", "test").output)
    assert test == {k: v for k, v in json.load(open(full / "metrics.json")).items() if k.startswith("test/")}
    assert "test/top1@2x1" in json.loads(cli("eval", full, "--temporal-views", "2").output)

    # the file changed (one comment is enough): eval uses the source the checkpoint keeps, and says so;
    # resuming training refuses, since the rest of the run would train other code
    path.write_text(HEAD.replace("hidden: int = 64", "hidden: int = 65") + "# edited\n")
    with pytest.warns(UserWarning, match="changed .* since the run was trained; using the copy of its source"):
        assert json.loads(cli("eval", full, "--split", "test").output) == test
    path.unlink()
    with pytest.warns(UserWarning, match="is gone since the run was trained"):
        assert json.loads(cli("eval", full, "--split", "test").output) == test
    old_run = tmp_path / "old_run"  # a run from before sources were kept: only the hash to check against
    shutil.copytree(full, old_run)
    old = torch.load(old_run / "best.pt", weights_only=True)
    del old["head_source"]["text"]
    torch.save(old, old_run / "best.pt")
    assert "no such file" in cli("eval", old_run, code=2).output
    path.write_text(HEAD.replace("hidden: int = 64", "hidden: int = 65"))
    err = cli("eval", old_run, code=2).output
    assert "changed since the checkpoint was made" in err and str(path) in err and len(err.strip().splitlines()) == 1
    monkeypatch.chdir(tmp_path)
    assert "the head's code changed" in cli("train", motion, "--head", spec, *common, "--out", stopped, "--resume",
                                            code=2).output


def test_heads_lists_a_file_heads_options(tmp_path):
    path = write_head(tmp_path)
    out = cli("heads", "--head", f"{path}:DiffHead").output
    assert "hidden=64, drop=0.0" in out and str(path) in out
    assert "hidden=64" in cli("train", "x.zarr", "--list-heads", "--head", f"{path}:DiffHead").output


def test_a_sweep_trains_a_file_head_beside_r3d_in_one_pass(motion, tmp_path):
    write_head(tmp_path)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "cache": motion, "base": {"epochs": 2, "batch_size": 16, "head.hidden": 16},
        "method": "list", "cells": [{"head": "r3d", "head.hidden": 16}, {"head": "my_heads.py:DiffHead"}]}))
    out = cli("ablate", sweep, "--out", tmp_path / "sw", "-q", "--set", "head.hidden=16").output  # beside the sweep file
    assert "training 2 cell(s) in one pass" in out
    rows = open(tmp_path / "sw" / "leaderboard.csv").read()
    assert "my_heads.py:DiffHead" in rows and "r3d" in rows
    cells = sorted(os.listdir(tmp_path / "sw" / "cells"))
    meta = yaml.safe_load(open(tmp_path / "sw" / "cells" / cells[1] / "config.yaml"))
    assert meta["head_source"]["path"] == str(tmp_path / "my_heads.py")
    assert "skipped" in cli("ablate", sweep, "--out", tmp_path / "sw", "-q").output  # finished cells are kept
    write_head(tmp_path, HEAD + "\n# edited\n")
    again = cli("ablate", sweep, "--out", tmp_path / "sw", "-q").output  # ... unless their head file changed
    assert "training 1 cell(s) in one pass" in again


@pytest.mark.slow
def test_a_head_in_an_importable_module(motion, tmp_path, monkeypatch):
    pkg = tmp_path / "mylab"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("__version__ = '0.7'\n")
    write_head(pkg, name="heads.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    cli("train", motion, "--head", "mylab.heads:DiffHead", "--set", "epochs=1", "-q", "--out", tmp_path / "run")
    meta = yaml.safe_load(open(tmp_path / "run" / "config.yaml"))
    assert meta["head_source"] == {"kind": "module", "module": "mylab.heads", "class": "DiffHead", "version": "0.7"}
    assert "test/top1" in json.loads(cli("eval", tmp_path / "run").output)


def _install_plugin(site, version="1.2.0"):
    """A tiny installed distribution (dist-info on sys.path) registering head `diff`."""
    (site / "labheads").mkdir()
    (site / "labheads" / "__init__.py").write_text(HEAD)
    info = site / f"labheads-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: labheads\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("[featcache.heads]\ndiff = labheads:DiffHead\nr3d = labheads:DiffHead\n")
    (info / "top_level.txt").write_text("labheads\n")


def test_an_entry_point_head_is_listed(tmp_path, monkeypatch):
    _install_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # importlib.metadata finds the dist-info on sys.path
    monkeypatch.delitem(sys.modules, "labheads", raising=False)
    out = cli("heads").output.splitlines()
    assert any(x.startswith("diff ") and "hidden=64, drop=0.0" in x and "[labheads]" in x for x in out), out
    assert "hidden=64" in cli("heads", "--head", "diff").output


@pytest.mark.slow
def test_an_entry_point_head_is_listed_and_trains_in_a_real_process(motion, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    _install_plugin(site)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    run = lambda *a: subprocess.run([sys.executable, "-m", "featcache.cli", *map(str, a)], env=env,  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    listed = run("heads")
    assert listed.returncode == 0, listed.stderr
    line = next(x for x in listed.stdout.splitlines() if x.startswith("diff "))
    assert "hidden=64, drop=0.0" in line and "labheads" in line
    assert sum(x.startswith("r3d ") for x in listed.stdout.splitlines()) == 1  # a built-in name is not shadowed
    trained = run("train", motion, "--head", "diff", "--set", "epochs=1", "-q", "--out", tmp_path / "run")
    assert trained.returncode == 0, trained.stderr
    meta = yaml.safe_load(open(tmp_path / "run" / "config.yaml"))
    assert meta["head_source"] == {"kind": "entry_point", "module": "labheads", "class": "DiffHead",
                                   "version": "1.2.0", "entry_point": "featcache.heads:diff"}


BROKEN = {
    "syntax": ("def broken(:\n", "DiffHead", "failed to import (line 1): SyntaxError"),
    "raises": ("import torch\nraise RuntimeError('needs a GPU')\n", "DiffHead", "failed to import (line 2): RuntimeError: needs a GPU"),
    "no_class": (HEAD, "TinyHead", "has no 'TinyHead'"),
    "not_a_class": ("DiffHead = 3\n", "DiffHead", "DiffHead is not a head class"),
    "arguments": (HEAD.replace("grid, num_prefix_tokens,", ""), "DiffHead", "missing grid, num_prefix_tokens"),
    "shape": (HEAD.replace("return self.out((h[:, 1:] - h[:, :-1]).mean(1))", "return self.out(h)"), "DiffHead",
              "forward must return (B, num_classes) = (2, 4) logits for a (2, 8, 17, 64) (B, T, N, C) batch; "
              "it returned (2, 8, 4)"),
    "forward": (HEAD.replace("h = self.frame(", "h = self.frame(x) + self.frame("), "DiffHead", "forward failed on a "),
    "init": (HEAD.replace("super().__init__()", "super().__init__(); assert hidden < 10, 'hidden too big'"),
             "DiffHead", "AssertionError: hidden too big"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_head_is_one_line(motion, tmp_path, case):
    text, cls, message = BROKEN[case]
    path = write_head(tmp_path, text)
    err = cli("train", motion, "--head", f"{path}:{cls}", "--set", "epochs=1", "-q", "--out", tmp_path / "run",
              code=2).stderr  # stdout has said where the labels and splits come from
    assert message in err and err.startswith("featcache: error: ") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize("spec,message", [
    ("nowhere.py:DiffHead", "no such file"),
    ("no_such_module_x:DiffHead", "cannot import module 'no_such_module_x'"),
    ("my_heads.py:", "expected FILE.py:Class or module:Class"),
    ("bogus", "unknown head 'bogus'"),
])
def test_a_head_that_cannot_be_found_is_one_line(motion, tmp_path, spec, message):
    err = cli("train", motion, "--head", spec, "--out", tmp_path / "run", code=2).output
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_an_unknown_option_of_a_file_head_names_its_options(motion, tmp_path):
    path = write_head(tmp_path)
    err = cli("train", motion, "--head", f"{path}:DiffHead", "--set", "head.width=3", code=2).output
    assert "has no option width; options: hidden, drop" in err


def test_a_file_head_in_a_config_file(motion, tmp_path):
    path = write_head(tmp_path)
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({"head": {"name": f"{path}:DiffHead", "hidden": 8}, "epochs": 1}))
    cli("train", motion, "--config", config, "-q", "--out", tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert ckpt["head"] == f"{path}:DiffHead" and ckpt["head_args"]["hidden"] == 8


def test_a_broken_entry_point_does_not_hide_the_other_heads(tmp_path, monkeypatch):
    _install_plugin(tmp_path)
    (tmp_path / "labheads" / "__init__.py").write_text("raise ImportError('no CUDA toolkit')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "labheads", raising=False)  # a good copy from another test
    out = cli("heads").output
    assert "diff         (an installed entry point that cannot be loaded: " in out and "no CUDA toolkit" in out
    assert "r3d " in out and "pool " in out
