"""The losses alone: forward + backward time of each baseline loss vs its AMCL loss.

On random embeddings of one global batch (no encoder, no heads), compiled with tf.function,
median of `--repeats` calls after two warm-up calls. Shows what the adaptive temperatures
themselves cost (φ once per sample, one matmul per head for the pair scores, top-k), apart from
the extra heads. Every registered method, each loss as its model builds it from the method's
defaults (its settings dataclass: projection size, objective, β, key queue). Prints one JSON line.

    python -m benchmarks.loss_time [--batch 256]
"""

import argparse
import inspect
import json

import tensorflow as tf

import amcl_keras as amcl
from amcl_keras import registry
from benchmarks import harness

VARIANTS = (("baseline_1_head", False, 1), ("amcl_1_head", True, 1), ("amcl_3_heads", True, 3))


def method_loss(method, amcl_on, batch, extra=()):
    """(loss, model config): the loss `method`'s model trains with by default (AMCL or baseline) for a global batch
    of `batch` pairs (`extra`: more `model.KEY=VALUE` overrides)."""
    config = harness.model_config(method, amcl_on, batch, extra=extra)
    encoder = amcl.encoders.get("small_convnet", (28, 28, 1), width=4)  # only the model's loss is used
    return registry.method(method).model.from_model_config(encoder, config, batch).contrastive_loss, config


def loss_step(loss, batch, heads, settings):
    """A compiled forward + backward of `loss` on random `[batch, heads, projection_dim]` embeddings (a random
    `[heads, queue_size, projection_dim]` key queue for the argument named `queue`)."""
    dim = settings.projection_dim
    names = [name for name, parameter in inspect.signature(loss.loss_and_stats).parameters.items()
             if parameter.default is inspect.Parameter.empty and parameter.kind == parameter.POSITIONAL_OR_KEYWORD]
    z = [tf.random.normal([batch, heads, dim]) for name in names if name != "queue"]
    queue = tf.random.normal([heads, settings.queue_size, dim]) if "queue" in names else None

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(z)
            embeddings = iter(z)
            value = loss(*(queue if name == "queue" else next(embeddings) for name in names))
        return tape.gradient(value, z + list(loss.trainable_variables))

    return lambda: tf.nest.map_structure(lambda t: t.numpy() if t is not None else None, step())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    b = args.batch
    result = {"benchmark": "loss_time", "batch_pairs": b, "losses": {}}
    for method in registry.names():
        settings = registry.method(method).settings
        result["losses"][method] = {
            name: round(1000 * harness.median_seconds(loss_step(method_loss(method, amcl_on, b)[0], b, heads, settings),
                                                      args.repeats), 2)
            for name, amcl_on, heads in VARIANTS
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
