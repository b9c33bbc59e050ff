"""Converters on small fixture files written in each dataset's official format."""
import csv
import json
import os

import pytest
from typer.testing import CliRunner

from featcache.cli import app
from featcache.data import converters
from featcache.data.manifest import check_manifest, read_manifest, write_manifest
from featcache.errors import FeatcacheError

runner = CliRunner()


def touch(root, rel):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()


def rows_by_id(rows):
    return {r.video_id: r for r in rows}


@pytest.fixture
def ucf(tmp_path):
    splits = tmp_path / "ucfTrainTestlist"
    splits.mkdir()
    (splits / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n")
    train, test = [], []
    for cls in ("ApplyEyeMakeup", "Archery"):
        for g in range(1, 26):
            for c in (1, 2):
                rel = f"{cls}/v_{cls}_g{g:02d}_c{c:02d}.avi"
                touch(tmp_path / "UCF-101", rel)
                (test if g <= 7 else train).append(rel)
    (splits / "trainlist01.txt").write_text("".join(f"{r} {1 + r.startswith('Archery')}\n" for r in train))
    (splits / "testlist01.txt").write_text("".join(f"{r}\n" for r in test))
    return tmp_path


def test_ucf101_groups_never_straddle_train_and_val(ucf):
    rows, notes = converters.ucf101(str(ucf / "UCF-101"), str(ucf / "ucfTrainTestlist"), 1, 0.2, seed=0)
    by = rows_by_id(rows)
    assert len(rows) == 100 and by["v_Archery_g01_c01"].split == "test" and by["v_Archery_g01_c01"].label == "Archery"
    assert {r.split for r in rows} == {"train", "val", "test"}
    groups = {}
    for r in rows:
        if r.split != "test":
            groups.setdefault(r.video_id[:-4], set()).add(r.split)
    assert all(len(s) == 1 for s in groups.values())
    again, _ = converters.ucf101(str(ucf / "UCF-101"), str(ucf / "ucfTrainTestlist"), 1, 0.2, seed=0)
    assert again == rows and "split 1" in notes[0]
    other, _ = converters.ucf101(str(ucf / "UCF-101"), str(ucf / "ucfTrainTestlist"), 1, 0.2, seed=1)
    assert [r.split for r in other] != [r.split for r in rows]
    with pytest.raises(FeatcacheError, match="split file not found.*trainlist02"):
        converters.ucf101(str(ucf / "UCF-101"), str(ucf / "ucfTrainTestlist"), 2)


def test_cli_ucf101_then_check(ucf, tmp_path):
    out = str(tmp_path / "manifests" / "ucf.csv")
    r = runner.invoke(app, ["manifest", "ucf101", str(ucf / "UCF-101"), "--splits", str(ucf / "ucfTrainTestlist"),
                            "--out", out])
    assert r.exit_code == 0, r.output
    # plain CSV: any reader with default options sees the header and every row
    with open(out, newline="") as f:
        plain = list(csv.DictReader(f))
    assert len(plain) == 100 and list(plain[0])[:4] == ["video_id", "path", "label", "split"]
    provenance = json.load(open(out + ".json"))
    assert provenance["notes"][0].startswith("UCF101 official split 1") and provenance["converter"] == "ucf101"
    assert provenance["videos"] == 100
    items = read_manifest(out)
    assert len(items) == 100 and all(os.path.isfile(it.path) for it in items)
    check = runner.invoke(app, ["manifest", "check", out, "--no-probe"])  # placeholder files: no video inside
    assert check.exit_code == 0 and "check ok: 0 error(s)" in check.output
    os.remove(items[0].path)
    check = runner.invoke(app, ["manifest", "check", out, "--json", "--no-probe"])
    facts = json.loads(check.output)
    assert check.exit_code == 1 and facts["missing_files"] == 1 and facts["errors"][0].startswith("missing file:")


def test_hmdb51(tmp_path):
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "brush_hair_test_split1.txt").write_text("a.avi 1\nb.avi 2\nc.avi 0\n")
    (splits / "cartwheel_test_split1.txt").write_text("d.avi 1 \ne.avi 2\n")
    (splits / "cartwheel_test_split2.txt").write_text("d.avi 2\ne.avi 1\n")
    rows, _ = converters.hmdb51(str(tmp_path), str(splits), 1, val_fraction=0.0)
    assert [(r.video_id, r.label, r.split, r.path) for r in rows] == [
        ("a", "brush_hair", "train", "brush_hair/a.avi"), ("b", "brush_hair", "test", "brush_hair/b.avi"),
        ("d", "cartwheel", "train", "cartwheel/d.avi"), ("e", "cartwheel", "test", "cartwheel/e.avi")]
    assert rows_by_id(converters.hmdb51(str(tmp_path), str(splits), 2, 0.0)[0])["d"].split == "test"


def test_kinetics(tmp_path):
    touch(tmp_path / "k", "train/abseiling/aaa_000010_000020.mp4")
    (tmp_path / "train.csv").write_text("label,youtube_id,time_start,time_end,split\nabseiling,aaa,10,20,train\n"
                                        "air drumming,bbb,0,10,train\n")
    (tmp_path / "validate.csv").write_text("label,youtube_id,time_start,time_end,split\nabseiling,ccc,5,15,validate\n")
    rows, _ = converters.kinetics(str(tmp_path / "k"), [str(tmp_path / "train.csv"), str(tmp_path / "validate.csv")])
    by = rows_by_id(rows)
    assert by["aaa_000010_000020"].path == "train/abseiling/aaa_000010_000020.mp4"
    assert by["bbb_000000_000010"].label == "air drumming" and by["ccc_000005_000015"].split == "val"
    assert by["aaa_000010_000020"].extra == {"time_start": "10", "time_end": "20"}


