"""Every benchmark runs end to end at a tiny size, as a user runs it (a subprocess), so none can
rot as the package changes. Only that it runs and prints its JSON rows is checked: speed is
measured by running the scripts at full size (benchmarks/RESULTS.md), never asserted here.

The tiny runs start in the background as soon as the session has collected them (conftest's
``pytest_collection_finish`` calls :func:`start`), two at a time, beside the rest of the suite:
most of their time is process start-up and single-threaded decoding, which leaves a core idle.

bench_open.py and bench_formats.py have their own tiny runs (tests/cache/test_packed.py,
tests/cache/test_quant.py), which also check what they print.
"""
import glob
import json
import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(__file__), "..", "benchmarks")

TINY = {
    "bench_ablate.py": [["--videos", "16", "--epochs", "1", "--cells", "2"]],
    "bench_adapter.py": [["--clips", "1", "--frames", "2", "--rounds", "1"]],
    "bench_compile.py": [["--batch", "2", "--batches", "1", "--rounds", "1", "--depth", "1"]],
    "bench_decode.py": [["--versus-ffmpeg-only", "--rounds", "1", "--long-gop-frames", "30", "--no-real-clips"]],
    "bench_extract.py": [["--videos", "4", "--rounds", "1", "--num-frames", "16", "--sweep-batch-sizes", "8", "--sweep-frames", "16"]],
    # one session of the GPU script: its parts write JSON lines under --out, report reads them
    "bench_gpu.py": [["extract", "--tiny", "--out", "{tmp}", "&&", "decode", "--tiny", "--out", "{tmp}", "&&",
                      "report", "--out", "{tmp}"]],
    "bench_resize.py": [["--sizes", "64x48", "--frames", "4", "--rounds", "1", "--short-side", "56", "--crop", "48",
                         "--no-real-clip"]],
    "bench_shards.py": [["--videos", "4", "--rounds", "1"]],
    "bench_stream.py": [["--videos", "16", "--epochs", "1"]],
    "bench_train.py": [["epoch", "--videos", "16", "--rounds", "1"], ["read", "--videos", "8", "--rounds", "1"]],
    "bench_views.py": [["--train-per-class", "2", "--val-per-class", "1", "--test-per-class", "1", "--frames", "4",
                        "--ks", "2", "--seeds", "2", "--epochs", "1"]],
}
ELSEWHERE = {"bench_open.py", "bench_formats.py"}


def test_every_benchmark_has_a_tiny_run():
    scripts = {os.path.basename(p) for p in glob.glob(os.path.join(BENCH, "bench_*.py"))}
    assert scripts == set(TINY) | ELSEWHERE


def _run_all(script: str, args: list[str], tmp: str) -> list[tuple[list[str], subprocess.CompletedProcess]]:
    """The script's runs in order (``&&`` separates them), in one scratch folder."""
    runs, done = [[]], []
    for a in (a.replace("{tmp}", tmp) for a in args):
        runs.append([]) if a == "&&" else runs[-1].append(a)
    for run in runs:
        p = subprocess.run([sys.executable, os.path.abspath(os.path.join(BENCH, script)), *run], capture_output=True,
                           text=True, timeout=600, env={**os.environ, "TMPDIR": tmp})
        done.append((run, p))
        if script == "bench_gpu.py" and run[0] != "report":  # as gpu.sh does: each part's lines to PART.jsonl
            with open(os.path.join(tmp, f"{run[0]}.jsonl"), "w") as f:
                f.write(p.stdout)
        if p.returncode:
            break
    return done


CASES = [(s, tuple(a)) for s, runs in TINY.items() for a in runs]
_STARTED: dict = {}


def start() -> None:
    """Submit every tiny run to two background threads (once per session)."""
    if _STARTED:
        return
    import atexit
    import shutil
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    root = tempfile.mkdtemp(prefix="featcache-tiny-benchmarks-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    pool = ThreadPoolExecutor(2, thread_name_prefix="tiny-benchmark")
    for i, (script, args) in enumerate(CASES):
        tmp = os.path.join(root, f"{i}-{script[:-3]}")
        os.makedirs(tmp)
        _STARTED[script, args] = pool.submit(_run_all, script, list(args), tmp)
    pool.shutdown(wait=False)


@pytest.fixture(scope="module")
def tiny_runs():
    start()  # already running when the session collected this module's tests
    return {case: future.result() for case, future in _STARTED.items()}


@pytest.mark.slow
@pytest.mark.parametrize("script,args", CASES,
                         ids=lambda v: v if isinstance(v, str) else "-".join(x for x in v if x.isalpha())[:20])
def test_benchmark_runs_at_a_tiny_size(script, args, tiny_runs):
    for run, p in tiny_runs[script, tuple(args)]:
        assert p.returncode == 0, f"{script} {' '.join(run)}: {p.stderr[-2000:]}"
        rows = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
        assert rows or run[0] == "report", p.stdout[-2000:]
    if script == "bench_gpu.py":  # report: the parts' lines as a RESULTS section
        assert p.stdout.startswith("## The GPU path") and '"part": "extract"' in p.stdout, p.stdout[-2000:]
