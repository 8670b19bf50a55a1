"""Tests of the downsampling layers and of the switch-to-layers mapping."""

import keras
import numpy as np
import pytest
from scipy.special import binom

from deformstab_tf.models import (
    DOWNSAMPLING,
    BlurPool2D,
    Subsample2D,
    binomial_filter,
    downsampling_layers,
)
from tests.backends import as_numpy

# Backend-independent: CI also runs this file with KERAS_BACKEND=jax (see README).
pytestmark = pytest.mark.backends

RNG = np.random.default_rng(0)


def random_images(shape):
    return RNG.standard_normal(shape).astype("float32")


def to_channels_first(x):
    return np.transpose(x, (0, 3, 1, 2))


def reference_blur(x, filter_size, strides, padding):
    """numpy reference of BlurPool2D (channels_last): pad, valid correlation, keep every s-th."""
    taps = np.array([binom(filter_size - 1, k) for k in range(filter_size)])
    kernel = np.outer(taps, taps) / np.outer(taps, taps).sum()
    before = (filter_size - 1) // 2
    after = int(np.ceil((filter_size - 1) / 2))
    mode = {"reflect": "reflect", "symmetric": "symmetric", "constant": "constant"}[padding]
    padded = np.pad(x, [(0, 0), (before, after), (before, after), (0, 0)], mode=mode)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (filter_size, filter_size), (1, 2))
    full = np.einsum("bhwcuv,uv->bhwc", windows, kernel)
    return full[:, :: strides[0], :: strides[1], :]


# --- Subsample2D --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, strides", [((8, 8), 2), ((7, 9), 2), ((9, 10), (3, 2)), ((5, 5), 1)]
)
def test_subsample_keeps_top_left_pixels(size, strides):
    x = random_images((2, *size, 3))
    rows, cols = (strides, strides) if isinstance(strides, int) else strides
    y = Subsample2D(strides)(x)
    np.testing.assert_array_equal(as_numpy(y), x[:, ::rows, ::cols, :])


def test_subsample_channels_first_matches_channels_last():
    x = random_images((2, 9, 8, 3))
    y_last = Subsample2D(2)(x)
    y_first = Subsample2D(2, data_format="channels_first")(to_channels_first(x))
    np.testing.assert_array_equal(as_numpy(y_first), to_channels_first(as_numpy(y_last)))


def test_subsample_output_shape_is_ceil():
    layer = Subsample2D((2, 3))
    assert layer.compute_output_shape((None, 7, 7, 5)) == (None, 4, 3, 5)
    symbolic = layer(keras.Input((7, 7, 5)))
    assert tuple(symbolic.shape) == (None, 4, 3, 5)


# --- BlurPool2D ---------------------------------------------------------------------------


@pytest.mark.parametrize("filter_size", range(1, 8))
def test_binomial_filter_is_normalised_outer_product_of_pascal_row(filter_size):
    taps = np.array([1.0])
    for _ in range(filter_size - 1):
        taps = np.convolve(taps, [1.0, 1.0])
    expected = np.outer(taps, taps) / taps.sum() ** 2
    np.testing.assert_allclose(binomial_filter(filter_size), expected, rtol=1e-12)
    np.testing.assert_allclose(BlurPool2D(filter_size).filter, expected, rtol=1e-12)


