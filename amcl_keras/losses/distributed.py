"""The one piece of distribution the losses need: the global batch, from inside a replica."""

import tensorflow as tf


def gather_global_batch(*tensors):
    """All-gather `tensors` along axis 0 over the replicas of the current strategy.

    Returns `(gathered, offset)`: the gathered tensors (replica order, so row
    `offset + i` is this replica's row `i`) and this replica's offset into the global batch.
    Outside a multi-replica context it returns the inputs unchanged and offset 0.
    `all_gather` is differentiable: gradients reach the replica that owns each row.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tensors, 0
    replicas = context.num_replicas_in_sync
    gathered = []
    for t in tensors:
        g = context.all_gather(t, axis=0)
        rows = t.shape[0] * replicas if t.shape[0] is not None else None
        g.set_shape([rows] + list(t.shape[1:]))  # all_gather drops static shapes; downstream code needs them
        gathered.append(g)
    gathered = tuple(gathered)
    replica_id = tf.cast(context.replica_id_in_sync_group, tf.int32)
    return gathered, replica_id * tf.shape(tensors[0])[0]
