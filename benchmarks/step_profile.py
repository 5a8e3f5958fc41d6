"""Where a training step's time goes: the TF profiler's op-level trace of the step, attributed to categories.

The model trains on a fixed batch of random images (as `train_step`), one warm-up call, then `--steps` steps under
`tf.profiler.experimental`. Every TensorFlow op the trace records on the host is put in one category by its op type
and name (the loss and φ by their layer's name scope, the optimizer by its own): convolution, matmul, batch norm,
elementwise (activations, adds, casts), reductions, data movement (transposes, copies, concatenations, slicing,
oneDNN layout conversions), the loss (AMCL's temperatures included), the optimizer (clipping included) and other.
Each category's share is its summed op time over the total op time (ops of two threads can overlap, so the shares are
of op time, not of wall time); `seconds_per_step` spreads the measured wall-clock step over the categories by
share. The step's MFU is its analytic training FLOPs (`train_step`: 2 × MACs of every Conv2D and Dense × passes)
over the median step time, against the machine's dense matmul peak measured in the same run.

With XLA (`--jit`) the trace holds compiled clusters, not ops: run without it for the attribution (the library's
CPU default picks by measurement, `train.jit_compile: auto`).

    python -m benchmarks.step_profile                                    # AMCL-SimCLR, ResNet-18, batch 256
    python -m benchmarks.step_profile --encoder small_convnet --image-size 28 --channels 1 --batch 64   # quick
    ONEDNN_MAX_CPU_ISA=AVX2 python -m benchmarks.step_profile             # capped to AVX2
    python -m benchmarks.step_profile --no-fused-batch-norm                     # Keras's own batch norm, for comparison
"""

import argparse
import collections
import glob
import os
import re
import statistics
import tempfile

import keras
import tensorflow as tf

from amcl_keras.normalization import SyncBatchNormalization
from benchmarks import harness, train_step

CATEGORIES = ("convolution", "matmul", "batch norm", "elementwise", "reduction", "data movement", "loss", "optimizer",
              "non-finite guard", "other")

# op type → category (first match; the type is matched after oneDNN's `_Mkl`/`_MklNative`/`_Fused` prefixes go)
_TYPE_RULES = (
    ("convolution", r"Conv2D|Conv3D|DepthwiseConv"),
    ("matmul", r"MatMul|Einsum"),
    ("batch norm", r"BatchNorm"),
    ("data movement", r"Transpose|Reshape|Identity|Concat|Split|Slice|Pack|Unpack|Tile|Gather|Scatter|Pad|"
                      r"ToTf|InputConversion|Copy|Squeeze|ExpandDims|Shape|Fill|BroadcastTo|Const|ZerosLike|OnesLike"),
    ("reduction", r"Sum|Mean|Max$|Min$|Prod|ArgMax|ArgMin|TopK|Norm"),
    ("elementwise", r"Relu|Sigmoid|Tanh|Softplus|Exp|Log|Sqrt|Rsqrt|Square|Add|Sub|Mul|Div|RealDiv|Neg|Maximum|"
                    r"Minimum|Cast|Select|Where|Greater|Less|Equal|Abs|Sign|Reciprocal|Pow|FloorMod|Floor|Ceil|"
                    r"BiasAdd|IsFinite|LogicalAnd|LogicalOr|LogicalNot|StopGradient|SoftmaxCrossEntropy|Softmax"),
)
# name scopes that own an op whatever its type but a convolution's (checked in order, before the other type rules;
# lower case): the train step's own scopes (`methods/base.py`), then batch-norm layers (named `*_bn` here); the
# loss's batch norms (a projector's output BN) count as batch norm, the loss's matmuls as the loss
_SCOPE_RULES = (
    ("non-finite guard", ("nonfinite_guard/",)),
    ("optimizer", ("optimizer/",)),
    ("batch norm", ("batch_norm", "_bn/", "_bn_", "/moments/")),
    ("loss", ("loss/",)),
)
_OP_EVENT = re.compile(r"^(?P<name>[^:]+):(?P<type>[A-Za-z0-9_]+)$")


def categorize(name, op_type):
    """The category of one TF op from its full name (scopes) and type."""
    lowered = name.lower()
    bare = re.sub(r"^_(Mkl(Native)?)?(Fused)?", "", op_type)
    if re.search(_TYPE_RULES[0][1], bare):
        return "convolution"
    for category, needles in _SCOPE_RULES:
        if any(needle in lowered for needle in needles):
            return category
    for category, pattern in _TYPE_RULES:
        if re.search(pattern, bare):
            return category
    return "other"


