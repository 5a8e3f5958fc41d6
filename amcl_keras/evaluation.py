"""Evaluation of a frozen encoder: kNN (cosine, weighted votes) and a linear probe.

`protocol_text` describes both protocols from the same constants the functions below use, so
results files and messages state what actually ran. The features come from a pluggable
extractor, `extract(uint8 images [N, H, W, C]) -> float32 [N, F]`: the Keras encoder
(`keras_features`) or anything else wrapped in a `FeatureSource` (`export.artefact_features`: an
exported SavedModel, ONNX, LiteRT or int8 artefact).
"""

import dataclasses

import os
import pathlib
import platform
import time
import typing

import keras
import numpy as np
import tensorflow as tf

from amcl_keras import data, runs
from amcl_keras.constants import KNN_K, KNN_TEMPERATURE, PROBE_BATCH_SIZE, PROBE_EPOCHS, PROBE_LEARNING_RATE
from amcl_keras.data import to_float_images
from amcl_keras.errors import InvalidInputError

PROBE_OPTIMIZER = "Adam"


def protocol_text(probe_epochs=PROBE_EPOCHS, knn_k=KNN_K, knn_temperature=KNN_TEMPERATURE, train_split=None,
                  test_split=None):
    """`{"linear_probe": ..., "knn": ...}`: one line each on how the scores were computed."""
    probe = (f"softmax on standardised frozen features, {PROBE_OPTIMIZER} {PROBE_LEARNING_RATE:g}, batch "
             f"{PROBE_BATCH_SIZE}, {probe_epochs} epochs")
    knn = f"cosine, k={knn_k}, T={knn_temperature}, weighted votes exp(s/T)"
    if train_split is not None:
        probe += f", trained on split {train_split!r}, tested on {test_split!r}"
        knn += f", bank = {train_split!r}"
    return {"linear_probe": probe, "knn": knn}


def extract_features(encoder, images, image_size=None, batch_size=512):
    """Encoder features `[N, F]` (float32 NumPy) of uint8 images `[N, H, W, C]`, in inference mode."""
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
    dataset = dataset.map(lambda x: to_float_images(x, image_size)).prefetch(tf.data.AUTOTUNE)
    return np.concatenate([np.asarray(encoder(batch, training=False), np.float32) for batch in dataset])


def keras_features(encoder, image_size=None, batch_size=512):
    """The feature extractor of a Keras encoder: `extract(uint8 images) -> [N, F]`."""
    return lambda images: extract_features(encoder, images, image_size, batch_size)


def batched_features(run, batch_size=512):
    """The feature extractor of any `run(uint8 batch) -> [B, F]` (an exported artefact, which scales
    and resizes the images itself), fed `batch_size` images at a time."""
    def extract(images):
        return np.concatenate([np.asarray(run(images[start : start + batch_size]), np.float32)
                               for start in range(0, len(images), batch_size)])

    return extract


@dataclasses.dataclass(frozen=True)
class FeatureSource:
    """Where `evaluate_run` takes its features from instead of the run's Keras encoder."""

    extract: typing.Callable  # uint8 images [N, H, W, C] → float32 [N, F]
    name: str  # names the result file: eval-NAME.json
    description: dict  # recorded as the result's "features"


def knn_predict(train_features, train_labels, query_features, num_classes, k=KNN_K, temperature=KNN_TEMPERATURE,
                chunk=1024):
    """Weighted kNN on cosine similarity (as the AMCL authors and lightly): the k nearest training
    features vote for their label with weight exp(similarity / temperature)."""
    train = train_features / np.linalg.norm(train_features, axis=1, keepdims=True).clip(1e-12)
    query = query_features / np.linalg.norm(query_features, axis=1, keepdims=True).clip(1e-12)
    k = min(k, len(train))
    predictions = []
    for start in range(0, len(query), chunk):
        similarity = query[start : start + chunk] @ train.T
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        weights = np.exp(np.take_along_axis(similarity, nearest, axis=1) / temperature)
        votes = np.zeros((len(similarity), num_classes))
        np.add.at(votes, (np.arange(len(similarity))[:, None], train_labels[nearest]), weights)
        predictions.append(votes.argmax(axis=1))
    return np.concatenate(predictions)


def knn_accuracy(train_features, train_labels, test_features, test_labels, k=KNN_K, temperature=KNN_TEMPERATURE):
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    predicted = knn_predict(train_features, train_labels, test_features, num_classes, k, temperature)
    return float(np.mean(predicted == test_labels))


def linear_probe_accuracy(
    train_features, train_labels, test_features, test_labels, epochs=PROBE_EPOCHS, learning_rate=PROBE_LEARNING_RATE,
    batch_size=PROBE_BATCH_SIZE, seed=0,
):
    """Test accuracy of a softmax classifier (`PROBE_OPTIMIZER`) on standardised frozen features."""
    mean = train_features.mean(axis=0)
    std = train_features.std(axis=0) + 1e-6
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    keras.utils.set_random_seed(seed)
    probe = keras.Sequential([keras.Input((train_features.shape[1],)), keras.layers.Dense(num_classes)])
    probe.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    probe.fit((train_features - mean) / std, train_labels, epochs=epochs, batch_size=batch_size, verbose=0)
    _, accuracy = probe.evaluate((test_features - mean) / std, test_labels, batch_size=1024, verbose=0)
    return float(accuracy)


