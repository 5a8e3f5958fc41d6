"""MoCo and AMCL-MoCo: a momentum key encoder and one queue of keys per head (Eq. 2.1 over the queue)."""

import keras
import tensorflow as tf

from amcl_keras.heads import MultiHeadProjector
from amcl_keras.losses import AMCLInfoNCELoss, InfoNCELoss
from amcl_keras.losses.distributed import gather_global_batch
from amcl_keras.methods.base import ContrastiveTrainer, temperature_options


def _normalized_normal(shape, dtype=None):
    return tf.math.l2_normalize(tf.random.normal(shape, dtype=dtype or "float32"), axis=-1)


@keras.saving.register_keras_serializable(package="amcl_keras")
class MoCo(ContrastiveTrainer):
    """MoCo (symmetric loss) with C heads, a momentum key encoder and projector, and a FIFO queue
    of L2-normalised keys per head (`queue_size` keys, stored as non-trainable weights so that
    checkpoints keep them).

    After each optimizer step the key weights move as w_k ← m·w_k + (1 − m)·w_q and the keys of
    both views of the GLOBAL batch (all replicas, in replica order: view-1 keys, then view-2
    keys) enter the queue. Baseline: per-head InfoNCE, τ = 0.1. AMCL: `AMCLInfoNCELoss`.

    Example:
    ```python
    import amcl_keras as amcl
    encoder = amcl.encoders.small_convnet((28, 28, 1), width=16)
    model = amcl.MoCo(encoder, num_heads=3, projection_dim=32, hidden_dim=64, queue_size=1024)
    ```
    """

    baseline_loss = InfoNCELoss
    amcl_loss = AMCLInfoNCELoss
    config_args = ("num_heads", "projection_dim", "hidden_dim", "queue_size", "momentum")

    def __init__(
        self, encoder, num_heads=3, amcl=True, projection_dim=128, hidden_dim=512, queue_size=4096, momentum=0.99,
        loss=None, **kwargs,
    ):
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"`queue_size` must be a positive integer, got {queue_size!r}. MoCo uses 4096.")
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"`momentum` must be in [0, 1), got {momentum!r}. MoCo uses 0.99.")
        if loss is None:
            loss = AMCLInfoNCELoss(projection_dim) if amcl else InfoNCELoss(0.1)
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
                   cfg.momentum, loss=loss, **kwargs)

    def create_method_state(self):
        try:
            self.key_encoder = keras.models.clone_model(self.encoder)
        except Exception as error:
            raise ValueError(
                "MoCo clones the encoder for its momentum key encoder; this encoder cannot be cloned "
                f"({type(error).__name__}: {error}). Use a functional or Sequential Keras model."
            ) from error
        self.key_encoder.trainable = False
        self.key_projector = MultiHeadProjector.from_config({**self.projector.get_config(), "name": "key_projector"})
        self.key_projector.trainable = False

    def build_method_state(self, feature_shape):
        self.key_projector.build(feature_shape)
        self.key_encoder.set_weights(self.encoder.get_weights())
        self.key_projector.set_weights(self.projector.get_weights())
        self.queue = self.add_weight(
            shape=(self.num_heads, self.queue_size, self.projection_dim),
            initializer=_normalized_normal, trainable=False, name="queue",
        )
        self.queue_pointer = self.add_weight(shape=(), initializer="zeros", dtype="int32", trainable=False, name="queue_pointer")

    def _momentum_pairs(self):
        """(key weight, query weight) for the query's TRAINABLE weights; the key encoder's batch-norm
        statistics follow its own forward pass in training mode, as in MoCo."""
        keys = self.key_encoder.weights + self.key_projector.weights
        queries = self.encoder.weights + self.projector.weights
        return [(k, q) for k, q in zip(keys, queries) if q.trainable]

    def compute_loss_and_stats(self, z1, z2, views):
        batch = tf.shape(z1)[0]
        keys = self.key_projector(self.key_encoder(tf.concat(views, axis=0), training=True), training=True)
        keys = tf.stop_gradient(tf.math.l2_normalize(tf.cast(keys, tf.float32), axis=-1))
        k1, k2 = keys[:batch], keys[batch:]
        queue = tf.convert_to_tensor(self.queue)
        loss12, stats12 = self.contrastive_loss(z1, k2, queue, return_stats=True)
        loss21, stats21 = self.contrastive_loss(z2, k1, queue, return_stats=True)
        stats = {name: 0.5 * (stats12[name] + stats21[name]) for name in stats12}
        stats["_keys"] = (k1, k2)
        return 0.5 * (loss12 + loss21), stats

    def after_optimizer_step(self, keys):
        """Momentum update of the key encoder/projector, then enqueue the global batch's keys."""
        (k1, k2), _ = gather_global_batch(*keys)
        new_keys = tf.transpose(tf.concat([k1, k2], axis=0), [1, 0, 2])  # [C, 2B, d], single-device order
        if new_keys.shape[1] is not None and new_keys.shape[1] > self.queue_size:
            raise ValueError(
                f"MoCo enqueues 2 × the global batch = {new_keys.shape[1]} keys per step, more than "
                f"queue_size={self.queue_size}. Use queue_size >= {new_keys.shape[1]}."
            )
        pairs = [(k.value if isinstance(k, keras.Variable) else k, q.value if isinstance(q, keras.Variable) else q)
                 for k, q in self._momentum_pairs()]
        momentum = self.momentum
        queue, pointer, size = self.queue.value, self.queue_pointer.value, self.queue_size

        def update(strategy, new_keys):
            for key_weight, query_weight in pairs:
                strategy.extended.update(
                    key_weight, lambda v, q: v.assign(momentum * v + (1.0 - momentum) * tf.cast(q, v.dtype)),
                    args=(query_weight,), group=False,
                )

            def enqueue(queue_variable, keys_here, pointer_value):
                count = tf.shape(keys_here)[1]
                slots = (pointer_value + tf.range(count)) % size
                heads = tf.shape(keys_here)[0]
                index = tf.stack(
                    [tf.repeat(tf.range(heads), count), tf.tile(slots, [heads])], axis=1
                )
                updates = tf.reshape(keys_here, [-1, tf.shape(keys_here)[2]])
                return queue_variable.assign(tf.tensor_scatter_nd_update(queue_variable, index, updates))

            strategy.extended.update(queue, enqueue, args=(new_keys, pointer), group=False)
            strategy.extended.update(pointer, lambda p, n: p.assign((p + n) % size), args=(count,), group=False)

        count = tf.shape(new_keys)[1]
        tf.distribute.get_replica_context().merge_call(update, args=(new_keys,))