def op_times(logdir):
    """{(op name, op type): summed picoseconds} of every TF op event in the trace under `logdir`."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: PLC0415

    totals = collections.Counter()
    for path in glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")):
        space = xplane_pb2.XSpace()
        with open(path, "rb") as handle:
            space.ParseFromString(handle.read())
        for plane in space.planes:
            if not plane.name.startswith("/host:"):
                continue
            for line in plane.lines:
                for event in line.events:
                    match = _OP_EVENT.match(plane.event_metadata[event.metadata_id].name)
                    if match:
                        totals[(match["name"], match["type"])] += event.duration_ps
    return totals


def attribute(totals, step_seconds):
    """{category: {share, seconds_per_step, top_ops}} from `op_times`, the wall-clock step spread by share."""
    by_category = collections.defaultdict(collections.Counter)
    for (name, op_type), picoseconds in totals.items():
        by_category[categorize(name, op_type)][op_type] += picoseconds
    whole = sum(totals.values()) or 1
    return {
        category: {
            "share": round(sum(by_category[category].values()) / whole, 4),
            "seconds_per_step": round(step_seconds * sum(by_category[category].values()) / whole, 4),
            "top_ops": {op: round(ps / whole, 4) for op, ps in by_category[category].most_common(4)},
        }
        for category in CATEGORIES
    }


def profile(args):
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(args.precision)
    shape = (args.image_size, args.image_size, args.channels)
    model, encoder, model_config = harness.build_model(args.method, args.amcl, args.batch, args.encoder, shape,
                                                       jit=args.jit)
    if not args.fused_batch_norm:  # Keras's own batch norm (separate mean / variance / normalize ops), for comparison
        for layer in model._flatten_layers():
            if isinstance(layer, SyncBatchNormalization):
                layer.fused = False
    dataset = harness.synthetic_views(args.batch, shape)
    model.fit(dataset, epochs=1, steps_per_epoch=args.warmup, verbose=0)
    timer = harness.StepTimer()
    model.fit(dataset, epochs=1, steps_per_epoch=args.steps, verbose=0, callbacks=[timer])  # timed, not traced
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        model.fit(dataset, epochs=1, steps_per_epoch=args.trace_steps, verbose=0)
        tf.profiler.experimental.stop()
        totals = op_times(logdir)
    step = statistics.median(timer.times)
    flops = 2 * (train_step.forward_macs(encoder) + train_step.forward_macs(model.projector)) * args.batch * (
        train_step.training_passes(args.method, model_config))
    peak = train_step.matmul_peak()
    return {
        "benchmark": "step_profile", "method": args.method, "amcl": args.amcl, "encoder": args.encoder,
        "batch_pairs": args.batch, "image_shape": list(shape), "jit_compile": args.jit, "precision": args.precision,
        "fused_batch_norm": args.fused_batch_norm,
        "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "default"),
        "median_step_s": round(step, 4), "steps_timed": len(timer.times), "steps_traced": args.trace_steps,
        "train_flops_per_step": flops, "gflops_per_s": round(flops / step / 1e9, 1),
        "matmul_peak_gflops": peak["best_gflops"], "mfu": round(flops / step / 1e9 / peak["best_gflops"], 3),
        "ops_traced": len(totals), "categories": attribute(totals, step),
        "machine": harness.machine(), "versions": harness.versions(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default=harness.DEFAULT_METHOD)
    parser.add_argument("--amcl", action=argparse.BooleanOptionalAction, default=True)
    harness.add_model_options(parser, encoder="resnet18_cifar", image_size=32, channels=3, batch=256)
    parser.add_argument("--precision", default="float32", choices=["float32", "mixed_float16", "mixed_bfloat16"])
    parser.add_argument("--fused-batch-norm", action=argparse.BooleanOptionalAction, default=True,
                        help="the library's fused batch norm (default) or Keras's own ops")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (not traced)")
    parser.add_argument("--trace-steps", type=int, default=1, help="steps under the profiler")
    harness.add_json_option(parser)
    args = parser.parse_args()
    result = profile(args)
    rows = [[category, f"{100 * entry['share']:.1f}%", f"{entry['seconds_per_step']:.3f}",
             ", ".join(f"{op} {100 * share:.1f}%" for op, share in entry["top_ops"].items())]
            for category, entry in sorted(result["categories"].items(), key=lambda item: -item[1]["share"])]
    title = (f"{args.method} (AMCL {args.amcl}), {args.encoder}, batch {args.batch} pairs, jit={args.jit}, "
             f"fused batch norm {args.fused_batch_norm}, "
             f"ISA cap {result['onednn_max_isa']}: step {result['median_step_s']:.3f} s, "
             f"{result['gflops_per_s']} GFLOP/s = {100 * result['mfu']:.0f}% of {result['matmul_peak_gflops']} GFLOP/s")
    harness.report(result, title, ["category", "share of op time", "s / step", "largest op types"], rows, args.json)


if __name__ == "__main__":
    main()
