"""The non-finite step policy in one place: detect, skip, count, stop after the first, tell the user.

- **detect** (`find_nonfinite_parts`): per step, which part's outputs (the encoder, head c, a method's own such as
  MoCo's keys, the forward pass's state such as batch-norm statistics, the loss) or gradients (the encoder,
  head c, "other": temperature network, predictor) are not all finite. Under a loss-scale optimizer
  (mixed_float16) non-finite gradients are its own signal to lower the scale (`LossScaleSkip`): they count
  only below `MIN_LOSS_SCALE`.
- **skip** (`apply_or_skip`): a bad step (on any replica) changes no variable: no optimizer update, no
  after-step update (MoCo's key encoder and queue), and the state the forward pass changed is put back
  from a snapshot of it (`ContrastiveTrainer.forward_state`).
- **count** (`part_counters`, `count_parts`): per-part counters the guard names in its message; the
  trainer's `skipped` log, per epoch, in the progress line and `history.jsonl`.
- **stop and tell** (`NonFiniteLossGuard`, `NonFiniteLossError`): the callback stops `fit` at the first
  skipped step, naming epoch, step, the origin and the last finite temperatures, and where the last
  good backup is; `amcl train` exits with code 3.

`methods/base.py`'s `train_step` calls these in that order; nothing else about non-finite values lives elsewhere.
"""

import math

import keras
import tensorflow as tf

from amcl_keras.errors import AMCLError
from amcl_keras.backups import RunBackup


def switch_per_replica(index, branches, args=()):
    """`branches[index](*args)`, where the branches may update variables through `merge_call` (an optimizer
    step, MoCo's momentum update). Under a strategy the choice is made once in the cross-replica context and
    the branch runs on every replica (TF does not allow a `cond` around `merge_call` inside a replica), as
    Keras's `LossScaleOptimizer` does; `index` must be the same on every replica."""
    def choose(index, functions):
        # nested conds, not tf.switch_case: XLA compiled the demo's step in 245 s with a switch_case of two
        # branches, 6 s with a cond (2 CPU cores)
        if len(functions) == 1:
            return functions[0]()
        return tf.cond(tf.equal(index, 0), functions[0], lambda: choose(index - 1, functions[1:]))

    if not tf.distribute.has_strategy():
        return choose(index, [lambda branch=branch: branch(*args) or tf.constant(0) for branch in branches])

    def decide(strategy, index, *args):
        index = strategy.experimental_local_results(index)[0]
        run = strategy.extended.call_for_each_replica
        choose(index, [lambda branch=branch: run(branch, args=args) or tf.constant(0) for branch in branches])

    return tf.distribute.get_replica_context().merge_call(decide, args=(index, *args))


# Under mixed_float16, non-finite gradients are the loss-scale optimizer's signal to halve its scale and skip the
# update. Below this scale no float16 overflow explains them (a gradient would have to exceed 65504 · 2^64 ≈ 1e24;
# AMCL-Barlow Twins with every τ at 1e-5, loss ~4e10, needs a scale near 2^-15): the non-finite guard counts them
# as non-finite gradients, about 80 halvings after the first (the optimizer would otherwise halve the scale forever).
MIN_LOSS_SCALE = 2.0**-64


def part_counters(num_heads, extra_output_parts=()):
    """{(kind, part): keras.metrics.Sum}: steps with non-finite "outputs" or "gradients" per part, read by
    `NonFiniteLossGuard`. Output parts run upstream first: the encoder, each head, a method's own
    (`extra_output_parts`, MoCo: "key encoder"), "state" (the non-trainable variables a forward pass updates,
    batch-norm statistics: a NaN that a ReLU squashes to 0 in the outputs still lands in them) and the loss."""
    heads = [f"head {head}" for head in range(num_heads)]
    parts = {"outputs": ["encoder", *heads, *extra_output_parts, "state", "loss"],
             "gradients": ["encoder", *heads, "other"]}
    return {(kind, part): keras.metrics.Sum(name=f"nonfinite_{kind}_{part.replace(' ', '')}")
            for kind, names in parts.items() for part in names}


def gradient_check(optimizer, variables):
    """Whether non-finite gradients count this step: always, except under a `LossScaleOptimizer`
    (mixed_float16), whose signal they are to skip and lower the scale: there only below `MIN_LOSS_SCALE`,
    where no float16 overflow explains them (the optimizer would otherwise halve the scale forever:
    training silently stops)."""
    if not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return tf.constant(True)
    if not optimizer.built:  # as its `apply` would, a little earlier: its scale is read here
        optimizer.build(variables)
    return optimizer.dynamic_scale < MIN_LOSS_SCALE


def loss_scale_overflow(gradients):
    """True where a loss-scale optimizer will skip its update (some gradient not finite)."""
    return ~tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in gradients if g is not None])


