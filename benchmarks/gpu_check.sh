#!/usr/bin/env bash
# One short, prepared GPU check (for a session that is lent a device): ResNet-18 (CIFAR stem)
# AMCL-SimCLR and plain SimCLR at batch 256 pairs on one GPU, with and without XLA and mixed
# precision. One JSON line per configuration into $OUT/gpu_check.jsonl (or ./gpu_check.jsonl).
# Needs the GPU build of TensorFlow: pip install "tensorflow[and-cuda]==2.21.0" (see requirements.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}/gpu_check.jsonl"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "${OUT:-.}/gpu.txt"
run() { python -m benchmarks.train_step --encoder resnet18_cifar --batch 256 --warmup 3 --steps 10 "$@" | tail -1 >> "$out"; }
run --method simclr --no-amcl
run --method simclr
run --method simclr --jit
run --method simclr --precision mixed_float16
run --method simclr --jit --precision mixed_float16
run --method simclr --no-amcl --jit --precision mixed_float16
cat "$out"
