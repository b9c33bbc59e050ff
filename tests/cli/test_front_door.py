"""A new user's first week (issue 19, section 3): everyday mistakes are one line, never a traceback."""
import os
import re
import shlex

import numpy as np
import pytest
from conftest import TINY_CLI, VIDEO_SIZE, ctrl_c_after_epoch
from typer.testing import CliRunner

from featcache.cli import app
from featcache.data.synthetic import make_dataset
from featcache.video.select import uniform_indices

runner = CliRunner()
REPO = os.path.join(os.path.dirname(__file__), "..", "..")


def one_line_error(result, match):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    lines = [ln for ln in result.output.splitlines() if ln.startswith("featcache: error: ")]
    assert len(lines) == 1, result.output
    assert re.search(match, lines[0]), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """16 clips (4 motion classes, 12 frames) and a cache of them with splits and a dense pool."""
    root = tmp_path_factory.mktemp("small")
    manifest = make_dataset(str(root), "motion", per_class=4, num_frames=12, size=VIDEO_SIZE)
    cache = str(root / "c.zarr")
    r = runner.invoke(app, ["extract", manifest, "--out", cache, "--frames", "uniform:4,stride:1", *TINY_CLI,
                            "--decode-workers", "0", "-q"])
    assert r.exit_code == 0, r.output
    return {"root": root, "manifest": manifest, "cache": cache}


# ------------------------------------------------------------------ manifests
def test_a_video_given_as_the_manifest(small):
    video = os.path.join(small["root"], "videos", "left_000.mp4")
    one_line_error(runner.invoke(app, ["extract", video, "--out", str(small["root"] / "x.zarr")]),
                   r"left_000.mp4 is a video, not a manifest; give a CSV with video_id,path .* one video path per line")


def test_a_latin1_csv(tmp_path):
    m = tmp_path / "m.csv"
    m.write_bytes("video_id,path\ncaf\xe9,caf\xe9.mp4\n".encode("latin-1"))
    one_line_error(runner.invoke(app, ["extract", str(m), "--out", str(tmp_path / "x.zarr")]),
                   r"m.csv:2: not UTF-8 text \(byte 0xe9\); save the manifest as UTF-8")


def test_excel_csv_utf8_with_bom_and_crlf_simply_works(small, tmp_path):
    rows = open(small["manifest"]).read().splitlines()
    m = tmp_path / "excel.csv"
    body = "\r\n".join(ln.replace("videos/", os.path.join(small["root"], "videos") + "/") for ln in rows) + "\r\n"
    m.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    r = runner.invoke(app, ["manifest", "check", str(m)])
    assert r.exit_code == 0, r.output
    assert "16 videos {'train': 12, 'val': 0, 'test': 4}" in r.output or "16 videos" in r.output
    assert "missing column" not in r.output and "0 missing file(s)" in r.output


def test_a_plain_list_of_paths_extracts_with_ids_from_file_names(small, tmp_path):
    listing = tmp_path / "videos.txt"
    names = ["left_000.mp4", "up_001.mp4"]
    listing.write_text("# two clips\n" + "".join(os.path.join(small["root"], "videos", n) + "\n" for n in names))
    cache = str(tmp_path / "c.zarr")
    r = runner.invoke(app, ["extract", str(listing), "--out", cache, "--frames", "uniform:4", *TINY_CLI,
                            "--decode-workers", "0", "-q"])
    assert r.exit_code == 0 and "extracted 2 videos, 0 failed" in r.output, r.output
    from featcache import open_cache

    records = open_cache(cache).records().values()
    assert sorted(r["video_id"] for r in records) == ["left_000", "up_001"]
    assert all(r["labels"] == [] and r["split"] == "" for r in records)
    checked = runner.invoke(app, ["manifest", "check", str(listing)])  # a list to extract from: no splits owed
    assert checked.exit_code == 0 and "check ok" in checked.output and "no labels or splits" in checked.output, \
        checked.output
    dup = tmp_path / "dup.txt"
    dup.write_text("a/x.mp4\nb/x.mp4\n")
    one_line_error(runner.invoke(app, ["extract", str(dup), "--out", cache]),
                   r"dup.txt:2: video id 'x' \(from the file name\) is also the id of line 1")


def test_extract_needs_only_video_id_and_path(small, tmp_path):
    m = tmp_path / "ids.csv"
    m.write_text("video_id,path\nclip," + os.path.join(small["root"], "videos", "down_002.mp4") + "\n")
    cache = str(tmp_path / "c.zarr")
    r = runner.invoke(app, ["extract", str(m), "--out", cache, "--frames", "uniform:4", *TINY_CLI,
                            "--decode-workers", "0", "-q"])
    assert r.exit_code == 0 and "extracted 1 videos" in r.output, r.output
    one_line_error(runner.invoke(app, ["extract", str(tmp_path), "--out", cache]), r"is a folder, not a manifest")