def evaluate_encoder(encoder, train, test, image_size=None, knn_k=KNN_K, knn_temperature=KNN_TEMPERATURE,
                     probe_epochs=PROBE_EPOCHS, seed=0):
    """Linear-probe and kNN accuracy of `encoder`; `train`/`test` are `(images uint8, labels)`."""
    return evaluate_features(keras_features(encoder, image_size), train, test, knn_k, knn_temperature, probe_epochs,
                             seed)


def evaluate_features(features, train, test, knn_k=KNN_K, knn_temperature=KNN_TEMPERATURE, probe_epochs=PROBE_EPOCHS,
                      seed=0):
    """Linear-probe and kNN accuracy of the features `features(images)` (`keras_features`,
    `batched_features`); `train`/`test` are `(images uint8, labels)`."""
    train_features = features(train[0])
    test_features = features(test[0])
    return {
        "linear_probe": linear_probe_accuracy(
            train_features, train[1], test_features, test[1], epochs=probe_epochs, seed=seed
        ),
        "knn": knn_accuracy(train_features, train[1], test_features, test[1], knn_k, knn_temperature),
    }


def eval_path(run_dir, name=None):
    """`RUN_DIR/eval.json` for the Keras encoder, `RUN_DIR/eval-NAME.json` for another `FeatureSource`."""
    return pathlib.Path(run_dir) / (runs.EVAL if name in (None, "keras") else f"eval-{name}.json")


def evaluate_run(run_dir, probe_epochs=None, knn_k=None, knn_temperature=None, seed=None, max_examples=None,
                 features=None):
    """Offline evaluation of a run directory's encoder; writes and returns `eval.json`.

    Protocols (`protocol_text`): linear probe and kNN on the run's dataset, the parameters
    defaulting to its config. With `features` (a `FeatureSource`, e.g.
    `export.artefact_features(run_dir, "onnx_int8")`), the features come from it instead of the
    Keras encoder, and the result goes to `eval-NAME.json`.
    """
    run_dir = pathlib.Path(run_dir)
    encoder, _ = runs.load_run(run_dir)  # clear errors for missing or corrupt runs
    config = runs.load_config(run_dir)
    ev, cfg = config.eval, config.data
    probe_epochs = probe_epochs or ev.probe_epochs
    knn_k, knn_temperature = knn_k or ev.knn_k, knn_temperature or ev.knn_temperature
    seed = config.train.seed if seed is None else seed
    max_examples = max_examples or ev.max_examples
    size, channels = encoder.inputs[0].shape[1], encoder.inputs[0].shape[-1]
    features = features or FeatureSource(keras_features(encoder, size), "keras",
                                         {"format": "keras", "path": str(run_dir / runs.ENCODER)})
    options = {"image_size": size, "channels": channels, "on_bad_image": cfg.on_bad_image}
    train = data.labelled_arrays(cfg.dataset, cfg.eval_train_split, cfg.data_dir, max_examples, cfg.download, **options)
    test = data.labelled_arrays(cfg.dataset, cfg.eval_test_split, cfg.data_dir, max_examples, cfg.download, **options)
    if train[1].min() < 0 or test[1].min() < 0:
        raise InvalidInputError(f"The run's dataset {cfg.dataset!r} has no labels for {cfg.eval_train_split!r}/"
                         f"{cfg.eval_test_split!r}; evaluation needs labelled splits.")
    started = time.perf_counter()
    scores = evaluate_features(features.extract, train, test, knn_k, knn_temperature, probe_epochs, seed)
    protocols = protocol_text(probe_epochs, knn_k, knn_temperature, cfg.eval_train_split, cfg.eval_test_split)
    result = {
        "run_dir": str(run_dir),
        "features": features.description,
        "linear_probe": {
            "accuracy": scores["linear_probe"], "protocol": protocols["linear_probe"], "optimizer": PROBE_OPTIMIZER,
            "learning_rate": PROBE_LEARNING_RATE, "epochs": probe_epochs, "batch": PROBE_BATCH_SIZE, "augmentation": None,
        },
        "knn": {"accuracy": scores["knn"], "protocol": protocols["knn"], "k": knn_k, "temperature": knn_temperature},
        "data": {"dataset": cfg.dataset, "train_split": cfg.eval_train_split, "test_split": cfg.eval_test_split,
                 "train_examples": int(len(train[1])), "test_examples": int(len(test[1]))},
        "seed": seed,
        "hardware": {"machine": platform.machine(), "cpus": os.cpu_count(),
                     "gpus": len(tf.config.list_logical_devices("GPU"))},
        "seconds": round(time.perf_counter() - started, 1),
    }
    runs.write_json(eval_path(run_dir, features.name), result)
    return result
