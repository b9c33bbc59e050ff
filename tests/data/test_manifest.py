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
