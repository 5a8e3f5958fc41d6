"""Batch normalization whose cross-replica statistics match one device.

Keras 3.15's `BatchNormalization(synchronized=True)` all-reduces Σx and Σx² and takes the variance as
E[x²] − E[x]², which cancels in float32 when |mean| ≫ std (post-ReLU and residual activations).
`SyncBatchNormalization` takes two passes instead — the global mean, then the all-reduced Σ(x − mean)² —
one more all-reduce per layer, and equals one device's statistics to rounding (float32, or float64 for a
float64 layer). On one replica a synchronized layer takes the unsynchronized (two-pass) moments, not Keras's
one-pass synchronized ones, so one device and several compute the same statistics.

A whole training step of a tiny-batch ResNet on 2 replicas still differs from one device in float32
(ResNet-50 at width 4, 8×8 images, batch 8: gradients up to ~1e-3..1e-1 of the largest entry), but
that is float32 round-off amplified by the deep BN network — one device on the same batch in another
order differs as much, and in float64 the two agree to ~1e-12 (tests/methods/test_distributed.py,
`test_resnet_two_replicas_equal_one_device_in_float64`).

Training statistics are computed by TensorFlow's fused batch-norm kernel (`FusedBatchNormV3`, oneDNN's on CPU,
cuDNN's on GPU: one pass forward, one backward) wherever it computes the same thing as Keras's layer — TF backend,
training, float32 statistics (float32, float16 or bfloat16 inputs), channels last, no mask, no renorm, and not
synchronized across several replicas; Keras's own code runs everywhere else (float64 layers included). Keras 3
builds batch norm from separate mean, variance and normalize ops, each a pass over the activations, forward and
backward: on ResNet-18 that made batch norm the largest cost after the convolutions (`benchmarks/step_profile.py`).
The moving statistics are updated exactly as Keras does (the biased batch variance), so a model trains and saves
the same either way; `fused=False` keeps Keras's path.
"""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="amcl_keras")
class SyncBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` (all its arguments); with `synchronized=True` under a strategy of
    several replicas the training statistics are the global batch's, computed in two passes.

    Example:
    ```python
    import amcl_keras as amcl
    norm = amcl.normalization.SyncBatchNormalization(synchronized=True)
    ```
    """

    def __init__(self, fused=True, **kwargs):
        super().__init__(**kwargs)
        self.fused = bool(fused)

    def get_config(self):
        return {**super().get_config(), "fused": self.fused}

    def call(self, inputs, training=None, mask=None):
        if self._fusable(inputs, training, mask):
            return self._fused_training_call(inputs)
        return super().call(inputs, training=training, mask=mask)

    def _fusable(self, inputs, training, mask):
        if not (self.fused and training and self.trainable and mask is None and not self.renorm):
            return False
        if keras.backend.backend() != "tensorflow" or inputs.shape.rank not in (2, 4):
            return False
        if self.axis not in (-1, inputs.shape.rank - 1) or inputs.dtype not in (tf.float32, tf.float16, tf.bfloat16):
            return False
        context = tf.distribute.get_replica_context()
        return not (self.synchronized and context is not None and context.num_replicas_in_sync > 1)

    def _fused_training_call(self, inputs):
        """Keras's training branch (moments, moving-statistics update, normalize) through `FusedBatchNormV3`."""
        x = tf.cast(inputs, tf.float32)  # statistics in float32, as Keras (a no-op for float32 inputs)
        shape = tf.shape(x)
        if x.shape.rank == 2:
            x = x[:, None, None, :]
        channels = x.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels], tf.float32)
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels], tf.float32)
        empty = tf.constant([], tf.float32)
        y, mean, unbiased_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=gamma, offset=beta, mean=empty, variance=empty, epsilon=self.epsilon, exponential_avg_factor=1.0,
            data_format="NHWC", is_training=True)
        count = tf.cast(tf.size(x) // channels, tf.float32)
        variance = unbiased_variance * (count - 1.0) / tf.maximum(count, 1.0)  # the kernel returns Bessel's variance
        moving_mean = tf.cast(self.moving_mean, tf.float32)
        moving_variance = tf.cast(self.moving_variance, tf.float32)
        self.moving_mean.assign(tf.cast(moving_mean * self.momentum + mean * (1.0 - self.momentum),
                                        self.moving_mean.dtype))
        self.moving_variance.assign(tf.cast(moving_variance * self.momentum + variance * (1.0 - self.momentum),
                                            self.moving_variance.dtype))
        return tf.cast(tf.reshape(y, shape), self.compute_dtype)

    def _moments(self, inputs, mask):
        context = tf.distribute.get_replica_context()
        if not self.synchronized or mask is not None:
            return super()._moments(inputs, mask)
        if context is None or context.num_replicas_in_sync == 1:
            # one replica: the two-pass moments of an unsynchronized layer (Keras's synchronized ones would take
            # the one-pass E[x²] − E[x]² here too, and differ from what several replicas compute below)
            return keras.ops.moments(inputs, axes=self._reduction_axes)
        axes = list(self._reduction_axes)
        # as Keras: statistics of half-precision inputs in float32; float32 and float64 kept as they are
        dtype = tf.float64 if inputs.dtype == tf.float64 else tf.float32
        x = tf.cast(inputs, dtype)
        count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), axes)), dtype)
        total, count = context.all_reduce(tf.distribute.ReduceOp.SUM, [tf.reduce_sum(x, axes, keepdims=True), count])
        mean = total / count
        squares = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(tf.square(x - mean), axes, keepdims=True))
        variance = squares / count
        mean, variance = tf.squeeze(mean, axes), tf.squeeze(variance, axes)
        return tf.cast(mean, inputs.dtype), tf.cast(variance, inputs.dtype)
