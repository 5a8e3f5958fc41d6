"""The pre-training job: config → data → model under a strategy → fit → evaluation → run directory.

A run directory holds `config.yaml` (the resolved config), `history.jsonl` (one line per
epoch), `final.weights.h5` (the whole model), `encoder.keras` (the backbone alone) and
`results.json` (linear probe and kNN, trained vs random-init encoder), `tensorboard/` (scalars:
loss, τ means, probe, kNN, learning rate; histograms: per-head τ⁺/τ⁻ and pair similarities)
and `export/` (the encoder as a verified SavedModel and ONNX model, see `amcl_keras.export`).
"""

import json
import os
import pathlib
import platform
import shutil
import sys
import tempfile
import time

import keras
import tensorflow as tf

from amcl_keras import augment, data, encoders, evaluation, export, methods
from amcl_keras.callbacks import (
    JSONLinesHistory, KNNMonitor, NonFiniteLossGuard, OnlineLinearProbe, PairTelemetry, RunBackup,
    TemperatureSaturationWarning,
)
from amcl_keras.distribute import is_chief, make_strategy
from amcl_keras.optimizers import CoupledWeightDecaySGD


DISPLAY_NAMES = {"simclr": "SimCLR", "moco": "MoCo", "barlow_twins": "Barlow Twins", "simsiam": "SimSiam"}


class RunDirectoryError(FileExistsError):
    """The run directory already holds a run."""


def build_model(config, input_shape, augmenter=None):
    """The method's model for `config.model` on an encoder for images of `input_shape`
    (with `augmenter`, the model makes the two views inside its training step)."""
    cfg = config.model
    encoder = encoders.get(cfg.encoder, input_shape, width=cfg.encoder_width,
                           synchronized_batch_norm=cfg.synchronized_batch_norm)
    return methods.get(cfg.method).from_model_config(encoder, cfg, config.data.batch_size, augmenter=augmenter)


def build_optimizer(config, total_steps):
    """SGD with momentum, cosine decay over `total_steps` and global-norm clipping; weight decay
    coupled into the gradient as PyTorch's SGD (`train.weight_decay_mode: coupled`, the authors')
    or decoupled as Keras's SGD (`decoupled`)."""
    cfg = config.train
    learning_rate = cfg.learning_rate
    if total_steps:
        learning_rate = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=total_steps)
    optimizer = CoupledWeightDecaySGD if cfg.weight_decay_mode == "coupled" else keras.optimizers.SGD
    return optimizer(learning_rate, momentum=cfg.momentum, weight_decay=cfg.weight_decay, global_clipnorm=cfg.clipnorm)


def _flatten(values, prefix=""):
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def inspect_run_directory(run_dir, config, overwrite=False):
    """What `run` does with `run_dir`: "new", "resume" (same config, unfinished) or "finished".

    Refuses (RunDirectoryError) a folder that holds files but no run, and a run whose config
    differs from `config`, naming the differences; `overwrite` starts over in any case.
    """
    from amcl_keras import config as config_lib

    run_dir = pathlib.Path(run_dir)
    if overwrite or not run_dir.exists() or not any(run_dir.iterdir()):
        return "new"
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise RunDirectoryError(
            f"The run directory {str(run_dir)!r} already holds files but no config.yaml, so it is not an amcl run. "
            "Choose a new --run-dir, or pass --overwrite to replace its contents."
        )
    try:
        previous = _flatten(config_lib.load(saved).to_dict())
    except config_lib.ConfigError as error:
        raise RunDirectoryError(
            f"The config.yaml of {str(run_dir)!r} cannot be read ({error}); pass --overwrite to start that run over."
        ) from None
    current = _flatten(config.to_dict())
    changes = [f"{key}: {previous.get(key)!r} -> {current.get(key)!r}"
               for key in sorted(set(previous) | set(current)) if previous.get(key) != current.get(key)]
    if changes:
        raise RunDirectoryError(
            f"The run directory {str(run_dir)!r} holds a run with a different config ({'; '.join(changes)}). "
            "Re-run with the same config to resume it, choose a new --run-dir, or pass --overwrite to discard "
            "that run and start over."
        )
    return "finished" if (run_dir / "results.json").is_file() else "resume"


