"""The trainer every method shares: one `train_step` from two views to an optimizer step.

(view1, view2) → encoder → projector, each view on its own (`encoder_forward="per_view"`, the
authors': batch-norm statistics per view) or both in one batch ("concatenated") → z1, z2 [b, C, d]
→ method loss → ÷ replicas (the optimizer sums replica gradients) → gradients → clip globally → apply
→ the method's after-step update (MoCo: momentum encoder, queue) → metrics.
A method subclass supplies its heads, its losses and `compute_loss_and_stats` (returning a `StepLoss`).
"""

import contextlib
import dataclasses
import typing

import keras
import tensorflow as tf

from amcl_keras.config import require
from amcl_keras.constants import DEFAULT_OBJECTIVE, ENCODER_FORWARDS, TEMPERATURE_CLIPPINGS
from amcl_keras.heads import check_feature_shape
from amcl_keras.errors import InvalidInputError, WrongTypeError
from amcl_keras import nonfinite
from amcl_keras.nonfinite import MIN_LOSS_SCALE, switch_per_replica  # noqa: F401 (kept importable from here)


class StepLoss(typing.NamedTuple):
    """What a method's `compute_loss_and_stats` returns: the float32 scalar `loss`, `stats` (a dict
    of per-head `[C]` tensors, logged as `<name>_<head>`), and `carry`: whatever the method's
    `after_optimizer_step(carry)` needs from this step (MoCo: the keys to enqueue; None otherwise)."""

    loss: typing.Any
    stats: dict
    carry: typing.Any = None


def built_output_shape(layer, input_shape):
    """Build `layer` for `input_shape` (batch first) and return its output shape. Functional and
    Sequential models know it; a subclassed model is called once on zeros (batch 2, inference)."""
    try:
        output = layer.output  # functional models (and Sequential ones once called)
    except (AttributeError, ValueError):
        output = layer(tf.zeros((2,) + tuple(input_shape[1:])), training=False)
    return keras.tree.map_structure(lambda tensor: tuple(tensor.shape), output)  # nested for several outputs


@dataclasses.dataclass
class MethodSettings:
    """The `model:` fields every method has; a method's settings dataclass subclasses this, sets
    the paper's defaults for it and adds its own fields. Registered with the method
    (`amcl_keras.registry.register_method`): the config validates and fills them, and the
    method's constructor takes its defaults from them, so each default is written once."""

    projection_dim: int = 128
    hidden_dim: int = 512
    beta: float = 1e-4  # the weight of the temperature regulariser
    # How the temperatures enter the AMCL loss: "normalized" / "rectified" (bounded) or "authors" (the
    # paper's form, unbounded below: τ collapses to temperature_min); docs/METHOD.md §9. Each method's
    # default is the one its validation ablation chose (docs/METHOD.md §10).
    objective: str = DEFAULT_OBJECTIVE
    temperature_center: typing.Optional[float] = None  # bounded objectives: τ the regulariser prefers (None: 2/d)
    # φ on stopped-gradient embeddings: the encoder gets no gradient through the temperatures (docs/METHOD.md §9)
    temperature_stop_gradient: bool = False
    # "joint": one global clipping norm over all weights (the authors'); "separate": φ's gradient clipped on its own
    temperature_clipping: str = "joint"

    # Not a setting: one line printed when training starts with AMCL on, where the validated ablation
    # found no AMCL variant of this method better than its tuned baseline (None: AMCL won).
    amcl_caveat = None

    def check(self, config):
        """Refuse out-of-range values with a `ConfigError`; `config` is the whole `Config`
        (for checks that span sections). Subclasses extend it."""
        for key in ("projection_dim", "hidden_dim"):
            require(getattr(self, key) >= 1, f"model.{key}", getattr(self, key), "it must be a positive integer")
        require(self.beta >= 0, "model.beta", self.beta, "it must be >= 0 (the authors use 1e-4; 1e-6 for Barlow Twins)")
        require(self.temperature_clipping in TEMPERATURE_CLIPPINGS, "model.temperature_clipping", self.temperature_clipping,
                f"one of {TEMPERATURE_CLIPPINGS} ('joint': one global clipping norm, the authors'; 'separate': the "
                "temperature network's gradient clipped on its own)")



