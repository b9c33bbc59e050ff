"""The command line as a user runs it: real subprocesses for the main paths, CliRunner for errors."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import TINY_CLI, write_manifest
from typer.testing import CliRunner

from featcache import open_cache
from featcache.cli import app
from featcache.data.synthetic import make_dataset
from featcache.launch.extract_array import published

_SCRIPT = os.path.join(os.path.dirname(sys.executable), "featcache")  # the installed console script
FEATCACHE = [_SCRIPT] if os.path.exists(_SCRIPT) else [sys.executable, "-m", "featcache.cli"]


def run(*args, **kw):
    return subprocess.run([*FEATCACHE, *args], capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(str(tmp_path_factory.mktemp("ds")), "motion", per_class=4, num_frames=20, size=(96, 72))


@pytest.mark.slow
def test_extract_info_verify_subprocess(dataset, tmp_path):
    out = str(tmp_path / "c.zarr")
    p = run("extract", dataset, "--out", out, "--frames", "uniform:4,keyframes:2", *TINY_CLI)
    assert p.returncode == 0, p.stderr
    assert "extracted 16 videos, 0 failed, 0 already cached (of 16)" in p.stdout
    assert "frames/s" in p.stdout and "MB written" in p.stdout

    info = run("cache", "info", out, "--json")
    facts = json.loads(info.stdout)
    assert facts["videos"]["done"] == 16 and facts["videos"]["per_split"] == {"train": 12, "val": 4}
    assert facts["model"]["weights"]["source"] == "random" and facts["frames"]["policies"] == ["uniform:4", "keyframes:2"]
    assert facts["bytes_per_frame"] == 17 * 64 * 2 and facts["size_on_disk"] > 16 * 4 * 17 * 64 * 2
    text = run("cache", "info", out).stdout
    assert "RANDOM (seed 0)" in text and "1 prefix + 4x4 patches, dim 64" in text

    v = run("cache", "verify", out)
    assert v.returncode == 0 and "verify ok: 16 videos done, 0 failed" in v.stdout

    again = run("extract", dataset, "--out", out, "--frames", "uniform:4,keyframes:2", *TINY_CLI, "-q")
    assert again.returncode == 0 and "16 already cached" in again.stdout


@pytest.mark.slow
def test_failed_videos_give_exit_1_and_are_listed(tmp_path, dataset):
    rows = [{"video_id": "ok", "path": os.path.join(os.path.dirname(dataset), "videos", "left_000.mp4"),
             "label": "left", "split": "train"},
            {"video_id": "gone", "path": "gone.mp4", "label": "left", "split": "train"}]
    p = run("extract", write_manifest(tmp_path / "m.csv", rows), "--out", str(tmp_path / "c.zarr"),
            "--frames", "uniform:2", *TINY_CLI, "-q")
    assert p.returncode == 1
    assert "extracted 1 videos, 1 failed" in p.stdout and "failed: gone: file not found" in p.stdout


@pytest.mark.slow
def test_verify_catches_damage(tmp_path, dataset):
    out = tmp_path / "c.zarr"
    assert run("extract", dataset, "--out", str(out), "--frames", "uniform:2", *TINY_CLI, "-q").returncode == 0
    chunk, = out.glob("segments/*/tokens/0.0.0.0")
    chunk.write_bytes(chunk.read_bytes()[:100])
    v = run("cache", "verify", str(out))
    assert v.returncode == 1 and "problem: left_000: token chunk missing or truncated" in v.stdout


@pytest.mark.slow
def test_kill_9_then_resume(tmp_path, dataset):
    """Kill a real extraction mid-run: the store verifies, and a re-run finishes every video once."""
    out = tmp_path / "c.zarr"
    args = ["extract", dataset, "--out", str(out), "--frames", "uniform:8", "--batch-size", "4", "-q",
            "--weights", "random", "--precision", "fp32", "--img-size", "112", "--model-arg", "depth=3"]
    # every video published at once (no group commit): killed with some published, some not
    proc = subprocess.Popen([*FEATCACHE, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "FEATCACHE_COMMIT_SECONDS": "0"})
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if published(str(out)) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "extraction finished before it could be killed; make it slower"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = open_cache(str(out))
    assert 3 <= len(partial.video_ids()) < 16
    v = run("cache", "verify", str(out))
    assert v.returncode == 0, v.stdout

    p = run(*args)
    assert p.returncode == 0, p.stderr
    cache = open_cache(str(out))
    ids = cache.video_ids()
    assert len(ids) == len(set(ids)) == 16
    assert f"{len(partial.video_ids())} already cached" in p.stdout
    killed, rerun = cache.segments()  # the killed writer's segment is read as it was left, never touched
    assert not killed.sealed and rerun.sealed and len(killed.table) == len(partial.video_ids())
    assert run("cache", "verify", str(out)).returncode == 0


runner = CliRunner()


@pytest.mark.parametrize("args,message", [
    (["extract", "nope.csv", "--out", "x.zarr", "--weights", "random"], "manifest not found: nope.csv"),
    (["extract", "{m}", "--out", "x.zarr", "--frames", "uniform"], "--frames: unknown policy 'uniform'"),
    (["extract", "{m}", "--out", "x.zarr", "--shard", "3/2"], "--shard: expected I/N"),
    (["extract", "{m}", "--out", "x.zarr", "--layers", "last"], "--layers: expected comma-separated integers"),
    (["extract", "{m}", "--out", "x.zarr", "--model-arg", "depth"], "--model-arg: expected key=value"),
    (["extract", "{m}", "--out", "x.zarr", "--luv-size", "64"], "--luv-size: expected WxH"),
    (["extract", "{m}", "--out", "x.zarr", "--model", "resnet_9000", "--weights", "random"], "unknown timm model"),
    (["cache", "info", "nowhere.zarr"], "not a featcache cache"),
    (["cache", "verify", "nowhere.zarr"], "not a featcache cache"),
])
def test_user_errors_are_one_line_exit_2(tmp_path, dataset, args, message, monkeypatch):
    args = [a.replace("{m}", dataset) for a in args]
    monkeypatch.chdir(tmp_path)  # restored after the test
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("featcache: error: ") and message in lines[0]
    assert not os.path.exists("x.zarr")


@pytest.mark.slow
def test_hub_weights_fail_fast_and_clearly(tmp_path, dataset):
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["HF_ENDPOINT"] = "https://127.0.0.1:9"  # nothing listens: behaves like a closed network
    env["HF_HOME"] = str(tmp_path / "hf")  # and nothing is cached
    t = time.time()
    p = run("extract", dataset, "--out", str(tmp_path / "c.zarr"), "--model-arg", "depth=2", env=env)
    assert p.returncode == 2 and time.time() - t < 60
    assert "--weights hub: cannot load pretrained weights" in p.stderr and "Traceback" not in p.stderr


def test_help_has_examples():
    result = runner.invoke(app, ["extract", "--help"])
    assert result.exit_code == 0 and "Examples" in result.output and "--frames" in result.output
    assert runner.invoke(app, ["--version"]).output.startswith("featcache ")


@pytest.mark.slow
def test_demo_runs_the_whole_story_and_ends_with_a_leaderboard(tmp_path):
    import csv

    out = tmp_path / "demo"
    p = run("demo", "--out", str(out), "--per-class", "5", "--epochs", "2", "-q", *TINY_CLI)
    assert p.returncode == 0, p.stderr
    for name in ("leaderboard.csv", "leaderboard.md", "leaderboard.png", "demo_sweep.yaml", "manifest.csv"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "leaderboard.csv")))
    assert sorted(r["head"] for r in rows) == ["lstm", "pool", "r3d"] and len(os.listdir(out / "cells")) == 3
    assert "3 cells in 1 fused pass(es)" in p.stdout and "1 view read(s)" in p.stdout
    test_clips = sum(r["split"] == "test" for r in csv.DictReader(open(out / "manifest.csv")))
    assert f"top-1 on held-out clips ({test_clips} test clips; chance 0.25)" in p.stdout
    for r in rows:  # the printed numbers are the leaderboard's
        label = r["head"] + (" (average of frames)" if r["head"] == "pool" else "")
        assert f"{label:26s} {float(r['val/top1']):6.3f} {float(r['test/top1']):6.3f}" in p.stdout
    assert "next:" in p.stdout and f"featcache cache info {out}/cache.zarr" in p.stdout
    again = run("demo", "--out", str(out), "--per-class", "5", "--epochs", "2", "-q", *TINY_CLI)
    assert again.returncode == 0 and "0 extracted, 20 already cached" in again.stdout  # re-running resumes
    assert "3 finished cell(s) skipped" in again.stdout


@pytest.mark.slow
def test_batch_size_auto_probes_once_then_uses_the_cached_choice(dataset, tmp_path):
    import json as _json

    from featcache.extract.batchsize import CANDIDATES

    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}  # a cache no other test has filled
    first = run("extract", dataset, "--out", str(tmp_path / "a.zarr"), "--frames", "uniform:2", *TINY_CLI, env=env)
    assert first.returncode == 0, first.stderr
    line = next(ln for ln in first.stdout.splitlines() if ln.startswith("batch size "))
    size = int(line.split()[2])
    assert size in CANDIDATES and "auto: probed in" in line and "frames/s" in line
    probes = _json.load(open(tmp_path / "xdg" / "featcache" / "batch_size.json"))
    assert [v["batch_size"] for v in probes.values()] == [size]
    again = run("extract", dataset, "--out", str(tmp_path / "b.zarr"), "--frames", "uniform:2", *TINY_CLI, env=env)
    assert f"batch size {size} (auto: cached probe" in again.stdout
    bad = runner.invoke(app, ["extract", dataset, "--out", str(tmp_path / "c.zarr"), "--batch-size", "many"])
    assert bad.exit_code == 2 and "--batch-size: expected auto or an integer >= 1, got 'many'" in bad.stderr


def test_estimate_no_time_needs_no_weights(dataset, tmp_path, monkeypatch):
    """Issue 34 item 13: `estimate --no-time` loaded (or downloaded) the weights although the bytes
    depend only on the architecture; model_seconds was 0.0 where the model was not timed."""
    import json

    from featcache.extract import encoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(encoder, "_load_file", lambda *a: pytest.fail("--no-time read the weights file"))
    random = [a for a in TINY_CLI]
    base = json.loads(runner.invoke(app, ["estimate", dataset, *random, "--json", "--no-time"]).output)
    assert base["model_seconds"] is None and base["forward_frames_per_s"] == 0
    for weights in (str(tmp_path / "never_downloaded.pth"), "hub"):
        args = [weights if a == "random" else a for a in random]
        r = runner.invoke(app, ["estimate", dataset, *args, "--json", "--no-time"])
        assert r.exit_code == 0, r.output
        est = json.loads(r.output)
        assert est["model_seconds"] is None and est["frames"] == base["frames"] and est["files"] == base["files"]
        assert abs(est["bytes"] - base["bytes"]) < 2000  # only the weights' provenance line differs


def test_adding_a_policy_prints_one_summary(dataset, tmp_path):
    """Issue 34 item 16: adding a policy printed "extracted 0 videos, ... (of 16)" and then "grew 16
    cached videos": two tallies of one run. Now one line counts both."""
    out = str(tmp_path / "c.zarr")
    first = runner.invoke(app, ["extract", dataset, "--out", out, "--frames", "uniform:4", *TINY_CLI, "-q"])
    assert first.exit_code == 0, first.output
    r = runner.invoke(app, ["extract", dataset, "--out", out, "--frames", "uniform:4,keyframes:2", *TINY_CLI, "-q"])
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if "extracted" in ln or "grew" in ln]
    assert len(lines) == 1, r.output
    assert lines[0].startswith("grew 16 cached videos by ") and ", extracted 0 new videos, 0 failed, " in lines[0]
    assert "0 already complete (of 16)" in lines[0]