def find_nonfinite_parts(keys, *, features, z, carry_flags, state, loss, variables, gradients, owner, check_gradients):
    """{(kind, part): scalar bool} for every key of `keys` (`part_counters`): True where that part is not all finite.

    features: the encoder's outputs; z: the heads' outputs `[n, C, d]`; carry_flags: {part: bool} of a method's
    own outputs (`ContrastiveTrainer.carry_health`); state: the forward pass's non-trainable variables after it;
    owner: {id(variable): part} ("other" for the rest); check_gradients: `gradient_check`'s answer."""
    bad = {key: [] for key in keys}
    bad["outputs", "encoder"].append(~tf.reduce_all(tf.math.is_finite(features)))
    z_finite = tf.reduce_all(tf.math.is_finite(z), axis=[0, 2])  # [C]
    for head in range(z.shape[1]):
        bad["outputs", f"head {head}"].append(~z_finite[head])
    for part, flag in carry_flags.items():
        bad["outputs", part].append(flag)
    for variable in state:
        if "float" in str(variable.dtype):
            bad["outputs", "state"].append(~tf.reduce_all(tf.math.is_finite(variable)))
    bad["outputs", "loss"].append(~tf.math.is_finite(loss))
    for variable, gradient in zip(variables, gradients):
        if gradient is not None:
            finite = tf.reduce_all(tf.math.is_finite(gradient))
            bad["gradients", owner.get(id(variable), "other")].append(check_gradients & ~finite)
    return {key: tf.reduce_any(tf.stack(flags)) if flags else tf.constant(False) for key, flags in bad.items()}


def count_parts(counters, health):
    """Add this step's flags to the per-part counters; returns whether the step is bad (any part)."""
    for part, flag in health.items():
        counters[part].update_state(tf.cast(flag, tf.float32))
    return tf.reduce_any(tf.stack(list(health.values())))


def apply_or_skip(bad, apply, state, snapshot, args=(), overflow=None, optimizer_only=None):
    """Run `apply(*args)` (the optimizer step and the method's after-step update) unless the step is `bad`;
    a bad step puts `state` back to `snapshot` instead. Under a loss-scale optimizer (`overflow` given) a
    step it skips itself runs `optimizer_only(*args)` (it lowers the scale, updates nothing) and puts the
    state back too. `bad` and `overflow` must be the same on every replica."""

    def skip(*args):
        for variable, value in zip(state, snapshot):
            variable.assign(value)

    if overflow is None:  # two branches: the optimizer step is traced (and XLA-compiled) once
        return switch_per_replica(tf.where(bad, 0, 1), [skip, apply], args=args)

    def scale_down(*args):
        optimizer_only(*args)
        skip(*args)

    # 0: skipped whole; 1: the loss-scale optimizer's own skip (no after-step update either); 2: applied
    return switch_per_replica(tf.where(bad, 0, tf.where(overflow, 1, 2)), [skip, scale_down, apply], args=args)


class NonFiniteLossError(AMCLError, FloatingPointError):
    """Raised when the training loss stops being finite."""


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stop training with a clear error at the first step whose loss or gradient is not finite.

    The message names the epoch and step, the parts whose outputs and those whose gradients went
    non-finite (the encoder, head c, "other": temperature network, predictor; upstream first), the last finite per-head temperatures, and
    where the last good backup is (`backup_dir`). It runs before any backup callback, so the
    bad step is never saved.
    """

    def __init__(self, backup_dir=None):
        super().__init__()
        self.backup_dir = backup_dir

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._skipped = epoch, 0.0  # the model's `skipped` count restarts every epoch

    def on_train_begin(self, logs=None):
        self._last_temperatures, self._last_step = None, None

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        loss, skipped = logs.get("loss"), logs.get("skipped")
        if loss is None:
            return
        # a trainer of this package counts skipped steps (its loss is the mean of the others); any other model's
        # non-finite step shows in its loss
        newly_skipped = skipped is not None and float(skipped) > self._skipped
        if not newly_skipped and math.isfinite(float(loss)):
            self._last_temperatures = {k: round(float(v), 6) for k, v in logs.items() if k.startswith("tau_")}
            self._last_step = (self._epoch + 1, batch + 1)
            return
        counters = getattr(self.model, "nonfinite_steps", {})
        found = {kind: [part for (k, part), counter in counters.items() if k == kind and float(counter.result()) > 0]
                 for kind in ("outputs", "gradients")}
        origin = [part for part in found["outputs"] if part not in ("state", "loss")]
        if origin:  # batch-norm state and the loss are downstream of a network's outputs: name the origin
            found["outputs"] = origin
        where = "; ".join(f"non-finite {kind} in {', '.join(parts)}" for kind, parts in found.items() if parts)
        where = where or "the loss itself (every output and gradient was finite)"
        where = where.replace("outputs in loss", "outputs in the loss itself")
        last = f" (after epoch {self._last_step[0]}, step {self._last_step[1]})" if self._last_step else ""
        backup = ""
        if self.backup_dir is not None:
            state = RunBackup.read_state(self.backup_dir)
            backup = (f" The last good backup (epoch {state['epoch']}, step {state['step']}) is kept in "
                      f"{str(self.backup_dir)!r}: re-run the same command to resume from it, or pass --overwrite "
                      "with a changed config to start over." if state else " No backup had been written yet.")
        raise NonFiniteLossError(
            f"The training loss or gradient stopped being finite at epoch {self._epoch + 1}, step {batch + 1} "
            f"({'the step was skipped: no variable changed' if newly_skipped else f'loss {float(loss)}'}): {where}. "
            "Last finite mean temperatures per "
            f"head{last}: {self._last_temperatures or 'n/a'}. Lower the learning rate, keep gradient clipping "
            "on (train.clipnorm), raise model.temperature_min, or check the input data for NaNs." + backup
        )
