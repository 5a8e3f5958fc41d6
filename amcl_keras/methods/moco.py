"""MoCo and AMCL-MoCo: a momentum key encoder and one queue of keys per head (Eq. 2.1 over the queue)."""

import dataclasses

import keras
import tensorflow as tf

from amcl_keras.config import require
from amcl_keras.constants import NUM_HEADS
from amcl_keras.heads import MultiHeadProjector
from amcl_keras.losses import AMCLInfoNCELoss, InfoNCELoss
from amcl_keras.losses.distributed import gather_global_batch
from amcl_keras.methods.base import ContrastiveTrainer, MethodSettings, StepLoss, built_output_shape, temperature_options
from amcl_keras.registry import register_method
from amcl_keras.errors import InvalidInputError

# "asymmetric": the authors' (queries from view 1, keys from view 2); "symmetric": both views both ways.
MOCO_FORMS = ("asymmetric", "symmetric")


@dataclasses.dataclass
class MoCoSettings(MethodSettings):
    """MoCo's `model:` settings, with the paper's defaults (docs/METHOD.md §5)."""

    projection_dim: int = 128
    hidden_dim: int = 512
    beta: float = 1e-4
    temperature: float = 0.5  # the baseline InfoNCE's fixed τ: validated best of {0.05, 0.1, 0.2, 0.5} (paper: 0.1)
    objective: str = AMCLInfoNCELoss.default_objective  # validated best (docs/METHOD.md §10); τ runs to its floor
    queue_size: int = 4096  # keys per head
    momentum: float = 0.99  # of the key encoder
    moco_form: str = "asymmetric"  # queries from view 1, keys from view 2, B keys enqueued per step (the
    # authors'); or "symmetric": both views as queries and keys, 2B keys enqueued

    def check(self, config):
        super().check(config)
        require(self.temperature > 0, "model.temperature", self.temperature, "it must be > 0 (default 0.5; the paper uses 0.1)")
        require(self.moco_form in MOCO_FORMS, "model.moco_form", self.moco_form, f"one of {MOCO_FORMS}")
        require(0 <= self.momentum < 1, "model.momentum", self.momentum, "0 <= momentum < 1 (MoCo uses 0.99)")
        batch = config.data.batch_size
        keys_per_step = (2 if self.moco_form == "symmetric" else 1) * batch
        require(self.queue_size >= keys_per_step, "model.queue_size", self.queue_size,
                f"MoCo ({self.moco_form}) enqueues {keys_per_step} keys per step (batch {batch}"
                f"{' × 2 views' if self.moco_form == 'symmetric' else ''}); use at least that")


def _normalized_normal(shape, dtype=None):
    return tf.math.l2_normalize(tf.random.normal(shape, dtype=dtype or "float32"), axis=-1)


