"""Training callbacks: the per-epoch JSON-lines history and the
monitors (online linear probe, kNN, per-head temperature/similarity telemetry, the warning when
AMCL's temperatures collapse to their floor). The run's backups are `amcl_keras.backups.RunBackup`;
the non-finite-loss guard, re-exported here, lives with the rest of that policy in `amcl_keras.nonfinite`."""

import json
import sys
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

from amcl_keras import evaluation, registry
from amcl_keras.constants import KNN_K, KNN_TEMPERATURE, OBJECTIVES, PROBE_BATCH_SIZE, PROBE_LEARNING_RATE
from amcl_keras.data import to_float_images
from amcl_keras.runs import append_text
from amcl_keras.errors import InvalidInputError
from amcl_keras.nonfinite import NonFiniteLossError, NonFiniteLossGuard  # noqa: F401 (their home: nonfinite.py)


class JSONLinesHistory(keras.callbacks.Callback):
    """Append one JSON object per epoch (epoch, metrics, learning rate, seconds) to `path`.

    `extras`: callbacks with a `history_fields` dict (e.g. `PairTelemetry`), merged into the
    epoch's record; place this callback after them.
    """

    def __init__(self, path, extras=(), resumed=None):
        super().__init__()
        self.path = path
        self.extras = list(extras)
        self.resumed = resumed  # (epoch index, step) of a run resumed mid-epoch: marked in that record

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - self._start, 3)}
        record.update({k: float(v) for k, v in (logs or {}).items()})
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None:
            record["learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        for extra in self.extras:
            record.update(getattr(extra, "history_fields", None) or {})
        if self.resumed and self.resumed[0] == epoch:
            record["resumed_at_step"] = self.resumed[1]  # the metrics cover the steps after it
        append_text(self.path, json.dumps(record) + "\n")  # RunWriteError when the disk is full


class KNNMonitor(keras.callbacks.Callback):
    """kNN accuracy of the backbone on a held-out labelled split every `every` epochs.

    Cosine similarity, k = KNN_K (200), T = KNN_TEMPERATURE (0.1), weighted votes (as the AMCL authors and lightly); the
    bank is `train` (uint8 images, labels), the queries `test`. The value is added to the
    epoch's logs as `knn_accuracy` (so `JSONLinesHistory` placed after it records it).

    Example:
    ```python
    monitor = amcl_keras.callbacks.KNNMonitor(amcl_keras.data.load_shipped("train"),
                                              amcl_keras.data.load_shipped("test"), every=5)
    model.fit(views, epochs=20, callbacks=[monitor])
    ```
    """

    def __init__(self, train, test, every=1, k=KNN_K, temperature=KNN_TEMPERATURE, image_size=None):
        super().__init__()
        if every < 1:
            raise InvalidInputError(f"`every` must be at least 1 epoch, got {every}.")
        self.train, self.test = train, test
        self.every, self.k, self.temperature, self.image_size = every, k, temperature, image_size

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        encoder = self.model.encoder
        bank = evaluation.extract_features(encoder, self.train[0], self.image_size)
        queries = evaluation.extract_features(encoder, self.test[0], self.image_size)
        accuracy = evaluation.knn_accuracy(bank, self.train[1], queries, self.test[1], self.k, self.temperature)
        if logs is not None:
            logs["knn_accuracy"] = accuracy


def _labelled(pair, name):
    images, labels = pair
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 4 or len(images) != len(labels) or len(images) == 0:
        raise InvalidInputError(
            f"`{name}` must be (images [N, H, W, C], labels [N]) with N > 0, got images {images.shape} and "
            f"{labels.shape} labels."
        )
    return images, labels.astype(np.int64)


class OnlineLinearProbe(keras.callbacks.Callback):
    """A linear classifier trained during pre-training on the backbone's stop-gradient features.

    Every `every` training steps it takes one batch of the separate labelled stream `train`
    (uint8 images, labels), computes the frozen features (inference mode, no gradient reaches
    the encoder) and takes one Adam step (`learning_rate`, default PROBE_LEARNING_RATE = 1e-2) on a linear layer (features standardised by a
    non-affine batch norm, as MoCo v3 / MAE probes). A monitor: it lags the offline probe,
    since it sees each labelled image about once per pass and the features keep changing. At each epoch end it adds
    `probe_accuracy` (on `test`) and `probe_train_accuracy` (running, on the stream) to the logs.

    Example:
    ```python
    probe = amcl_keras.callbacks.OnlineLinearProbe(amcl_keras.data.load_shipped("train"),
                                                   amcl_keras.data.load_shipped("test"))
    model.fit(views, epochs=20, callbacks=[probe])
    ```
    """

    def __init__(self, train, test, every=1, batch_size=PROBE_BATCH_SIZE, learning_rate=PROBE_LEARNING_RATE, image_size=None,
                 seed=0):
        super().__init__()
        if every < 1:
            raise InvalidInputError(f"`every` must be at least 1 step, got {every}.")
        self.train, self.test = _labelled(train, "train"), _labelled(test, "test")
        self.every, self.batch_size, self.learning_rate = every, batch_size, learning_rate
        self.image_size, self.seed = image_size, seed
        self.num_classes = int(max(self.train[1].max(), self.test[1].max())) + 1
        self.classifier = None

    def on_train_begin(self, logs=None):
        encoder = self.model.encoder
        if self.classifier is None:
            sample = to_float_images(self.train[0][:2], self.image_size)
            features = int(encoder(sample, training=False).shape[-1])
            self.classifier = keras.Sequential(
                # momentum 0.9: the moving statistics the test pass uses follow the changing features
                [keras.Input((features,)), keras.layers.BatchNormalization(momentum=0.9, center=False, scale=False),
                 keras.layers.Dense(self.num_classes)],
                name="online_linear_probe",
            )
            self.optimizer = keras.optimizers.Adam(self.learning_rate)
            self.optimizer.build(self.classifier.trainable_variables)
            self.accuracy = keras.metrics.SparseCategoricalAccuracy()
        stream = tf.data.Dataset.from_tensor_slices(self.train).shuffle(len(self.train[1]), seed=self.seed).repeat()
        stream = stream.batch(self.batch_size).map(lambda x, y: (to_float_images(x, self.image_size), y))
        self._stream = iter(stream.prefetch(2))
        self._steps = 0

        @tf.function
        def probe_step(images, labels):
            features = tf.stop_gradient(tf.cast(encoder(images, training=False), tf.float32))
            with tf.GradientTape() as tape:
                logits = self.classifier(features, training=True)
                loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))
            variables = self.classifier.trainable_variables
            self.optimizer.apply(tape.gradient(loss, variables), variables)
            self.accuracy.update_state(labels, logits)

        self._probe_step = probe_step

    def on_epoch_begin(self, epoch, logs=None):
        self.accuracy.reset_state()

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1
        if self._steps % self.every == 0:
            self._probe_step(*next(self._stream))

    def on_epoch_end(self, epoch, logs=None):
        features = evaluation.extract_features(self.model.encoder, self.test[0], self.image_size)
        logits = np.asarray(self.classifier(features, training=False))  # no per-epoch predict() pipeline (soak)
        if logs is not None:
            logs["probe_accuracy"] = float(np.mean(np.argmax(logits, axis=1) == self.test[1]))
            logs["probe_train_accuracy"] = float(self.accuracy.result())


