"""The authors' optimiser: SGD with weight decay coupled into the gradient, as PyTorch's `SGD`.

PyTorch's `SGD(lr, momentum=m, weight_decay=wd)` (the authors' optimiser, docs/METHOD.md §7)
adds the decay to the gradient BEFORE the momentum:

    g ← g + wd·w;   buf ← m·buf + g;   w ← w − lr·buf        (nesterov: w ← w − lr·(g + m·buf))

Keras 3's `SGD(weight_decay=wd)` instead decays the weights outside the momentum
(`w ← w − lr·wd·w`, then the momentum step on g alone), so at m = 0.9 the coupled decay acts
about 1/(1 − m) = 10× more strongly. The momentum buffer is PyTorch's too (not lr-scaled), so
the two agree step for step under a changing learning rate as well.

Clipping (`global_clipnorm`, `clipnorm`, `clipvalue`) acts on the gradient before the decay is
added, as in the authors' loop (`clip_grad_norm_`, then `optimizer.step()`, which adds the
decay): the decay itself is never clipped.
"""

import keras
from keras import ops

from amcl_keras.constants import CLIPNORM, SGD_MOMENTUM, WEIGHT_DECAY
from amcl_keras.constants import WEIGHT_DECAY_MODES  # noqa: F401 (re-exported): "coupled" = this optimizer


@keras.saving.register_keras_serializable(package="amcl_keras")
class CoupledWeightDecaySGD(keras.optimizers.SGD):
    """SGD with PyTorch's coupled weight decay and momentum buffer (the authors' optimiser).

    Takes the arguments of `keras.optimizers.SGD`, with the authors' defaults (the same as `amcl train`'s:
    momentum 0.9, weight decay 5e-4, global-norm clipping 1.0; pass `global_clipnorm=None` for none);
    `weight_decay` is added to the gradient
    (`g + weight_decay·w`) before the momentum, for every variable not excluded by
    `exclude_from_weight_decay`. The `momentum` slot holds PyTorch's buffer. Works with
    learning-rate schedules, gradient clipping, `LossScaleOptimizer` and MirroredStrategy
    (the decay is added to the summed, clipped gradient, once per variable).

    Example:
    ```python
    import keras, amcl_keras as amcl
    schedule = keras.optimizers.schedules.CosineDecay(0.06, decay_steps=1000)
    optimizer = amcl.optimizers.CoupledWeightDecaySGD(schedule, momentum=0.9, weight_decay=5e-4,
                                                      global_clipnorm=1.0)
    ```
    """

    def __init__(self, learning_rate=0.01, momentum=SGD_MOMENTUM, weight_decay=WEIGHT_DECAY,
                 global_clipnorm=CLIPNORM, **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay,
                         global_clipnorm=global_clipnorm, **kwargs)

    def _apply_weight_decay(self, variables):
        """Keras's decoupled decay step: not used, the decay is in `update_step`."""

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.weight_decay and self._use_weight_decay(variable):
            gradient = ops.add(gradient, ops.multiply(ops.cast(self.weight_decay, variable.dtype), variable))
        if self.momentum == 0:
            self.assign_sub(variable, ops.multiply(gradient, learning_rate))
            return
        buffer = self.momentums[self._get_variable_index(variable)]
        momentum = ops.cast(self.momentum, variable.dtype)
        new_buffer = ops.add(ops.multiply(buffer, momentum), gradient)
        self.assign(buffer, new_buffer)
        step = ops.add(gradient, ops.multiply(new_buffer, momentum)) if self.nesterov else new_buffer
        self.assign_sub(variable, ops.multiply(step, learning_rate))
