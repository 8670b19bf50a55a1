"""Which backend's ops a deformation runs on, and the few things that differ between backends.

The deformations are written once, against the namespace of a Keras backend's ops (``B.numpy``,
``B.cast``, ``B.core.shape``, ... — what ``keras.ops`` dispatches to), the way Keras's own image
preprocessing layers are written against ``self.backend``. The namespace is the active Keras
backend's, except inside a TensorFlow graph that is not being traced by JAX (a ``tf.data``
pipeline, a ``tf.function``), where it is TensorFlow's whatever the active backend, so a layer or
a field function works in ``tf.data`` on every backend (the ``DynamicBackend`` pattern of Keras's
``DataLayer``).

What cannot be written once lives here: compiling a function (``tf.function(jit_compile=True)``
on TensorFlow, ``jax.jit`` on JAX; with Keras variables read at run time for the measures, which
run models on the active backend), stateless random draws from a ``(2,)`` seed with independent
streams, telling a concrete tensor from a traced one, moving a tensor to the host, and
computing float32 in float32 on GPUs.
"""

import contextlib
import functools
import inspect
import zlib

import keras
import numpy as np

# Keras's own switch between backend namespaces (what its preprocessing layers use): private API,
# kept with the package's other uses of Keras internals.
from deformstab_tf._keras_internals import DynamicBackend, in_tf_graph

_OPS = {}


def ops(name):
    """The ops namespace of backend `name` (``"tensorflow"``, ``"jax"``, ``"torch"``, ...)."""
    # A dict, not functools.cache: torch.compile warns on every cache wrapper it traces through.
    if name not in _OPS:
        _OPS[name] = DynamicBackend(name)
    return _OPS[name]


def _is_jax_tracer(x):
    if keras.backend.backend() != "jax":
        return False
    import jax

    return isinstance(x, jax.core.Tracer)


def backend_name(sample=None):
    """The backend whose ops run now: the active one, or TensorFlow inside a TensorFlow graph.

    Args:
        sample: an input tensor, to tell a JAX trace (inside ``jax.jit``) from a TF graph.

    Returns:
        A backend name, e.g. ``"tensorflow"`` or ``"jax"``.
    """
    active = keras.backend.backend()
    if active != "tensorflow" and in_tf_graph() and not _is_jax_tracer(sample):
        return "tensorflow"
    return active


def is_concrete(x):
    """Whether `x` holds values now (eager), rather than being traced (graph, jit, dynamo)."""
    if isinstance(x, (int, float, np.ndarray, np.generic)):
        return True
    name = type(x).__module__.split(".")[0]
    if name == "tensorflow":
        import tensorflow as tf

        return tf.executing_eagerly() and hasattr(x, "numpy")
    if name in ("jax", "jaxlib"):
        import jax

        return not isinstance(x, jax.core.Tracer)
    if name == "torch":
        import torch

        return not torch.compiler.is_compiling() and x.device.type != "meta"
    return False


_COMPILED = {}


def compiled(function, name, static_argnames=()):
    """`function(B, *args)` bound to backend `name`'s ops and compiled by its compiler.

    TensorFlow: ``tf.function(jit_compile=True)`` (XLA even when called eagerly or in
    ``tf.data``; Python arguments are static). JAX: ``jax.jit`` with `static_argnames` (inside an
    outer jit it is inlined). Other backends: the plain function.
    """
    key = (function, name)
    if key not in _COMPILED:
        backend = ops(name)

        def bound(*args, **kwargs):
            return function(backend, *args, **kwargs)

        functools.update_wrapper(bound, function)
        signature = inspect.signature(function)
        bound.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])
        del bound.__wrapped__
        if name == "tensorflow":
            import tensorflow as tf

            # reduce_retracing: images of many sizes (a model zoo) share one shape-generic trace
            bound = tf.function(bound, jit_compile=True, autograph=False, reduce_retracing=True)
        elif name == "jax":
            import jax

            bound = jax.jit(bound, static_argnames=static_argnames)
        _COMPILED[key] = bound
    return _COMPILED[key]


