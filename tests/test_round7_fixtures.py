"""A store, a run directory and a sweep written by round 7's code (tests/assets/round7, made as
tests/assets/README.md says) read back by today's: the typed core changes the code that parses
them, never what they mean. ``expected.json`` holds what round 7's code read from them
(``python tests/test_round7_fixtures.py`` wrote it, on the commit that added the assets).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ASSETS = Path(__file__).resolve().parent / "assets" / "round7"
EXPECTED = ASSETS / "expected.json"
PATH_KEYS = ("path", "size_on_disk")  # where the copy lies, not what the store holds


def read_back(root: Path) -> dict:
    """Everything the tests compare, read through the public API from a copy at ``root``."""
    from featcache import open_cache
    from featcache.cache.info import cache_facts

    cache = open_cache(str(root / "store.zarr"))
    ids = cache.video_ids()
    out = {
        "len": len(cache), "video_ids": ids, "attrs": cache.attrs,
        "records": {vid: cache.video(vid).record for vid in ids[:3]},
        "failed": cache.video_ids("failed"),
        "tokens_sha256": {vid: hashlib.sha256(np.ascontiguousarray(cache.video(vid).tokens).tobytes()).hexdigest()
                          for vid in ids},
        "info": {k: v for k, v in cache_facts(str(root / "store.zarr")).to_json().items() if k not in PATH_KEYS},
    }
    ds = cache.dataset(frames="uniform:4", split="train")
    x, y = ds[0]
    out["dataset"] = {"len": len(ds), "shape": list(np.asarray(x).shape), "sum": float(np.asarray(x, np.float64).sum()),
                      "label": int(y)}
    return json.loads(json.dumps(out, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


@pytest.fixture()
def copy(tmp_path):
    shutil.copytree(ASSETS, tmp_path / "round7")
    return tmp_path / "round7"


def test_the_store_reads_back_as_round_7_read_it(copy):
    got, want = read_back(copy), json.loads(EXPECTED.read_text())
    for key in want:
        assert got[key] == want[key], key


def test_the_run_evaluates_to_its_recorded_metrics(copy):
    from conftest import cli

    metrics = json.loads((copy / "run" / "metrics.json").read_text())
    out = json.loads(cli("eval", copy / "run", "--cache", copy / "store.zarr", "--split", "test").output)
    assert out == {k: v for k, v in metrics.items() if k.startswith("test/")}


def test_the_sweep_resumes_with_nothing_to_do_and_the_same_leaderboard(copy):
    from conftest import cli

    board = (copy / "sweep" / "leaderboard.csv").read_text()
    out = cli("ablate", copy / "sweep_file.yaml", "--cache", copy / "store.zarr", "--out", copy / "sweep").output
    assert "2 finished cell(s) skipped" in out
    assert (copy / "sweep" / "leaderboard.csv").read_text() == board
    # the record ablate keeps in --out is not a sweep file: one line says which file to run
    out = cli("ablate", copy / "sweep" / "sweep.yaml", "--cache", copy / "store.zarr", "--out", copy / "sweep",
              code=2).output
    assert "is the record featcache ablate wrote of the sweep file" in out and "sweep_file.yaml; run that file" in out


def test_the_store_verifies_clean(copy):
    from conftest import cli

    cli("cache", "verify", copy / "store.zarr")


if __name__ == "__main__":  # (re)write expected.json: only on the commit that adds the assets
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(ASSETS, Path(tmp) / "round7")
        EXPECTED.write_text(json.dumps(read_back(Path(tmp) / "round7"), indent=1, sort_keys=True) + "\n")
    sys.exit(0)
