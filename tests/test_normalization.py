"""The builders' BatchNormalization (TensorFlow's fused kernel) against Keras's layer and a
numpy reference: outputs, moving statistics, gradients, config, and where it falls back."""

import keras
import numpy as np
import pytest

from deformstab_tf.models import (
    BatchNormalization,
    cifar_vgg,
    permute_input_channels,
    recalibrate_batch_norm,
)
from tests.backends import BACKEND, as_numpy, traced

pytestmark = pytest.mark.backends


def batch(shape=(6, 5, 4, 3), seed=0, scale=3.0, shift=1.5):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) * scale + shift).astype("float32")


def pair(axis=-1, **kwargs):
    """Ours and Keras's, built, with the same random gamma/beta/moving statistics."""
    ours = BatchNormalization(axis=axis, **kwargs)
    theirs = keras.layers.BatchNormalization(axis=axis, **kwargs)
    return ours, theirs


def same_weights(ours, theirs, shape, seed=1):
    ours.build(shape)
    theirs.build(shape)
    rng = np.random.default_rng(seed)
    for a, b in zip(ours.weights, theirs.weights, strict=True):
        value = rng.uniform(0.5, 1.5, size=a.shape).astype("float32")
        a.assign(value)
        b.assign(value)


def numpy_batch_norm(x, axis, gamma, beta, eps):
    reduce = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    mean = x.astype("float64").mean(reduce, keepdims=True)
    var = x.astype("float64").var(reduce, keepdims=True)
    shape = [1] * x.ndim
    shape[axis] = -1
    return (x - mean) / np.sqrt(var + eps) * gamma.reshape(shape) + beta.reshape(shape)


@pytest.mark.parametrize("axis", [-1, 1])
def test_training_step_matches_keras_and_numpy(axis):
    x = batch()
    ours, theirs = pair(axis=axis, momentum=0.9)
    same_weights(ours, theirs, x.shape)
    gamma, beta = as_numpy(ours.gamma), as_numpy(ours.beta)
    mean0, var0 = as_numpy(ours.moving_mean), as_numpy(ours.moving_variance)
    y = as_numpy(ours(x, training=True))
    np.testing.assert_allclose(y, as_numpy(theirs(x, training=True)), atol=2e-5)
    np.testing.assert_allclose(y, numpy_batch_norm(x, axis, gamma, beta, 1e-3), atol=2e-5)
    reduce = tuple(i for i in range(4) if i != axis % 4)
    # Keras's update, with the biased batch variance.
    np.testing.assert_allclose(
        as_numpy(ours.moving_mean), 0.9 * mean0 + 0.1 * x.mean(reduce), rtol=1e-5
    )
    np.testing.assert_allclose(
        as_numpy(ours.moving_variance), 0.9 * var0 + 0.1 * x.var(reduce), rtol=1e-5
    )
    for a, b in zip(ours.weights, theirs.weights, strict=True):
        np.testing.assert_allclose(as_numpy(a), as_numpy(b), rtol=1e-5, err_msg=a.path)


def test_inference_uses_moving_statistics():
    x = batch(seed=2)
    ours, theirs = pair()
    same_weights(ours, theirs, x.shape)
    mean, var = as_numpy(ours.moving_mean), as_numpy(ours.moving_variance)
    gamma, beta = as_numpy(ours.gamma), as_numpy(ours.beta)
    expected = (x - mean) / np.sqrt(var + 1e-3) * gamma + beta
    for training in (False, None):
        np.testing.assert_allclose(as_numpy(ours(x, training=training)), expected, atol=2e-5)
    np.testing.assert_allclose(as_numpy(theirs(x, training=False)), expected, atol=2e-5)
    np.testing.assert_array_equal(as_numpy(ours.moving_mean), mean)  # inference updates nothing


