"""Test setup: two logical CPU devices (for MirroredStrategy tests), set before any TF op."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# train.jit_compile "auto" caches its measurements: keep the tests' out of the user's ~/.cache, in one folder that
# the pytest process which made it removes at exit (xdist workers and the CLI's subprocesses inherit it)
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

if "AMCL_CACHE_DIR" not in os.environ:
    os.environ["AMCL_CACHE_DIR"] = tempfile.mkdtemp(prefix="amcl-test-cache-")
    atexit.register(shutil.rmtree, os.environ["AMCL_CACHE_DIR"], ignore_errors=True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import tests.toy_method  # noqa: E402, F401 (registers a toy fifth method: every generic suite must take it)

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same Keras/TF/NumPy seeds, so failures reproduce."""
    import keras

    keras.utils.set_random_seed(1234)


@pytest.fixture
def policy(request):
    """The Keras dtype policy named by the test's parameter (indirect), put back afterwards."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(request.param)
    yield request.param
    keras.config.set_dtype_policy(previous)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def two_replicas():
    """MirroredStrategy over the 2 logical CPUs, one per test session: several strategy instances
    in one process can collide in their collective keys."""
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A real (tiny) training run, no export: 3 SGD steps on the shipped photos, then its run directory.
    Shared by the export tests; a test that writes into it must write only what it checks for itself."""
    import keras

    from amcl_keras import config as config_lib, train

    keras.utils.set_random_seed(7)
    config = config_lib.load(None, [
        "train.epochs=1", "train.steps_per_epoch=3", "data.batch_size=32", "model.encoder_width=4",
        "model.hidden_dim=32", "model.projection_dim=16", "eval.probe_epochs=1", "eval.max_examples=64",
        "export.formats=[]",
    ])
    path = tmp_path_factory.mktemp("runs") / "tiny"
    train.run(config, path, verbose=0)
    return path