def test_ssv2(tmp_path):
    (tmp_path / "labels.json").write_text(json.dumps({"Holding something next to something": "0",
                                                      "Pushing something from left to right": "1"}))
    (tmp_path / "train.json").write_text(json.dumps([
        {"id": "78687", "label": "holding potato next to vicks", "template": "Holding [something] next to [something]"}]))
    (tmp_path / "val.json").write_text(json.dumps([
        {"id": "42326", "label": "pushing a pen", "template": "Pushing [something] from left to right"}]))
    (tmp_path / "test.json").write_text(json.dumps([{"id": "1420"}]))
    rows, _ = converters.ssv2(str(tmp_path), str(tmp_path / "labels.json"), str(tmp_path / "train.json"),
                              str(tmp_path / "val.json"), str(tmp_path / "test.json"))
    assert [(r.video_id, r.label, r.split, r.path) for r in rows] == [
        ("78687", "Holding something next to something", "train", "78687.webm"),
        ("42326", "Pushing something from left to right", "val", "42326.webm"), ("1420", "", "test", "1420.webm")]


def test_diving48(tmp_path):
    items = [{"vid_name": f"v{i}", "label": i % 3, "start_frame": 0, "end_frame": 50} for i in range(30)]
    (tmp_path / "train.json").write_text(json.dumps(items[:20]))
    (tmp_path / "test.json").write_text(json.dumps(items[20:]))
    rows, _ = converters.diving48(str(tmp_path), str(tmp_path / "train.json"), str(tmp_path / "test.json"), 0.25)
    splits = [r.split for r in rows]
    assert splits[20:] == ["test"] * 10 and {"train", "val"} == set(splits[:20])
    assert rows[4].label == "1" and rows[4].path == "v4.mp4"


def test_charades_multi_label(tmp_path):
    (tmp_path / "classes.txt").write_text("c000 Holding some clothes\nc092 Someone is laughing\nc147 Sitting\n")
    header = "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n"
    (tmp_path / "train.csv").write_text(header + '46GP8,HR43,Kitchen,6,7,Yes,x,food,d,"c092 11.90 21.20;c147 0.00 12.60;c092 30 31",24.8\n'
                                        'N11GT,P0,Stairs,6,7,Yes,x,y,d,,12\n')
    (tmp_path / "test.csv").write_text(header + 'YSKX3,P1,Room,6,7,Yes,x,y,d,c000 0.0 5.0,10\n')
    rows, _ = converters.charades(str(tmp_path), str(tmp_path / "train.csv"), str(tmp_path / "test.csv"),
                                  str(tmp_path / "classes.txt"), 0.0)
    by = rows_by_id(rows)
    assert by["46GP8"].label == "c092;c147" and by["N11GT"].label == "" and by["YSKX3"].split == "test"
    out = str(tmp_path / "m.csv")
    write_manifest(rows, out, str(tmp_path), ["charades"])
    assert read_manifest(out)[0].labels == ("c092", "c147")
    (tmp_path / "test.csv").write_text(header + 'YSKX3,P1,Room,6,7,Yes,x,y,d,c999 0.0 5.0,10\n')
    with pytest.raises(FeatcacheError, match="class c999 is not in"):
        converters.charades(str(tmp_path), str(tmp_path / "train.csv"), str(tmp_path / "test.csv"),
                            str(tmp_path / "classes.txt"))


def test_folder_split_is_seeded_and_stable(tmp_path):
    for cls in ("cats", "dogs"):
        for i in range(40):
            touch(tmp_path / "root", f"{cls}/{i:03d}.mp4")
    rows, _ = converters.folder(str(tmp_path / "root"), 0.1, 0.2, seed=0)
    assert len(rows) == 80 and {r.label for r in rows} == {"cats", "dogs"}
    counts = {s: sum(r.split == s for r in rows) for s in ("train", "val", "test")}
    assert all(counts[s] > 0 for s in counts) and counts["train"] > counts["test"] > 0
    touch(tmp_path / "root", "cats/new.mp4")  # adding a video does not move the others
    more, _ = converters.folder(str(tmp_path / "root"), 0.1, 0.2, seed=0)
    assert {r.video_id: r.split for r in more if r.video_id != "cats__new"} == {r.video_id: r.split for r in rows}
    r = runner.invoke(app, ["manifest", "folder", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.csv")])
    assert r.exit_code == 2 and "dataset root not found" in r.stderr


def test_check_reports_classes_without_training_videos(tmp_path):
    for n in ("a", "b", "c"):
        touch(tmp_path, f"{n}.mp4")
    path = tmp_path / "m.csv"
    path.write_text("video_id,path,label,split\na,a.mp4,x,train\nb,b.mp4,x,train\nc,c.mp4,y,test\n")
    facts, errors = check_manifest(str(path))
    assert errors == ["class 'y' has no training videos (it appears only in val/test)"]
    assert facts.smallest_classes == [("x", 2)] and facts.per_split == {"train": 2, "val": 0, "test": 1}
    path.write_text("video_id,path,label,split\na,a.mp4,x,train\na,b.mp4,x,train\n")
    r = runner.invoke(app, ["manifest", "check", str(path)])
    assert r.exit_code == 1 and "duplicate video_id 'a'" in r.output  # an error of the check (docs/bad-input.md)
