"""The cluster path against a real Slurm (one node, Debian's slurmctld/slurmd/munge, brought up by
`.ci/slurm-up`). Every test here skips with the reason when no Slurm answers on this machine; CI
brings one up first, so there they run. Real processes only: the `featcache` command as a user
types it, `scontrol requeue` as an operator would."""
import csv
import os
import shutil
import subprocess
import sys
import time

import pytest

from featcache import open_cache
from featcache.data.synthetic import make_dataset

pytestmark = pytest.mark.slurm

_SCRIPT = os.path.join(os.path.dirname(sys.executable), "featcache")
FEATCACHE = [_SCRIPT] if os.path.exists(_SCRIPT) else [sys.executable, "-m", "featcache.cli"]
# small tasks: 1 CPU and 1 GB each so two run side by side on a 2-core node; no GPU
TASK = ["--cluster", "slurm", "--gpus-per-task", "0", "--cpus-per-task", "1", "--mem-gb", "1", "--poll", "1"]


def _slurm_ready() -> str:
    if shutil.which("sinfo") is None:
        return "no Slurm client here (run .ci/slurm-up)"
    p = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if p.returncode != 0:
        return f"sinfo failed: {p.stderr.strip()[:200]} (run .ci/slurm-up)"
    if "idle" not in p.stdout.split() and "mixed" not in p.stdout.split():
        return f"no idle Slurm node (sinfo says {p.stdout.split()})"
    return ""


@pytest.fixture(scope="module", autouse=True)
def slurm():
    reason = _slurm_ready()
    if reason and os.environ.get("FEATCACHE_REQUIRE_SLURM"):  # CI brought Slurm up: these must run
        pytest.fail(f"FEATCACHE_REQUIRE_SLURM is set, but {reason}")
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """120 clips of 64 frames at 160x120: enough work that a task is still running when requeued."""
    return make_dataset(str(tmp_path_factory.mktemp("slurm_ds")), "appearance", per_class=30, num_frames=64,
                        size=(160, 120))


def ids_of(manifest):
    return [r["video_id"] for r in csv.DictReader(open(manifest))]


# a small ViT that still takes a few seconds per shard, so a requeue lands mid-run
MODEL = ["--weights", "random", "--img-size", "112", "--precision", "fp32", "--model-arg", "depth=4",
         "--model-arg", "embed_dim=192", "--model-arg", "num_heads=3", "--threads", "1"]


def extract_cmd(manifest, out, logs, *extra):
    return [*FEATCACHE, "extract", manifest, "--out", str(out), "--frames", "uniform:8", *MODEL,
            "--slurm", "--shards", "2", "--slurm-logs", str(logs), *TASK, "--wait", *extra]