def compiled_reading(function, variables, **tf_function_options):
    """`function` compiled the active backend's way, reading Keras `variables` as they are now.

    For code on the active backend's ops (``keras.ops``, a Keras model call) that reads Keras
    variables, such as a model's weights that training changes between calls. TensorFlow:
    ``tf.function(function, **tf_function_options)`` (it reads the variables at run time). JAX:
    ``jax.jit`` of `function` run in a ``keras.StatelessScope`` that maps `variables` to their
    current values, passed as arguments on every call (a jitted function would otherwise bake
    the values it saw when traced in as constants); it traces once per input shape. PyTorch:
    the plain function, run eagerly under ``torch.no_grad()``. Other backends: the plain
    function.

    Args:
        function: a function of tensors (pytrees of them on JAX).
        variables: every Keras variable `function` reads (e.g. ``model.variables``).
        **tf_function_options: ``tf.function`` options on TensorFlow (``input_signature``,
            ``jit_compile``, ...); ignored elsewhere.

    Returns:
        A callable with `function`'s arguments.
    """
    name = keras.backend.backend()
    if name == "tensorflow":
        import tensorflow as tf

        return tf.function(function, **tf_function_options)
    if name == "torch":
        import torch

        @functools.wraps(function)
        def without_gradients(*args, **kwargs):
            # A reading is no training step: no autograd graph (and results numpy can read).
            with torch.no_grad():
                return function(*args, **kwargs)

        return without_gradients
    if name != "jax":
        return function
    import jax

    variables = list(variables)

    def stateless(values, *args):
        with keras.StatelessScope(state_mapping=list(zip(variables, values, strict=True))):
            return function(*args)

    jitted = jax.jit(stateless)

    def call(*args):
        return jitted([variable.value for variable in variables], *args)

    return call


def take_rows(B, table, index):
    """``table[index]`` for a 2-D `table` and int32 `index` known to lie in ``[0, len(table))``.

    ``B.numpy.take`` on JAX guards every read against out-of-range indices (``mode="fill"``), a
    compare and select per element that the resampler's indices never need; here the gather is
    told they are in bounds. Elsewhere it is ``B.numpy.take``.
    """
    if B.name == "jax":
        return table.at[index].get(mode="promise_in_bounds")
    return B.numpy.take(table, index, axis=0)


def host_code(function):
    """`function`, which compilers that trace Python (``torch.compile``) call as host code
    instead of tracing into it."""
    if keras.backend.backend() == "torch":  # the backend is fixed when Keras is imported
        import torch

        return torch.compiler.disable(function)
    return function


def host_constant(function):
    """Caches a function of Python numbers that builds a numpy constant, as host code (see
    `host_code`)."""
    cached = functools.lru_cache(maxsize=64)(function)
    disabled = host_code(cached)
    if disabled is not cached:
        disabled.cache_info, disabled.cache_clear = cached.cache_info, cached.cache_clear
    return disabled


def to_numpy(x, dtype=None):
    """A NumPy array of `x` (a tensor of any backend on any device, or array-like).

    The one way the package moves tensors to the host: `keras.ops.convert_to_numpy` copies a
    CUDA tensor to the CPU first, where `np.asarray` fails on PyTorch ("can't convert cuda:0
    device type tensor to numpy").
    """
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=dtype)


@contextlib.contextmanager
def full_float32_precision():
    """Inside the block, float32 matrix products and convolutions compute in float32 on every
    backend and device; the previous settings are restored on exit.

    NVIDIA GPUs since Ampere run float32 matmuls and convolutions in TensorFloat-32 (a 10-bit
    mantissa) by default in TensorFlow, in JAX (its default matmul precision) and in PyTorch's
    cuDNN convolutions: a measurement would move by ~1e-4 relative between a GPU and a CPU. The
    measures run inside this block, so given weights measure the same on every device to ~1e-6;
    training keeps whatever the user set. On a CPU nothing changes numerically.

    Example:

    >>> import tensorflow as tf
    >>> with full_float32_precision():
    ...     tf.config.experimental.tensor_float_32_execution_enabled()
    False
    """
    import tensorflow as tf  # always installed; its setting matters wherever TF computes

    restore = []
    if tf.config.experimental.tensor_float_32_execution_enabled():
        tf.config.experimental.enable_tensor_float_32_execution(False)
        restore.append(lambda: tf.config.experimental.enable_tensor_float_32_execution(True))
    try:
        with contextlib.ExitStack() as stack:
            backend = keras.backend.backend()
            if backend == "jax":
                import jax

                # Part of jax.jit's cache key: functions compiled here are reused here only.
                stack.enter_context(jax.default_matmul_precision("highest"))
            elif backend == "torch":
                restore.extend(_torch_ieee_float32())
            yield
    finally:
        for undo in reversed(restore):
            undo()