def _quantiles(values):
    values = np.asarray(values, np.float64).ravel()
    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    return {"mean": float(values.mean()), "p10": float(p10), "p50": float(p50), "p90": float(p90)}


class PairTelemetry(keras.callbacks.Callback):
    """Per-head distributions, each epoch, of AMCL's temperatures and of the pair similarities.

    On a fixed batch of two views (`view1`, `view2`), every `every` epochs: per head, the
    positive/negative cosine similarities and, with AMCL, the temperatures τ⁺/τ⁻ the shared
    network gives those pairs (`model.pair_statistics`; Barlow Twins: channel pairs). Written
    as TensorBoard histograms under `log_dir` (`<stat>/head<c>`) when given, and summarised
    (mean, p10, p50, p90) in `history_fields` as `{"telemetry": {stat: {head: {...}}}}`, which
    `JSONLinesHistory(..., extras=[telemetry])` adds to the epoch's record.
    """

    def __init__(self, view1, view2, every=1, log_dir=None, max_values=100_000):
        super().__init__()
        if every < 1:
            raise InvalidInputError(f"`every` must be at least 1 epoch, got {every}.")
        self.view1, self.view2 = tf.convert_to_tensor(view1), tf.convert_to_tensor(view2)
        self.every, self.log_dir, self.max_values = every, log_dir, max_values
        self.history_fields = None
        self.latest = None  # (epoch, stats) of the last measurement: `TemperatureSaturationWarning` reuses it
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        self.history_fields = None
        if (epoch + 1) % self.every:
            return
        stats = self.model.pair_statistics(self.view1, self.view2)
        self.latest = (epoch, stats)
        summary = {name: {f"head{c}": _quantiles(values[c]) for c in range(len(values))} for name, values in stats.items()}
        self.history_fields = {"telemetry": summary}
        if self.log_dir is None:
            return
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(str(self.log_dir))
        with self._writer.as_default(step=epoch + 1):
            for name, values in stats.items():
                for c in range(len(values)):
                    head = values[c].ravel()
                    stride = max(1, len(head) // self.max_values)  # a fixed, even subsample of huge sets
                    tf.summary.histogram(f"{name}/head{c}", head[::stride])
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class TemperatureCollapseWarning(UserWarning):
    """AMCL's adaptive temperatures sit at `temperature_min`: they no longer adapt (docs/METHOD.md §8)."""


def floor_fractions(stats, temperature_min, margin=0.1):
    """Per head, the fraction of pairs whose temperature is at the floor, τ ≤ τ_min · (1 + margin).

    `stats`: `model.pair_statistics(...)` (NumPy `tau_pos [C, n]`, and `tau_neg [C, m]` where the
    method has negatives). Returns `{"tau_pos": [C], "tau_neg": [C]}` (the kinds present), floats.
    """
    limit = float(temperature_min) * (1.0 + margin)
    return {kind: [float(np.mean(np.asarray(head) <= limit)) for head in stats[kind]]
            for kind in ("tau_pos", "tau_neg") if kind in stats}


class TemperatureSaturationWarning(keras.callbacks.Callback):
    """Say so, once, when AMCL's per-pair temperatures have collapsed to `temperature_min`.

    At each epoch end (and every `every_steps` steps when given) it measures, on the fixed batch
    of two views (`view1`, `view2`; `model.pair_statistics`, inference mode), per head the
    fraction of positive and of negative pairs whose τ is within `margin` (relative) of
    `temperature_min`, and adds the largest of them to the epoch's logs as `tau_floor` (0: no
    pair at the floor, 1: every pair of some head) — the Keras progress line and the history
    show it. The first time more than `fraction` of the positive or of the negative pairs of any
    head are at the floor it emits ONE `TemperatureCollapseWarning` (`warnings.warn`) plus a
    line on stderr, both placed after that epoch's progress line, explaining that the loss is
    then ~1/τ_min times a margin of cosines (large negative values are expected, not divergence)
    and which options change it. Never repeated by this callback; does nothing for a baseline
    (`amcl=False`) model. Per-head fractions are in `history_fields` (`{"tau_floor_per_head": ...}`).

    Example:
    ```python
    view1, view2 = next(iter(views))
    model.fit(views, epochs=20, callbacks=[amcl_keras.callbacks.TemperatureSaturationWarning(view1, view2)])
    ```
    """

    def __init__(self, view1, view2, every_steps=None, fraction=0.5, margin=0.1, telemetry=None):
        super().__init__()
        if every_steps is not None and every_steps < 1:
            raise InvalidInputError(f"`every_steps` must be None (epoch ends only) or >= 1, got {every_steps}.")
        if not 0.0 <= fraction < 1.0 or not margin > 0.0:
            raise InvalidInputError(f"Need 0 <= fraction < 1 and margin > 0, got fraction={fraction!r}, margin={margin!r}.")
        self.view1, self.view2 = tf.convert_to_tensor(view1), tf.convert_to_tensor(view2)
        self.every_steps, self.fraction, self.margin = every_steps, fraction, margin
        self.telemetry = telemetry  # a `PairTelemetry` on the same views, placed before this callback: its
        # epoch-end statistics are reused instead of measuring the same batch twice
        self.warned = False  # once per callback, i.e. per training run (a resumed fit reuses it)
        self.history_fields = None
        self._pending, self._loss, self._step = None, None, 0

    def _temperature(self):
        if not getattr(self.model, "amcl", False):
            return None
        return getattr(getattr(self.model, "contrastive_loss", None), "temperature", None)

    def _measure(self, when, epoch=None):
        """Fractions at the floor now; queue the warning if they cross the threshold."""
        temperature = self._temperature()
        latest = getattr(self.telemetry, "latest", None)
        if epoch is not None and latest is not None and latest[0] == epoch:
            stats = latest[1]
        else:
            stats = self.model.pair_statistics(self.view1, self.view2)
        fractions = floor_fractions(stats, temperature.temperature_min, self.margin)
        if not self.warned and self._pending is None:
            worst = max(((kind, head, share) for kind, shares in fractions.items() for head, share in enumerate(shares)),
                        key=lambda item: item[2])
            if worst[2] > self.fraction:
                self._pending = (when, fractions)
        return fractions

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self.every_steps and self._step % self.every_steps == 0 and not self.warned and self._temperature():
            self._measure(f"step {self._step}")

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._emit()  # a collapse found in the previous epoch: now below its progress line

    def on_epoch_end(self, epoch, logs=None):
        self.history_fields = None
        if self._temperature() is None:
            return
        self._loss = (logs or {}).get("loss")
        fractions = self._measure(f"epoch {epoch + 1}", epoch)
        self.history_fields = {"tau_floor_per_head": {
            kind: {f"head{c}": share for c, share in enumerate(shares)} for kind, shares in fractions.items()}}
        if logs is not None:
            logs["tau_floor"] = max(max(shares) for shares in fractions.values())

    def on_train_end(self, logs=None):
        self._emit()

    def message(self, when, fractions, short=False):
        """The warning's text: what was measured, what it means, what changes it (`short`: the stderr line)."""
        temperature = self._temperature()
        tau_min = temperature.temperature_min
        names = {"tau_pos": "positive", "tau_neg": "negative"}
        heads = ", ".join(
            f"head {c}: " + " and ".join(f"{fractions[kind][c]:.0%} of {names[kind]}" for kind in fractions)
            for c in range(len(next(iter(fractions.values()))))
        )
        objective = getattr(self.model.contrastive_loss, "objective", "authors")
        bounded = [name for name in OBJECTIVES if name != "authors"]
        specs = [spec for spec in registry.METHODS.values() if type(self.model) is spec.model]
        validated = (f" objective={objective!r} is the validated default of {specs[0].display_name} (docs/METHOD.md "
                     "§10: it scored best on validation with this collapse), so this is expected.") \
            if specs and specs[0].settings.objective == objective else ""
        fixes = []
        if objective == "authors" and bounded:
            fixes.append(f"model.objective: {' or '.join(bounded)} (a bounded objective, which keeps the "
                         "temperatures off the floor)")
        beta = getattr(self.model.contrastive_loss, "beta", None)
        fixes.append("a larger model.beta" + (f" (now {beta:g})" if beta is not None else ""))
        fixes.append(f"a larger model.temperature_min (now {tau_min:g})")
        if short:
            worst = max(max(shares) for shares in fractions.values())
            options = "|".join(bounded) if objective == "authors" and bounded else ""
            return (f"{when}: AMCL's temperatures collapsed to temperature_min={tau_min:g} (tau_floor {worst:.2f}). "
                    f"The loss now reads ~{1 / tau_min:.0e} x a margin of cosines: large negative values are "
                    "expected, not divergence; τ no longer adapts. Options: "
                    + (f"model.objective={options}, " if options else "")
                    + "model.beta, model.temperature_min (docs/METHOD.md §8)." + validated + " Details in the "
                    "TemperatureCollapseWarning below.")
        return (
            f"AMCL's adaptive temperatures have collapsed to their floor ({when}): pairs with "
            f"τ within {self.margin:.0%} of temperature_min = {tau_min:g}, on a fixed training batch — {heads} pairs. "
            f"What it means: the loss is now about 1/temperature_min = {1 / tau_min:.3g} times a margin of "
            "cosine similarities (SimCLR/MoCo: mean top-k negative cosine − positive cosine, summed over heads, "
            "plus a constant from the regulariser), so large negative loss values "
            + (f"(this epoch: {float(self._loss):.4g}) " if self._loss is not None else "")
            + "are expected and are NOT divergence; gradient clipping keeps the steps bounded. The sigmoid that maps φ's "
            "scores to τ is saturated, φ gets almost no gradient, and the per-pair temperature no longer adapts: "
            "training continues as a fixed-temperature margin loss. This follows from the objective "
            f"(objective={objective!r}) and its settings, not from a bug of this run.{validated} To change it: "
            + "; ".join(fixes) + ". See docs/METHOD.md §8 (the collapse of τ) and the section "
            "'Bounded objectives (model.objective)'. This warning is shown once per run."
        )

    def _emit(self):
        if self._pending is None or self.warned:
            return
        when, fractions = self._pending
        self._pending, self.warned = None, True
        # The stderr line shows even where Python warnings are filtered; the warning carries the details.
        print(f"amcl: WARNING: {self.message(when, fractions, short=True)}", file=sys.stderr, flush=True)
        warnings.warn(TemperatureCollapseWarning(self.message(when, fractions)), stacklevel=2)
