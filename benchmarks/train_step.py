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
import platform
import resource
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def openblas_core():
    """The kernel family NumPy's OpenBLAS dispatched to (e.g. SkylakeX, Zen, Haswell), or None."""
    import ctypes

    import numpy  # noqa: F401  (loads OpenBLAS)

    with open("/proc/self/maps") as maps:
        paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line})
    for path in paths:
        library = ctypes.CDLL(path)
        for name in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename", "openblas_get_corename64_",
                     "openblas_get_corename"):
            function = getattr(library, name, None)
            if function is not None:
                function.restype = ctypes.c_char_p
                return function().decode()
    return None


def matmul_peak(size=4096, repeats=3):
    """Best-of GFLOP/s of a size² float32 matmul in NumPy and in TensorFlow (dense peak)."""
    import numpy as np
    import tensorflow as tf

    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    flops = 2.0 * size**3
    results = {}
    for name, call in (("numpy", lambda: a @ a), ("tensorflow", lambda: tf.matmul(a, a).numpy())):
        call()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        results[name] = round(flops / min(times) / 1e9, 1)
    results["best_gflops"] = max(results["numpy"], results["tensorflow"])
    results.update(size=size, repeats=repeats, openblas_core=openblas_core())
    return results


def training_passes(method, model_config):
    """Forward-pass equivalents per image pair: a trained path costs 3 (forward + backward ≈ 2 forwards), a
    momentum encoder's forward 1. Two trained views: 6; MoCo's asymmetric form (queries from view 1, keys
    from view 2): 3 + 1 = 4; its symmetric form: 2 × 4 = 8."""
    if method == "moco":
        return 8 if model_config.settings.moco_form == "symmetric" else 4
    return 6


def forward_macs(model):
    """Multiply-adds of one image through every Conv2D and Dense layer (nested models and heads included)."""
    import keras

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


def build(args):
    import keras

    import amcl_keras as amcl

    shape = (args.image_size, args.image_size, args.channels)
    encoder = amcl.encoders.get(args.encoder, shape, width=args.width, options=json.loads(args.encoder_options or "null"))
    overrides = [
        f"model.method={args.method}", f"model.amcl={str(args.amcl).lower()}", f"model.num_heads={3 if args.amcl else 1}",
        f"data.batch_size={args.batch}", *([f"model.queue_size={max(4096, 2 * args.batch)}"] if args.method == "moco" else []),
    ]
    if args.projection_dim:
        overrides.append(f"model.projection_dim={args.projection_dim}")
    if args.hidden_dim:
        overrides.append(f"model.hidden_dim={args.hidden_dim}")
    if args.objective:
        overrides.append(f"model.objective={args.objective}")
    config = amcl.config.load(None, overrides)
    model = amcl.methods.get(args.method).from_model_config(encoder, config.model, args.batch)
    model.compile(
        optimizer=keras.optimizers.SGD(0.06, momentum=0.9, weight_decay=5e-4, global_clipnorm=1.0),
        jit_compile=args.jit,
        steps_per_execution=args.steps_per_execution,
    )
    return model, encoder, config.model


def measure(args):
    if args.replicas > 1:
        from amcl_keras.distribute import use_cpu_replicas

        use_cpu_replicas(args.replicas)
    import keras
    import numpy as np
    import tensorflow as tf

    from amcl_keras.distribute import make_strategy

    strategy = make_strategy("mirrored" if args.replicas > 1 else "default", args.replicas)
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(args.precision)
    with strategy.scope():
        model, encoder, model_config = build(args)
    rng = np.random.default_rng(0)
    shape = (args.batch, args.image_size, args.image_size, args.channels)
    views = (rng.uniform(size=shape).astype("float32"), rng.uniform(size=shape).astype("float32"))
    dataset = tf.data.Dataset.from_tensors(views).repeat()
    times = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            times.append((time.perf_counter() - self.start) / args.steps_per_execution)

    per_call = args.steps_per_execution
    model.fit(dataset, epochs=1, steps_per_epoch=args.warmup * per_call, verbose=0)
    model.fit(dataset, epochs=1, steps_per_epoch=args.steps * per_call, verbose=0, callbacks=[Timer()])
    step = statistics.median(times)
    macs = forward_macs(encoder) + forward_macs(model.projector)
    flops = 2 * macs * args.batch * training_passes(args.method, model_config)
    result = {
        "method": args.method, "amcl": args.amcl, "encoder": args.encoder, "encoder_options": args.encoder_options,
        "trainable_weights": int(sum(np.prod(v.shape) for v in encoder.trainable_weights)),
        "feature_dim": int(encoder.output.shape[-1]), "batch_pairs": args.batch,
        "num_heads": model_config.num_heads, "objective": model_config.objective if args.amcl else None,
        "image_shape": list(shape[1:]), "jit_compile": args.jit, "replicas": args.replicas,
        "steps_per_execution": args.steps_per_execution, "precision": args.precision,
        "gpus": len(tf.config.list_physical_devices("GPU")), "threads": os.environ.get("TF_NUM_INTRAOP_THREADS"),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
        "median_step_s": round(step, 4), "steps_timed": len(times), "images_per_s": round(2 * args.batch / step, 2),
        "forward_gmac_per_image": round(macs / 1e9, 4), "train_flops_per_step": flops,
        "gflops_per_s": round(flops / step / 1e9, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peak", action="store_true", help="measure the matmul peak instead of a step")
    parser.add_argument("--peak-size", type=int, default=4096, help="matrix side of the --peak matmul")
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--amcl", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--encoder", default="resnet18_cifar")
    parser.add_argument("--width", type=int)
    parser.add_argument("--encoder-options", help="model.encoder_options as JSON, e.g. '{\"patch_size\": 4}'")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256, help="pairs per step")
    parser.add_argument("--projection-dim", type=int)
    parser.add_argument("--hidden-dim", type=int)
    parser.add_argument("--objective", help="AMCL objective (authors, normalized, rectified; default: the library's)")
    parser.add_argument("--jit", action=argparse.BooleanOptionalAction, default=False,
                        help="XLA (measured slower on CPU: see benchmarks/results/all_cpu2.md)")
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
