"""The run directory, in one place: what it holds, its lifecycle, backups, and reading a finished run.

A run directory written by `amcl train` holds:

    config.yaml        the resolved config (written first; a run with a different config is refused)
    history.jsonl      one JSON line per epoch
    backup/            resume state while the run is unfinished (`RunBackup`), removed at the end
    tensorboard/       TensorBoard scalars and histograms
    final.weights.h5   the whole model (weights and optimizer state)
    encoder.keras      the backbone alone
    export/            the verified SavedModel / ONNX export (`amcl_keras.export`)
    results.json       written last: its presence marks the run finished
    eval.json          `amcl eval`'s re-evaluation, if any

Every file is written through `atomic_write` (a temporary name, then one rename), so a crash at
any moment leaves either the previous version or the new one, never half a file.
This module depends only on `config` (below it in the import graph) and Keras.
"""

import json
import os
import pathlib
import shutil
import tempfile

import keras

from amcl_keras import config as config_lib

CONFIG, HISTORY, RESULTS, EVAL = "config.yaml", "history.jsonl", "results.json", "eval.json"
FINAL_WEIGHTS, ENCODER = "final.weights.h5", "encoder.keras"
BACKUP, TENSORBOARD, EXPORT = "backup", "tensorboard", "export"


class RunDirectoryError(FileExistsError):
    """The run directory already holds files that are not this run."""


class RunReadError(RuntimeError):
    """A run directory cannot be read: missing, unfinished, or holding a corrupt file."""


def atomic_write(path, write):
    """Call `write(temporary_path)` and rename the result to `path` in one step.

    The temporary name keeps `path`'s suffix (Keras checks `.keras` / `.weights.h5`), so
    `atomic_write(p, model.save_weights)` works as well as `atomic_write_text`.
    """
    path = pathlib.Path(path)
    temporary = path.with_name(f"partial-{os.getpid()}-{path.name}")
    try:
        write(str(temporary))
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def atomic_write_text(path, text):
    atomic_write(path, lambda temporary: pathlib.Path(temporary).write_text(text, encoding="utf-8"))


def write_json(path, value):
    atomic_write_text(path, json.dumps(value, indent=2))


# --- lifecycle ----------------------------------------------------------------------------------------
def _flatten(values, prefix=""):
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def inspect_run_directory(run_dir, config, overwrite=False):
    """What `train.run` does with `run_dir`: "new", "resume" (same config, unfinished) or "finished".

    Refuses (RunDirectoryError) a folder that holds files but no run, and a run whose config
    differs from `config`, naming the differences; `overwrite` starts over in any case.
    """
    run_dir = pathlib.Path(run_dir)
    if overwrite or not run_dir.exists() or not any(run_dir.iterdir()):
        return "new"
    saved = run_dir / CONFIG
    if not saved.is_file():
        raise RunDirectoryError(
            f"The run directory {str(run_dir)!r} already holds files but no {CONFIG}, so it is not an amcl run. "
            "Choose a new --run-dir, or pass --overwrite to replace its contents."
        )
    try:
        previous = _flatten(config_lib.load(saved).to_dict())
    except config_lib.ConfigError as error:
        raise RunDirectoryError(
            f"The {CONFIG} of {str(run_dir)!r} cannot be read ({error}); pass --overwrite to start that run over."
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
    return "finished" if (run_dir / RESULTS).is_file() else "resume"


def prepare_run_directory(run_dir, overwrite=False):
    """Create `run_dir` for a new run (emptying the files of an earlier one with `overwrite`)."""
    run_dir = pathlib.Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise RunDirectoryError(
            f"The run directory {str(run_dir)!r} already holds files. Choose a new --run-dir, "
            "or pass --overwrite to replace that run."
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG, HISTORY, RESULTS, EVAL, FINAL_WEIGHTS, ENCODER):
        (run_dir / name).unlink(missing_ok=True)
    for name in (EXPORT, TENSORBOARD, BACKUP):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    return run_dir


def scratch_directory():
    """Where a non-chief worker writes (MultiWorkerMirroredStrategy): removed after the run."""
    return pathlib.Path(tempfile.mkdtemp(prefix="amcl-worker-"))


def trim_history(run_dir, completed_epochs):
    """Keep the history records of the epochs a backup covers: a resumed run writes each epoch once."""
    path = pathlib.Path(run_dir) / HISTORY
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["epoch"] <= completed_epochs]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


