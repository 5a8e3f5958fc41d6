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
any moment leaves either the previous version or the new one, never half a file; a write that
fails (disk full, no permission) raises `RunWriteError` and leaves the previous version in place.
This module depends only on `config` (below it in the import graph) and Keras.
"""

import errno
import json
import logging
import os
import pathlib
import shutil
import signal
import tempfile
import threading

import keras

from amcl_keras import config as config_lib
from amcl_keras.errors import AMCLError, InvalidInputError

CONFIG, HISTORY, RESULTS, EVAL = "config.yaml", "history.jsonl", "results.json", "eval.json"
FINAL_WEIGHTS, ENCODER = "final.weights.h5", "encoder.keras"
BACKUP, TENSORBOARD, EXPORT = "backup", "tensorboard", "export"


log = logging.getLogger("amcl_keras.runs")


class RunDirectoryError(AMCLError, FileExistsError):
    """The run directory holds files this run cannot use: files that are not this run, a run with
    a different config, or a backup that cannot be read. --overwrite starts over."""


class RunReadError(AMCLError, RuntimeError):
    """A run directory cannot be read: missing, unfinished, or holding a corrupt file."""


# `amcl train` exits with this code after a SIGTERM (pre-emption): a backup was written, re-run to resume.
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: a temporary failure, the command can be retried


class RunPreempted(AMCLError, RuntimeError):
    """Training received SIGTERM; a backup was written at the next step boundary. Re-run the same
    command to resume from it."""


class RunWriteError(AMCLError, OSError):
    """The run directory, or a file in it, cannot be created or written (a path component that is
    a file, no permission, disk full). The message names the path and the OS error; what was
    written before (the previous backup, the previous version of the file) is left intact.
    `errno` is the OS error's."""

    def __init__(self, message, errno_=None):
        super().__init__(message)
        self.errno = errno_


def describe_os_error(error, replace=None):
    """The OS error's own words ("No space left on device"), with temporary names in it
    (`replace`: {temporary path: real path}) replaced by the real ones."""
    text = os.strerror(error.errno) if isinstance(error, OSError) and error.errno else str(error)
    for temporary, real in (replace or {}).items():
        text = text.replace(str(temporary), str(real)).replace(pathlib.Path(temporary).name, pathlib.Path(real).name)
    return text


def creation_problem(path):
    """Why the folder `path` cannot be created or written: `(text, errno)`, or None. A path
    component (or `path` itself) is a file, or the nearest existing folder is not writable."""
    path = pathlib.Path(path)
    if path.exists() and not path.is_dir():
        return f"{str(path)!r} is a file, not a folder", errno.ENOTDIR
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        return f"{str(existing)!r} is a file, so no folder can be made under it", errno.ENOTDIR
    if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
        return f"{str(existing)!r} is not writable ({os.strerror(errno.EACCES)})", errno.EACCES
    return None


def make_directory(path, what="The run directory", hint="Choose another --run-dir"):
    """`path.mkdir(parents=True, exist_ok=True)`, or a `RunWriteError` naming the path, the
    problem and `hint` (what to do)."""
    path = pathlib.Path(path)
    problem = creation_problem(path)
    if problem is None:
        try:
            path.mkdir(parents=True, exist_ok=True)
            return path
        except OSError as error:
            problem = describe_os_error(error), error.errno
    raise RunWriteError(f"{what} {str(path)!r} cannot be created: {problem[0]}. {hint}.", problem[1])


_WRITE_HINT = ("Free some space or fix the folder's permissions, then re-run the same command (a run resumes "
               "from its last backup).")


def atomic_write(path, write):
    """Call `write(temporary_path)` and rename the result to `path` in one step.

    The temporary name keeps `path`'s suffix (Keras checks `.keras` / `.weights.h5`), so
    `atomic_write(p, model.save_weights)` works as well as `atomic_write_text`. A failed write
    (disk full, no permission) raises `RunWriteError` naming `path` and the OS error; the
    previous `path`, if any, is untouched and no temporary file is left.
    """
    path = pathlib.Path(path)
    temporary = path.with_name(f"partial-{os.getpid()}-{path.name}")
    try:
        write(str(temporary))
        os.replace(temporary, path)
    except OSError as error:
        kept = " (its previous version is kept)" if path.exists() else ""
        raise RunWriteError(f"Could not write {str(path)!r}{kept}: {describe_os_error(error, {temporary: path})}. "
                            f"{_WRITE_HINT}", error.errno) from None
    finally:
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            pass


def append_text(path, text):
    """Append `text` to `path` (history.jsonl). A failed write raises `RunWriteError`, the file
    cut back to its previous length (no half line)."""
    path = pathlib.Path(path)
    size = path.stat().st_size if path.is_file() else 0
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
    except OSError as error:
        try:
            os.truncate(path, size)
        except OSError:
            pass
        raise RunWriteError(f"Could not write {str(path)!r}: {describe_os_error(error)}. {_WRITE_HINT}",
                            error.errno) from None