def test_frozen_layer_normalises_with_moving_statistics_in_training():
    x = batch(seed=3)
    ours, theirs = pair()
    same_weights(ours, theirs, x.shape)
    ours.trainable = theirs.trainable = False
    np.testing.assert_allclose(
        as_numpy(ours(x, training=True)), as_numpy(theirs(x, training=True)), atol=2e-5
    )


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the fused kernel is TensorFlow's only")
@pytest.mark.parametrize("training", [True, False])
def test_gradients_match_keras(training):
    import tensorflow as tf

    x = batch(seed=4)
    ours, theirs = pair()
    same_weights(ours, theirs, x.shape)
    weights = np.random.default_rng(5).normal(size=x.shape).astype("float32")

    def gradients(layer):
        inputs = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            loss = tf.reduce_sum(layer(inputs, training=training) ** 2 * weights)
        return tape.gradient(loss, [inputs, layer.gamma.value, layer.beta.value])

    for a, b in zip(gradients(ours), gradients(theirs), strict=True):
        np.testing.assert_allclose(as_numpy(a), as_numpy(b), rtol=2e-4, atol=2e-4)


def test_traced_and_xla_compiled_match_eager():
    x = batch(seed=6)
    ours, theirs = pair()
    same_weights(ours, theirs, x.shape)
    expected = as_numpy(theirs(x, training=True))
    if BACKEND in ("tensorflow", "jax"):  # `traced` compiles with tf.function or jax.jit
        np.testing.assert_allclose(
            as_numpy(traced(lambda v: ours(v, training=True))(x)), expected, atol=2e-5
        )
    if BACKEND == "tensorflow":
        import tensorflow as tf

        compiled = tf.function(lambda v: ours(v, training=True), jit_compile=True)
        np.testing.assert_allclose(as_numpy(compiled(x)), expected, atol=2e-5)
        theirs(x, training=True)
        # XLA's kernel corrects the variance like the CPU kernel: the update stays Keras's.
        np.testing.assert_allclose(
            as_numpy(ours.moving_variance), as_numpy(theirs.moving_variance), rtol=1e-5
        )


def test_one_value_per_channel_keeps_moving_variance_finite():
    x = batch(shape=(1, 1, 1, 3), seed=7)
    ours, theirs = pair()
    same_weights(ours, theirs, x.shape)
    ours(x, training=True)
    theirs(x, training=True)
    assert np.all(np.isfinite(as_numpy(ours.moving_variance)))
    np.testing.assert_allclose(
        as_numpy(ours.moving_variance), as_numpy(theirs.moving_variance), rtol=1e-6
    )


@pytest.mark.parametrize(
    "case",
    ["rank3", "float64", "renorm", "no_scale_center", "axis2"],
)
def test_cases_the_fused_kernel_does_not_cover_match_keras(case):
    shape, kwargs, dtype = (6, 5, 4, 3), {}, "float32"
    if case == "rank3":
        shape = (6, 5, 3)
    elif case == "float64":
        if BACKEND == "jax":
            pytest.skip("JAX computes in float32 unless jax_enable_x64 is set")
        dtype = "float64"
    elif case == "renorm":
        kwargs = {"renorm": True}
    elif case == "no_scale_center":
        kwargs = {"scale": False, "center": False}
    elif case == "axis2":
        kwargs = {"axis": 2}
    x = batch(shape=shape, seed=8).astype(dtype)
    ours = BatchNormalization(dtype=dtype, **kwargs)
    theirs = keras.layers.BatchNormalization(dtype=dtype, **kwargs)
    for training in (True, False):
        np.testing.assert_allclose(
            as_numpy(ours(x, training=training)),
            as_numpy(theirs(x, training=training)),
            atol=1e-5,
            err_msg=f"{case}, training={training}",
        )


