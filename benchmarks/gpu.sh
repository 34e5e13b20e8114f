#!/usr/bin/env bash
# The GPU checks in one go, from the repository root: the CUDA tests, resnet9 throughput on
# CIFAR-shaped data, and the default net's MFU. Sized to take well under 10 minutes on one
# H100 (not yet timed on one).
# Run:  benchmarks/gpu.sh            (PYTHON=/path/to/python to use another interpreter)
set -euo pipefail

PYTHON="${PYTHON:-.venv/bin/python}"
cd "$(dirname "$0")/.."

if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm \
        --format=csv
else
    echo "nvidia-smi: not found"
fi
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
      "available:", torch.cuda.is_available())'

echo "== tests/test_gpu.py (-m cuda)"
# A failing test still lets the benchmarks run (device time is scarce); the script then exits
# with the tests' status.
tests=0
"$PYTHON" -m pytest -q -rs -m cuda tests/test_gpu.py || tests=$?

echo "== benchmarks/gpu_throughput.py"
"$PYTHON" benchmarks/gpu_throughput.py

echo "== benchmarks/mfu.py --device cuda"
"$PYTHON" benchmarks/mfu.py --device cuda

if [ "$tests" -ne 0 ]; then
    echo "tests/test_gpu.py failed (pytest exit $tests)"
fi
exit "$tests"
