"""The benchmarks (`python -m benchmarks.<name>`); what they share is in `benchmarks/harness.py`."""

import os

# Quiet TensorFlow's C++ start-up logging in every benchmark: this package is imported before any of its modules.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
