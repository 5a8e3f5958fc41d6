"""The pre-training job: config → data → model under a strategy → fit → evaluation → run directory.

A run directory holds `config.yaml` (the resolved config), `history.jsonl` (one line per
epoch), `final.weights.h5` (the whole model), `encoder.keras` (the backbone alone) and
`results.json` (linear probe and kNN, trained vs random-init encoder) and `export/` (the
encoder as a verified SavedModel and ONNX model, see `amcl_keras.export`).
"""

import json
import os
import pathlib
import platform
import shutil
import sys
import time

import keras
import tensorflow as tf

from amcl_keras import augment, data, encoders, evaluation, export, methods
from amcl_keras.callbacks import JSONLinesHistory, KNNMonitor, NonFiniteLossGuard
from amcl_keras.distribute import make_strategy


DISPLAY_NAMES = {"simclr": "SimCLR", "moco": "MoCo", "barlow_twins": "Barlow Twins", "simsiam": "SimSiam"}


class RunDirectoryError(FileExistsError):
    """The run directory already holds a run."""


def build_model(config, input_shape, augmenter=None):
    """The method's model for `config.model` on an encoder for images of `input_shape`
    (with `augmenter`, the model makes the two views inside its training step)."""
    cfg = config.model
    encoder = encoders.get(cfg.encoder, input_shape, width=cfg.encoder_width)
    return methods.get(cfg.method).from_model_config(encoder, cfg, config.data.batch_size, augmenter=augmenter)


def build_optimizer(config, total_steps):
    cfg = config.train
    learning_rate = cfg.learning_rate
    if total_steps:
        learning_rate = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=total_steps)
    return keras.optimizers.SGD(
        learning_rate, momentum=cfg.momentum, weight_decay=cfg.weight_decay, global_clipnorm=cfg.clipnorm
    )


def prepare_run_directory(run_dir, overwrite=False):
    run_dir = pathlib.Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise RunDirectoryError(
            f"The run directory {str(run_dir)!r} already holds files. Choose a new --run-dir, "
            "or pass --overwrite to replace that run."
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in ("history.jsonl", "results.json", "final.weights.h5", "encoder.keras"):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "export", ignore_errors=True)
    return run_dir


def _atomic_save(save, path):
    """Write through a temporary name, so a crash never leaves a half-written file under `path`."""
    temporary = path.with_name("partial-" + path.name)  # keeps the suffix Keras checks
    save(str(temporary))
    os.replace(temporary, path)


