"""Choosing the `tf.distribute` strategy from the config."""

import tensorflow as tf


def use_cpu_replicas(count):
    """Split the CPU into `count` logical devices (for MirroredStrategy on a CPU-only machine).

    Must run before TensorFlow creates any tensor; otherwise a clear error says so.
    """
    if count <= 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError as error:
        current = len(tf.config.list_logical_devices("CPU"))
        if current == count:
            return
        raise RuntimeError(
            f"Cannot split the CPU into {count} logical devices: TensorFlow is already initialised with "
            f"{current}. Call amcl_keras.distribute.use_cpu_replicas({count}) first thing in the process."
        ) from error


def make_strategy(name="auto", cpu_replicas=1):
    """`auto`: MirroredStrategy over all visible GPUs, else the default strategy;
    `mirrored`: MirroredStrategy over the GPUs, or over `cpu_replicas` logical CPU devices;
    `default`: the default (single-device) strategy."""
    if name not in ("auto", "default", "mirrored"):
        raise ValueError(f"Unknown strategy {name!r}: use 'auto', 'default' or 'mirrored'.")
    if name == "mirrored":
        use_cpu_replicas(cpu_replicas)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "default" or (name == "auto" and not gpus):
        return tf.distribute.get_strategy()
    devices = gpus or tf.config.list_logical_devices("CPU")[: max(cpu_replicas, 1)]
    return tf.distribute.MirroredStrategy([device.name for device in devices])