def _torch_ieee_float32():
    """Sets PyTorch's float32 matmuls and cuDNN convolutions to IEEE float32; returns undos.

    PyTorch >= 2.9 has `fp32_precision` settings and refuses to mix them with the legacy
    `allow_tf32` flags, so the new ones are used where they exist.
    """
    import torch

    undo = []
    new_api = [
        getattr(torch.backends.cuda, "matmul", None),
        getattr(getattr(torch.backends, "cudnn", None), "conv", None),
    ]
    if all(hasattr(setting, "fp32_precision") for setting in new_api):
        for setting in new_api:
            previous = setting.fp32_precision
            setting.fp32_precision = "ieee"
            undo.append(functools.partial(setattr, setting, "fp32_precision", previous))
        return undo
    for setting in (torch.backends.cuda.matmul, torch.backends.cudnn):
        previous = setting.allow_tf32
        setting.allow_tf32 = False
        undo.append(functools.partial(setattr, setting, "allow_tf32", previous))
    return undo


@host_code  # zlib is opaque to torch.compile
def _stream_int(seed, stream):
    """One 32-bit integer from a concrete ``(2,)`` seed and a stream number."""
    values = np.asarray(keras.ops.convert_to_numpy(seed) if not isinstance(seed, list) else seed)
    return zlib.crc32(np.asarray([*values.astype(np.int64).ravel(), stream], np.int64).tobytes())


def stateless_uniform(name, shape, low, high, seed, stream):
    """Uniform float32 draws in ``[low, high)`` from a ``(2,)`` integer `seed`, on backend `name`.

    Each `stream` number gives an independent draw from the same seed; the same seed and stream
    give the same numbers on the same backend (backends use different generators: TensorFlow's
    Philox with ``stateless_fold_in``, JAX's threefry with ``fold_in``).
    """
    if name == "tensorflow":
        import tensorflow as tf

        seed = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), stream)
        return tf.random.stateless_uniform(shape, seed, minval=low, maxval=high)
    if name == "jax":
        import jax
        import jax.numpy as jnp

        key = jax.random.fold_in(jnp.asarray(seed).astype(jnp.uint32), stream)
        return jax.random.uniform(key, tuple(shape), jnp.float32, minval=low, maxval=high)
    return ops(name).random.uniform(
        tuple(shape), low, high, dtype="float32", seed=_stream_int(seed, stream)
    )


def stateless_normal(name, shape, seed, stream):
    """Standard-normal float32 draws from a ``(2,)`` integer `seed`; as `stateless_uniform`."""
    if name == "tensorflow":
        import tensorflow as tf

        seed = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), stream)
        return tf.random.stateless_normal(shape, seed)
    if name == "jax":
        import jax
        import jax.numpy as jnp

        key = jax.random.fold_in(jnp.asarray(seed).astype(jnp.uint32), stream)
        return jax.random.normal(key, tuple(shape), jnp.float32)
    return ops(name).random.normal(tuple(shape), dtype="float32", seed=_stream_int(seed, stream))


def standardize_dtype(dtype):
    """A dtype's standardized name (``"uint8"``, ``"float32"``, ...) from a name, a NumPy or a
    backend dtype; raises for what is no dtype."""
    return keras.backend.standardize_dtype(dtype)


def dtype_name(x):
    """The standardized dtype name of a tensor, e.g. ``"float32"``, ``"uint8"``, ``"string"``."""
    return keras.backend.standardize_dtype(x.dtype)


def is_numeric(dtype):
    """Float or integer (not bool, string, complex)."""
    return "float" in dtype or "int" in dtype
