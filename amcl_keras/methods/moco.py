"""MoCo and AMCL-MoCo: a momentum key encoder and one queue of keys per head (Eq. 2.1 over the queue)."""

import keras
import tensorflow as tf

from amcl_keras.heads import MultiHeadProjector
from amcl_keras.losses import AMCLInfoNCELoss, InfoNCELoss
from amcl_keras.losses.distributed import gather_global_batch
from amcl_keras.losses.adaptive import DEFAULT_OBJECTIVE
from amcl_keras.methods.base import ContrastiveTrainer, temperature_options

# "asymmetric": the authors' (queries from view 1, keys from view 2); "symmetric": both views both ways.
MOCO_FORMS = ("asymmetric", "symmetric")


def _normalized_normal(shape, dtype=None):
    return tf.math.l2_normalize(tf.random.normal(shape, dtype=dtype or "float32"), axis=-1)


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
        self, encoder, num_heads=3, amcl=True, projection_dim=128, hidden_dim=512, queue_size=4096, momentum=0.99,
        loss=None, moco_form="asymmetric", **kwargs,
    ):
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"`queue_size` must be a positive integer, got {queue_size!r}. MoCo uses 4096.")
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"`momentum` must be in [0, 1), got {momentum!r}. MoCo uses 0.99.")
        if moco_form not in MOCO_FORMS:
            raise ValueError(
                f"`moco_form` must be one of {MOCO_FORMS} ('asymmetric': queries from view 1, keys from view 2, "
                f"the authors'; 'symmetric': both views both ways), got {moco_form!r}."
            )
        if loss is None:
            loss = AMCLInfoNCELoss(projection_dim, objective=DEFAULT_OBJECTIVE) if amcl else InfoNCELoss(0.1)
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

    def _keys(self, images):
        """The momentum encoder's L2-normalised keys `[b, C, d]` (training mode, no gradient)."""
        keys = self.key_projector(self.key_encoder(images, training=True), training=True)
        return tf.stop_gradient(tf.math.l2_normalize(tf.cast(keys, tf.float32), axis=-1))

    def compute_loss_and_stats(self, z1, z2, views):
        queue = tf.convert_to_tensor(self.queue)
        if self.moco_form == "symmetric":
            k1, k2 = self.through_views(self._keys, *views)
            loss12, stats12 = self.contrastive_loss.loss_and_stats(z1, k2, queue)
            loss21, stats21 = self.contrastive_loss.loss_and_stats(z2, k1, queue)
            stats = {name: 0.5 * (stats12[name] + stats21[name]) for name in stats12}
            stats["_keys"] = (k1, k2)
            return 0.5 * (loss12 + loss21), stats
        k2 = self._keys(views[1])
        loss_qk, stats = self.contrastive_loss.loss_and_stats(z1, k2, queue)
        if self.amcl:  # the authors' AMCLMoCoLoss: ½·[dir(q, k) + dir(k, q)]; in dir(k, q) q gets gradient
            loss_kq, stats_kq = self.contrastive_loss.loss_and_stats(k2, z1, queue, key_gradient=True)
            stats = {name: 0.5 * (stats[name] + stats_kq[name]) for name in stats}
            loss_qk = 0.5 * (loss_qk + loss_kq)
        stats["_keys"] = (k2,)
        return loss_qk, stats

    def after_optimizer_step(self, keys):
        """Momentum update of the key encoder/projector, then enqueue the global batch's keys
        (asymmetric: view 2's B keys; symmetric: view 1's, then view 2's)."""
        gathered, _ = gather_global_batch(*keys)
        new_keys = tf.transpose(tf.concat(gathered, axis=0), [1, 0, 2])  # [C, n, d], single-device order
        if new_keys.shape[1] is not None and new_keys.shape[1] > self.queue_size:
            per_step = "2 × the global batch" if self.moco_form == "symmetric" else "the global batch"
            raise ValueError(
                f"MoCo ({self.moco_form}) enqueues {per_step} = {new_keys.shape[1]} keys per step, more than "
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