# --- backups ------------------------------------------------------------------------------------------
class RunBackup(keras.callbacks.Callback):
    """Back up what a resumed run needs, every `every_steps` steps and at every epoch end.

    One backup is the model's weights WITH the optimizer state (`save_weights` includes it:
    the step count that drives the learning-rate schedule, momenta) and every non-trainable
    variable (MoCo's key encoder, queues and pointer; batch-norm statistics), plus
    `state.json` = {epoch (completed), step (within the next epoch), weights file}. The
    weights are written under a new name first and `state.json` is replaced atomically after
    them, so a kill at any moment leaves the previous complete backup. `RunBackup.restore`
    loads the latest one.
    """

    STATE = "state.json"

    def __init__(self, directory, every_steps=None, initial_epoch=0, initial_step=0):
        super().__init__()
        if every_steps is not None and every_steps < 1:
            raise ValueError(f"`every_steps` must be None (epochs only) or >= 1, got {every_steps}.")
        self.directory = pathlib.Path(directory)
        self.every_steps = every_steps
        self._epoch, self._step = initial_epoch, initial_step

    def on_epoch_begin(self, epoch, logs=None):
        if epoch != self._epoch:  # a new epoch (not the resumed remainder of one)
            self._epoch, self._step = epoch, 0

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self.every_steps and self._step % self.every_steps == 0:
            self.save(self._epoch, self._step)

    def on_epoch_end(self, epoch, logs=None):
        self._epoch, self._step = epoch + 1, 0
        self.save(epoch + 1, 0)

    def save(self, epoch, step):
        """Write one backup (under several workers every worker saves; non-chiefs into a scratch folder)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        previous = self.read_state(self.directory)
        name = f"backup-e{epoch}-s{step}.weights.h5"
        self.model.save_weights(str(self.directory / name), overwrite=True)
        write_json(self.directory / self.STATE, {"epoch": epoch, "step": step, "weights": name})  # the commit point
        if previous and previous["weights"] != name:
            (self.directory / previous["weights"]).unlink(missing_ok=True)

    @classmethod
    def read_state(cls, directory):
        path = pathlib.Path(directory) / cls.STATE
        if not path.is_file():
            return None
        state = json.loads(path.read_text())
        return state if (pathlib.Path(directory) / state["weights"]).is_file() else None

    @classmethod
    def restore(cls, model, directory):
        """Load the latest backup into `model` (compiled, built); returns its state or None."""
        state = cls.read_state(directory)
        if state is None:
            return None
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(str(pathlib.Path(directory) / state["weights"]))
        return state


# --- reading a finished run ---------------------------------------------------------------------------
def load_run(run_dir):
    """The trained encoder and the config text of a run directory written by `amcl train`."""
    run_dir = pathlib.Path(run_dir)
    if not run_dir.is_dir():
        raise RunReadError(f"Run directory {str(run_dir)!r} does not exist. Pass the folder `amcl train` wrote.")
    encoder_path, config_path = run_dir / ENCODER, run_dir / CONFIG
    missing = [p.name for p in (encoder_path, config_path) if not p.is_file()]
    if missing:
        raise RunReadError(
            f"Run directory {str(run_dir)!r} lacks {', '.join(missing)}: it is not a finished run "
            "(training may have stopped early). Re-run `amcl train`, or export a Keras model directly "
            "with amcl_keras.export.export_encoder(model, out_dir)."
        )
    try:
        encoder = keras.saving.load_model(encoder_path, compile=False)
    except Exception as error:  # a truncated or foreign file: many exception types are possible
        raise RunReadError(
            f"Could not load {str(encoder_path)!r} ({type(error).__name__}: {error}). The file is corrupt."
        ) from error
    return encoder, config_path.read_text(encoding="utf-8")


def load_config(run_dir):
    """The `Config` a run was trained with."""
    return config_lib.load(pathlib.Path(run_dir) / CONFIG)


def read_results(run_dir):
    """The `results.json` of a finished run."""
    path = pathlib.Path(run_dir) / RESULTS
    if not path.is_file():
        raise RunReadError(f"{str(path)!r} is missing: {str(run_dir)!r} holds no finished run.")
    return json.loads(path.read_text())


def read_history(run_dir):
    """The per-epoch records of `history.jsonl`."""
    path = pathlib.Path(run_dir) / HISTORY
    if not path.is_file():
        raise RunReadError(f"{str(path)!r} is missing: {str(run_dir)!r} is not a run directory written by `amcl train`.")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
