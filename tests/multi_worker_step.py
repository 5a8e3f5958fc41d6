"""One worker of the two-process MultiWorkerMirroredStrategy test (run by test_multi_worker.py).

    TF_CONFIG=... python -m tests.multi_worker_step OUT.npz

Takes one SGD step of a small AMCL-SimCLR on the fixed global batch of tests.methods.helpers
(each worker gets its half through Keras's input distribution); only the chief writes OUT.
"""

import os
import sys

import tensorflow as tf

strategy = tf.distribute.MultiWorkerMirroredStrategy()  # first, before any other TF op

import numpy as np  # noqa: E402

from amcl_keras.distribute import is_chief  # noqa: E402
from tests.methods import helpers  # noqa: E402


def main(out):
    import keras

    keras.utils.set_random_seed(0)
    view1, view2 = helpers.views()
    model = helpers.build(helpers.DEFAULT_METHOD, True, strategy=strategy)
    loss = helpers.one_step(model, view1, view2)["loss"][0]
    if is_chief(strategy):
        np.savez(out, loss=loss, replicas=strategy.num_replicas_in_sync,
                 **{f"w{i}": w.numpy() for i, w in enumerate(model.weights)})
    print(f"worker {os.environ.get('WORKER_INDEX')} done: loss {loss}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
