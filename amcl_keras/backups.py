"""A run's backups, pre-emption and resume, in one place.

- `RunBackup` (a callback): every `train.backup_every_steps` steps and every epoch end, the model's weights with the
  optimizer state and every non-trainable variable, committed atomically; with `preemptible=True`, SIGTERM during
  `fit` writes a backup at the next step boundary and raises `RunPreempted` (`amcl train` exits with
  `PREEMPTED_EXIT_CODE`).
- `PreemptionCheckpoint` (a callback): the same under `MultiWorkerMirroredStrategy`, by TF's
  `PreemptionCheckpointHandler` (every worker saves at the same step).
- `resume`: the one path by which a run starts: from nothing, from the latest readable file backup, or from a
  multi-worker pre-emption checkpoint (whichever is later); it returns where training picks up and the callbacks
  that back it up from there. `train.fit` calls it and nothing else of this module.
- `trim_history`: a resumed run's `history.jsonl` keeps only the epochs its backup covers.

The files live in `RUN_DIR/backup/` (`runs.BACKUP`), removed when the run finishes.
"""

import json
import logging
import pathlib
import signal
import sys
import threading
import typing

import keras
import tensorflow as tf

from amcl_keras.errors import AMCLError, InvalidInputError
from amcl_keras.runs import (
    BACKUP, HISTORY, RunDirectoryError, RunWriteError, atomic_write, atomic_write_text, history_epoch, make_directory, write_json,
)

log = logging.getLogger("amcl_keras.backups")


# `amcl train` exits with this code after a SIGTERM (pre-emption): a backup was written, re-run to resume.
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: a temporary failure, the command can be retried


class RunPreempted(AMCLError, RuntimeError):
    """Training received SIGTERM; a backup was written at the next step boundary. Re-run the same
    command to resume from it."""


def trim_history(run_dir, completed_epochs):
    """Keep the history records of the epochs a backup covers: a resumed run writes each epoch once."""
    path = pathlib.Path(run_dir) / HISTORY
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines()
            if (epoch := history_epoch(line)) is not None and epoch <= completed_epochs]  # a line cut short goes
    atomic_write_text(path, "".join(line + "\n" for line in kept))


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


class PreemptionCheckpoint(keras.callbacks.Callback):
    """SIGTERM under MultiWorkerMirroredStrategy, with TF's own machinery: a
    `tf.distribute.experimental.PreemptionCheckpointHandler` watches for the signal on every worker;
    after each step this callback records the position (completed epochs, steps into the next) and
    asks the handler, which, once any worker has been signalled, makes every worker save a
    checkpoint of the model, the optimizer and the position at the same step, then raises
    `RunPreempted` (the CLI exits with `PREEMPTED_EXIT_CODE`). Re-running the same
    command on every worker resumes from it. The checkpoint lives in `RUN_DIR/backup/preemption`
    (each non-chief worker writes its own copy next to it, as TF requires)."""

    def __init__(self, strategy, run_dir, model):
        super().__init__()
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="preemption_epoch")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="preemption_step")
        checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, epoch=self.epoch, step=self.step)

        def stop():
            raise RunPreempted(
                f"A worker was sent SIGTERM; every worker saved a checkpoint after epoch {int(self.epoch.numpy())} + "
                f"{int(self.step.numpy())} step(s) in {str(pathlib.Path(run_dir) / BACKUP / 'preemption')!r}. Re-run the same "
                "command on every worker to resume."
            )

        self.handler = tf.distribute.experimental.PreemptionCheckpointHandler(
            strategy.cluster_resolver, checkpoint, str(pathlib.Path(run_dir) / BACKUP / "preemption"),
            tf.distribute.experimental.TerminationConfig(exit_fn=stop),
        )
        self.position = (int(self.epoch.numpy()), int(self.step.numpy()))
        self.restored = self.position != (0, 0)

    def on_epoch_begin(self, epoch, logs=None):
        if epoch != int(self.epoch.numpy()):
            self.epoch.assign(epoch)
            self.step.assign(0)

    def on_train_batch_end(self, batch, logs=None):
        self.step.assign_add(1)
        self.handler.save_checkpoint_if_preempted()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.assign(epoch + 1)
        self.step.assign(0)


class Resumption(typing.NamedTuple):
    """Where training picks up: `state` (the backup resumed from, None for a fresh start), the completed `epoch` and
    the `step` within the next one, and the callbacks that back the run up from there: `backup` (a `RunBackup`)
    and, under several workers, `preemption` (a `PreemptionCheckpoint`)."""

    state: typing.Any
    epoch: int
    step: int
    backup: RunBackup
    preemption: typing.Any = None

    @property
    def callbacks(self):
        """Append these after the history callback: a backup never claims an epoch the history lacks."""
        return [self.backup] + ([self.preemption] if self.preemption is not None else [])


def resume(model, strategy, run_dir, write_dir, resume=False, every_steps=None, steps_per_epoch=None, chief=True):
    """The one path by which a run starts, for every strategy: restore the latest backup of `run_dir` into `model`
    (with `resume`), trim the history to it (chief only), and make the callbacks that back up from there and handle
    SIGTERM — `RunBackup(preemptible=True)` on one machine, TF's handler (`PreemptionCheckpoint`) under
    `MultiWorkerMirroredStrategy` (its checkpoint, restored on creation, wins over an older file backup).
    Call under `strategy.scope()`: the optimizer's variables are built here."""
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    resume_from = pathlib.Path(run_dir) if resume else None
    preemption = PreemptionCheckpoint(strategy, run_dir, model) if multi_worker else None
    backed_up = RunBackup.read_state(resume_from / BACKUP) if resume_from else None
    if preemption is not None and preemption.restored and (
            backed_up is None or preemption.position > (backed_up["epoch"], backed_up["step"])):
        state = {"epoch": preemption.position[0], "step": preemption.position[1]}
    else:
        state = RunBackup.restore(model, resume_from / BACKUP) if resume_from else None
    epoch, step = (state["epoch"], state["step"]) if state else (0, 0)
    if steps_per_epoch and step >= steps_per_epoch:  # a backup at an epoch's last step
        epoch, step = epoch + 1, 0
    if preemption is not None:  # count on from where training resumes
        preemption.epoch.assign(epoch)
        preemption.step.assign(step)
    if resume_from is not None and chief:
        trim_history(resume_from, epoch)
    if state:
        print(f"Resuming {resume_from} from its backup: {epoch} epoch(s) done"
              + (f", then {step} step(s) of epoch {epoch + 1}." if step else "."), file=sys.stderr)
    # SIGTERM: a backup at the next step, then RunPreempted (not across workers: each would stop at its own step)
    backup = RunBackup(pathlib.Path(write_dir) / BACKUP, every_steps if steps_per_epoch else None, epoch, step,
                       preemptible=not multi_worker)
    return Resumption(state, epoch, step, backup, preemption)
