"""Batch normalization whose cross-replica statistics match one device.

Keras 3.15's `BatchNormalization(synchronized=True)` all-reduces Σx and Σx² and takes the variance as
E[x²] − E[x]², which cancels in float32 when |mean| ≫ std (post-ReLU and residual activations); in a
ResNet-50 the 53 layers compound it (measured: the loss of one step on 2 replicas 7e-4 off one device).
`SyncBatchNormalization` takes two passes instead — the global mean, then the all-reduced Σ(x − mean)² —
one more all-reduce per layer, and equals one device's statistics to float32 rounding. On one replica a
synchronized layer takes the unsynchronized (two-pass) moments, not Keras's one-pass synchronized ones, so one
device and several compute the same statistics.
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
        # as Keras: statistics of half-precision inputs in float32 (float64 stays float64)
        x = inputs if inputs.dtype in (tf.float32, tf.float64) else tf.cast(inputs, tf.float32)
        count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), axes)), tf.float32)
        total, count = context.all_reduce(tf.distribute.ReduceOp.SUM, [tf.reduce_sum(x, axes, keepdims=True), count])
        mean = total / count
        squares = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(tf.square(x - mean), axes, keepdims=True))
        variance = squares / count
        mean, variance = tf.squeeze(mean, axes), tf.squeeze(variance, axes)
        return tf.cast(mean, inputs.dtype), tf.cast(variance, inputs.dtype)