def atomic_write_text(path, text):
    atomic_write(path, lambda temporary: pathlib.Path(temporary).write_text(text, encoding="utf-8"))


def write_json(path, value):
    atomic_write_text(path, json.dumps(value, indent=2))


def write_config(run_dir, config):
    """`config.yaml` of a run (atomically; `RunWriteError` when it cannot be written)."""
    atomic_write_text(pathlib.Path(run_dir) / CONFIG, config.to_yaml())


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
    differs from `config`, naming the differences; `overwrite` starts over in any case. A path
    that cannot be a folder (a file, or under one) or is not writable: RunWriteError, before
    anything is read or trained.
    """
    run_dir = pathlib.Path(run_dir)
    problem = creation_problem(run_dir)
    finished_read_only = problem and problem[1] == errno.EACCES and not overwrite and (run_dir / RESULTS).is_file()
    if problem and not finished_read_only:  # a finished run in a read-only folder is only read
        verb = "written" if run_dir.is_dir() else "created"
        raise RunWriteError(f"The run directory {str(run_dir)!r} cannot be {verb}: {problem[0]}. "
                            "Choose another --run-dir.", problem[1])
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
    make_directory(run_dir)
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
            if (epoch := _epoch_of(line)) is not None and epoch <= completed_epochs]  # a line cut short goes
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _epoch_of(line):
    """The epoch of one history line, or None for a blank line or one cut short by a crash."""
    try:
        return json.loads(line)["epoch"]
    except (ValueError, TypeError, KeyError):
        return None


# --- backups ------------------------------------------------------------------------------------------
class RunBackup(keras.callbacks.Callback):
    """Back up what a resumed run needs, every `every_steps` steps and at every epoch end.

    One backup is the model's weights WITH the optimizer state (`save_weights` includes it:
    the step count that drives the learning-rate schedule, momenta) and every non-trainable
    variable (MoCo's key encoder, queues and pointer; batch-norm statistics), plus
    `state.json` = {epoch (completed), step (within the next epoch), weights file, previous}.
    The weights are written under a new name first (atomically) and `state.json` is replaced
    atomically after them, so a kill at any moment leaves the previous complete backup; a failed
    write (disk full) raises `RunWriteError` and leaves it too. The backup before the latest is
    kept as `previous` (at most two weights files): `RunBackup.restore` loads the latest one,
    or the previous one when the latest file is truncated or corrupt.

    With `preemptible=True` (what `amcl train` uses), SIGTERM during `fit` is caught: at the next
    step boundary a backup is written and `RunPreempted` is raised (the CLI then exits with
    `PREEMPTED_EXIT_CODE`); the previous SIGTERM handler is put back when training ends.
    """

    STATE = "state.json"

    def __init__(self, directory, every_steps=None, initial_epoch=0, initial_step=0, preemptible=False):
        super().__init__()
        if every_steps is not None and every_steps < 1:
            raise InvalidInputError(f"`every_steps` must be None (epochs only) or >= 1, got {every_steps}.")
        self.directory = pathlib.Path(directory)
        self.every_steps = every_steps
        self._epoch, self._step = initial_epoch, initial_step
        self.preemptible, self.preempted, self._previous_handler = preemptible, False, None

    def on_train_begin(self, logs=None):
        if self.preemptible and threading.current_thread() is threading.main_thread() and self._previous_handler is None:
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        self.preempted = True  # acted on at the next step boundary

    def restore_signal_handler(self):
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

    def on_train_end(self, logs=None):
        self.restore_signal_handler()

    def _stop_if_preempted(self):
        if self.preempted:
            self.restore_signal_handler()
            raise RunPreempted(
                f"Stopped by SIGTERM after epoch {self._epoch} + {self._step} step(s); the backup in "
                f"{str(self.directory)!r} holds that point. Re-run the same command to resume."
            )

    def on_epoch_begin(self, epoch, logs=None):
        if epoch != self._epoch:  # a new epoch (not the resumed remainder of one)
            self._epoch, self._step = epoch, 0

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        last_of_epoch = batch + 1 == (self.params or {}).get("steps")  # the epoch-end backup follows at once
        if last_of_epoch:
            return  # on_epoch_end backs up (and acts on a pending SIGTERM) once the epoch's records exist
        if (self.every_steps and self._step % self.every_steps == 0) or self.preempted:
            self.save(self._epoch, self._step)
        self._stop_if_preempted()

    def on_epoch_end(self, epoch, logs=None):
        self._epoch, self._step = epoch + 1, 0
        self.save(epoch + 1, 0)
        self._stop_if_preempted()

    def save(self, epoch, step):
        """Write one backup (under several workers every worker saves; non-chiefs into a scratch folder).

        The latest backup so far becomes `previous`; older weights files are removed after the commit."""
        make_directory(self.directory, "The backup folder", "Free some space or fix the permissions, then re-run "
                       "the same command to resume")
        entries = self.backups(self.directory, strict=False)
        name = f"backup-e{epoch}-s{step}.weights.h5"
        atomic_write(self.directory / name, lambda path: self.model.save_weights(path, overwrite=True))
        previous = next((entry for entry in entries if entry["weights"] != name), None)
        try:
            write_json(self.directory / self.STATE, {"epoch": epoch, "step": step, "weights": name,
                                                     "previous": previous})  # the commit point
        except RunWriteError:
            if name not in [entry["weights"] for entry in entries]:
                (self.directory / name).unlink(missing_ok=True)  # not committed: the previous state stays whole
            raise
        kept = {name, previous and previous["weights"]}
        for path in self.directory.glob("backup-*.weights.h5"):
            if path.name not in kept:
                path.unlink(missing_ok=True)

    @classmethod
    def backups(cls, directory, strict=True):
        """The backups `state.json` lists, latest first: `[{epoch, step, weights}, ...]` (the
        latest and the previous one); [] without a `state.json`. An unreadable `state.json` is a
        `RunDirectoryError` (with `strict=False`: [])."""
        directory = pathlib.Path(directory)
        path = directory / cls.STATE
        if not path.is_file():
            return []
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            entries = [state] + ([state["previous"]] if state.get("previous") else [])
            entries = [{"epoch": int(e["epoch"]), "step": int(e["step"]), "weights": str(e["weights"])} for e in entries]
            if any(pathlib.Path(e["weights"]).name != e["weights"] for e in entries):
                raise InvalidInputError("a weights name is not a file name in the backup folder")
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:  # truncated, edited, foreign
            if not strict:
                return []
            raise RunDirectoryError(
                f"The backup state {str(path)!r} cannot be read ({type(error).__name__}: {error}), so the run cannot "
                f"be resumed. Pass --overwrite to start the run over, or delete the folder {str(directory)!r} to "
                "train it again from the first epoch."
            ) from None
        return entries

    @classmethod
    def read_state(cls, directory):
        """The latest backup whose weights file exists, `{epoch, step, weights}`, or None."""
        entries = cls.backups(directory, strict=False)
        return next((entry for entry in entries if (pathlib.Path(directory) / entry["weights"]).is_file()), None)

    @classmethod
    def restore(cls, model, directory):
        """Load the latest backup into `model` (compiled, built); returns its state or None (no backup).

        When the latest weights file cannot be loaded (truncated, corrupt, missing) the previous
        backup is loaded instead, with a warning, and `state.json` is pointed at it. When none
        can be, or `state.json` is unreadable: `RunDirectoryError`, naming the files and how to
        start over.
        """
        directory = pathlib.Path(directory)
        entries = cls.backups(directory)
        if not entries:
            return None
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        failures = []
        for entry in entries:
            path = directory / entry["weights"]
            try:
                if not path.is_file():
                    raise FileNotFoundError("the file is missing")
                model.load_weights(str(path))
            except Exception as error:  # h5py and Keras raise many types for a truncated or foreign file
                failures.append(f"{str(path)!r}: {type(error).__name__}: {error}")
                continue
            if failures:
                log.warning("The latest backup cannot be loaded (%s); resuming from the previous one instead "
                            "(epoch %d, step %d).", failures[0], entry["epoch"], entry["step"])
                try:  # the unreadable one is not offered as a fallback again (and goes at the next save)
                    write_json(directory / cls.STATE, {**entry, "previous": None})
                except RunWriteError as error:
                    log.warning("%s", error)
            return entry
        raise RunDirectoryError(
            f"The backup in {str(directory)!r} cannot be loaded ({'; '.join(failures)}), so the run cannot be "
            f"resumed. Pass --overwrite to start the run over, or delete the folder {str(directory)!r} to train "
            "it again from the first epoch."
        )


# --- reading a finished run ---------------------------------------------------------------------------
def load_run(run_dir):
    """The trained encoder and the config text of a run directory written by `amcl train`."""
    run_dir = _existing_run_directory(run_dir)
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


def _existing_run_directory(run_dir):
    run_dir = pathlib.Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunReadError(f"{str(run_dir)!r} is a file, not a run directory. Pass the folder `amcl train` wrote "
                           "(it holds config.yaml, history.jsonl and encoder.keras).")
    if not run_dir.is_dir():
        raise RunReadError(f"Run directory {str(run_dir)!r} does not exist. Pass the folder `amcl train` wrote.")
    return run_dir


def load_config(run_dir):
    """The `Config` a run was trained with."""
    return config_lib.load(pathlib.Path(run_dir) / CONFIG)


def read_results(run_dir):
    """The `results.json` of a finished run."""
    path = _existing_run_directory(run_dir) / RESULTS
    if not path.is_file():
        raise RunReadError(f"{str(path)!r} is missing: {str(run_dir)!r} holds no finished run.")
    return json.loads(path.read_text())


def read_history(run_dir):
    """The per-epoch records of `history.jsonl`."""
    path = _existing_run_directory(run_dir) / HISTORY
    if not path.is_file():
        raise RunReadError(f"{str(path)!r} is missing: {str(run_dir)!r} is not a run directory written by `amcl train`.")
    return [json.loads(line) for line in path.read_text().splitlines() if _epoch_of(line) is not None]
