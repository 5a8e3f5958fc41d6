"""Projection heads: the method's MLP head and C independent copies of it (AMCL §1)."""

import keras
import tensorflow as tf

from amcl_keras.normalization import SyncBatchNormalization
from amcl_keras.temperature import check_positive_int
from amcl_keras.errors import InvalidInputError


@keras.saving.register_keras_serializable(package="amcl_keras")
class ProjectionHead(keras.layers.Layer):
    """An MLP head: for each hidden width a block Dense → (BatchNorm) → activation, then Dense
    (→ a non-affine BatchNorm with `output_batch_norm`).

    The SimCLR/MoCo head of the paper is `ProjectionHead(hidden_dims=(512,), output_dim=128)`
    (512 → 512 → 128 on a ResNet-18 feature). `output_batch_norm=True` ends the head in
    `BatchNormalization(center=False, scale=False)` after the last Dense (PyTorch's
    `BatchNorm1d(affine=False)`, with its epsilon 1e-5 and momentum 0.1, i.e. Keras momentum
    0.9), as the authors' SimSiam and Barlow Twins heads: in training mode every output
    channel is standardised over the batch; the last Dense then has no bias (the norm removes it).

    Example:
    ```python
    import numpy as np, amcl_keras as amcl
    head = amcl.ProjectionHead(hidden_dims=(64,), output_dim=16)
    head(np.zeros((2, 32), "float32")).shape   # (2, 16)
    ```
    """

    def __init__(
        self, hidden_dims=(512,), output_dim=128, batch_norm=False, activation="relu", synchronized_batch_norm=False,
        output_batch_norm=False, **kwargs,
    ):
        super().__init__(**kwargs)
        hidden_dims = tuple(int(h) for h in hidden_dims)
        for width in hidden_dims:
            check_positive_int("hidden_dims[...]", width)
        check_positive_int("output_dim", output_dim)
        self.hidden_dims = hidden_dims
        self.output_dim = output_dim
        self.batch_norm = bool(batch_norm)
        self.activation = activation
        self.synchronized_batch_norm = bool(synchronized_batch_norm)
        self.output_batch_norm = bool(output_batch_norm)
        self.blocks = []
        for index, width in enumerate(hidden_dims):
            self.blocks.append(keras.layers.Dense(width, use_bias=not batch_norm, name=f"dense_{index}"))
            if batch_norm:
                self.blocks.append(
                    SyncBatchNormalization(synchronized=synchronized_batch_norm, name=f"batch_norm_{index}")
                )
            self.blocks.append(keras.layers.Activation(activation, name=f"activation_{index}"))
        self.blocks.append(keras.layers.Dense(output_dim, use_bias=not output_batch_norm, name="output"))
        if output_batch_norm:
            self.blocks.append(SyncBatchNormalization(
                center=False, scale=False, epsilon=1e-5, momentum=0.9, synchronized=synchronized_batch_norm,
                name="output_batch_norm",
            ))

    def build(self, input_shape):
        shape = tuple(input_shape)
        for block in self.blocks:
            block.build(shape)
            shape = block.compute_output_shape(shape)
        self.built = True

    def call(self, x, training=None):
        for block in self.blocks:
            x = block(x, training=training) if isinstance(block, keras.layers.BatchNormalization) else block(x)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim,)

    def settings(self):
        """The head's own constructor arguments (what `get_config` adds to the layer's; shared by
        `MultiHeadProjector`, whose heads are all built alike)."""
        return dict(
            hidden_dims=list(self.hidden_dims),
            output_dim=self.output_dim,
            batch_norm=self.batch_norm,
            activation=self.activation,
            synchronized_batch_norm=self.synchronized_batch_norm,
            output_batch_norm=self.output_batch_norm,
        )

    def get_config(self):
        config = super().get_config()
        config.update(self.settings())
        return config


def check_feature_shape(shape, input_shape=None):
    """Refuse (ValueError) an encoder output that is not one `[batch, features]` tensor: a feature
    map, a sequence, several outputs (the heads take one feature vector per image)."""
    nested = isinstance(shape, dict) or (isinstance(shape, (tuple, list)) and any(
        isinstance(dim, (tuple, list, dict)) for dim in shape))
    if nested or shape is None or len(shape) != 2:
        got = "several outputs of shapes" if nested else "output shape"
        for_input = f" for input shape {tuple(input_shape)}" if input_shape is not None else ""
        raise InvalidInputError(
            f"The encoder must output [batch, features], got {got} {shape}{for_input}. End it with a pooling or "
            "flatten layer (e.g. keras.layers.GlobalAveragePooling2D) and return one tensor."
        )


@keras.saving.register_keras_serializable(package="amcl_keras")
class MultiHeadProjector(keras.layers.Layer):
    """`num_heads` independent `ProjectionHead`s on the same feature: `[batch, F]` → `[batch, C, d]`.

    Example:
    ```python
    import numpy as np, amcl_keras as amcl
    projector = amcl.MultiHeadProjector(num_heads=3, hidden_dims=(64,), output_dim=16)
    projector(np.zeros((2, 32), "float32")).shape   # (2, 3, 16)
    ```
    """

    def __init__(
        self, num_heads=3, hidden_dims=(512,), output_dim=128, batch_norm=False, activation="relu",
        synchronized_batch_norm=False, output_batch_norm=False, **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("num_heads", num_heads)
        self.num_heads = num_heads
        self.heads = [
            ProjectionHead(hidden_dims, output_dim, batch_norm, activation, synchronized_batch_norm,
                           output_batch_norm, name=f"head_{index}")
            for index in range(num_heads)
        ]

    @classmethod
    def batch_norm_mlp(cls, num_heads, hidden_dim, output_dim, output_batch_norm=True, name="projector"):
        """The Barlow Twins / SimSiam heads of the paper: 3 layers (hidden, hidden, output) with
        batch norm, ending in a non-affine batch norm (`output_batch_norm`, the authors'), all
        synchronized across replicas so a multi-replica step equals one device."""
        return cls(
            num_heads, hidden_dims=(hidden_dim, hidden_dim), output_dim=output_dim, batch_norm=True,
            synchronized_batch_norm=True, output_batch_norm=output_batch_norm, name=name,
        )

    def build(self, input_shape):
        check_feature_shape(input_shape)
        for head in self.heads:
            head.build(input_shape)
        self.built = True

    def call(self, features, training=None):
        return tf.stack([head(features, training=training) for head in self.heads], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_heads, self.heads[0].output_dim)

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, **self.heads[0].settings())
        return config


@keras.saving.register_keras_serializable(package="amcl_keras")
class MultiHeadPredictor(MultiHeadProjector):
    """SimSiam's predictors, one per head: head c maps `z[:, c]`; `[batch, C, d]` → `[batch, C, d]`.

    Example:
    ```python
    import numpy as np, amcl_keras as amcl
    predictor = amcl.MultiHeadPredictor(num_heads=3, hidden_dims=(8,), output_dim=16, batch_norm=True)
    predictor(np.zeros((2, 3, 16), "float32")).shape   # (2, 3, 16)
    ```
    """

    def build(self, input_shape):
        for head in self.heads:
            head.build((input_shape[0], input_shape[-1]))
        self.built = True

    def call(self, z, training=None):
        return tf.stack([head(z[:, index], training=training) for index, head in enumerate(self.heads)], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_heads, self.heads[0].output_dim)
