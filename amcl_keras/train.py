"""The pre-training job, in plain stages: load the data → build the model → fit (resuming from
a backup) → evaluate and export → write the results. `run` strings them together; the run
directory's layout, lifecycle and backups live in `amcl_keras.runs`.
"""

import contextlib
import dataclasses
import os
import pathlib
import platform
import shutil
import sys
import time
import typing

import keras
import tensorflow as tf

from amcl_keras import augment, autotune, backups, data, encoders, evaluation, export, registry, runs
from amcl_keras.callbacks import (
    JSONLinesHistory, KNNMonitor, NonFiniteLossGuard, OnlineLinearProbe, PairTelemetry, TemperatureSaturationWarning,
)
from amcl_keras.distribute import check_precision, enable_determinism, is_chief, make_strategy, one_op_at_a_time
from amcl_keras.optimizers import CoupledWeightDecaySGD
from amcl_keras.runs import RunDirectoryError  # noqa: F401 (part of this API)
from amcl_keras.errors import InvalidInputError


def build_model(config, input_shape, augmenter=None):
    """The method's model for `config.model` on an encoder for images of `input_shape`
    (with `augmenter`, the model makes the two views inside its training step)."""
    cfg = config.model
    encoder = encoders.get(cfg.encoder, input_shape, width=cfg.encoder_width,
                           synchronized_batch_norm=cfg.synchronized_batch_norm, weights=cfg.encoder_weights,
                           options=cfg.encoder_options)
    return registry.method(cfg.method).model.from_model_config(encoder, cfg, config.data.batch_size, augmenter=augmenter,
                                                               temperature_clipping=cfg.temperature_clipping)


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


