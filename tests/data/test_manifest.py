import json
import os

import pytest

from featcache.data.manifest import read_manifest
from featcache.errors import FeatcacheError


def write(path, text):
    path.write_text(text)
    return str(path)


def test_csv_relative_paths_multilabel_and_extra_columns(tmp_path):
    m = write(tmp_path / "m.csv", "# converted from X\nvideo_id,path,label,split,start\n"
                                   "a,videos/a.mp4,run;jump,train,1.5\nb,/abs/b.mp4,,test,0\n")
    a, b = read_manifest(m)
    assert a.path == os.path.join(str(tmp_path), "videos", "a.mp4")
    assert a.labels == ("run", "jump") and a.split == "train" and a.extra == {"start": "1.5"}
    assert b.path == "/abs/b.mp4" and b.labels == ()


def test_jsonl(tmp_path):
    rows = [{"video_id": "x", "path": "x.mp4", "label": ["a", "b"], "split": "val"},
            {"video_id": "y", "path": "y.mp4", "label": "c", "split": "train"}]
    m = write(tmp_path / "m.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    x, y = read_manifest(m)
    assert x.labels == ("a", "b") and y.labels == ("c",) and x.split == "val"


@pytest.mark.parametrize("text,match", [
    ("video_id,label,split\na,x,train\n", "missing column.*path"),
    ("video_id,path,label,split\na,a.mp4,x,train\na,b.mp4,y,test\n", "m.csv:3: duplicate video_id 'a' \\(first on line 2\\)"),
    ("video_id,path,label,split\na,a.mp4,x,training\n", "m.csv:2: unknown split 'training'"),
    ("video_id,path,label,split\n", "lists no videos"),
    ("video_id,path,label,split\n,a.mp4,x,train\n", "empty video_id"),
    ("video_id,path,label,split\na,a.mp4,x,train,extra\n", "expected 4 columns"),
])
def test_bad_csv(tmp_path, text, match):
    with pytest.raises(FeatcacheError, match=match):
        read_manifest(write(tmp_path / "m.csv", text))


def test_errors_name_the_files_own_line_numbers_after_comments(tmp_path):
    text = ("# converted by hand\n# second note\nvideo_id,path,label,split\n"
            "a,a.mp4,x,train\nb,b.mp4,y,training\n")  # the bad row is line 5 of the file
    with pytest.raises(FeatcacheError, match="m.csv:5: unknown split 'training'"):
        read_manifest(write(tmp_path / "m.csv", text))
    text = "video_id,path,label,split\n# a comment between rows\na,a.mp4,x,train\na,b.mp4,y,test\n"
    with pytest.raises(FeatcacheError, match="m.csv:4: duplicate video_id 'a' \\(first on line 3\\)"):
        read_manifest(write(tmp_path / "m.csv", text))


def test_bad_jsonl_and_missing_file(tmp_path):
    with pytest.raises(FeatcacheError, match="m.jsonl:2: not valid JSON"):
        read_manifest(write(tmp_path / "m.jsonl", '{"video_id":"a","path":"a","label":"x","split":"train"}\n{oops\n'))
    with pytest.raises(FeatcacheError, match="manifest not found"):
        read_manifest(str(tmp_path / "nope.csv"))


# ------------------------------------------------------------------ rows a converter writes
def _old_write_manifest(rows, out, root):
    """write_manifest's CSV part as it was with dict rows (featcache/data/manifest.py:201-219 of
    commit 17f47fd), re-typed: the typed rows must write the same bytes."""
    import csv

    extra = sorted({k for r in rows for k in r} - {"video_id", "path", "label", "split"})
    base = os.path.dirname(os.path.abspath(out))
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["video_id", "path", "label", "split", *extra])
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "path": os.path.relpath(os.path.join(os.path.abspath(root), r["path"]), base)})


