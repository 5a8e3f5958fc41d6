"""Input pipeline vs training step: can augmentation keep the step fed?

In one run, on this machine:
1. per family, the time of the Keras-core layer (what the presets use) next to keras-cv 0.9's
   equivalent, on a batch of 256 colour images 32×32 inside tf.data (the basis of the choice
   documented in amcl_keras/augment.py);
2. images/s delivered by the full tf.data pipeline (two views per image, parallel map,
   prefetch) and the cost of the same augmentation inside a compiled step;
3. images/s the training step consumes (demo encoder; ResNet-18 with --resnet18).
Goal: the pipeline delivers at least 3× what the step consumes. Prints JSON and a table.

    python -m benchmarks.input_pipeline [--resnet18]
"""

import argparse
import os
import time

import keras
import numpy as np
import tensorflow as tf

from amcl_keras import augment, data
from benchmarks import harness


def _in_tf_data(layer, batch):
    dataset = tf.data.Dataset.from_tensors(batch).map(lambda x: layer(x, training=True))
    return lambda: next(iter(dataset))


def family_comparison(batch):
    import keras_cv

    size = batch.shape[1]
    core = {letter: augment.family_layer(letter, size, 3) for letter in "abcde"}
    kcv = {
        "a": keras_cv.layers.RandomCropAndResize((size, size), crop_area_factor=(0.08, 1.0),
                                                 aspect_ratio_factor=(3 / 4, 4 / 3)),
        "b": keras_cv.layers.RandomGaussianBlur(kernel_size=3, factor=(0.1, 2.0)),
        "c": keras_cv.layers.RandomApply(keras_cv.layers.Grayscale(output_channels=3), rate=0.2),
        "d": keras_cv.layers.RandomApply(keras_cv.layers.RandomColorJitter(
            value_range=(0, 1), brightness_factor=0.4, contrast_factor=0.4, saturation_factor=0.4, hue_factor=0.1),
            rate=0.8),
        "e": keras_cv.layers.RandomFlip("horizontal"),
    }
    rows = {}
    for letter in "abcde":
        row = {"keras_core_ms": round(1000 * harness.median_seconds(_in_tf_data(core[letter], batch)), 2)}
        try:
            row["keras_cv_ms"] = round(1000 * harness.median_seconds(_in_tf_data(kcv[letter], batch)), 2)
        except Exception as error:  # keras-cv 0.9 layers fail in some graph contexts
            row["keras_cv_ms"] = None
            row["keras_cv_error"] = f"{type(error).__name__}: {str(error)[:120]}"
        rows[letter] = row
    return rows


def pipeline_rate(images, batch_size, steps=20):
    """Pairs/s the tf.data pipeline delivers with the library's default augmentation preset."""
    augmenter = augment.view_augmenter(images.shape[1], images.shape[-1], crop_scale=(0.2, 1.0))
    source = tf.data.Dataset.from_tensor_slices((images, np.zeros(len(images), np.int64)))
    views = data.pretraining_views(source, batch_size, augmenter, shuffle_buffer=len(images)).repeat()
    iterator = iter(views)
    for _ in range(3):
        next(iterator)
    start = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    return steps * batch_size / (time.perf_counter() - start), augmenter


def in_step_cost(augmenter, images, batch_size):
    batch = data.to_float_images(images[:batch_size])
    fn = tf.function(lambda x: (augmenter(x, training=True), augmenter(x, training=True)))
    return harness.median_seconds(lambda: fn(batch))


def step_rate(encoder_name, shape, batch_size, steps=3):
    """Pairs/s the library's default method (AMCL, 3 heads) trains at on `encoder_name`, XLA on."""
    keras.utils.set_random_seed(0)
    model = harness.build_model(harness.DEFAULT_METHOD, True, batch_size, encoder_name, shape, jit=True)[0]
    dataset = harness.synthetic_views(batch_size, shape)
    model.fit(dataset, epochs=1, steps_per_epoch=2, verbose=0)
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    return steps * batch_size / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--resnet18", action="store_true", help="also time the ResNet-18 step (~1 min on 2 cores)")
    harness.add_json_option(parser)
    args = parser.parse_args()

    photos = data.load_rgb_samples()
    rgb = np.resize(tf.image.resize(photos, (32, 32)).numpy().round().astype(np.uint8), (5000, 32, 32, 3))
    gray = data.load_shipped("train")[0]
    result = {"benchmark": "input_pipeline", "batch": args.batch, "cpus": os.cpu_count(),
              "machine": harness.machine(), "versions": harness.versions()}
    result["families_32x32x3_ms_per_batch"] = family_comparison(data.to_float_images(rgb[: args.batch]))
    settings = {"demo (28x28x1, small_convnet)": (gray, "small_convnet", (28, 28, 1))}
    if args.resnet18:
        settings["cifar-like (32x32x3, resnet18_cifar)"] = (rgb, "resnet18_cifar", (32, 32, 3))
    result["settings"] = {}
    for name, (images, encoder, shape) in settings.items():
        delivered, augmenter = pipeline_rate(images, args.batch)
        consumed = step_rate(encoder, shape, args.batch)
        in_step = in_step_cost(augmenter, images, args.batch)
        result["settings"][name] = {
            "tf_data_images_per_s": round(delivered, 1),
            "step_consumes_images_per_s": round(consumed, 1),
            "headroom": round(delivered / consumed, 2),
            "in_step_augmentation_ms_per_batch": round(1000 * in_step, 1),
            "in_step_share_of_step": round(in_step / (args.batch / consumed), 3),
        }
    harness.report(result, None, ["family", "Keras core (ms/batch)", "keras-cv 0.9 (ms/batch)"],
                   [[letter, row["keras_core_ms"], row["keras_cv_ms"] if row["keras_cv_ms"] is not None else "fails"]
                    for letter, row in result["families_32x32x3_ms_per_batch"].items()], args.json)
    print()
    print(harness.markdown_table(
        ["setting", "tf.data images/s", "step consumes images/s", "headroom", "in-step aug ms/batch"],
        [[name, row["tf_data_images_per_s"], row["step_consumes_images_per_s"], row["headroom"],
          row["in_step_augmentation_ms_per_batch"]] for name, row in result["settings"].items()]))


if __name__ == "__main__":
    main()
