"""Training callbacks: the per-epoch JSON-lines history and the non-finite-loss guard."""

import json
import math
import time

import keras


class NonFiniteLossError(FloatingPointError):
    """Raised when the training loss stops being finite."""


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stop training with a clear error at the first step whose loss is NaN or infinite."""

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            temperatures = {k: round(float(v), 6) for k, v in logs.items() if k.startswith("tau_")}
            raise NonFiniteLossError(
                f"The training loss became {float(loss)} at epoch {self._epoch + 1}, step {batch + 1}. "
                f"Last mean temperatures per head: {temperatures or 'n/a'}. Lower the learning rate, keep "
                "gradient clipping on (global_clipnorm), raise temperature_min, or check the input data "
                "for NaNs; the weights saved before this epoch are unaffected."
            )


class JSONLinesHistory(keras.callbacks.Callback):
    """Append one JSON object per epoch (epoch, metrics, learning rate, seconds) to `path`."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - self._start, 3)}
        record.update({k: float(v) for k, v in (logs or {}).items()})
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None:
            record["learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()


class KNNMonitor(keras.callbacks.Callback):
    """kNN accuracy of the backbone on a held-out labelled split every `every` epochs.

    Cosine similarity, k = 200, T = 0.1, weighted votes (as the AMCL authors and lightly); the
    bank is `train` (uint8 images, labels), the queries `test`. The value is added to the
    epoch's logs as `knn_accuracy` (so `JSONLinesHistory` placed after it records it).

    Example:
    ```python
    monitor = amcl_keras.callbacks.KNNMonitor(amcl_keras.data.load_shipped("train"),
                                              amcl_keras.data.load_shipped("test"), every=5)
    model.fit(views, epochs=20, callbacks=[monitor])
    ```
    """

    def __init__(self, train, test, every=1, k=200, temperature=0.1, image_size=None):
        super().__init__()
        if every < 1:
            raise ValueError(f"`every` must be at least 1 epoch, got {every}.")
        self.train, self.test = train, test
        self.every, self.k, self.temperature, self.image_size = every, k, temperature, image_size

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        from amcl_keras import evaluation

        encoder = self.model.encoder
        bank = evaluation.extract_features(encoder, self.train[0], self.image_size)
        queries = evaluation.extract_features(encoder, self.test[0], self.image_size)
        accuracy = evaluation.knn_accuracy(bank, self.train[1], queries, self.test[1], self.k, self.temperature)
        if logs is not None:
            logs["knn_accuracy"] = accuracy