def test_mixed_bfloat16_matches_keras_to_bfloat16_rounding():
    x = batch(seed=9)
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        ours, theirs = pair()
        same_weights(ours, theirs, x.shape)
        y = ours(x, training=True)
        y_ref = theirs(x, training=True)
    finally:
        keras.config.set_dtype_policy(policy)
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"
    assert keras.backend.standardize_dtype(ours.moving_mean.dtype) == "float32"
    y, y_ref = as_numpy(y).astype("float32"), as_numpy(y_ref).astype("float32")
    np.testing.assert_allclose(y, y_ref, atol=0.05, rtol=0.02)  # bfloat16 has 8 bits
    np.testing.assert_allclose(
        as_numpy(ours.moving_mean), as_numpy(theirs.moving_mean), rtol=1e-2, atol=1e-3
    )


def test_config_round_trip_and_builders_use_it(tmp_path):
    layer = BatchNormalization(axis=1, momentum=0.8, epsilon=1e-4, name="bn")
    assert (
        layer.get_config()
        == keras.layers.BatchNormalization.from_config(layer.get_config()).get_config()
    )
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(clone) is BatchNormalization and clone.get_config() == layer.get_config()
    model = cifar_vgg("strided_relu", input_shape=(16, 16, 3))
    norms = [x for x in model.layers if isinstance(x, keras.layers.BatchNormalization)]
    assert norms and all(type(x) is BatchNormalization for x in norms)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.get_layer("block1_conv1_bn")) is BatchNormalization


def test_recalibrate_batch_norm_sets_image_weighted_batch_statistics():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((6, 6, 2))
    conv = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    norm = BatchNormalization(name="bn", momentum=0.9)(conv)
    outputs = keras.layers.ReLU()(keras.layers.Conv2D(3, 1, name="conv2")(norm))
    model = keras.Model(inputs, [outputs])
    images = np.random.default_rng(0).normal(1.0, 2.0, (48, 6, 6, 2)).astype("float32")
    gamma = as_numpy(model.get_layer("bn").gamma)
    assert recalibrate_batch_norm(model, images, batch_size=32) == 1  # batches of 32 and 16
    pre = as_numpy(keras.Model(inputs, conv)(images)).astype("float64")
    first, second = pre[:32], pre[32:]
    expected_mean = pre.mean(axis=(0, 1, 2))  # = (32 m1 + 16 m2) / 48
    expected_var = (32 * first.var(axis=(0, 1, 2)) + 16 * second.var(axis=(0, 1, 2))) / 48
    bn = model.get_layer("bn")
    np.testing.assert_allclose(as_numpy(bn.moving_mean), expected_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(as_numpy(bn.moving_variance), expected_var, rtol=1e-4)
    assert bn.momentum == 0.9  # restored
    np.testing.assert_array_equal(as_numpy(bn.gamma), gamma)
    with pytest.raises(ValueError, match="batch_size"):
        recalibrate_batch_norm(model, images, batch_size=0)
    with pytest.raises(TypeError, match="model"):
        recalibrate_batch_norm("model.keras", images)


def test_recalibrated_permuted_network_normalises_its_new_pre_activations():
    """After permuting the input channels, the first BN's statistics are those of the permuted
    convolution's outputs (before: of the original's), and nested models are reached."""
    keras.utils.set_random_seed(4)
    inner = cifar_vgg("max", input_shape=(16, 16, 3))
    model = keras.Sequential([keras.Input((16, 16, 3)), inner])
    images = np.random.default_rng(1).random((40, 16, 16, 3)).astype("float32")
    permuted = permute_input_channels(model, seed=0)
    count = recalibrate_batch_norm(permuted, images, batch_size=40)
    norms = [layer for layer in inner.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert count == len(norms) == 8
    nested = permuted.layers[0]
    conv = nested.get_layer("block1_conv2_conv")
    pre = as_numpy(keras.Model(nested.inputs, conv.output)(images)).astype("float64")
    bn = nested.get_layer("block1_conv2_bn")
    np.testing.assert_allclose(as_numpy(bn.moving_mean), pre.mean(axis=(0, 1, 2)), atol=1e-4)
    np.testing.assert_allclose(
        as_numpy(bn.moving_variance), pre.var(axis=(0, 1, 2)), rtol=1e-3, atol=1e-5
    )
