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


@pytest.fixture
def host_only_through_keras(monkeypatch):
    """On PyTorch, tensors refuse implicit NumPy conversion (``np.asarray(t)``, ``t.numpy()``)
    except inside ``keras.ops.convert_to_numpy``, as CUDA tensors do ("can't convert cuda:0
    device type tensor to numpy"), so a CPU-only run catches a conversion that would fail on a
    GPU. Elsewhere a no-op."""
    if BACKEND != "torch":
        yield
        return
    import threading

    import torch
    from keras.src import backend as keras_backend
    from keras.src.backend.torch import core as torch_core

    allowed = threading.local()
    original_array, original_numpy = torch.Tensor.__array__, torch.Tensor.numpy

    def refuse(original):
        def guarded(self, *args, **kwargs):
            if not getattr(allowed, "depth", 0):
                raise TypeError(
                    "can't convert cuda:0 device type tensor to numpy (simulated: convert "
                    "with keras.ops.convert_to_numpy)"
                )
            return original(self, *args, **kwargs)

        return guarded

    def permitted(convert):
        def wrapper(x):
            allowed.depth = getattr(allowed, "depth", 0) + 1
            try:
                return convert(x)
            finally:
                allowed.depth -= 1

        return wrapper

    monkeypatch.setattr(torch.Tensor, "__array__", refuse(original_array))
    monkeypatch.setattr(torch.Tensor, "numpy", refuse(original_numpy))
    monkeypatch.setattr(torch_core, "convert_to_numpy", permitted(torch_core.convert_to_numpy))
    monkeypatch.setattr(
        keras_backend, "convert_to_numpy", permitted(keras_backend.convert_to_numpy)
    )
    yield
