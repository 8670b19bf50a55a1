"""What the tests need to run on any Keras backend (CI runs the backend-independent files twice:
on TensorFlow and with ``KERAS_BACKEND=jax``)."""

import keras
import numpy as np
import pytest

BACKEND = keras.backend.backend()

tensorflow_only = pytest.mark.skipif(
    BACKEND != "tensorflow", reason="TensorFlow-specific (tf.function signatures, tf.string)"
)
other_backend_only = pytest.mark.skipif(
    BACKEND == "tensorflow",
    reason="compares the active backend with TensorFlow ops: run with KERAS_BACKEND=jax",
)


def dtype_of(x):
    """The standardized dtype name of a tensor of any backend."""
    return keras.backend.standardize_dtype(x.dtype)


def as_numpy(x):
    """A numpy array from a tensor of any backend (bfloat16 stays ml_dtypes' bfloat16)."""
    return np.asarray(keras.ops.convert_to_numpy(x))


def traced(function):
    """`function` compiled the active backend's way, so its inputs are traced, not concrete."""
    if BACKEND == "jax":
        import jax

        return jax.jit(function)
    import tensorflow as tf

    return tf.function(function)
