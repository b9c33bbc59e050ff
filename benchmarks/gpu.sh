#!/usr/bin/env bash
# The GPU path on a lent device machine, at most ~8 minutes (issue 22, item 4). Installs nothing
# beyond the project's own install (.ci/install) and writes DIR/gpu.md, a RESULTS.md section:
#   (a) extraction frames/s vs the best bare bf16 forward (batch sweep), (b) decode frames/s with
#   1/2/4/8/16 decode workers and torchcodec's CUDA decoder (NVDEC), (c) the --compile speed-up.
# Usage, from the repository root: bash benchmarks/gpu.sh [DIR]   (DIR defaults to $OUT or gpu_out)
set -uo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-${OUT:-gpu_out}}"
mkdir -p "$DIR"
[ -x .venv/bin/featcache ] || bash .ci/install || exit 1
PY=.venv/bin/python
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc; } > "$DIR/device.txt" 2>&1
timeout 210 "$PY" benchmarks/bench_gpu.py extract --out "$DIR" | tee "$DIR/extract.jsonl"
timeout 150 "$PY" benchmarks/bench_gpu.py decode --out "$DIR" | tee "$DIR/decode.jsonl"
timeout 100 "$PY" benchmarks/bench_compile.py --batch 64 --batches 8 --rounds 3 | tee "$DIR/compile.jsonl"
"$PY" benchmarks/bench_gpu.py report --out "$DIR" > "$DIR/gpu.md"
echo "wrote $DIR/gpu.md"
