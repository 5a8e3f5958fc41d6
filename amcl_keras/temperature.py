"""The adaptive temperature of AMCL (docs/METHOD.md §3): one small network φ shared by all heads.

A pair (a, b) of L2-normalised head outputs gets the score r = φ(a)·φ(b) and the temperature

    τ(a, b) = τ_min + (τ_max − τ_min) · sigmoid(−r)

so a pair that φ finds alike gets a low temperature. The regulariser
Ω(τ) = (d/2)·log τ + 1/τ keeps τ away from degenerate values (its minimum is at τ = 2/d).
"""

import math

import keras
import tensorflow as tf

from amcl_keras.constants import TEMPERATURE_HIDDEN_DIM, TEMPERATURE_MAX, TEMPERATURE_MIN
from amcl_keras.errors import InvalidInputError


def omega(tau, dim):
    """The temperature regulariser Ω(τ) = (dim/2)·log τ + 1/τ, elementwise.

    Example:
    ```python
    omega(tf.constant([0.01, 2.0 / 128, 0.02]), 128)   # smallest in the middle: τ = 2/d
    ```
    """
    return 0.5 * float(dim) * tf.math.log(tau) + 1.0 / tau


def bounded_omega(tau, dim, center=None):
    """The regulariser of the bounded objectives: Ω shifted and re-centred so that it is ≥ 0.

        R_c(τ) = (dim/2) · [log(τ/c) + c/τ − 1],   c = `center` (None: 2/dim)

    R_c ≥ 0 with its minimum 0 at τ = c. With c = 2/dim it is exactly Ω(τ) − min Ω, the
    authors' regulariser made non-negative; another c moves the temperature it prefers
    (e.g. the baseline's fixed τ) without changing its shape. Entered with a PLUS sign for
    every temperature (positive and negative pairs), it keeps the objective bounded below.

    Example:
    ```python
    bounded_omega(tf.constant([2.0 / 128]), 128)   # 0.0: the minimum
    ```
    """
    center = 2.0 / float(dim) if center is None else float(center)
    return 0.5 * float(dim) * (tf.math.log(tau / center) + center / tau - 1.0)


def bounded_ratio(log_ratio):
    """2^tanh(x / ln 2), x = `log_ratio`: ≈ e^x near 0 (a weight proportional to 1/τ for nearby τ),
    smoothly bounded to (1/2, 2) however far τ strays. The core of the "weighted" objective.

    Example:
    ```python
    bounded_ratio(tf.constant([0.0, 0.1, 50.0]))   # [1.0, ~1.105, ~2.0]
    ```
    """
    return tf.exp(math.log(2.0) * tf.tanh(log_ratio / math.log(2.0)))


def check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"`{name}` must be a positive integer, got {value!r}.")


@keras.saving.register_keras_serializable(package="amcl_keras")
class AdaptiveTemperature(keras.layers.Layer):
    """Per-pair temperatures from φ = Dense(hidden_dim, relu) → Dense(projection_dim).

    `get_weights()` is `[W1 (d×h), b1 (h), W2 (h×d), b2 (d)]`. Calling the layer on two
    L2-normalised tensors of equal shape `[..., d]` returns τ of shape `[...]`;
    `pairwise(a, b)` returns every pair's τ, `[..., n, m]`, with one matmul.
    The layer computes in float32 unless a dtype is given. `stop_gradient=True` feeds φ a stopped-gradient
    copy of its inputs: φ still learns the temperatures, but the encoder gets no gradient THROUGH them (it
    cannot move its embeddings to earn itself easier temperatures; docs/METHOD.md §10).

    Example:
    ```python
    import tensorflow as tf, amcl_keras as amcl
    temperature = amcl.AdaptiveTemperature(projection_dim=8)
    a = tf.math.l2_normalize(tf.random.normal([4, 8]), -1)
    b = tf.math.l2_normalize(tf.random.normal([4, 8]), -1)
    tau = temperature(a, b)              # shape [4], inside (1e-5, 2.0)
    all_pairs = temperature.pairwise(a, b)  # shape [4, 4]
    ```
    """

    def __init__(self, projection_dim, hidden_dim=TEMPERATURE_HIDDEN_DIM, temperature_min=TEMPERATURE_MIN,
                 temperature_max=TEMPERATURE_MAX, stop_gradient=False, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        check_positive_int("projection_dim", projection_dim)
        check_positive_int("hidden_dim", hidden_dim)
        if not 0.0 < float(temperature_min) < float(temperature_max):
            raise InvalidInputError(
                "Temperatures need 0 < temperature_min < temperature_max, got "
                f"temperature_min={temperature_min!r}, temperature_max={temperature_max!r}. "
                f"The authors use temperature_min={TEMPERATURE_MIN}, temperature_max={TEMPERATURE_MAX}."
            )
        self.projection_dim = projection_dim
        self.hidden_dim = hidden_dim
        self.temperature_min = float(temperature_min)
        self.temperature_max = float(temperature_max)
        self.stop_gradient = bool(stop_gradient)
        self.hidden = keras.layers.Dense(hidden_dim, activation="relu", dtype=self.dtype_policy, name="phi_hidden")
        self.out = keras.layers.Dense(projection_dim, dtype=self.dtype_policy, name="phi_output")
        self.hidden.build((None, projection_dim))
        self.out.build((None, hidden_dim))
        self.built = True

    def build(self, *args, **kwargs):  # weights are created in __init__: the input size is projection_dim
        self.built = True

    def check_input_dim(self, x):
        """Raise a ValueError naming both sizes when `x`'s last axis is not `projection_dim`."""
        if x.shape[-1] is not None and x.shape[-1] != self.projection_dim:
            raise InvalidInputError(
                f"AdaptiveTemperature was built for vectors of size projection_dim={self.projection_dim}, "
                f"but got a tensor of shape {tuple(x.shape)}. Pass head outputs whose last axis is "
                f"{self.projection_dim}, or build the layer with projection_dim={x.shape[-1]}."
            )

    def embed(self, x):
        """φ(x) for L2-normalised x of shape `[..., d]`, in the layer's compute dtype (float32 unless given)."""
        self.check_input_dim(x)
        x = tf.stop_gradient(x) if self.stop_gradient else x
        return self.out(self.hidden(tf.cast(x, self.compute_dtype)))

    def from_scores(self, scores):
        """Map pair scores r = φ(a)·φ(b) to temperatures inside (temperature_min, temperature_max)."""
        span = self.temperature_max - self.temperature_min
        return self.temperature_min + span * tf.sigmoid(-scores)

    def pairwise(self, a, b):
        """τ for every pair: a `[..., n, d]`, b `[..., m, d]` → `[..., n, m]`."""
        return self.from_scores(tf.matmul(self.embed(a), self.embed(b), transpose_b=True))

    def call(self, a, b):
        if a.shape.rank is not None and b.shape.rank is not None and a.shape != b.shape:
            if a.shape.is_fully_defined() and b.shape.is_fully_defined():
                raise InvalidInputError(
                    f"AdaptiveTemperature expects two tensors of equal shape [..., d], got "
                    f"{tuple(a.shape)} and {tuple(b.shape)}. Use `pairwise(a, b)` for all pairs."
                )
        return self.from_scores(tf.reduce_sum(self.embed(a) * self.embed(b), axis=-1))

    def get_config(self):
        config = super().get_config()
        config.update(
            projection_dim=self.projection_dim,
            hidden_dim=self.hidden_dim,
            temperature_min=self.temperature_min,
            temperature_max=self.temperature_max,
            stop_gradient=self.stop_gradient,
        )
        return config