def start(cmd):
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def job_of(logs, timeout=60):
    """The array job id, from the log folder submitit creates at submission."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        names = [n for n in os.listdir(logs) if n.isdigit()] if os.path.isdir(logs) else []
        if names:
            return names[0]
        time.sleep(0.2)
    raise AssertionError("no job was submitted")


def wait_for(condition, timeout=120, what="", poll=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def done_count(out):
    from featcache.launch.extract_array import published

    return published(str(out))


def assert_complete(out, manifest):
    cache = open_cache(str(out))
    ids = cache.video_ids()
    assert sorted(ids) == sorted(ids_of(manifest)) and len(ids) == len(set(ids)), "every video exactly once"
    assert cache.verify() == [] and cache.failures() == {}


def test_array_extracts_every_video_once_and_reports_progress(dataset, tmp_path):
    out, logs = tmp_path / "c.zarr", tmp_path / "logs"
    proc = start(extract_cmd(dataset, out, logs))
    job = job_of(logs)
    wait_for(lambda: done_count(out) > 0, what="a first video")
    status = subprocess.run([*FEATCACHE, "cache", "status", str(out), "--shards", "2"], capture_output=True, text=True)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stdout + stderr
    assert status.returncode == 0 and status.stdout.count("\n") >= 3  # a line per shard and a total
    assert "shard 0" in status.stdout and "shard 1" in status.stdout
    assert f"submitted 2 task(s) (job {job})" in stdout and "tasks: " in stdout and "videos in the store: " in stdout
    assert stdout.count("shard ") >= 2 and "Traceback" not in stdout + stderr and "sacct" not in stdout + stderr
    assert_complete(out, dataset)


def requeue_and_rerun(logs, task):
    """`scontrol requeue` a running task as an operator (or a preemption) would, release it as
    soon as it is pending again (Slurm holds a requeued job for about two minutes), and wait until
    its second run has ended. Returns that task's log."""
    job = job_of(logs)
    r = subprocess.run(["scontrol", "requeue", f"{job}_{task}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    state = lambda: subprocess.run(["squeue", "-h", "-j", f"{job}_{task}", "-o", "%T"],  # noqa: E731
                                   capture_output=True, text=True).stdout.strip()
    wait_for(lambda: state() == "PENDING", what="the requeued task to be pending")
    subprocess.run(["scontrol", "update", f"JobId={job}_{task}", "StartTime=now"], check=True)
    log = os.path.join(logs, f"{job}_{task}", f"{job}_{task}_0_log.out")
    wait_for(lambda: open(log).read().count("Starting with") == 2 and state() == "", timeout=240,
             what="the requeued task's second run")
    return open(log).read()


def test_a_requeued_task_runs_again_and_the_store_ends_complete(dataset, tmp_path):
    out, logs = tmp_path / "c.zarr", tmp_path / "logs"
    proc = start(extract_cmd(dataset, out, logs))
    job_of(logs)
    wait_for(lambda: done_count(out) >= 2, what="two finished videos", poll=0.02)
    log = requeue_and_rerun(logs, 0)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stdout + stderr
    assert "Traceback" not in stdout + stderr and log.count("Exiting after successful completion") >= 1
    assert_complete(out, dataset)


def test_overwrite_with_a_requeue_loses_nothing(dataset, tmp_path):
    out, logs = tmp_path / "c.zarr", tmp_path / "logs"
    first = subprocess.run([*FEATCACHE, "extract", dataset, "--out", str(out), "--frames", "uniform:8", *MODEL,
                            "--dtype", "float32", "-q"], capture_output=True, text=True)  # made with other settings
    assert first.returncode == 0, first.stderr
    proc = start(extract_cmd(dataset, out, logs, "--overwrite"))
    job_of(logs)
    wait_for(lambda: done_count(out) >= 2, what="two finished videos after the replacement", poll=0.02)
    requeue_and_rerun(logs, 1)  # the requeued task runs without --overwrite: it deletes nothing
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stdout + stderr
    assert stdout.count("replaced the cache") == 1 and "Traceback" not in stdout + stderr
    assert open_cache(str(out)).attrs["storage"]["dtype"] == "float16"
    assert_complete(out, dataset)


def test_a_failed_task_is_reported_with_its_shard_and_log(dataset, tmp_path):
    out, logs = tmp_path / "c.zarr", tmp_path / "logs"
    manifest = shutil.copy(dataset, tmp_path / "manifest.csv")
    with open(manifest) as f:  # paths relative to the copy's folder would not resolve: make them absolute
        rows = list(csv.DictReader(f))
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([{**r, "path": os.path.join(os.path.dirname(dataset), r["path"])} for r in rows])
    partition = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True).stdout.split()[0]
    subprocess.run(["scontrol", "update", f"PartitionName={partition}", "State=DOWN"], check=True)
    try:  # tasks wait in the queue while the manifest vanishes
        proc = start(extract_cmd(str(manifest), out, logs))
        job_of(logs)
        os.remove(manifest)
    finally:
        subprocess.run(["scontrol", "update", f"PartitionName={partition}", "State=UP"], check=True)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stdout + stderr
    for shard in (0, 1):
        line = next(ln for ln in stdout.splitlines() if ln.startswith(f"shard {shard}/2:"))
        assert "failed: " in line and "manifest not found" in line and "log: " in line, line
        assert os.path.exists(line.split("log: ")[1].strip())
    assert "Traceback" not in stdout + stderr


def test_a_sweep_runs_as_an_array_and_is_not_submitted_twice(dataset, tmp_path):
    """`ablate --slurm`: one task per fused group; a re-run while they are queued or running submits
    nothing; a re-run after they end writes the leaderboard."""
    cache = tmp_path / "c.zarr"
    r = subprocess.run([*FEATCACHE, "extract", dataset, "--out", str(cache), "--frames", "uniform:8", *MODEL, "-q"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    sweep = tmp_path / "s.yaml"
    sweep.write_text("parameters: {seed: {values: [0, 1]}}\n"
                     "base: {head: r3d, head.hidden: 32, view: uniform:8, epochs: 3, batch_size: 8, device: cpu}\n")
    out, logs = tmp_path / "sweep", tmp_path / "logs"
    cmd = [*FEATCACHE, "ablate", str(sweep), "--cache", str(cache), "--out", str(out), "-q", "--slurm",
           "--slurm-logs", str(logs), *TASK]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0 and "submitted 2 task(s)" in first.stdout, first.stdout + first.stderr
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 cell(s) are still queued or running" in again.stdout and "submitted 2" not in again.stdout
    job = job_of(logs)
    wait_for(lambda: subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip() == "",
             timeout=300, what="the sweep's tasks to leave the queue", poll=1)
    final = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0 and "best:" in final.stdout, final.stdout + final.stderr
    rows = list(csv.DictReader(open(out / "leaderboard_runs.csv")))  # per seed; leaderboard.csv: their mean +- std
    assert sorted(r["seed"] for r in rows) == ["0", "1"] and all(float(r["test/top1"]) >= 0 for r in rows)
    assert "Traceback" not in first.stderr + again.stderr + final.stderr