def test_verify_and_repair_say_what_they_do(tmp_path, dataset):
    """Issue 34 item 17: verify's problem lines ended "run featcache cache verify ..." while running
    it, and repair printed "removed:" for videos it records as failed (nothing is removed)."""
    out = tmp_path / "c.zarr"
    r = runner.invoke(app, ["extract", dataset, "--out", str(out), "--frames", "uniform:2", *TINY_CLI, "-q"])
    assert r.exit_code == 0, r.output
    chunk, = out.glob("segments/*/tokens/0.0.0.0")
    chunk.write_bytes(chunk.read_bytes()[:100])
    v = runner.invoke(app, ["cache", "verify", str(out)])
    problems = [ln for ln in v.output.splitlines() if ln.startswith("problem: ")]
    assert v.exit_code == 1 and problems and not any("run featcache cache verify" in ln for ln in problems), v.output
    assert all(ln.count("(") == ln.count(")") for ln in problems)
    fixed = runner.invoke(app, ["cache", "repair", str(out)])
    assert fixed.exit_code == 0 and "removed:" not in fixed.output, fixed.output
    marked = [ln for ln in fixed.output.splitlines() if ln.startswith("marked failed: ")]
    assert len(marked) == len(problems) and not any("run featcache cache verify" in ln for ln in marked)


