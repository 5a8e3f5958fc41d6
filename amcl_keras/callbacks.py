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
