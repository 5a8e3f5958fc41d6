"""Entry point of the `amcl` command (`[project.scripts]` in pyproject.toml).

It lives outside the `amcl_keras` package on purpose: importing anything inside the package first runs
`amcl_keras/__init__.py`, which imports TensorFlow (a few seconds) so that `import amcl_keras` registers every
method and Keras layer. Here the import of `amcl_keras.cli` is made with that step deferred
(`amcl_keras.DEFER_ENVIRONMENT_VARIABLE`), so `amcl --help`, `amcl <command> --help`, `amcl --version` and
`amcl configs` answer without TensorFlow; every other command calls `amcl_keras.load()` once its arguments are
parsed. `python -m amcl_keras.cli` runs the same command without the deferral.
"""

import os
import sys

_DEFER = "AMCL_KERAS_DEFER_TENSORFLOW"  # amcl_keras.DEFER_ENVIRONMENT_VARIABLE (read before the package exists)


def main(argv=None):
    previous = os.environ.get(_DEFER)
    os.environ[_DEFER] = "1"
    try:
        from amcl_keras import cli
    finally:  # not inherited by anything the command starts (a worker process imports amcl_keras as usual)
        if previous is None:
            os.environ.pop(_DEFER, None)
        else:
            os.environ[_DEFER] = previous
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
