"""The project's own errors: every failure the library EXPECTS has a type derived from `AMCLError`.

An expected failure is the user's input or environment, not the library: a bad argument or
config value, data of the wrong shape, a run directory that cannot be used, an unwritable
path, a refused export. Its message says what was wrong, what was expected and how to fix it.
`amcl` turns these into one line and exit code 2 (3: the loss stopped being finite; 75:
pre-empted). Any OTHER exception reaching the command line (a `TypeError`, or a `ValueError`
from deep inside TensorFlow or Keras) is a bug: `amcl` prints its traceback and asks for a
report, exit code 1.

Each type also derives from the built-in error a Python caller would expect (`ValueError` for a
bad value, `OSError` for a file that cannot be written, ...), so `except ValueError` still works.
The more specific types live with their subject: `config.ConfigError`, `runs.RunDirectoryError`,
`runs.RunReadError`, `runs.RunWriteError`, `backups.RunPreempted`, `export.ExportError` and its
subclasses, `callbacks.NonFiniteLossError`.

Nothing here imports anything: this module sits at the bottom of the import graph.

Example:
```python
import amcl_keras as amcl
try:
    amcl.AdaptiveTemperature(projection_dim=0)
except amcl.errors.InvalidInputError as error:   # also a ValueError
    print(error)
```
"""


class AMCLError(Exception):
    """Base of every failure the library expects: the message tells the user what to change."""


class InvalidInputError(AMCLError, ValueError):
    """An argument, config value, tensor or dataset the library cannot use (wrong value, shape, dtype)."""


class EnvironmentProblemError(AMCLError, RuntimeError):
    """The process or machine cannot do what was asked (TensorFlow already initialised, a dataset that
    cannot be fetched offline, ...)."""


class WrongTypeError(AMCLError, TypeError):
    """An argument of the wrong kind (e.g. a loss of another method, an augmenter that is not callable)."""
