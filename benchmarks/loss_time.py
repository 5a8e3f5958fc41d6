"""The losses alone: forward + backward time of each baseline loss vs its AMCL loss.

On random embeddings of one global batch (no encoder, no heads), compiled with tf.function,
median of `--repeats` calls after two warm-up calls. Shows what the adaptive temperatures
themselves cost (φ once per sample, one matmul per head for the pair scores, top-k), apart from
the extra heads. Prints one JSON line.

    python -m benchmarks.loss_time [--batch 256]
"""

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    import tensorflow as tf

    import amcl_keras as amcl

    b = args.batch
    losses = {
        "simclr": (128, lambda: amcl.losses.NTXentLoss(0.5), lambda: amcl.losses.AMCLNTXentLoss(128)),
        "moco": (128, lambda: amcl.losses.InfoNCELoss(0.1), lambda: amcl.losses.AMCLInfoNCELoss(128)),
        "barlow_twins": (2048, lambda: amcl.losses.BarlowTwinsLoss(), lambda: amcl.losses.AMCLBarlowTwinsLoss(2048, b)),
        "simsiam": (2048, lambda: amcl.losses.SimSiamLoss(), lambda: amcl.losses.AMCLSimSiamLoss(2048)),
    }
    result = {"benchmark": "loss_time", "batch_pairs": b, "losses": {}}
    for method, (dim, baseline, adaptive) in losses.items():
        entry = {}
        for name, make, heads in (("baseline_1_head", baseline, 1), ("amcl_1_head", adaptive, 1), ("amcl_3_heads", adaptive, 3)):
            loss = make()
            z = [tf.random.normal([b, heads, dim]) for _ in range(4)]
            queue = tf.random.normal([heads, 4096, dim])

            @tf.function
            def step(z=z, loss=loss, queue=queue, method=method):
                with tf.GradientTape() as tape:
                    tape.watch(z)
                    if method == "moco":
                        value = loss(z[0], z[1], queue)
                    elif method == "simsiam":
                        value = loss(z[0], z[1], z[2], z[3])
                    else:
                        value = loss(z[0], z[1])
                return tape.gradient(value, z + list(loss.trainable_variables))

            step()
            step()
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                tf.nest.map_structure(lambda t: t.numpy() if t is not None else None, step())
                times.append(time.perf_counter() - start)
            entry[name] = round(1000 * statistics.median(times), 2)
        result["losses"][method] = entry
    print(json.dumps(result))


if __name__ == "__main__":
    main()
