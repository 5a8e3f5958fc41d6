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