def test_manifest_rows_are_frozen_round_trip_and_write_the_same_bytes(tmp_path):
    import dataclasses

    from featcache.data.manifest import ManifestRow, write_manifest

    dicts = [{"video_id": "a", "path": "x/a.mp4", "label": "run;jump", "split": "train", "time_start": "1"},
             {"video_id": "b,c", "path": "y/b c.mp4", "label": 'say "hi"', "split": "test", "actions": "c1 0 1;c2 1 2"},
             {"video_id": "d", "path": "d.mp4", "label": "", "split": "val"}]
    rows = [ManifestRow.from_json(d) for d in dicts]
    assert [r.to_json() for r in rows] == dicts and ManifestRow.from_json(rows[0]) is rows[0]
    assert rows[0].labels == ("run", "jump") and rows[2].labels == () and rows[0].extra == {"time_start": "1"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        rows[0].split = "val"
    moved = rows[0].replace(split="val", group="g1")
    assert (moved.split, moved.extra, rows[0].split) == ("val", {"time_start": "1", "group": "g1"}, "train")
    write_manifest(rows, str(tmp_path / "new.csv"), str(tmp_path), ["n"])
    _old_write_manifest(dicts, str(tmp_path / "old.csv"), str(tmp_path))
    assert (tmp_path / "new.csv").read_bytes() == (tmp_path / "old.csv").read_bytes()
    write_manifest(dicts, str(tmp_path / "dicts.csv"), str(tmp_path), ["n"])  # dict rows still accepted
    assert (tmp_path / "dicts.csv").read_bytes() == (tmp_path / "old.csv").read_bytes()
    back = read_manifest(str(tmp_path / "new.csv"))
    assert [(it.video_id, it.labels, it.split) for it in back] == [(r.video_id, r.labels, r.split) for r in rows]


def test_split_by_group_returns_new_rows_and_leaves_the_old_ones():
    import hashlib

    from featcache.data.manifest import ManifestRow, split_by_group

    rows = [ManifestRow(f"v{i}", f"c/v_g{i % 4:02d}_c{i}.avi", "c", "train") for i in range(12)]
    out, note = split_by_group(rows, r"_g(\d+)_", 0.25, 0.25, seed=3)
    assert [r.split for r in rows] == ["train"] * 12 and "4 groups" in note
    for r in out:  # the formula of the docstring, computed here
        u = int.from_bytes(hashlib.sha256(f"3:group:{r.extra['group']}".encode()).digest()[:8], "big") / 2**64
        assert r.split == ("test" if u < 0.25 else "val" if u < 0.5 else "train")
    assert {r.extra["group"] for r in out} == {"00", "01", "02", "03"}


@pytest.mark.slow
def test_manifest_check_of_a_path_list_with_colliding_file_names_exits_1(tmp_path):
    """Two videos named clip.mp4 in two folders get one id from a plain path list: ``manifest check``
    reports the collision as a user-data error (exit 1, one line naming the id and both paths), as
    it does a CSV's repeated ids, instead of refusing the whole list with exit 2."""
    import subprocess
    import sys

    import numpy as np

    from featcache.data.synthetic import motion_clip, write_video

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        write_video(str(tmp_path / folder / "clip.mp4"), motion_clip("up", np.random.default_rng(0), 8, (32, 24)))
    (tmp_path / "list.txt").write_text("a/clip.mp4\nb/clip.mp4\n")
    proc = subprocess.run([sys.executable, "-m", "featcache.cli", "manifest", "check", str(tmp_path / "list.txt")],
                          capture_output=True, text=True)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    errors = [x for x in proc.stdout.splitlines() if x.startswith("error:")]
    assert errors == [f"error: {tmp_path / 'list.txt'}:2: video id 'clip' (from the file name) is also the id of line 1: "
                      f"a/clip.mp4 and b/clip.mp4; give a CSV with a video_id column to tell them apart"], proc.stdout
    assert "1 duplicate id(s)" in proc.stdout and "Traceback" not in proc.stderr
    with pytest.raises(FeatcacheError, match="line 1: a/clip.mp4 and b/clip.mp4"):  # extraction still refuses the list
        read_manifest(str(tmp_path / "list.txt"))
