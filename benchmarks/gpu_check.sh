#!/usr/bin/env bash
# The GPU check in one call (for a session lent a device; < 8 minutes on one GPU): see benchmarks/gpu_check.py.
# Prints one JSON and writes it to $OUT/gpu_check.json (or ./gpu_check.json). On a machine without a GPU it runs on
# the CPU and says "no GPU". Needs the GPU build of TensorFlow: pip install "tensorflow[and-cuda]" (see requirements.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: no GPU driver" >&2
python -m benchmarks.gpu_check --out "${OUT:-.}/gpu_check.json" "$@"