@dataclasses.dataclass
class Job:
    """One `run`: its config, where it writes, and the strategy it trains under."""

    config: typing.Any  # amcl_keras.config.Config
    run_dir: pathlib.Path  # the run directory
    write_dir: pathlib.Path  # the run directory (chief), or a scratch folder (other workers)
    strategy: tf.distribute.Strategy
    started: float  # time.perf_counter() at the start
    jit_compile: typing.Optional[dict] = None  # how train.jit_compile was resolved (fit fills it in)
    precision: typing.Optional[dict] = None  # how train.mixed_precision was resolved (`autotune.choose_precision`)
    stage_seconds: dict = dataclasses.field(default_factory=dict)  # wall time of each stage, for results.json

    @contextlib.contextmanager
    def timed(self, stage):
        """Adds the wall time of the `with` block to `stage_seconds[stage]`."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds[stage] = round(self.stage_seconds.get(stage, 0.0) + time.perf_counter() - started, 2)

    @property
    def chief(self):
        return self.write_dir == self.run_dir


@dataclasses.dataclass
class TrainingData:
    """What the load stage gives the others."""

    views: tf.data.Dataset  # batches of (view1, view2), or of images when the views are made in the step
    steps_per_epoch: typing.Optional[int]  # None: one pass of unknown length
    input_shape: tuple  # (size, size, channels) the encoder sees
    augmenter: keras.layers.Layer
    augment_in_step: bool
    train_split: tuple  # (uint8 images, labels) for the kNN bank and the probe's training
    test_split: tuple
    stream: bool = False  # deterministic mode: `views` is one endless stream, replayed to a resume point

    def views_from(self, epoch, step):
        """The views from batch `step` of `epoch` on. In deterministic mode the stream is replayed up to
        there (its shuffles and augmentation draws included: exact resume), costing the input pipeline's
        time for those batches (~1% of the training time they took on the demo); otherwise from the start."""
        position = epoch * self.steps_per_epoch + step if self.stream else 0
        return self.views.skip(position) if position else self.views

    @property
    def image_size(self):
        return self.input_shape[0]

    @property
    def labelled(self):  # an unlabeled folder has label -1: nothing to score against
        return self.train_split[1].min() >= 0 and self.test_split[1].min() >= 0


def load_data(config):
    """Stage 1: the pre-training views and the labelled evaluation splits (reads only)."""
    cfg = config.data
    folder_options = {"image_size": cfg.image_size, "channels": cfg.channels, "on_bad_image": cfg.on_bad_image}
    source = data.load(cfg.dataset, cfg.split, cfg.data_dir, cfg.download, **folder_options)
    native_shape = tuple(source.element_spec[0].shape)
    image_size = cfg.image_size or native_shape[0]
    # evaluation splits of a folder get the training split's size and channels
    folder_options.update(image_size=image_size, channels=native_shape[-1])
    augmenter = augment.view_augmenter(image_size, native_shape[-1], cfg.augmentation, cfg.crop_scale)
    in_step = cfg.augment_on == "step"
    views = data.pretraining_views(
        source, cfg.batch_size, None if in_step else augmenter, cfg.shuffle_buffer, seed=config.train.seed
    )
    known = int(views.cardinality())  # batches per pass; negative when unknown
    if known == 0:
        raise InvalidInputError(f"The dataset has fewer examples than one batch of {cfg.batch_size}; lower data.batch_size.")
    steps = config.train.steps_per_epoch
    if steps is None:
        steps = known if known > 0 else None
    if config.train.deterministic:
        if steps is None:
            raise InvalidInputError("train.deterministic=true needs train.steps_per_epoch for a dataset of unknown length "
                             "(one stream of batches is numbered across epochs); set it, e.g. --steps-per-epoch 100.")
        views = views.repeat()  # one stream: batch i of epoch e is element e·steps + i, so a resume can replay to it
    elif config.train.steps_per_epoch is not None:
        views = views.repeat()
    splits = [data.labelled_arrays(cfg.dataset, split, cfg.data_dir, config.eval.max_examples, cfg.download,
                                   **folder_options) for split in (cfg.eval_train_split, cfg.eval_test_split)]
    return TrainingData(views, steps, (image_size, image_size, native_shape[-1]), augmenter, in_step, *splits,
                        stream=config.train.deterministic)


def build(config, training_data, strategy, policy=None):
    """Stage 2: the model (in `policy`, by default the config's precision, `auto` resolved by
    `autotune.choose_precision`) and its optimizer, under `strategy`."""
    policy = policy or autotune.choose_precision(config.train.mixed_precision)["policy"]
    check_precision(policy)
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)  # the model only: augmenters, probes stay float32
    try:
        with strategy.scope():
            model = build_model(config, training_data.input_shape,
                                training_data.augmenter if training_data.augment_in_step else None)
    finally:
        keras.config.set_dtype_policy(previous_policy)
    steps = training_data.steps_per_epoch
    with strategy.scope():
        model.compile(optimizer=build_optimizer(config, steps * config.train.epochs if steps else None),
                      jit_compile=config.train.jit_compile is True)  # "auto": decided in `fit`
    return model


def evaluate(config, training_data, encoder):
    """Linear probe and kNN of `encoder` (None on unlabeled data)."""
    if not training_data.labelled:
        return None
    ev = config.eval
    return evaluation.evaluate_encoder(encoder, training_data.train_split, training_data.test_split,
                                       training_data.image_size, ev.knn_k, ev.knn_temperature, ev.probe_epochs,
                                       config.train.seed)


def fit(job, training_data, model, resume=False, verbose="auto"):
    """Stage 3: train, from the run directory's backup with `resume`; returns the backup state it
    resumed from (None for a fresh start)."""
    config, write_dir = job.config, job.write_dir
    with job.strategy.scope():  # the optimizer's variables are created under the strategy
        start = backups.resume(model, job.strategy, job.run_dir, write_dir, resume, config.train.backup_every_steps,
                               training_data.steps_per_epoch, job.chief)
    state, initial_epoch, initial_step = start.state, start.epoch, start.step
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    steps = training_data.steps_per_epoch
    callbacks = monitoring_callbacks(config, write_dir, model, training_data.views, training_data.train_split,
                                     training_data.test_split, training_data.image_size,
                                     resumed=(initial_epoch, initial_step) if initial_step else None)
    callbacks += start.callbacks  # after the history: a backup never claims an epoch the history lacks
    remaining = steps * (config.train.epochs - initial_epoch) - initial_step if steps else None
    chooser = _resolve_jit_compile(job, training_data, model, remaining)
    if chooser is not None:
        callbacks.insert(0, chooser)
    try:
        _fit_epochs(model, training_data, config, callbacks, initial_epoch, initial_step, verbose)
    finally:
        start.backup.restore_signal_handler()
        if chooser is not None:
            job.jit_compile = {"setting": "auto", **(chooser.record or {"chosen": bool(model.jit_compile),
                                                                       "source": "the run ended before the measurement"})}
    return state


def _resolve_jit_compile(job, training_data, model, remaining_steps):
    """`train.jit_compile`: true/false as given; "auto": no XLA where it cannot or should not be measured, the
    cached choice for this machine and step, or a `JitCompileChooser` (returned) that measures it."""
    config, setting = job.config, job.config.train.jit_compile
    job.jit_compile = {"setting": setting, "chosen": setting is True, "source": "config"}
    if setting != "auto":
        return None
    reason = None
    if job.strategy.num_replicas_in_sync > 1 or isinstance(job.strategy, tf.distribute.MultiWorkerMirroredStrategy):
        reason = "several replicas or workers: Keras cannot XLA-compile a step spanning devices"
    elif config.train.deterministic:
        reason = "deterministic mode: a choice made from timings could differ between reruns"
    elif remaining_steps is None or remaining_steps < autotune.AUTO_MIN_STEPS:
        reason = f"fewer than {autotune.AUTO_MIN_STEPS} steps to train (or an unknown number): XLA would not pay back"
    if reason:
        job.jit_compile.update(chosen=False, source=reason)
        return None
    key = autotune.choice_key(config.to_dict()["model"], config.data.batch_size, training_data.input_shape,
                              config.data.augment_on, (job.precision or {}).get("policy", config.train.mixed_precision))
    cached = autotune.read_choice(key)
    if cached is not None:
        model.jit_compile = cached["chosen"]
        model.train_function = None  # made on the next fit, with the cached setting
        job.jit_compile.update(cached, source=f"cached in {autotune.cache_path()}")
        print(f"amcl: jit_compile auto: training {'with' if cached['chosen'] else 'without'} XLA, as measured on "
              f"{cached.get('measured_on', '?')} ({cached.get('seconds_per_step')}; cache {autotune.cache_path()})",
              file=sys.stderr)
        return None
    return autotune.JitCompileChooser(key)


def _fit_epochs(model, training_data, config, callbacks, initial_epoch, initial_step, verbose):
    steps, epochs = training_data.steps_per_epoch, config.train.epochs
    if initial_step and initial_epoch < epochs:  # finish the interrupted epoch first
        model.fit(training_data.views_from(initial_epoch, initial_step), initial_epoch=initial_epoch,
                  epochs=initial_epoch + 1, steps_per_epoch=steps - initial_step, callbacks=callbacks, verbose=verbose,
                  shuffle=False)
        initial_epoch += 1
    if initial_epoch < epochs:
        model.fit(training_data.views_from(initial_epoch, 0), initial_epoch=initial_epoch, epochs=epochs,
                  steps_per_epoch=steps if training_data.stream else config.train.steps_per_epoch, callbacks=callbacks,
                  verbose=verbose, shuffle=False)


def finish(job, training_data, model, random_init, resumed_from):
    """Stage 4: save the model and encoder, evaluate, export, and write `results.json` (last: its
    presence marks the run finished); the backups are removed."""
    config, write_dir, strategy = job.config, job.write_dir, job.strategy
    with job.timed("save"):
        runs.atomic_write(write_dir / runs.FINAL_WEIGHTS, model.save_weights)
        runs.atomic_write(write_dir / runs.ENCODER, model.encoder.save)
    ev, cfg = config.eval, config.data
    with job.timed("evaluate"):
        trained = evaluate(config, training_data, model.encoder)
    results = {
        "method": registry.method(config.model.method).label(config.model.amcl),
        "protocol": evaluation.protocol_text(ev.probe_epochs, ev.knn_k, ev.knn_temperature, cfg.eval_train_split,
                                             cfg.eval_test_split),
        "examples": {"train": int(len(training_data.train_split[1])), "test": int(len(training_data.test_split[1]))},
        "trained": trained,
        "random_init": random_init,
        "epochs": config.train.epochs,
        "replicas": strategy.num_replicas_in_sync,
        "strategy": type(strategy).__name__,
        "mixed_precision": job.precision["policy"],
        "mixed_precision_choice": job.precision,
        "jit_compile": job.jit_compile,
        "seconds": None,
        "resumed_from": resumed_from and {"epoch": resumed_from["epoch"], "step": resumed_from["step"]},
        "hardware": {"machine": platform.machine(), "cpus": os.cpu_count(), "gpus": len(tf.config.list_logical_devices("GPU"))},
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }
    if config.export.formats:
        with job.timed("export"):
            metadata = export.export_encoder(
                model.encoder, write_dir / runs.EXPORT, formats=config.export.formats,
                tolerance=config.export.tolerance, int8_tolerance=config.export.int8_tolerance,
                images=training_data.test_split[0][:16],
                config_text=(write_dir / runs.CONFIG).read_text(encoding="utf-8"),
                overwrite=True,  # an export left by a run killed while exporting is replaced
            )
        results["export"] = {"path": str(job.run_dir / runs.EXPORT),
                             **{key: metadata["verification"][key] for key in ("max_abs_diff", "relative_error")}}
    results["seconds"] = round(time.perf_counter() - job.started, 1)
    results["stage_seconds"] = dict(job.stage_seconds)  # data, build, evaluate_random_init, fit, save, evaluate, export
    runs.write_json(write_dir / runs.RESULTS, results)
    shutil.rmtree(write_dir / runs.BACKUP, ignore_errors=True)
    return results


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
    status = runs.inspect_run_directory(run_dir, config, overwrite)
    if status == "finished":
        print(f"{run_dir} holds this finished run; returning its results (pass --overwrite to train again).",
              file=sys.stderr)
        return runs.read_results(run_dir)
    started = time.perf_counter()
    if config.train.deterministic:
        one_op_at_a_time()  # before the strategy starts TensorFlow's runtime
    strategy = make_strategy(config.train.strategy, config.train.cpu_replicas)  # first: it may need a fresh TF
    if config.train.deterministic:
        enable_determinism(config.train.seed)
    else:
        keras.utils.set_random_seed(config.train.seed)
    _check_replicas(config, strategy.num_replicas_in_sync)
    chief = is_chief(strategy)
    job = Job(config, run_dir, run_dir if chief else runs.scratch_directory(), strategy, started)
    try:
        with job.timed("data"):
            training_data = load_data(config)
        with job.timed("build"):
            job.precision = autotune.choose_precision(config.train.mixed_precision)
            model = build(config, training_data, strategy, job.precision["policy"])
        with job.timed("evaluate_random_init"):
            random_init = evaluate(config, training_data, model.encoder) if config.eval.random_init else None
        # Everything above only reads. From here on the run directory is written.
        if status == "new" and chief:
            runs.prepare_run_directory(run_dir, overwrite)
        if status == "new" or not chief:
            runs.write_config(job.write_dir, config)
        caveat = amcl_caveat(config)
        if caveat and chief:
            print(caveat, file=sys.stderr)
        with job.timed("fit"):
            resumed_from = fit(job, training_data, model, resume=status == "resume", verbose=verbose)
        return finish(job, training_data, model, random_init, resumed_from)
    finally:
        if not chief:
            shutil.rmtree(job.write_dir, ignore_errors=True)


def amcl_caveat(config):
    """The line training prints when AMCL is on for a method whose validated ablation found no AMCL
    variant better than its tuned baseline (the method's `amcl_caveat`), else None."""
    caveat = registry.METHODS[config.model.method].settings.amcl_caveat
    return f"amcl: note: {caveat}" if config.model.amcl and caveat else None


def _check_replicas(config, replicas):
    if config.data.batch_size % replicas:
        raise InvalidInputError(
            f"data.batch_size={config.data.batch_size} does not divide over the {replicas} replicas; "
            f"use a multiple of {replicas}."
        )
    if config.train.jit_compile is True and replicas > 1:
        raise InvalidInputError(
            f"train.jit_compile=true does not work with {replicas} replicas: Keras 3 compiles the whole distributed "
            "step with XLA, which cannot reach variables on other devices (keras-team/keras#19005). Set "
            "train.jit_compile=false, or train on one device (train.strategy=default)."
        )


def monitoring_callbacks(config, run_dir, model, views, train_split, test_split, image_size, resumed=None):
    """The guard, the monitors the config asks for, TensorBoard and the JSON-lines history (last)."""
    ev = config.eval
    labelled = train_split[1].min() >= 0 and test_split[1].min() >= 0
    callbacks = [NonFiniteLossGuard(run_dir / runs.BACKUP)]
    if labelled and ev.online_probe_every:
        callbacks.append(OnlineLinearProbe(train_split, test_split, ev.online_probe_every, image_size=image_size,
                                           seed=config.train.seed))
    if labelled and ev.knn_every:
        callbacks.append(KNNMonitor(train_split, test_split, ev.knn_every, ev.knn_k, ev.knn_temperature, image_size))
    recorded, telemetry = [], None  # callbacks whose `history_fields` the history records
    if ev.telemetry_every or model.amcl:
        sample = next(iter(views.take(1)))  # one fixed training batch
        view1, view2 = (model.augmenter(sample), model.augmenter(sample)) if model.augmenter is not None else sample
    if ev.telemetry_every:
        log_dir = run_dir / runs.TENSORBOARD / "telemetry" if ev.tensorboard else None
        telemetry = PairTelemetry(view1, view2, ev.telemetry_every, log_dir)
        recorded.append(telemetry)
    if model.amcl:  # `tau_floor` in the epoch logs (placed before TensorBoard), one warning if τ collapses;
        # at epoch ends it reuses the telemetry's measurement of the same batch
        recorded.append(TemperatureSaturationWarning(view1, view2, telemetry=telemetry))
    callbacks += recorded
    if ev.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(run_dir / runs.TENSORBOARD, write_graph=False))
    return callbacks + [JSONLinesHistory(run_dir / runs.HISTORY, recorded, resumed)]


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