def prepare_run_directory(run_dir, overwrite=False):
    """Create `run_dir` for a new run (emptying the files of an earlier one with `overwrite`)."""
    run_dir = pathlib.Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise RunDirectoryError(
            f"The run directory {str(run_dir)!r} already holds files. Choose a new --run-dir, "
            "or pass --overwrite to replace that run."
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in ("config.yaml", "history.jsonl", "results.json", "final.weights.h5", "encoder.keras"):
        (run_dir / name).unlink(missing_ok=True)
    for name in ("export", "tensorboard", "backup"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    return run_dir


def _trim_history(path, completed_epochs):
    """Keep the records of the epochs a backup covers: a resumed run writes each epoch once."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["epoch"] <= completed_epochs]
    temporary = path.with_name(path.name + ".partial")
    temporary.write_text("".join(line + "\n" for line in kept))
    os.replace(temporary, path)


def _atomic_save(save, path):
    """Write through a temporary name, so a crash never leaves a half-written file under `path`."""
    temporary = path.with_name("partial-" + path.name)  # keeps the suffix Keras checks
    save(str(temporary))
    os.replace(temporary, path)


def run(config, run_dir, overwrite=False, verbose="auto"):
    """Pre-train, evaluate and write the run directory; returns the results dict.

    Re-running on the directory of an interrupted run with the same config resumes it from its
    last backup (`train.backup_every_steps` steps and every epoch); a finished run is not
    retrained (its results are returned); a different config is refused unless `overwrite`.
    Nothing is written before the data and the model are built, so a bad dataset or model
    option leaves no run directory behind. Under MultiWorkerMirroredStrategy only the chief
    writes the run directory (the other workers write to a scratch folder that is removed).
    """
    run_dir = pathlib.Path(run_dir)
    status = inspect_run_directory(run_dir, config, overwrite)
    if status == "finished":
        print(f"{run_dir} holds this finished run; returning its results (pass --overwrite to train again).",
              file=sys.stderr)
        return json.loads((run_dir / "results.json").read_text())
    started = time.perf_counter()
    strategy = make_strategy(config.train.strategy, config.train.cpu_replicas)  # first: it may need a fresh TF
    keras.utils.set_random_seed(config.train.seed)
    replicas = strategy.num_replicas_in_sync
    if config.data.batch_size % replicas:
        raise ValueError(
            f"data.batch_size={config.data.batch_size} does not divide over the {replicas} replicas; "
            f"use a multiple of {replicas}."
        )
    if config.train.jit_compile and replicas > 1:
        raise ValueError(
            f"train.jit_compile=true does not work with {replicas} replicas: Keras 3 compiles the whole distributed "
            "step with XLA, which cannot reach variables on other devices (keras-team/keras#19005). Set "
            "train.jit_compile=false, or train on one device (train.strategy=default)."
        )
    chief = is_chief(strategy)
    write_dir = run_dir if chief else pathlib.Path(tempfile.mkdtemp(prefix="amcl-worker-"))
    try:
        return _run(config, run_dir, write_dir, status, strategy, chief, started, overwrite, verbose)
    finally:
        if not chief:
            shutil.rmtree(write_dir, ignore_errors=True)


def _run(config, run_dir, write_dir, status, strategy, chief, started, overwrite, verbose):
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
    known = int(views.cardinality())  # batches per pass; negative when unknown
    if known == 0:
        raise ValueError(f"The dataset has fewer examples than one batch of {cfg.batch_size}; lower data.batch_size.")
    steps = config.train.steps_per_epoch
    if steps is None:
        steps = known if known > 0 else None
    else:
        views = views.repeat()

    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(config.train.mixed_precision)  # the model only: augmenters, probes stay float32
    try:
        with strategy.scope():
            model = build_model(config, input_shape, augmenter if in_step else None)
    finally:
        keras.config.set_dtype_policy(previous_policy)
    with strategy.scope():
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

    random_init = evaluate(model.encoder) if ev.random_init else None  # same architecture, untrained

    # Everything above only reads. From here on the run directory is written.
    if status == "new" and chief:
        prepare_run_directory(run_dir, overwrite)
    if status == "new" or not chief:
        config.dump(write_dir / "config.yaml")
    with strategy.scope():  # the optimizer's variables are created under the strategy
        state = RunBackup.restore(model, run_dir / "backup") if status == "resume" else None
    initial_epoch, initial_step = (state["epoch"], state["step"]) if state else (0, 0)
    if chief:
        _trim_history(run_dir / "history.jsonl", initial_epoch)
    if state:
        print(f"Resuming {run_dir} from its backup: {initial_epoch} epoch(s) done"
              + (f", then {initial_step} step(s) of epoch {initial_epoch + 1}." if initial_step else "."), file=sys.stderr)

    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    backup = RunBackup(write_dir / "backup", config.train.backup_every_steps if steps else None, initial_epoch, initial_step)
    callbacks = monitoring_callbacks(config, write_dir, model, views, train_split, test_split, image_size,
                                     resumed=(initial_epoch, initial_step) if initial_step else None)
    callbacks.append(backup)  # after the history: a backup never claims an epoch the history lacks
    epochs = config.train.epochs
    if initial_step and initial_epoch < epochs:  # finish the interrupted epoch first
        model.fit(views, initial_epoch=initial_epoch, epochs=initial_epoch + 1, steps_per_epoch=steps - initial_step,
                  callbacks=callbacks, verbose=verbose, shuffle=False)
        initial_epoch += 1
    if initial_epoch < epochs:
        model.fit(views, initial_epoch=initial_epoch, epochs=epochs, steps_per_epoch=config.train.steps_per_epoch,
                  callbacks=callbacks, verbose=verbose, shuffle=False)
    _atomic_save(model.save_weights, write_dir / "final.weights.h5")
    _atomic_save(model.encoder.save, write_dir / "encoder.keras")
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
        "mixed_precision": config.train.mixed_precision,
        "seconds": round(time.perf_counter() - started, 1),
        "resumed_from": state and {"epoch": state["epoch"], "step": state["step"]},
        "hardware": {"machine": platform.machine(), "cpus": os.cpu_count(), "gpus": len(tf.config.list_logical_devices("GPU"))},
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }
    if config.export.formats:
        metadata = export.export_encoder(
            model.encoder,
            write_dir / "export",
            formats=config.export.formats,
            tolerance=config.export.tolerance,
            images=test_split[0][:16],
            config_text=(write_dir / "config.yaml").read_text(encoding="utf-8"),
            overwrite=True,  # an export left by a run killed while exporting is replaced
        )
        results["export"] = {"path": str(run_dir / "export"), "max_abs_diff": metadata["verification"]["max_abs_diff"]}
    _write_results(write_dir, results)  # last: its presence marks the run finished
    shutil.rmtree(write_dir / "backup", ignore_errors=True)
    return results


def monitoring_callbacks(config, run_dir, model, views, train_split, test_split, image_size, resumed=None):
    """The guard, the monitors the config asks for, TensorBoard and the JSON-lines history (last)."""
    ev = config.eval
    labelled = train_split[1].min() >= 0 and test_split[1].min() >= 0
    callbacks = [NonFiniteLossGuard(run_dir / "backup")]
    if labelled and ev.online_probe_every:
        callbacks.append(OnlineLinearProbe(train_split, test_split, ev.online_probe_every, image_size=image_size,
                                           seed=config.train.seed))
    if labelled and ev.knn_every:
        callbacks.append(KNNMonitor(train_split, test_split, ev.knn_every, ev.knn_k, ev.knn_temperature, image_size))
    extras = []
    if ev.telemetry_every or model.amcl:
        sample = next(iter(views.take(1)))  # one fixed training batch
        view1, view2 = (model.augmenter(sample), model.augmenter(sample)) if model.augmenter is not None else sample
    if ev.telemetry_every:
        log_dir = run_dir / "tensorboard" / "telemetry" if ev.tensorboard else None
        extras.append(PairTelemetry(view1, view2, ev.telemetry_every, log_dir))
    recorded = list(extras)
    if model.amcl:  # `tau_floor` in the epoch logs (placed before TensorBoard), one warning if τ collapses
        saturation = TemperatureSaturationWarning(view1, view2)
        callbacks.append(saturation)
        recorded.append(saturation)
    if ev.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(run_dir / "tensorboard", write_graph=False))
    return callbacks + extras + [JSONLinesHistory(run_dir / "history.jsonl", recorded, resumed)]


def _write_results(run_dir, results):
    temporary = run_dir / "results.json.partial"
    temporary.write_text(json.dumps(results, indent=2))
    os.replace(temporary, run_dir / "results.json")


def format_results(results):
    """The results table as text."""
    name = results["method"]
    if results["trained"] is None:
        return f"{name}, {results['epochs']} epochs: trained on unlabeled data, so no linear probe or kNN was run."
    rows = [("random init (same architecture)", results["random_init"])] if results["random_init"] else []
    rows.append((f"{name}, {results['epochs']} epochs", results["trained"]))
    width = max(len(label) for label, _ in rows)
    lines = [f"{'encoder':<{width}}  linear probe    kNN", f"{'-' * width}  ------------  ------"]
    for label, scores in rows:
        lines.append(f"{label:<{width}}  {scores['linear_probe'] * 100:11.1f}%  {scores['knn'] * 100:5.1f}%")
    lines.append(f"linear probe: {results['protocol']['linear_probe']}")
    lines.append(f"kNN: {results['protocol']['knn']}")
    return "\n".join(lines)