@keras.saving.register_keras_serializable(package="amcl_keras")
class KeyQueue(keras.layers.Layer):
    """A FIFO queue of `size` L2-normalised keys per head, `keys [num_heads, size, dim]`, and its
    write position `pointer`, kept as non-trainable weights (checkpoints carry them).

    `queue.keys` is what a loss reads. `queue.enqueue(k1, k2, ...)`, called in the replica context
    of a training step, gathers the `[b, num_heads, dim]` key batches of every replica (in
    single-device order: replica 0's rows first) and writes them after the pointer, wrapping around;
    every replica's copy gets the same keys, so the mirrored copies stay equal.

    Example:
    ```python
    import tensorflow as tf, amcl_keras as amcl
    queue = amcl.methods.moco.KeyQueue(num_heads=2, size=8, dim=4)
    queue.build()
    queue.enqueue(tf.math.l2_normalize(tf.random.normal([3, 2, 4]), axis=-1))   # pointer 0 -> 3
    ```
    """

    def __init__(self, num_heads, size, dim, **kwargs):
        super().__init__(trainable=False, **kwargs)
        for name, value in (("num_heads", num_heads), ("size", size), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"KeyQueue's `{name}` must be a positive integer, got {value!r}.")
        self.num_heads, self.size, self.dim = num_heads, size, dim

    def build(self, input_shape=None):
        self.keys = self.add_weight(shape=(self.num_heads, self.size, self.dim), initializer=_normalized_normal,
                                    trainable=False, name="keys")
        self.pointer = self.add_weight(shape=(), initializer="zeros", dtype="int32", trainable=False, name="pointer")
        self.built = True

    def enqueue(self, *key_batches):
        gathered, _ = gather_global_batch(*key_batches)
        new_keys = tf.transpose(tf.concat(gathered, axis=0), [1, 0, 2])  # [C, n, d], single-device order
        count = new_keys.shape[1]
        if count is not None and count > self.size:
            raise InvalidInputError(
                f"{count} keys per step do not fit a queue of size {self.size}: use a queue of at least {count} keys."
            )
        size = self.size

        def write(queue, keys_here, pointer):
            count = tf.shape(keys_here)[1]
            slots = (pointer + tf.range(count)) % size
            heads = tf.shape(keys_here)[0]
            index = tf.stack([tf.repeat(tf.range(heads), count), tf.tile(slots, [heads])], axis=1)
            return queue.assign(tf.tensor_scatter_nd_update(queue, index, tf.reshape(keys_here, [-1, tf.shape(keys_here)[2]])))

        def update(strategy, new_keys, count):
            strategy.extended.update(self.keys.value, write, args=(new_keys, self.pointer.value), group=False)
            strategy.extended.update(self.pointer.value, lambda p, n: p.assign((p + n) % size), args=(count,), group=False)

        count = tf.shape(new_keys)[1]
        context = tf.distribute.get_replica_context()
        if context is None:  # cross-replica context (e.g. eager use outside a strategy's run)
            return update(tf.distribute.get_strategy(), new_keys, count)
        return context.merge_call(update, args=(new_keys, count))

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "size": self.size, "dim": self.dim}


