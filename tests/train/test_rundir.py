"""The run-directory format, read and written in one place (featcache/train/rundir.py)."""
import ast
import json
import pathlib

import pytest
import yaml

from featcache.errors import FeatcacheError
from featcache.train import rundir

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "featcache"
NAMES = ("config.yaml", "log.jsonl", "metrics.json", "best.pt", "last.pt", "curves.png")


def test_files_written_as_before(tmp_path):
    """Byte for byte what fit, pretrain and probe wrote by hand (so old run directories load)."""
    results = {"val/top1": 0.5, "best_epoch": 2, "params": 10, "test/top1": 0.25}
    rundir.write_metrics(str(tmp_path), results)
    assert (tmp_path / "metrics.json").read_text() == json.dumps(results, indent=2, sort_keys=True)
    for record in ({"epoch": 0, "train/loss": 1.5}, {"epoch": 1, "train/loss": 1.25}):
        rundir.append_log(str(tmp_path), record)
    assert (tmp_path / "log.jsonl").read_text() == '{"epoch": 0, "train/loss": 1.5}\n{"epoch": 1, "train/loss": 1.25}\n'
    meta = {"cache": {"path": "c.zarr", "fingerprint": "abc"}, "classes": ["a", "b"], "config": {"epochs": 3}}
    rundir.write_config(str(tmp_path), meta)
    assert (tmp_path / "config.yaml").read_text() == yaml.safe_dump(meta, sort_keys=False)


def test_an_old_run_directory_reads_back(tmp_path):
    """Files as an earlier featcache wrote them (a blank line at the end of the log included)."""
    (tmp_path / "metrics.json").write_text('{\n  "best_epoch": 1,\n  "val/top1": 0.75\n}')
    (tmp_path / "log.jsonl").write_text('{"epoch": 0, "seconds": 1.0}\n{"epoch": 1, "seconds": 2.0}\n\n')
    (tmp_path / "config.yaml").write_text("cache:\n  fingerprint: abc\nclasses:\n- a\n- b\n")
    (tmp_path / "best.pt").write_bytes(b"")
    run = str(tmp_path)
    assert rundir.read_metrics(run) == {"best_epoch": 1, "val/top1": 0.75}
    assert [r["seconds"] for r in rundir.read_log(run)] == [1.0, 2.0]
    assert rundir.read_config(run)["classes"] == ["a", "b"]
    assert rundir.has(run, "best") and rundir.has(run, "metrics") and not rundir.has(run, "last")
    assert rundir.checkpoint_path(run, "last") == str(tmp_path / "last.pt")
    with pytest.raises(ValueError, match="expected best or last, got 'latest'"):
        rundir.checkpoint_path(run, "latest")
    rundir.remove_last(run)  # nothing to remove: no error
    with pytest.raises(FeatcacheError, match="holds a finished run; use another --out"):
        rundir.previous_run(run, resume=False, overwrite=False)
    assert sorted(pathlib.Path(p).name for p in rundir.previous_run(run, resume=False, overwrite=True)) == \
        ["best.pt", "config.yaml", "log.jsonl", "metrics.json"]


def test_only_rundir_names_the_files():
    """No other module spells a run directory's file names (messages that mention them aside)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "rundir.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and node.value in NAMES:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.value!r}")
            if isinstance(node, ast.JoinedStr) and any(isinstance(v, ast.Constant) and v.value == ".pt"
                                                       for v in node.values):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: f-string ending .pt")
    assert not found, "\n".join(found)