def test_ci_install_waits_for_the_apt_lock():
    """Issue 34 item 18: .ci/install failed at once when another apt/dpkg held the lock; every
    apt-get it runs now waits for it (apt's DPkg::Lock::Timeout, apt >= 1.9.11)."""
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    text = open(os.path.join(root, ".ci", "install")).read()
    calls = [ln for ln in text.splitlines() if "apt-get" in ln and not ln.strip().startswith("#")
             and "command -v" not in ln and not ln.strip().startswith("echo")]
    assert calls and all("DPkg::Lock::Timeout=600" in ln or '"${APT[@]}"' in ln for ln in calls), calls
    assert "APT=(apt-get -o DPkg::Lock::Timeout=600)" in text


def test_model_arg_values_are_yaml(dataset, tmp_path):
    """Issue 34 item 24: a YAML-style dict (timm's pretrained_cfg_overlay) gave "dictionary update
    sequence element #0 has length 1"; values are now YAML (JSON included)."""
    import json

    from featcache.cli.extract import parse_model_args

    assert parse_model_args(["depth=2", "drop=1e-5", "name=abc", "flag=true", "overlay={mean: [0.5, 0.5, 0.5]}",
                             'j={"a": [1, 2]}']) == {"depth": 2, "drop": 1e-5, "name": "abc", "flag": True,
                                                     "overlay": {"mean": [0.5, 0.5, 0.5]}, "j": {"a": [1, 2]}}
    out = tmp_path / "c.zarr"
    r = runner.invoke(app, ["extract", dataset, "--out", str(out), "--frames", "uniform:2", *TINY_CLI, "-q",
                            "--model-arg", "pretrained_cfg_overlay={mean: [0.25, 0.25, 0.25]}"])
    assert r.exit_code == 0, r.output
    attrs = json.loads((out / "zarr.json").read_text())["attributes"]
    assert attrs["preprocess"]["mean"] == [0.25, 0.25, 0.25]
    bad = runner.invoke(app, ["extract", dataset, "--out", str(tmp_path / "x.zarr"), *TINY_CLI,
                              "--model-arg", "o={mean: [0.5"])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1 and "--model-arg o: '{mean: [0.5' is not a YAML value" in bad.output