@contextlib.contextmanager
def _optimizer_clipping_off(optimizer):
    """The optimizer's `global_clipnorm` unset while the step's update is traced (the trainer has clipped the
    gradient itself, by groups), then put back: its config and checkpoints are unchanged."""
    inner = optimizer.inner_optimizer if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) else optimizer
    saved, inner.global_clipnorm = inner.global_clipnorm, None
    try:
        yield
    finally:
        inner.global_clipnorm = saved


def temperature_options(cfg, negatives=False):
    """The AMCL loss arguments every method takes from a `ModelConfig` (with `negatives`: also
    the negative-selection form and top-k of SimCLR and MoCo)."""
    options = dict(beta=cfg.beta, temperature_hidden_dim=cfg.temperature_hidden_dim,
                   temperature_min=cfg.temperature_min, temperature_max=cfg.temperature_max,
                   objective=cfg.objective, temperature_center=cfg.temperature_center,
                   temperature_stop_gradient=cfg.temperature_stop_gradient)
    if negatives:
        options.update(negatives=cfg.negatives, top_k=cfg.top_k)
    return options


def _split_pairs(matrices, off_diagonal, with_negatives=True):
    """`{name: [C, n, n]}` → `{name_pos: diagonal [C, n], name_neg: off-diagonal [C, n(n-1)]}` (NumPy)."""
    out = {}
    for name, matrix in matrices.items():
        out[f"{name}_pos"] = tf.linalg.diag_part(matrix).numpy()
        if with_negatives or name == "sim":
            out[f"{name}_neg"] = tf.boolean_mask(matrix, off_diagonal, axis=1).numpy()
    return out