@pytest.mark.parametrize("filter_size", [2, 3, 4, 7])
def test_blurpool_impulse_response_is_the_filter(filter_size):
    # A stride-1 blur of a centred impulse, zero padded, reproduces the (symmetric) filter.
    size = 9
    x = np.zeros((1, size, size, 2), dtype="float32")
    x[0, size // 2, size // 2, :] = 1.0
    y = as_numpy(BlurPool2D(filter_size, strides=1, padding="constant")(x))
    taps = np.array([binom(filter_size - 1, k) for k in range(filter_size)])
    expected = np.outer(taps, taps) / taps.sum() ** 2
    # With pad_before = (k-1)//2, the impulse at c lands on rows c-(k-1)+pad_before .. c+pad_before.
    start = size // 2 - (filter_size - 1) + (filter_size - 1) // 2
    window = y[0, start : start + filter_size, start : start + filter_size]
    for channel in range(2):
        np.testing.assert_allclose(window[..., channel], expected, atol=1e-6)
    assert np.isclose(y.sum(), 2.0, atol=1e-5)  # nothing leaks outside the window


@pytest.mark.parametrize("padding", ["reflect", "symmetric"])
@pytest.mark.parametrize("filter_size", range(1, 8))
def test_blurpool_keeps_a_constant_image_constant(filter_size, padding):
    x = np.full((2, 12, 10, 3), 0.7, dtype="float32")
    y = as_numpy(BlurPool2D(filter_size, strides=2, padding=padding)(x))
    assert y.shape == (2, 6, 5, 3)
    np.testing.assert_allclose(y, 0.7, atol=1e-6)


@pytest.mark.parametrize(
    "filter_size, strides, padding, size",
    [
        (2, 2, "reflect", (8, 8)),
        (3, 2, "reflect", (9, 7)),
        (4, 2, "reflect", (16, 16)),
        (5, 3, "symmetric", (10, 11)),
        (6, (2, 1), "constant", (8, 9)),
        (7, 2, "reflect", (11, 12)),
        (4, 1, "symmetric", (6, 6)),
    ],
)
def test_blurpool_matches_numpy_reference(filter_size, strides, padding, size):
    x = random_images((2, *size, 5))
    pair = (strides, strides) if isinstance(strides, int) else strides
    y = as_numpy(BlurPool2D(filter_size, strides, padding=padding)(x))
    expected = reference_blur(x.astype("float64"), filter_size, pair, padding)
    assert y.shape == (2, -(-size[0] // pair[0]), -(-size[1] // pair[1]), 5)
    np.testing.assert_allclose(y, expected, atol=1e-5)


def test_blurpool_channels_first_matches_channels_last():
    x = random_images((2, 10, 9, 4))
    y_last = BlurPool2D(4, 2)(x)
    y_first = BlurPool2D(4, 2, data_format="channels_first")(to_channels_first(x))
    np.testing.assert_allclose(as_numpy(y_first), to_channels_first(as_numpy(y_last)), atol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_blurpool_mixed_precision_returns_the_compute_dtype(policy):
    x = random_images((1, 8, 8, 2))
    layer = BlurPool2D(3, 2, dtype=policy)
    y = layer(x)
    assert keras.backend.standardize_dtype(y.dtype) == policy.removeprefix("mixed_")
    atol = 5e-3 if policy == "mixed_float16" else 2e-2  # rounding of input and output
    np.testing.assert_allclose(
        as_numpy(y).astype("float64"), reference_blur(x, 3, (2, 2), "reflect"), atol=atol
    )


def test_blurpool_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"padding.*'wrap'.*'reflect'"):
        BlurPool2D(padding="wrap")
    with pytest.raises(ValueError, match="filter_size=0"):
        BlurPool2D(filter_size=0)
    with pytest.raises(ValueError, match="strides"):
        BlurPool2D(strides=(2, 2, 2))
    # Reflect padding of 3 pixels needs more than 3 pixels.
    with pytest.raises(ValueError, match="spatial sizes > 3"):
        BlurPool2D(7)(keras.Input((3, 3, 2)))


@pytest.mark.parametrize(
    "layer", [Subsample2D((3, 2), data_format="channels_first"), BlurPool2D(5, 3, "symmetric")]
)
def test_layer_config_round_trip(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer)
    assert restored.get_config() == config


def test_layers_save_and_load_in_a_model(tmp_path):
    inputs = keras.Input((8, 8, 3))
    outputs = BlurPool2D(3, 2)(Subsample2D(1)(inputs))
    model = keras.Model(inputs, outputs)
    path = tmp_path / "layers.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    x = random_images((2, 8, 8, 3))
    np.testing.assert_allclose(as_numpy(loaded(x)), as_numpy(model(x)), atol=1e-6)
    assert isinstance(loaded.layers[-1], BlurPool2D)


def test_blurpool_runs_under_xla():
    inputs = keras.Input((8, 8, 2))
    model = keras.Model(inputs, BlurPool2D(4, 2)(inputs))
    model.compile(jit_compile=True)
    x = random_images((2, 8, 8, 2))
    np.testing.assert_allclose(
        model.predict(x, verbose=0), reference_blur(x, 4, (2, 2), "reflect"), atol=1e-5
    )


# --- downsampling_layers ----------------------------------------------------------------


EXPECTED_UNITS = {
    "subsample": [("d", "Subsample2D")],
    "max": [("d", "MaxPooling2D")],
    "avg": [("d", "AveragePooling2D")],
    "strided": [("d", "Conv2D")],
    "strided_relu": [("d_conv", "Conv2D"), ("d_bn", "BatchNormalization"), ("d", "ReLU")],
    "blur": [("d_pool", "MaxPooling2D"), ("d", "BlurPool2D")],
    "none": [("d", "Identity")],
}


def test_every_switch_value_has_expected_units():
    assert set(EXPECTED_UNITS) == set(DOWNSAMPLING)


@pytest.mark.parametrize("name", DOWNSAMPLING)
def test_downsampling_units_names_and_output_size(name):
    units = downsampling_layers(name, 6, layer_name="d")
    assert [(u.name, type(u).__name__) for u in units] == EXPECTED_UNITS[name]
    x = keras.Input((9, 8, 6))
    for unit in units:
        x = unit(x)
    assert tuple(x.shape) == ((None, 9, 8, 6) if name == "none" else (None, 5, 4, 6))


def test_pool_size_and_strides_are_separate():
    (pool,) = downsampling_layers("max", pool_size=3, strides=2)
    assert pool.pool_size == (3, 3) and pool.strides == (2, 2)
    (conv,) = downsampling_layers("strided", 4, pool_size=3, strides=(2, 1))
    assert conv.kernel_size == (3, 3) and conv.strides == (2, 1)
    inner, blur = downsampling_layers("blur", pool_size=3, strides=3, blur_size=5)
    assert inner.strides == (1, 1) and inner.pool_size == (3, 3)
    assert blur.filter_size == 5 and blur.strides == (3, 3)
    (only_blur,) = downsampling_layers("blur", blur_max_pool=False)
    assert isinstance(only_blur, BlurPool2D)


def test_downsampling_layers_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"downsample='maxpool'.*'subsample'.*'none'"):
        downsampling_layers("maxpool")
    with pytest.raises(ValueError, match="channels"):
        downsampling_layers("strided_relu")
    with pytest.raises(ValueError, match="pool_size=0"):
        downsampling_layers("max", pool_size=0)