def test_manifest_check_finds_broken_videos_labels_files_and_duplicates(tmp_path):
    """Issue 34 minor 5: `manifest check` passed random bytes, 0-byte and truncated files, refused
    the labels.csv the README has you write (no path column), and exited 2 on duplicate ids where
    the docs say 1. Each video is now opened with PyAV (first frame; packets against the header)."""
    from featcache.data.synthetic import write_video

    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("ok.avi", "cut.avi"):
        write_video(str(videos / name), np.random.default_rng(0).integers(0, 256, (60, 48, 64, 3), dtype=np.uint8))
    data = (videos / "cut.avi").read_bytes()
    (videos / "cut.avi").write_bytes(data[: len(data) // 2])  # the header still says 60 frames
    (videos / "noise.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (videos / "empty.mp4").write_bytes(b"")
    m = tmp_path / "m.csv"
    m.write_text("video_id,path,label,split\n" + "".join(f"{v},videos/{v}.{e},a,train\n" for v, e in
                 (("ok", "avi"), ("cut", "avi"), ("noise", "mp4"), ("empty", "mp4"))))
    r = runner.invoke(app, ["manifest", "check", str(m)])
    assert r.exit_code == 1, r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error: ")]
    assert errors[0].startswith("error: unreadable video: cut: truncated: the header promises ~60 frames, the file holds ")
    assert errors[1].startswith("error: unreadable video: noise: cannot be opened or decoded (")
    assert errors[2] == "error: unreadable video: empty: empty file (0 bytes)" and len(errors) == 3
    assert "check FAILED: 3 error(s), 0 missing file(s), 3 unreadable, 0 duplicate id(s)" in r.output

    dup = tmp_path / "dup.csv"
    dup.write_text("video_id,path,label,split\nok,videos/ok.avi,a,train\nok,videos/ok.avi,a,test\n")
    r = runner.invoke(app, ["manifest", "check", str(dup)])
    assert r.exit_code == 1 and f"error: {dup}:3: duplicate video_id 'ok' (first on line 2)" in r.output, r.output

    labels = tmp_path / "labels.csv"  # what the README has you write: no path column
    labels.write_text("video_id,label,split\nok,a,train\nstranger,a,test\n")
    r = runner.invoke(app, ["manifest", "check", str(labels)])
    assert r.exit_code == 0 and "no paths: a training manifest" in r.output, r.output
    cache = str(tmp_path / "c.zarr")
    one = tmp_path / "one.csv"
    one.write_text("video_id,path\nok,videos/ok.avi\n")
    assert runner.invoke(app, ["extract", str(one), "--out", cache, "--frames", "uniform:2", *TINY_CLI, "-q"]).exit_code == 0
    r = runner.invoke(app, ["manifest", "check", str(labels), "--cache", cache])
    assert r.exit_code == 1 and f"error: 1 id(s) not cached (done) in {cache}: stranger" in r.output, r.output
    r = runner.invoke(app, ["manifest", "check", str(labels), "--cache", cache, "--json"])
    out = json.loads(r.output)  # ManifestFacts.to_json: the keys and their order as the dict had them
    assert list(out) == ["annotated", "videos", "per_split", "missing_files", "unreadable_files", "duplicate_ids",
                         "paths", "classes", "classes_per_split", "multi_label", "unlabelled", "smallest_classes",
                         "largest_classes", "cache", "errors"]
    assert out["cache"] == {"path": cache, "missing": 1, "unlisted": 0, "failed": 0}
    assert out["smallest_classes"] == [["a", 1]] and out["paths"] is False and r.exit_code == 1


def test_manifest_folder_group_keeps_clips_of_one_source_in_one_split(tmp_path):
    """Issue 34 item 23: `manifest folder` split by hashing paths, so clips of one UCF101 performer
    group (`_gNN_`) landed in several splits; --group keeps each group in one split."""
    import csv

    root = tmp_path / "UCF-101"
    for cls in ("Archery", "Bowling"):
        (root / cls).mkdir(parents=True)
        for g in range(1, 13):
            for c in range(1, 5):
                (root / cls / f"v_{cls}_g{g:02d}_c{c:02d}.avi").write_bytes(b"")

    def splits_per_group(out):
        rows = list(csv.DictReader(open(out)))
        assert len(rows) == 96
        groups = {}
        for r in rows:
            groups.setdefault(r["path"].split("_g")[1][:2], set()).add(r["split"])
        return groups

    plain = str(tmp_path / "plain.csv")
    assert runner.invoke(app, ["manifest", "folder", str(root), "--out", plain]).exit_code == 0
    assert any(len(s) > 1 for s in splits_per_group(plain).values())  # what was seen: groups straddle splits
    grouped = str(tmp_path / "grouped.csv")
    r = runner.invoke(app, ["manifest", "folder", str(root), "--out", grouped, "--group", r"_g(\d+)_"])
    assert r.exit_code == 0, r.output
    groups = splits_per_group(grouped)
    assert len(groups) == 12 and all(len(s) == 1 for s in groups.values())
    assert {next(iter(s)) for s in groups.values()} >= {"train", "test"}
    assert "split by group: 12 groups" in json.load(open(grouped + ".json"))["notes"][0]
    bad = runner.invoke(app, ["manifest", "folder", str(root), "--out", str(tmp_path / "x.csv"), "--group", "_h(\\d+)_"])
    assert bad.exit_code == 2 and "does not match '_h(\\\\d+)_'; every video needs a group" in bad.output, bad.output