def run(config, run_dir, overwrite=False, verbose="auto"):
    """Pre-train, evaluate and write the run directory; returns the results dict."""
    run_dir = prepare_run_directory(run_dir, overwrite)
    config.dump(run_dir / "config.yaml")
    started = time.perf_counter()
    keras.utils.set_random_seed(config.train.seed)
    strategy = make_strategy(config.train.strategy, config.train.cpu_replicas)
    if config.data.batch_size % strategy.num_replicas_in_sync:
        raise ValueError(
            f"data.batch_size={config.data.batch_size} does not divide over the "
            f"{strategy.num_replicas_in_sync} replicas; use a multiple of {strategy.num_replicas_in_sync}."
        )

    cfg = config.data
    folder_options = {"image_size": cfg.image_size, "channels": cfg.channels, "on_bad_image": cfg.on_bad_image}
    source = data.load(cfg.dataset, cfg.split, cfg.data_dir, cfg.download, **folder_options)
    native_shape = tuple(source.element_spec[0].shape)
    image_size = cfg.image_size or native_shape[0]
    input_shape = (image_size, image_size, native_shape[-1])
    # evaluation splits of a folder get the training split's size and channels
    folder_options.update(image_size=image_size, channels=native_shape[-1])
    augmenter = augment.view_augmenter(image_size, native_shape[-1], cfg.augmentation, cfg.crop_scale)
    in_step = cfg.augment_on == "step"
    views = data.pretraining_views(
        source, cfg.batch_size, None if in_step else augmenter, cfg.shuffle_buffer, seed=config.train.seed
    )
    steps = config.train.steps_per_epoch
    if steps is None:
        known = int(views.cardinality())
        steps = known if known > 0 else None
    else:
        views = views.repeat()
    if steps == 0 or (steps is None and int(views.cardinality()) == 0):
        raise ValueError(f"The dataset has fewer examples than one batch of {cfg.batch_size}; lower data.batch_size.")

    with strategy.scope():
        model = build_model(config, input_shape, augmenter if in_step else None)
        model.compile(
            optimizer=build_optimizer(config, steps * config.train.epochs if steps else None),
            jit_compile=config.train.jit_compile,
        )

    train_split = data.labelled_arrays(
        cfg.dataset, cfg.eval_train_split, cfg.data_dir, config.eval.max_examples, cfg.download, **folder_options
    )
    test_split = data.labelled_arrays(
        cfg.dataset, cfg.eval_test_split, cfg.data_dir, config.eval.max_examples, cfg.download, **folder_options
    )
    ev = config.eval
    labelled = train_split[1].min() >= 0 and test_split[1].min() >= 0

    def evaluate(encoder):
        if not labelled:  # an unlabeled folder: nothing to score against
            return None
        return evaluation.evaluate_encoder(
            encoder, train_split, test_split, image_size, ev.knn_k, ev.knn_temperature, ev.probe_epochs,
            config.train.seed,
        )

    random_init = evaluate(model.encoder)  # the same architecture, before any training

    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    model.fit(
        views,
        epochs=config.train.epochs,
        steps_per_epoch=config.train.steps_per_epoch,
        callbacks=[
            NonFiniteLossGuard(),
            *([KNNMonitor(train_split, test_split, ev.knn_every, ev.knn_k, ev.knn_temperature, image_size)]
              if labelled and ev.knn_every else []),
            JSONLinesHistory(run_dir / "history.jsonl"),
        ],
        verbose=verbose,
        shuffle=False,
    )
    _atomic_save(model.save_weights, run_dir / "final.weights.h5")
    _atomic_save(model.encoder.save, run_dir / "encoder.keras")
    trained = evaluate(model.encoder)

    results = {
        "method": f"{'AMCL-' if config.model.amcl else ''}{DISPLAY_NAMES.get(config.model.method, config.model.method)}",
        "protocol": {
            "linear_probe": f"softmax on standardised frozen features, Adam 1e-2, {ev.probe_epochs} epochs, "
            f"trained on split {cfg.eval_train_split!r}, tested on {cfg.eval_test_split!r}",
            "knn": f"cosine, k={ev.knn_k}, T={ev.knn_temperature}, weighted votes, bank = {cfg.eval_train_split!r}",
        },
        "examples": {"train": int(len(train_split[1])), "test": int(len(test_split[1]))},
        "trained": trained,
        "random_init": random_init,
        "epochs": config.train.epochs,
        "replicas": strategy.num_replicas_in_sync,
        "strategy": type(strategy).__name__,
        "seconds": round(time.perf_counter() - started, 1),
        "hardware": {"machine": platform.machine(), "cpus": os.cpu_count(), "gpus": len(tf.config.list_logical_devices("GPU"))},
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }
    _write_results(run_dir, results)
    if config.export.formats:
        metadata = export.export_encoder(
            model.encoder,
            run_dir / "export",
            formats=config.export.formats,
            tolerance=config.export.tolerance,
            images=test_split[0][:16],
            config_text=(run_dir / "config.yaml").read_text(encoding="utf-8"),
        )
        results["export"] = {"path": str(run_dir / "export"), "max_abs_diff": metadata["verification"]["max_abs_diff"]}
        _write_results(run_dir, results)
    return results


def _write_results(run_dir, results):
    temporary = run_dir / "results.json.partial"
    temporary.write_text(json.dumps(results, indent=2))
    os.replace(temporary, run_dir / "results.json")


def format_results(results):
    """The results table as text."""
    name = results["method"]
    if results["trained"] is None:
        return f"{name}, {results['epochs']} epochs: trained on unlabeled data, so no linear probe or kNN was run."
    rows = [("random init (same architecture)", results["random_init"]), (f"{name}, {results['epochs']} epochs", results["trained"])]
    width = max(len(label) for label, _ in rows)
    lines = [f"{'encoder':<{width}}  linear probe    kNN", f"{'-' * width}  ------------  ------"]
    for label, scores in rows:
        lines.append(f"{label:<{width}}  {scores['linear_probe'] * 100:11.1f}%  {scores['knn'] * 100:5.1f}%")
    lines.append(f"linear probe: {results['protocol']['linear_probe']}")
    lines.append(f"kNN: {results['protocol']['knn']}")
    return "\n".join(lines)
