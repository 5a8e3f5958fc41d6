"""The run directory, in one place: what it holds, its lifecycle, crash-safe writes, and reading a finished run
(its backups, pre-emption and resume: `amcl_keras.backups`).

A run directory written by `amcl train` holds:

    config.yaml        the resolved config (written first; a run with a different config is refused)
    history.jsonl      one JSON line per epoch
    backup/            resume state while the run is unfinished (`backups.RunBackup`), removed at the end
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
import tempfile

import keras

from amcl_keras import config as config_lib
from amcl_keras.errors import AMCLError

CONFIG, HISTORY, RESULTS, EVAL = "config.yaml", "history.jsonl", "results.json", "eval.json"
FINAL_WEIGHTS, ENCODER = "final.weights.h5", "encoder.keras"
BACKUP, TENSORBOARD, EXPORT = "backup", "tensorboard", "export"


log = logging.getLogger("amcl_keras.runs")


class RunDirectoryError(AMCLError, FileExistsError):
    """The run directory holds files this run cannot use: files that are not this run, a run with
    a different config, or a backup that cannot be read. --overwrite starts over."""


class RunReadError(AMCLError, RuntimeError):
    """A run directory cannot be read: missing, unfinished, or holding a corrupt file."""


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


def history_epoch(line):
    """The epoch of one history line, or None for a blank line or one cut short by a crash."""
    try:
        return json.loads(line)["epoch"]
    except (ValueError, TypeError, KeyError):
        return None


def read_history(run_dir):
    """The per-epoch records of `history.jsonl`."""
    path = _existing_run_directory(run_dir) / HISTORY
    if not path.is_file():
        raise RunReadError(f"{str(path)!r} is missing: {str(run_dir)!r} is not a run directory written by `amcl train`.")
    return [json.loads(line) for line in path.read_text().splitlines() if history_epoch(line) is not None]