@register_method("moco", "MoCo", settings=MoCoSettings, learning_rate=0.08)
@keras.saving.register_keras_serializable(package="amcl_keras")
class MoCo(ContrastiveTrainer):
    """MoCo with C heads, a momentum key encoder and projector, and a FIFO queue of L2-normalised
    keys per head (`queue_size` keys, stored as non-trainable weights so that checkpoints keep them).

    `moco_form="asymmetric"` (the authors', read in LeiWangR/cl `amcl/models.py` `MoCo.forward`
    and `amcl/losses.py` `AMCLMoCoLoss`): queries q from view 1 (online encoder, the only view it
    sees), keys k from view 2 (momentum encoder, training mode, no gradient). AMCL: per head
    ½·[dir(q, k) + dir(k, q)], both against that head's queue, summed over heads, where
    dir(anchor, positive) is Eq. 2.1 (top-k form) for `anchor`, negatives = the queue ranked by
    cosine with `anchor`. In dir(k, q) the anchor is the key: no gradient reaches k, its top-k
    negatives and their temperatures come from φ(k)·φ(queue) (φ trained by them), and the
    positive term −sim(k, q)/τ(k, q) + βΩ(τ(k, q)) carries gradient into q (and φ). Baseline
    (their `MoCo.loss` with `amcl=False`): dir(q, k) only, InfoNCE τ = 0.1. B keys (view 2, the
    GLOBAL batch in single-device order) enter the queue per step, so `queue_size` >= B.
    `moco_form="symmetric"`: both views are queries and keys, the mean of (q1, k2) and (q2, k1)
    (baseline and AMCL), 2B keys enqueued (view-1 keys, then view-2 keys), `queue_size` >= 2B.

    After each optimizer step the key weights move as w_k ← m·w_k + (1 − m)·w_q (trainable
    weights; the key encoder's batch-norm statistics follow its own forward passes), then the
    keys enter the queue. The authors make the same momentum update at the start of the next
    step, before computing its keys: the same sequence of key weights.

    Example:
    ```python
    import amcl_keras as amcl
    encoder = amcl.encoders.small_convnet((28, 28, 1), width=16)
    model = amcl.MoCo(encoder, num_heads=3, projection_dim=32, hidden_dim=64, queue_size=1024)
    ```
    """

    baseline_loss = InfoNCELoss
    amcl_loss = AMCLInfoNCELoss
    config_args = ("num_heads", "projection_dim", "hidden_dim", "queue_size", "momentum", "moco_form")

    def __init__(
        self, encoder, num_heads=NUM_HEADS, amcl=True, projection_dim=MoCoSettings.projection_dim,
        hidden_dim=MoCoSettings.hidden_dim, queue_size=MoCoSettings.queue_size, momentum=MoCoSettings.momentum,
        loss=None, moco_form=MoCoSettings.moco_form, **kwargs,
    ):
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise InvalidInputError(f"`queue_size` must be a positive integer, got {queue_size!r}. MoCo uses {MoCoSettings.queue_size}.")
        if not 0.0 <= float(momentum) < 1.0:
            raise InvalidInputError(f"`momentum` must be in [0, 1), got {momentum!r}. MoCo uses {MoCoSettings.momentum}.")
        if moco_form not in MOCO_FORMS:
            raise InvalidInputError(
                f"`moco_form` must be one of {MOCO_FORMS} ('asymmetric': queries from view 1, keys from view 2, "
                f"the authors'; 'symmetric': both views both ways), got {moco_form!r}."
            )
        if loss is None:
            loss = self.default_loss(amcl, projection_dim, MoCoSettings, baseline_args=(MoCoSettings.temperature,))
        self.moco_form = moco_form
        self.num_heads = num_heads
        self.projection_dim = projection_dim
        self.hidden_dim = hidden_dim
        self.queue_size = queue_size
        self.momentum = float(momentum)
        projector = MultiHeadProjector(num_heads, hidden_dims=(hidden_dim,), output_dim=projection_dim, name="projector")
        super().__init__(encoder, projector, loss, amcl, **kwargs)

    @classmethod
    def from_model_config(cls, encoder, cfg, global_batch, **kwargs):
        """Build from a `ModelConfig` (the YAML `model:` section)."""
        loss = AMCLInfoNCELoss(cfg.projection_dim, **temperature_options(cfg, negatives=True)) if cfg.amcl \
            else InfoNCELoss(cfg.temperature)
        return cls(encoder, cfg.num_heads, cfg.amcl, cfg.projection_dim, cfg.hidden_dim, cfg.queue_size,
                   cfg.momentum, loss=loss, moco_form=cfg.moco_form, encoder_forward=cfg.encoder_forward, **kwargs)

    @property
    def embeds_both_views(self):
        return self.moco_form == "symmetric"  # asymmetric: the online encoder sees view 1 only

    def create_method_state(self):
        try:
            self.key_encoder = keras.models.clone_model(self.encoder)
        except Exception as error:
            raise InvalidInputError(
                "MoCo clones the encoder for its momentum key encoder; this encoder cannot be cloned "
                f"({type(error).__name__}: {error}). Use a functional or Sequential Keras model."
            ) from error
        self.key_encoder.trainable = False
        self.key_projector = MultiHeadProjector.from_config({**self.projector.get_config(), "name": "key_projector"})
        self.key_projector.trainable = False
        self.queue = KeyQueue(self.num_heads, self.queue_size, self.projection_dim, name="key_queue")

    def build_method_state(self, input_shape, feature_shape):
        built_output_shape(self.key_encoder, input_shape)
        self.key_projector.build(feature_shape)
        self.key_encoder.set_weights(self.encoder.get_weights())
        self.key_projector.set_weights(self.projector.get_weights())
        self.queue.build()

    def _momentum_pairs(self):
        """(key weight, query weight) for the query's TRAINABLE weights; the key encoder's batch-norm
        statistics follow its own forward pass in training mode, as in MoCo."""
        keys = self.key_encoder.weights + self.key_projector.weights
        queries = self.encoder.weights + self.projector.weights
        return [(k, q) for k, q in zip(keys, queries) if q.trainable]

    def after_step_only_variables(self):
        """The queue and the key encoder/projector weights that follow the query's by momentum (its batch-norm
        statistics change in its forward pass and are not among them)."""
        return [key for key, _ in self._momentum_pairs()] + list(self.queue.weights)

    def _keys(self, images):
        """The momentum encoder's L2-normalised keys `[b, C, d]` (training mode, no gradient). A sample whose
        key-encoder features are not finite gets a NaN key, so the non-finite guard sees it (`carry_health`):
        compiled, the projector's ReLU can turn a NaN feature into a finite, meaningless key."""
        features = self.key_encoder(images, training=True)
        keys = tf.cast(self.key_projector(features, training=True), tf.float32)
        finite = tf.reduce_all(tf.math.is_finite(features), axis=-1)[:, None, None]
        keys = tf.where(finite, tf.math.l2_normalize(keys, axis=-1), tf.constant(float("nan"), tf.float32))
        return tf.stop_gradient(keys)

    def compute_loss_and_stats(self, z1, z2, views):
        queue = tf.convert_to_tensor(self.queue.keys)
        loss = self.contrastive_loss
        if self.moco_form == "symmetric":
            k1, k2 = self.through_views(self._keys, *views)
            loss12, stats12 = loss.loss_and_stats(z1, k2, queue)
            loss21, stats21 = loss.loss_and_stats(z2, k1, queue)
            stats = {name: 0.5 * (stats12[name] + stats21[name]) for name in stats12}
            return StepLoss(0.5 * (loss12 + loss21), stats, carry=(k1, k2))
        k2 = self._keys(views[1])
        value, stats = loss.loss_and_stats(z1, k2, queue)
        if self.amcl:  # the authors' AMCLMoCoLoss: ½·[dir(q, k) + dir(k, q)]; in dir(k, q) q gets gradient
            value_kq, stats_kq = loss.loss_and_stats(k2, z1, queue, key_gradient=True)
            stats = {name: 0.5 * (stats[name] + stats_kq[name]) for name in stats}
            value = 0.5 * (value + value_kq)
        return StepLoss(value, stats, carry=(k2,))

    extra_output_parts = ("key encoder",)

    def carry_health(self, carry):
        """A non-finite key (the momentum encoder's, view 2 only in the asymmetric form) must neither enter
        the queue nor drive the key encoder's momentum step: the whole step is skipped."""
        return {"key encoder": ~tf.reduce_all([tf.reduce_all(tf.math.is_finite(keys)) for keys in carry])}

    def after_optimizer_step(self, keys):
        """Momentum update of the key encoder/projector, then enqueue the global batch's keys
        (asymmetric: view 2's B keys; symmetric: view 1's, then view 2's)."""
        pairs = [(k.value if isinstance(k, keras.Variable) else k, q.value if isinstance(q, keras.Variable) else q)
                 for k, q in self._momentum_pairs()]
        momentum = self.momentum

        def momentum_update(strategy):
            for key_weight, query_weight in pairs:
                strategy.extended.update(
                    key_weight, lambda v, q: v.assign(momentum * v + (1.0 - momentum) * tf.cast(q, v.dtype)),
                    args=(query_weight,), group=False,
                )

        local = [k.shape[0] for k in keys]
        if None not in local:
            count = sum(local) * tf.distribute.get_strategy().num_replicas_in_sync
            if count > self.queue_size:
                per_step = "2 × the global batch" if self.moco_form == "symmetric" else "the global batch"
                raise InvalidInputError(
                    f"MoCo ({self.moco_form}) enqueues {per_step} = {count} keys per step, more than "
                    f"queue_size={self.queue_size}. Use queue_size >= {count}."
                )
        tf.distribute.get_replica_context().merge_call(momentum_update)
        self.queue.enqueue(*keys)