class ContrastiveTrainer(keras.Model):
    """Base class of the methods: owns the encoder, the projector, the step and the metrics.

    `data` for `fit` is a dataset of `(view1, view2)` batches (extra elements, such as labels,
    are ignored). `model(images)` and `model.encoder` give the backbone features.

    A method subclass sets `baseline_loss`/`amcl_loss` (the loss classes), `config_args` (its plain
    constructor arguments, stored by `get_config`), implements `compute_loss_and_stats` (→ `StepLoss`)
    and `from_model_config`, and registers itself with its settings dataclass
    (`@amcl_keras.registry.register_method`). Optional hooks: `create_method_state`,
    `build_method_state`, `after_optimizer_step`, `stat_names`, `scored_pairs`, `embeds_both_views`.

    The encoder may be functional, Sequential or subclassed; a subclassed one (no `.inputs`) is
    built by `model.build((None, H, W, C))` or by the first batch `fit` sees.
    """

    baseline_loss = None
    amcl_loss = None
    config_args = ()

    @classmethod
    def default_loss(cls, amcl, projection_dim, settings, amcl_args=(), baseline_args=()):
        """The loss a method builds when given none: its AMCL loss (`projection_dim`, `*amcl_args`) with the β,
        objective and regulariser centre its settings dataclass holds (validated per method), or its baseline loss
        (`*baseline_args`)."""
        if amcl:
            return cls.amcl_loss(projection_dim, *amcl_args, beta=settings.beta, objective=settings.objective,
                                 temperature_center=settings.temperature_center)
        return cls.baseline_loss(*baseline_args)

    def __init__(self, encoder, projector, loss, amcl, augmenter=None, encoder_forward="per_view",
                 temperature_clipping="joint", **kwargs):
        super().__init__(**kwargs)
        if temperature_clipping not in TEMPERATURE_CLIPPINGS:
            raise InvalidInputError(
                f"`temperature_clipping` must be one of {TEMPERATURE_CLIPPINGS} ('joint': the optimizer's global "
                f"clipping norm over every weight, the authors'; 'separate': the temperature network's gradient "
                f"clipped by its own global norm), got {temperature_clipping!r}."
            )
        self.temperature_clipping = temperature_clipping
        if encoder_forward not in ENCODER_FORWARDS:
            raise InvalidInputError(
                f"`encoder_forward` must be one of {ENCODER_FORWARDS} ('per_view': each view through the encoder and "
                f"heads on its own, batch-norm statistics per view, the authors'; 'concatenated': both views in one "
                f"batch), got {encoder_forward!r}."
            )
        self.encoder_forward = encoder_forward
        if isinstance(augmenter, dict):
            augmenter = keras.saving.deserialize_keras_object(augmenter)
        if augmenter is not None and not callable(augmenter):
            raise WrongTypeError(f"`augmenter` must be a Keras layer or callable on image batches, got {type(augmenter)!r}.")
        # With an augmenter, `fit` takes batches of float images and both views are made inside
        # the step (on the accelerator; under MirroredStrategy each replica augments its shard).
        self.augmenter = augmenter
        if not isinstance(encoder, keras.layers.Layer):
            raise WrongTypeError(
                f"`encoder` must be a Keras model or layer mapping images to [batch, features], got {type(encoder)!r}."
            )
        self.encoder = encoder
        self.projector = projector
        self.amcl = bool(amcl)
        self.contrastive_loss = self._check_loss(loss)
        self.loss_tracker = keras.metrics.Mean(name="loss")  # over the epoch's steps that were not skipped
        self.skipped_tracker = keras.metrics.Sum(name="skipped")  # steps skipped as non-finite this epoch
        self._stat_trackers = {
            f"{stat}_{head}": keras.metrics.Mean(name=f"{stat}_{head}")
            for stat in self.stat_names()
            for head in range(projector.num_heads)
        }
        # steps with non-finite outputs or gradients, per part: read by NonFiniteLossGuard (amcl_keras.nonfinite)
        self.nonfinite_steps = nonfinite.part_counters(projector.num_heads, self.extra_output_parts)
        self.create_method_state()
        self._build_from_encoder()

    # --- what a method defines -------------------------------------------------------
    def compute_loss_and_stats(self, z1, z2, views):
        """Return a `StepLoss(loss, stats, carry)` for one step.

        z1, z2: the online heads' outputs `[b, C, d]` for view 1 and view 2 (z2 is None when
        `embeds_both_views` is False); `views`: the two image batches.
        """
        raise NotImplementedError

    def stat_names(self):
        """The keys of the per-head stats that are logged (as `<key>_<head>`)."""
        return ("tau_pos", "tau_neg") if self.amcl else ()

    def create_method_state(self):
        """Create the method's own layers and variables (called before the model is built)."""

    def build_method_state(self, input_shape, feature_shape):
        """Build them once the input shape and the encoder's feature shape are known."""

    def after_optimizer_step(self, carry):
        """Update non-trainable state after the optimizer step (MoCo: momentum encoder, queue);
        `carry` is the `StepLoss.carry` of the step."""

    def after_step_only_variables(self):
        """The non-trainable variables that only `after_optimizer_step` changes, never a forward pass (MoCo: the
        queue, the key encoder's momentum-updated weights). A skipped step leaves them alone by not running
        `after_optimizer_step`, so the non-finite guard neither copies nor checks them each step."""
        return []

    # --- telemetry -------------------------------------------------------------------
    uses_negatives = True  # SimSiam has none: its τ⁻ is not reported

    def scored_pairs(self, z1, z2):
        """The two `[b, C, d]` embeddings whose row pairs the loss compares (default: the heads' outputs)."""
        return z1, z2

    def pair_statistics(self, view1, view2):
        """Per head, on one batch of two views (inference mode, nothing trained): the cosine
        similarity of positive pairs (the two views of one image) `sim_pos [C, b]` and of negative
        pairs (views of two different images) `sim_neg [C, b(b-1)]`; with AMCL also the temperatures
        the shared network gives those pairs, `tau_pos` and `tau_neg`. NumPy arrays.

        The online heads embed both views (MoCo's loss sees momentum-encoder keys instead).
        """
        batch = tf.shape(view1)[0]
        z = self.projector(self.encoder(tf.concat([view1, view2], axis=0), training=False), training=False)
        z1, z2 = self.scored_pairs(z[:batch], z[batch:])
        z1, z2 = (tf.transpose(tf.math.l2_normalize(tf.cast(x, tf.float32), axis=-1), [1, 0, 2]) for x in (z1, z2))
        off_diagonal = tf.logical_not(tf.eye(batch, dtype=tf.bool))
        pairs = {"sim": tf.matmul(z1, z2, transpose_b=True)}
        if self.amcl:
            pairs["tau"] = self.contrastive_loss.temperature.pairwise(z1, z2)
        return _split_pairs(pairs, off_diagonal, self.uses_negatives)

    # --- shared machinery ------------------------------------------------------------
    def _check_loss(self, loss):
        if isinstance(loss, dict):
            loss = keras.saving.deserialize_keras_object(loss)
        name = type(self).__name__
        expected = self.amcl_loss if self.amcl else self.baseline_loss
        if not isinstance(loss, (self.amcl_loss, self.baseline_loss)):
            raise WrongTypeError(
                f"{name}'s `loss` must be a {self.amcl_loss.__name__} or {self.baseline_loss.__name__}, "
                f"got {type(loss).__name__}."
            )
        if not isinstance(loss, expected):
            raise InvalidInputError(
                f"amcl={self.amcl} contradicts loss={type(loss).__name__}: pass a {self.amcl_loss.__name__} with "
                f"amcl=True, or a {self.baseline_loss.__name__} with amcl=False."
            )
        projection_dim = self.projector.heads[0].output_dim
        if self.amcl and loss.projection_dim != projection_dim:
            raise InvalidInputError(
                f"The loss was built for projection_dim={loss.projection_dim} but the heads output "
                f"projection_dim={projection_dim}; make them equal."
            )
        return loss

    def _build_from_encoder(self):
        """Create every variable now when the encoder knows its input shape (functional and
        Sequential models), so `fit` under a strategy finds them all (no lazy builds). A subclassed
        encoder is built by `model.build(input_shape)`, or by the first batch `fit` sees."""
        try:
            inputs = self.encoder.inputs
        except (AttributeError, ValueError):
            inputs = None
        if inputs:
            self.build(tuple(inputs[0].shape))

    def build(self, input_shape):
        if self.built:
            return
        feature_shape = built_output_shape(self.encoder, input_shape)
        check_feature_shape(feature_shape, input_shape)
        self.projector.build(feature_shape)
        self.build_method_state(tuple(input_shape), feature_shape)
        self.built = True

    def call(self, images, training=False):
        return self.encoder(images, training=training)

    @property
    def metrics(self):
        return [self.loss_tracker, self.skipped_tracker, *self._stat_trackers.values()]

    def get_metrics_result(self):
        """The logs; a mean over no step (every step of the epoch so far skipped) is NaN, not Mean's 0 / 0 = 0."""
        logs = {}
        for metric in self.metrics:
            value = metric.result()
            if isinstance(metric, keras.metrics.Mean):
                value = tf.where(metric.count > 0, value, tf.constant(float("nan"), value.dtype))
            logs[metric.name] = value
        return logs

    def _views(self, data):
        if self.augmenter is not None:
            images = data[0] if isinstance(data, (tuple, list)) else data
            return self.augmenter(images, training=True), self.augmenter(images, training=True)
        if isinstance(data, dict) and {"view1", "view2"} <= set(data):
            return data["view1"], data["view2"]
        if isinstance(data, (tuple, list)) and len(data) >= 1 and isinstance(data[0], (tuple, list)):
            data = data[0]
        if not isinstance(data, (tuple, list)) or len(data) != 2:
            raise InvalidInputError(
                "A contrastive model trains on batches of two augmented views: give `fit` a dataset of "
                "(view1, view2) pairs, e.g. amcl_keras.data.pretraining_views(...); got "
                f"{type(data).__name__} with structure {tf.nest.map_structure(lambda t: getattr(t, 'shape', t), data)}."
            )
        return data

    def _temperature_variable_ids(self):
        """ids of φ's trainable variables when they are clipped on their own (`temperature_clipping="separate"` with
        the optimizer's `global_clipnorm` set), else None."""
        optimizer = self.optimizer
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            optimizer = optimizer.inner_optimizer
        temperature = getattr(self.contrastive_loss, "temperature", None)
        if self.temperature_clipping != "separate" or not optimizer.global_clipnorm or temperature is None:
            return None
        return {id(v) for v in temperature.trainable_variables}

    def _clip_global_gradients(self, gradients, replicas):
        """Clip the GLOBAL gradient under several replicas, as one device would.

        Keras's TF optimizer clips each replica's partial gradient before it sums them, so
        `global_clipnorm`/`clipnorm`/`clipvalue` act on the wrong vector under MirroredStrategy
        (measured: one SGD step at learning rate 0.5, `global_clipnorm=1.0`, 2 logical CPU replicas vs
        one device, the tiny models of tests/methods/helpers.py: trainable weights off by 1.1e-2 (AMCL-SimCLR)
        to 2.3e-1 (AMCL-SimSiam), in proportion to the learning rate). Here the replicas' gradients are summed
        first, clipped with the optimizer's settings, and handed on divided by the replica count:
        the optimizer's own sum then gives the clipped global gradient, and its own clipping,
        on a vector R times smaller, is a no-op. Costs one extra all-reduce, only when clipping.
        With `temperature_clipping="separate"` (also on one replica) φ's gradient and the rest are clipped by two
        global norms here, and the optimizer's own clipping is switched off for the step (`_optimizer_clipping_off`).
        """
        optimizer, scale = self.optimizer, None
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            # the gradients are scaled: clip the unscaled global gradient, hand it on scaled again
            optimizer, scale = optimizer.inner_optimizer, tf.cast(optimizer.dynamic_scale, tf.float32)
        if not (optimizer.global_clipnorm or optimizer.clipnorm or optimizer.clipvalue):
            return gradients
        separate = self._temperature_variable_ids()
        present = [index for index, g in enumerate(gradients) if g is not None]
        summed = [gradients[index] for index in present]
        if replicas > 1:
            summed = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, summed)
        if scale is not None:
            summed = [g / tf.cast(scale, g.dtype) for g in summed]
        if separate is not None:  # two global norms: φ's, and everything else's (the optimizer's own clip is off)
            in_phi = [id(self.trainable_variables[index]) in separate for index in present]
            clipped = {}
            for group in (True, False):
                members = [position for position, phi in enumerate(in_phi) if phi is group]
                if members:
                    values, _ = tf.clip_by_global_norm([summed[p] for p in members], optimizer.global_clipnorm)
                    clipped.update(zip(members, values))
            summed = [clipped[position] for position in range(len(summed))]
        elif optimizer.global_clipnorm:
            summed, _ = tf.clip_by_global_norm(summed, optimizer.global_clipnorm)
        elif optimizer.clipnorm:
            summed = [tf.clip_by_norm(g, optimizer.clipnorm) for g in summed]
        else:
            summed = [tf.clip_by_value(g, -optimizer.clipvalue, optimizer.clipvalue) for g in summed]
        gradients = list(gradients)
        for index, g in zip(present, summed):
            gradients[index] = (g if scale is None else g * tf.cast(scale, g.dtype)) / replicas
        return gradients

    # Outputs of a method's own networks checked by the non-finite guard besides the encoder and heads
    # (MoCo: "key encoder"); `carry_health` reports them.
    extra_output_parts = ()

    def carry_health(self, carry):
        """{part of `extra_output_parts`: scalar bool, True where this step's `carry` (what
        `after_optimizer_step` would use: MoCo's keys) is not all finite}."""
        return {}

    # Set to False to train without the non-finite guard (no check, no snapshot): benchmarks/guard_cost.py
    # measures what the guard costs that way. A non-finite step then updates the weights with it.
    skip_nonfinite_steps = True

    def forward_state(self):
        """The non-trainable variables a forward pass may change (batch-norm statistics, augmentation seeds):
        what a skipped step puts back."""
        after_only = {id(v) for v in self.after_step_only_variables()}
        return [v for v in self.non_trainable_variables if id(v) not in after_only]

    def _variable_parts(self):
        """{id(trainable variable): "encoder" or "head c"} (the rest counts as "other")."""
        owner = {}
        for head, layer in enumerate(self.projector.heads):
            owner.update({id(v): f"head {head}" for v in layer.trainable_variables})
        owner.update({id(v): "encoder" for v in self.encoder.trainable_variables})
        return owner

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3.15 builds from the first batch by strategy.reduce("MEAN", batch), which raises
        # under MultiWorkerMirroredStrategy for a (view1, view2) structure. Only the shapes
        # matter there, so hand it this worker's first local replica batch instead.
        strategy = self._distribute_strategy
        if iterator is not None and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            for _, _, inner in iterator:
                first = next(inner)
                data_batch = tf.nest.map_structure(
                    lambda x: strategy.experimental_local_results(x)[0]
                    if isinstance(x, tf.distribute.DistributedValues) else x,
                    first,
                )
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    embeds_both_views = True  # MoCo's asymmetric form embeds only view 1 with the online encoder

    def through_views(self, function, first, second):
        """`function` on two equal-sized batches (one per view): each batch on its own
        (`encoder_forward="per_view"`, so batch norm sees one view at a time) or both as one
        concatenated batch, split back ("concatenated"). Returns `(function(first), function(second))`."""
        if self.encoder_forward == "per_view":
            return function(first), function(second)
        batch = tf.shape(first)[0]
        both = function(tf.concat([first, second], axis=0))
        return tf.nest.map_structure(lambda t: t[:batch], both), tf.nest.map_structure(lambda t: t[batch:], both)

    def embed_views(self, view1, view2=None, training=True):
        """The online encoder and heads: `(features [n·b, F], z1, z2)` with z `[b, C, d]` per view
        (`view2=None`: view 1 only, z2 None)."""

        def online(images):
            features = self.encoder(images, training=training)
            return features, self.projector(features, training=training)

        if view2 is None:
            features, z1 = online(view1)
            return features, z1, None
        (features1, z1), (features2, z2) = self.through_views(online, view1, view2)
        return tf.concat([features1, features2], axis=0), z1, z2

    def train_step(self, data):
        """One step. A step whose outputs (the encoder's, the heads', the method's own such as MoCo's keys,
        the loss) or gradients are not all finite (on any replica) is
        skipped whole: no optimizer update (weights, slots, iteration count), no after-step update
        (MoCo's key encoder and queue), and the state the forward pass changed (batch-norm
        statistics, in-step augmentation seeds) is put back. It is counted in the `skipped` log (what
        `NonFiniteLossGuard` stops on), and its loss and statistics stay out of the epoch's means."""
        view1, view2 = self._views(data)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        guarded = self.skip_nonfinite_steps
        state = self.forward_state() if guarded else []
        snapshot = [tf.identity(v) for v in state]  # what the forward pass may change
        # name scopes "loss", "nonfinite_guard" and "optimizer" label the step's parts in profiles and graphs
        # (benchmarks/step_profile.py attributes op time by them)
        with tf.GradientTape() as tape:
            features, z1, z2 = self.embed_views(view1, view2 if self.embeds_both_views else None)
            with tf.name_scope("loss"):
                loss, stats, carry = self.compute_loss_and_stats(z1, z2, (view1, view2))
            # Each replica returns its share of the global mean; the optimizer sums replicas.
            scaled = self.optimizer.scale_loss(loss / replicas)
        gradients = tape.gradient(scaled, self.trainable_variables)
        # An Embedding's gradient (ViT's position table, gathered once per view) is IndexedSlices with repeated rows;
        # dense, global-norm clipping sees its true norm (tf.clip_by_global_norm takes the norm of the slices'
        # values, sqrt(|g1|² + |g2|²) for |g1 + g2|), and the replicas' gradients can be summed and scaled.
        gradients = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in gradients]
        z = z1 if z2 is None else tf.concat([z1, z2], axis=0)
        # A NaN feature can leave a head's ReLU as 0 and the loss finite, and a finite loss can
        # have a non-finite gradient: any of these makes the step's loss NaN, so the guard stops
        # the run there, and the part it came from is counted for the guard's message.
        bad, overflow = tf.constant(False), tf.constant(False)
        scaling = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
        if scaling:  # the loss-scale optimizer will skip its update: the rest of the step is skipped with it
            overflow = nonfinite.loss_scale_overflow(gradients)
        if guarded:
            with tf.name_scope("nonfinite_guard"):
                health = nonfinite.find_nonfinite_parts(
                    self.nonfinite_steps, features=features, z=z, carry_flags=self.carry_health(carry), state=state,
                    loss=loss, variables=self.trainable_variables, gradients=gradients, owner=self._variable_parts(),
                    check_gradients=nonfinite.gradient_check(self.optimizer, self.trainable_variables))
                bad = nonfinite.count_parts(self.nonfinite_steps, health)
        if replicas > 1:  # every replica takes the same branch below
            flags = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.stack([bad, overflow]), tf.int32))
            bad, overflow = flags[0] > 0, flags[1] > 0
        own_clipping = self._temperature_variable_ids() is not None
        if replicas > 1 or own_clipping:
            with tf.name_scope("optimizer"):
                gradients = self._clip_global_gradients(gradients, replicas)

        def optimizer_apply(gradients, carry):
            with tf.name_scope("optimizer"), (
                    _optimizer_clipping_off(self.optimizer) if own_clipping else contextlib.nullcontext()):
                self.optimizer.apply(gradients, self.trainable_variables)

        def apply(gradients, carry):
            optimizer_apply(gradients, carry)
            self.after_optimizer_step(carry)

        if guarded or scaling:
            nonfinite.apply_or_skip(bad, apply, state, snapshot, args=(gradients, carry),
                                    overflow=overflow if scaling else None, optimizer_only=optimizer_apply)
        else:
            apply(gradients, carry)
        # a skipped step is counted, and its loss and statistics stay out of the epoch's means
        kept = 1.0 - tf.cast(bad, tf.float32)
        self.skipped_tracker.update_state(tf.cast(bad, tf.float32) / replicas)  # the replicas' counts are summed
        self.loss_tracker.update_state(tf.where(bad, tf.zeros_like(loss), loss), sample_weight=kept)
        for name, per_head in stats.items():
            for head in range(per_head.shape[0]):
                value = tf.where(bad, tf.zeros_like(per_head[head]), per_head[head])
                self._stat_trackers[f"{name}_{head}"].update_state(value, sample_weight=kept)
        logs = self.get_metrics_result()
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras 3.15 reduces every log across workers by reduce("MEAN", v, axis=0), which fails
            # on scalars (tensorflow/tensorflow#72388); a [1] tensor reduces to the scalar.
            logs = {name: value[None] for name, value in logs.items()}
        return logs

    # --- serialization ---------------------------------------------------------------
    def get_config(self):
        config = {
            "name": self.name,
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "amcl": self.amcl,
            "encoder_forward": self.encoder_forward,
            "temperature_clipping": self.temperature_clipping,
            "loss": keras.saving.serialize_keras_object(self.contrastive_loss),
        }
        config.update({name: getattr(self, name) for name in self.config_args})
        if self.augmenter is not None:
            config["augmenter"] = keras.saving.serialize_keras_object(self.augmenter)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        config["loss"] = keras.saving.deserialize_keras_object(config["loss"])
        return cls(**config)
