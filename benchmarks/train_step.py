"""One training-step measurement in its own process: time, images/s, FLOP/s, MFU and peak memory.

    python -m benchmarks.train_step --method simclr --amcl --encoder resnet18_cifar --batch 256
    python -m benchmarks.train_step --peak          # the machine's dense float32 matmul peak
    python -m benchmarks.train_step --encoder keras.applications.MobileNetV3Small --batch 64
    python -m benchmarks.train_step --encoder keras_hub.ViTBackbone --encoder-options '{"patch_size": 4}'

The step runs `model.fit` on a fixed batch of random images (augmentation excluded) for
`--warmup` untimed and `--steps` timed steps; the median step time is reported. FLOPs are
counted analytically: 2 × multiply-adds of every Conv2D and Dense layer of the encoder and the
heads (batch norm, activations and the loss are left out, so MFU is slightly understated; depthwise
convolutions and attention (MobileNets, EfficientNets, ViT) are left out too, so their FLOP/s are not comparable),
× 3 for forward + backward (the usual 1 : 2 ratio), × the 2·batch images of a step. Peak
memory is this process's maximum resident set size, read at the end.
"""

import argparse
import json
import os
import resource
import statistics

import keras
import numpy as np
import tensorflow as tf

from amcl_keras import registry
from amcl_keras.distribute import make_strategy, use_cpu_replicas
from benchmarks import harness


def matmul_peak(size=4096, repeats=3):
    """Best-of GFLOP/s of a size² float32 matmul in NumPy and in TensorFlow (dense peak)."""
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    flops = 2.0 * size**3
    results = {}
    for name, call in (("numpy", lambda: a @ a), ("tensorflow", lambda: tf.matmul(a, a).numpy())):
        results[name] = round(flops / min(harness.timings(call, repeats, warmup=1)) / 1e9, 1)
    results["best_gflops"] = max(results["numpy"], results["tensorflow"])
    results.update(size=size, repeats=repeats, openblas_core=harness.openblas_core())
    return results


def training_passes(method, model_config):
    """Forward-pass equivalents per image pair: a trained path costs 3 (forward + backward ≈ 2 forwards), a
    momentum encoder's forward 1. Two trained views: 6; MoCo's asymmetric form (queries from view 1, keys
    from view 2): 3 + 1 = 4; its symmetric form: 2 × 4 = 8."""
    form = getattr(model_config.settings, "moco_form", None)  # a method with a momentum encoder (MoCo)
    if form is not None:
        return 8 if form == "symmetric" else 4
    return 6


def forward_macs(model):
    """Multiply-adds of one image through every Conv2D and Dense layer (nested models and heads included)."""
    total = 0
    for layer in _leaf_layers(model):
        if isinstance(layer, keras.layers.Conv2D):
            try:
                output = layer.output.shape  # a conv of a functional model has a symbolic output
            except (AttributeError, ValueError):
                continue  # a sublayer of a custom layer (ViT's patch embedding): not counted
            kernel = layer.kernel.shape  # kh, kw, cin, cout
            spatial = output[1] * output[2]
            total += spatial * kernel[0] * kernel[1] * kernel[2] * kernel[3]
        elif isinstance(layer, keras.layers.Dense):
            total += layer.kernel.shape[0] * layer.kernel.shape[1]
    return int(total)


def _leaf_layers(layer):
    children = getattr(layer, "_layers", None) or []
    if not children:
        return [layer]
    out = []
    for child in children:
        out.extend(_leaf_layers(child))
    return out


def measure(args):
    use_cpu_replicas(args.replicas)  # before TensorFlow creates a tensor
    strategy = make_strategy("mirrored" if args.replicas > 1 else "default", args.replicas)
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(args.precision)
    shape = (args.image_size, args.image_size, args.channels)
    with strategy.scope():
        model, encoder, model_config = harness.build_model(
            args.method, args.amcl, args.batch, args.encoder, shape, width=args.width,
            encoder_options=json.loads(args.encoder_options or "null"), projection_dim=args.projection_dim,
            hidden_dim=args.hidden_dim, objective=args.objective, jit=args.jit,
            steps_per_execution=args.steps_per_execution)
    dataset = harness.synthetic_views(args.batch, shape)
    per_call = args.steps_per_execution
    timer = harness.StepTimer(per_call)
    model.fit(dataset, epochs=1, steps_per_epoch=args.warmup * per_call, verbose=0)
    model.fit(dataset, epochs=1, steps_per_epoch=args.steps * per_call, verbose=0, callbacks=[timer])
    times = timer.times
    step = statistics.median(times)
    macs = forward_macs(encoder) + forward_macs(model.projector)
    description = harness.machine()
    flops = 2 * macs * args.batch * training_passes(args.method, model_config)
    result = {
        "method": args.method, "amcl": args.amcl, "encoder": args.encoder, "encoder_options": args.encoder_options,
        "trainable_weights": int(sum(np.prod(v.shape) for v in encoder.trainable_weights)),
        "feature_dim": int(encoder.output.shape[-1]), "batch_pairs": args.batch,
        "num_heads": model_config.num_heads, "objective": model_config.objective if args.amcl else None,
        "image_shape": list(shape), "jit_compile": args.jit, "replicas": args.replicas,
        "steps_per_execution": args.steps_per_execution, "precision": args.precision,
        "gpus": description["gpus"], "threads": os.environ.get("TF_NUM_INTRAOP_THREADS"),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
        "median_step_s": round(step, 4), "steps_timed": len(times), "images_per_s": round(2 * args.batch / step, 2),
        "forward_gmac_per_image": round(macs / 1e9, 4), "train_flops_per_step": flops,
        "gflops_per_s": round(flops / step / 1e9, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "machine": description,
        "versions": harness.versions(),
    }
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peak", action="store_true", help="measure the matmul peak instead of a step")
    parser.add_argument("--peak-size", type=int, default=4096, help="matrix side of the --peak matmul")
    parser.add_argument("--method", default=harness.DEFAULT_METHOD, help=f"any of {registry.names()}")
    parser.add_argument("--amcl", action=argparse.BooleanOptionalAction, default=True)
    harness.add_model_options(parser, encoder="resnet18_cifar", image_size=32, channels=3, batch=256, jit=False,
                              jit_help="XLA (measured slower on CPU: see benchmarks/results/all_cpu2.md)")
    parser.add_argument("--encoder-options", help="model.encoder_options as JSON, e.g. '{\"patch_size\": 4}'")
    parser.add_argument("--objective", help="AMCL objective (authors, normalized, rectified; default: the library's)")
    parser.add_argument("--precision", default="float32", choices=["float32", "mixed_float16", "mixed_bfloat16"])
    parser.add_argument("--replicas", type=int, default=1, help="logical CPU replicas (MirroredStrategy when > 1)")
    parser.add_argument("--steps-per-execution", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    result = matmul_peak(args.peak_size) if args.peak else measure(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
