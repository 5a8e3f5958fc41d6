"""The GPU check, in one call: what matters for mirrored multi-GPU users, measured on the GPU at hand; one JSON.

    python -m benchmarks.gpu_check                 # on a GPU machine: < 8 minutes on one GPU
    python -m benchmarks.gpu_check --quick         # a tiny model, a few steps: checks the script (CPU too)
    bash benchmarks/gpu_check.sh                   # the same, writing $OUT/gpu_check.json

What it reports (each part in its own process, so one failure does not hide the others):
- `gpus`: the visible GPUs (name, compute capability), or null with a `note` saying there is no GPU — the
  check still runs on CPU, so it stays tested where no GPU is lent;
- `tests`: the test files that exercise GPU-specific paths (2 replicas == 1 device, mixed precision, XLA
  autotuning, the non-finite guard), their pass/fail counts and seconds (skipped by `--no-tests`);
- `peak_tflops`: the device's dense matmul peak per dtype (float32 — TF32 where TF uses it —, float16, bfloat16),
  measured with `tf.matmul`;
- `steps`: AMCL-SimCLR's training step (ResNet-18 CIFAR stem, batch 256 pairs) in float32 / mixed_float16 /
  mixed_bfloat16, XLA off and on: median seconds, images/s, TFLOP/s and MFU against the peak of the step's
  compute dtype (a precision the device cannot run is reported as an error, not hidden);
- `amcl_overhead`: every registered method's step with AMCL over its 1-head baseline (float32, XLA off);
- `onnx`: the exported encoder's parity (max |Δ|) under onnxruntime's first provider (CUDA where installed).
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

from amcl_keras import registry
from benchmarks import harness

GPU_TESTS = ["tests/methods/test_distributed.py", "tests/test_mixed_precision.py", "tests/test_autotune.py",
             "tests/methods/test_nonfinite_step.py"]
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
COMPUTE_DTYPE = {"float32": "float32", "mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}


def gpus():
    import tensorflow as tf  # noqa: PLC0415

    found = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        found.append({"name": details.get("device_name", device.name),
                      "compute_capability": list(details.get("compute_capability") or [])})
    return found


def peak_tflops(size, repeats=5):
    """{dtype: best TFLOP/s of a size² matmul} on the default device."""
    import tensorflow as tf  # noqa: PLC0415

    peaks = {}
    for dtype in ("float32", "float16", "bfloat16"):
        try:
            a = tf.random.uniform((size, size), dtype=tf.float32)
            a = tf.cast(a, dtype)
            tf.matmul(a, a).numpy()  # warm-up
            seconds = harness.timings(lambda: tf.matmul(a, a).numpy(), repeats, warmup=1)
            peaks[dtype] = round(2.0 * size**3 / min(seconds) / 1e12, 3)
        except Exception as error:  # a dtype the device has no kernel for
            peaks[dtype] = f"error: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
    return peaks


def step(args, method, amcl_on=True, precision="float32", jit=False):
    """One `benchmarks.train_step` measurement in its own process, or {"error": ...}."""
    command = [sys.executable, "-m", "benchmarks.train_step", "--method", method, "--encoder", args.encoder,
               "--batch", str(args.batch), "--image-size", str(args.image_size), "--warmup", str(args.warmup),
               "--steps", str(args.steps), "--precision", precision, "--amcl" if amcl_on else "--no-amcl",
               "--jit" if jit else "--no-jit"]
    if args.width:
        command += ["--width", str(args.width)]
    try:
        result = harness.run_json(command, timeout=args.timeout)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        return {"error": str(error).strip().splitlines()[-1][:300]}
    keep = ("median_step_s", "images_per_s", "gflops_per_s", "train_flops_per_step", "peak_rss_mib")
    return {key: result[key] for key in keep}


def run_tests(timeout):
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", *GPU_TESTS],
                               capture_output=True, text=True, timeout=timeout)
    summary = (completed.stdout.strip().splitlines() or [""])[-1]
    return {"files": GPU_TESTS, "exit_code": completed.returncode, "summary": summary,
            "seconds": round(time.perf_counter() - started, 1)}


def onnx_parity(args):
    """Export a small encoder to ONNX and compare onnxruntime's first provider with Keras on random images."""
    try:
        import onnxruntime  # noqa: PLC0415
    except ImportError:
        return {"error": "onnxruntime is not installed"}
    import amcl_keras as amcl  # noqa: PLC0415

    encoder = amcl.encoders.small_convnet((32, 32, 3), width=16)
    with tempfile.TemporaryDirectory() as folder:
        amcl.export.export_encoder(encoder, pathlib.Path(folder) / "export", formats=["onnx"])
        providers = onnxruntime.get_available_providers()
        session = onnxruntime.InferenceSession(str(pathlib.Path(folder) / "export" / "encoder.onnx"), providers=providers)
        images = np.random.default_rng(0).integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)  # what it serves
        name = session.get_inputs()[0].name
        got = session.run(None, {name: images})[0]
    expected = np.asarray(encoder(images.astype("float32") / 255.0, training=False))
    return {"provider": session.get_providers()[0], "available": providers,
            "max_abs_diff": float(np.max(np.abs(got - expected)))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a small convnet, batch 16, 1 + 2 steps, float32 without XLA, one method, no tests: checks "
                             "the script")
    parser.add_argument("--no-tests", action="store_true", help="skip the test files")
    parser.add_argument("--out", type=pathlib.Path, help="also write the JSON here")
    args = parser.parse_args()
    quick = args.quick
    args.encoder, args.width = ("small_convnet", 16) if quick else ("resnet18_cifar", None)
    args.batch, args.image_size = (16, 32) if quick else (256, 32)
    args.warmup, args.steps, args.timeout = (1, 2, 300) if quick else (3, 10, 240)
    started = time.perf_counter()
    found = gpus()
    result = {"benchmark": "gpu_check", "command": "python -m benchmarks.gpu_check " + " ".join(sys.argv[1:]),
              "gpus": found or None, "machine": harness.machine(), "versions": harness.versions(),
              "settings": {"encoder": args.encoder, "batch_pairs": args.batch, "warmup": args.warmup, "steps": args.steps}}
    if not found:
        result["note"] = ("no GPU: TensorFlow sees none (no GPU build, no driver, or CUDA_VISIBLE_DEVICES empty); "
                          "what follows ran on the CPU")
    if not (quick or args.no_tests):
        result["tests"] = run_tests(timeout=240)
    peaks = peak_tflops(1024 if quick else 8192)
    result["peak_tflops"] = peaks
    steps = {}
    for precision in PRECISIONS[:1] if quick else PRECISIONS:
        for jit in (False,) if quick else (False, True):
            entry = step(args, harness.DEFAULT_METHOD, True, precision, jit)
            peak = peaks.get(COMPUTE_DTYPE[precision])
            if "gflops_per_s" in entry and isinstance(peak, float) and peak > 0:
                entry["mfu"] = round(entry["gflops_per_s"] / 1e3 / peak, 3)
            steps[f"{precision}{', xla' if jit else ''}"] = entry
    result["steps"] = steps
    methods = registry.names()[:1] if quick else registry.names()
    overhead = {}
    for method in methods:
        plain, with_amcl = step(args, method, False), step(args, method, True)
        overhead[method] = {"baseline_s": plain.get("median_step_s"), "amcl_s": with_amcl.get("median_step_s"),
                            "errors": [e["error"] for e in (plain, with_amcl) if "error" in e] or None}
        if plain.get("median_step_s") and with_amcl.get("median_step_s"):
            overhead[method]["ratio"] = round(with_amcl["median_step_s"] / plain["median_step_s"], 3)
    result["amcl_overhead"] = overhead
    try:
        result["onnx"] = onnx_parity(args)
    except Exception as error:  # the check reports, it does not stop
        result["onnx"] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
    result["seconds"] = round(time.perf_counter() - started, 1)
    if args.out:
        harness.write_json(result, args.out)
    print(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