# ------------------------------------------------------------------ cluster
def test_extract_slurm_without_slurm(small, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    one_line_error(runner.invoke(app, ["extract", small["manifest"], "--out", str(tmp_path / "x.zarr"), *TINY_CLI,
                                       "--slurm", "--shards", "2"]),
                   r"--slurm: no Slurm on this machine \(sbatch is not on PATH\).*--cluster local")
    assert not os.path.exists(tmp_path / "x.zarr")


# ------------------------------------------------------------------ training
def test_interrupt_hint_gives_the_command_that_resumes(small, tmp_path):
    out = str(tmp_path / "run")
    args = ["train", small["cache"], "--head", "linear", "--view", "uniform:4", "--set", "epochs=4",
            "--set", "batch_size=8", "--out", out, "-q"]
    with ctrl_c_after_epoch(1):
        r = runner.invoke(app, args)
    assert r.exit_code == 130
    hint = r.output.strip().splitlines()[-1]
    assert hint.startswith("featcache: interrupted; resume with: featcache train ") and hint.endswith("--resume")
    again = shlex.split(hint.split("resume with: ", 1)[1])[1:]
    r = runner.invoke(app, again)
    assert r.exit_code == 0, r.output
    import json

    epochs = [json.loads(line)["epoch"] for line in open(os.path.join(out, "log.jsonl"))]
    assert epochs == [0, 1, 2, 3]


def test_resume_of_a_folder_that_does_not_exist_is_an_error(small, tmp_path):
    out = tmp_path / "nothing"
    one_line_error(runner.invoke(app, ["train", small["cache"], "--out", str(out), "--resume"]),
                   r"--resume: .*nothing does not exist, so there is no run to continue")
    assert not out.exists()


def test_finished_run_drops_last_pt_unless_keep_last(small, tmp_path):
    base = ["train", small["cache"], "--head", "linear", "--view", "uniform:4", "--set", "epochs=1", "-q"]
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "a" / "best.pt").exists() and not (tmp_path / "a" / "last.pt").exists()
    one_line_error(runner.invoke(app, [*base, "--out", str(tmp_path / "a"), "--resume"]), r"has finished; nothing to continue")
    r = runner.invoke(app, [*base, "--set", "keep_last=true", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0 and (tmp_path / "b" / "last.pt").exists()


def test_pretrain_prints_a_finetune_command_that_runs(small, tmp_path):
    out = str(tmp_path / "prp")
    r = runner.invoke(app, ["pretrain", small["cache"], "--head", "r3d", "--set", "head.hidden=16",
                            "--set", "head.out_dim=24", "--set", "head.mlp_hidden=32", "--set", "spatial=2",
                            "--set", "epochs=1", "--out", out, "-q"])
    assert r.exit_code == 0, r.output
    command = r.output.strip().splitlines()[-1].split("fine-tune: ", 1)[1]
    words = shlex.split(command)
    assert "head.hidden=16" in words and "head.out_dim=24" in words and "spatial=2" in words
    r = runner.invoke(app, [*words[1:], "--view", "uniform:4", "--set", "epochs=1", "-q", "--out", str(tmp_path / "ft")])
    assert r.exit_code == 0, r.output


# ------------------------------------------------------------------ help texts and the docs' claims
def _help_texts():
    """(command, its --help text) of every command, as a user sees them."""
    import typer

    def walk(cmd, prefix):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                yield from walk(sub, [*prefix, name])
        else:
            r = runner.invoke(app, [*prefix, "--help"], terminal_width=200)
            assert r.exit_code == 0, (prefix, r.output)
            yield " ".join(prefix), r.output

    return list(walk(typer.main.get_command(app), []))


def test_help_examples_name_only_files_that_exist():
    named = set()
    for name, text in _help_texts():
        for path in re.findall(r"pipelines/[\w.-]+\.yaml", text):
            named.add(path)
            assert os.path.isfile(os.path.join(REPO, path)), f"featcache {name} --help names {path}"
    assert named  # the examples do name pipeline files


def test_readme_uniform_subset_claim_holds_for_every_length():
    """docs/training.md: uniform:N is served from a uniform:kN pool with k odd for every length, and from
    uniform:8,uniform:16 only for 21 of the lengths 1-1000 (segment centres, recomputed here)."""
    def centres(n, count):  # independent of featcache: floor((i + 1/2) n / count)
        return {(2 * i + 1) * n // (2 * count) for i in range(count)}

    for n in range(1, 1001):
        assert set(uniform_indices(n, 4).tolist()) == centres(n, 4)
        assert centres(n, 4) <= centres(n, 12)
    served = [n for n in range(1, 1001) if centres(n, 4) <= centres(n, 8) | centres(n, 16)]
    assert len(served) == 21
    readme = open(os.path.join(REPO, "docs", "training.md")).read()
    assert "only for 21 of the lengths" in readme and "`uniform:4` from `uniform:12`" in readme


def test_a_view_from_an_odd_multiple_pool_through_the_cli(tmp_path):
    manifest = make_dataset(str(tmp_path), "motion", per_class=2, num_frames=37, size=VIDEO_SIZE)
    for frames, served in (("uniform:12", True), ("uniform:8,uniform:16", False)):
        cache = str(tmp_path / f"{frames.replace(':', '').replace(',', '_')}.zarr")
        r = runner.invoke(app, ["extract", manifest, "--out", cache, "--frames", frames, *TINY_CLI,
                                "--decode-workers", "0", "-q"])
        assert r.exit_code == 0, r.output
        r = runner.invoke(app, ["train", cache, "--head", "linear", "--view", "uniform:4", "--set", "epochs=1",
                                "--set", "select=last", "-q", "--out", str(tmp_path / f"run_{served}")])
        if served:
            assert r.exit_code == 0, r.output
        else:
            one_line_error(r, r"view uniform:4: video .* lacks some of its frames in the cached pool")
    assert np.all(np.isin(uniform_indices(37, 4), uniform_indices(37, 12)))


# ------------------------------------------------------------------ what extraction prints
def _cut_mkv(tmp_path):
    """A Matroska file cut in half: FFmpeg prints "Read error" lines while decoding it."""
    from featcache.data.synthetic import motion_clip, write_video

    full = str(tmp_path / "full.mkv")
    write_video(full, motion_clip("left", np.random.default_rng(0), num_frames=200, size=(160, 120)))
    data = open(full, "rb").read()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[:len(data) // 2])
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"video_id,path\ncut,{cut}\nfull,{full}\n")
    return str(manifest)


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "1"])
def test_ffmpeg_messages_go_to_the_record_not_the_terminal(tmp_path, workers):
    import subprocess
    import sys

    manifest = _cut_mkv(tmp_path)
    cache = str(tmp_path / "c.zarr")
    # decord: FFmpeg's C-level messages on fd 2 (PyAV, the default decoder, routes them through Python's
    # logging, which prints nothing here)
    p = subprocess.run([sys.executable, "-m", "featcache.cli", "extract", manifest, "--out", cache, "--frames",
                        "uniform:4", *TINY_CLI, "--decode-workers", workers, "--decoder", "decord"],
                       capture_output=True, text=True,
                       timeout=300, env={**os.environ, "FEATCACHE_PROGRESS_EVERY": "0"})
    assert p.returncode == 0, p.stderr
    assert "Read error" not in p.stderr and "@ 0x" not in p.stderr  # nothing over the progress bar
    from featcache import open_cache

    cache = open_cache(cache)
    source = cache.video("cut").record["source"]
    assert source["decoder_messages"] > 0 and any("Read error" in line for line in source["decoder_log"])
    assert cache.video("full").record["source"]["decoder_messages"] == 0
    assert source["truncated"] and "cut: decoded" in p.stdout and "the file may be truncated" in p.stdout
    assert f"the decoder (FFmpeg) printed {source['decoder_messages']} message line(s) for 1 video(s): cut" in p.stdout
    # stdout is not a terminal: plain progress lines, no bar redraws
    assert "extract: 1/2 videos (50%)" in p.stdout and "extract: 2/2 videos (100%)" in p.stdout
    assert "━" not in p.stdout and "\r" not in p.stdout


@pytest.mark.slow
def test_local_executor_task_logs_hold_featcache_output(small, tmp_path):
    pytest.importorskip("submitit")
    logs, out = str(tmp_path / "logs"), str(tmp_path / "c.zarr")
    r = runner.invoke(app, ["extract", small["manifest"], "--out", out, "--frames", "uniform:4", *TINY_CLI,
                            "--slurm", "--cluster", "local", "--shards", "2", "--gpus-per-task", "0",
                            "--slurm-logs", logs, "--wait", "--poll", "0.5"])
    assert r.exit_code == 0, r.output
    texts = [open(os.path.join(d, f)).read() for d, _, files in os.walk(logs) for f in files if f.endswith("_log.out")]
    assert len(texts) == 2
    for text in texts:
        assert re.search(r"featcache extract shard [01]/2: \d+ done, 0 already cached, 0 failed", text), text
        assert re.search(r"extract: (\d+)/\1 videos \(100%\)", text), text


def test_the_docs_npy_export_layout_is_what_export_writes(small, tmp_path):
    readme = open(os.path.join(REPO, "docs", "export.md")).read()
    claim = next(line for line in readme.splitlines() if "--format npy c_npy/" in line)
    assert "c_npy/videos/<key>.npy + <key>.json, c_npy/provenance.json, failed.json" in claim
    out = tmp_path / "c_npy"
    r = runner.invoke(app, ["cache", "export", small["cache"], "--format", "npy", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "provenance.json").exists() and (out / "failed.json").exists()
    assert (out / "videos" / "left_000.npy").exists() and (out / "videos" / "left_000.json").exists()
