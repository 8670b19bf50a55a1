"""Tests of `permute_input_channels`, Tomasini et al.'s (2022) channel-pooling test."""

import keras
import numpy as np
import pytest

from deformstab_tf import kernel_smoothness
from deformstab_tf.models import BlurPool2D, build_resnet, build_vgg, cifar_vgg
from deformstab_tf.models import permute_input_channels as permute
from tests.backends import as_numpy

# Backend-independent: CI also runs this file with KERAS_BACKEND=jax (see README).
pytestmark = pytest.mark.backends

TINY_BLOCKS = [(4,), (8,)]


def tiny_vgg(downsample="strided", data_format="channels_last", **kwargs):
    shape = (8, 8, 3) if data_format == "channels_last" else (3, 8, 8)
    return build_vgg(
        TINY_BLOCKS, downsample, input_shape=shape, num_classes=3, data_format=data_format, **kwargs
    )


def images(shape=(2, 8, 8, 3), seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from all_layers(layer)


def kernels(model):
    """{layer name: kernel as numpy} of the Conv1D/2D/3D layers, in forward order."""
    return {
        layer.name: as_numpy(layer.kernel)
        for layer in all_layers(model)
        if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D))
    }


def weights_by_layer(model):
    return {
        layer.name: [as_numpy(w) for w in layer.weights]
        for layer in all_layers(model)
        if not isinstance(layer, keras.Model)
    }


def expected_kernels(originals, seed, names):
    """The docstring's recipe, with explicit loops: one `rng.permutation(in)` per output channel,
    layers `names` in order, then `W'[..., i, o] = W[..., perm_o[i], o]`."""
    rng = np.random.default_rng(seed)
    expected = dict(originals)
    for name in names:
        w = originals[name]
        out = np.empty_like(w)
        for o in range(w.shape[-1]):
            perm = rng.permutation(w.shape[-2])
            for i in range(w.shape[-2]):
                out[..., i, o] = w[..., perm[i], o]
        expected[name] = out
    return expected


def assert_same_kernels(actual, expected):
    assert list(actual) == list(expected)
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


def sorted_slices(w, o):
    """The spatial filters of output channel `o` as a sorted array (a multiset)."""
    slices = np.moveaxis(w[..., o], -1, 0).reshape(w.shape[-2], -1)
    return slices[np.lexsort(slices.T[::-1])]


# --- the recipe, checked against plain numpy ------------------------------------------------


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_matches_numpy_recipe(data_format):
    model = tiny_vgg(data_format=data_format)
    originals = kernels(model)
    # forward order: block1 conv (3 -> 4), its 2x2 strided conv, block2 conv (4 -> 8), ...
    assert list(originals) == [
        "block1_conv1_conv",
        "block1_down",
        "block2_conv1_conv",
        "block2_down",
    ]
    assert_same_kernels(kernels(permute(model, seed=7)), expected_kernels(originals, 7, originals))


def test_selected_layers_draw_in_forward_order():
    model = tiny_vgg()
    originals = kernels(model)
    # the order of `layers` does not matter, only the model's forward order
    permuted = permute(model, seed=3, layers=["block2_down", "block1_conv1_conv"])
    expected = expected_kernels(originals, 3, ["block1_conv1_conv", "block2_down"])
    assert_same_kernels(kernels(permuted), expected)
    # one name as a string
    expected = expected_kernels(originals, 3, ["block2_conv1_conv"])
    assert_same_kernels(kernels(permute(model, seed=3, layers="block2_conv1_conv")), expected)


@pytest.mark.parametrize(
    "conv, input_shape",
    [(keras.layers.Conv1D, (6, 3)), (keras.layers.Conv3D, (4, 4, 4, 3))],
)
def test_conv1d_and_conv3d_follow_the_recipe(conv, input_shape):
    inputs = keras.Input(input_shape)
    x = conv(4, 2, padding="same", name="first")(inputs)
    outputs = conv(5, 3, padding="same", use_bias=True, name="second")(x)
    model = keras.Model(inputs, outputs)
    originals = kernels(model)
    assert_same_kernels(kernels(permute(model, seed=1)), expected_kernels(originals, 1, originals))


def test_nested_models_are_entered_in_place():
    inner_inputs = keras.Input((6, 6, 4))
    inner = keras.Model(
        inner_inputs, keras.layers.Conv2D(6, 3, name="inner_conv")(inner_inputs), name="inner"
    )
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="outer_first")(inputs)
    x = inner(x)
    outputs = keras.layers.Conv2D(2, 1, name="outer_last")(x)
    model = keras.Model(inputs, outputs)
    originals = kernels(model)
    assert list(originals) == ["outer_first", "inner_conv", "outer_last"]
    permuted = permute(model, seed=5)
    assert_same_kernels(kernels(permuted), expected_kernels(originals, 5, originals))
    assert permuted.get_layer("inner") is not inner
    assert_same_kernels(kernels(inner), {"inner_conv": originals["inner_conv"]})


# --- properties -----------------------------------------------------------------------------


def test_each_filter_keeps_its_spatial_filters_and_smoothness():
    model = build_resnet((1, 1), (4, 8), "strided", input_shape=(8, 8, 3), num_classes=3)
    originals = kernels(model)
    permuted = permute(model, seed=0)
    after = kernels(permuted)
    for name, w in originals.items():
        for o in range(w.shape[-1]):
            np.testing.assert_array_equal(sorted_slices(after[name], o), sorted_slices(w, o))
        if w.shape[-2] > 1:  # seed 0 draws no all-identity permutations here
            assert not np.array_equal(after[name], w), name
    before, smoothness = kernel_smoothness(model), kernel_smoothness(permuted)
    assert list(smoothness) == list(before)
    for name, value in before.items():
        assert abs(smoothness[name] - value) <= 1e-6, name


def test_original_untouched_and_other_weights_copied():
    model = tiny_vgg("strided_relu")
    before = weights_by_layer(model)
    permuted = permute(model, seed=0)
    assert permuted is not model and permuted.name == model.name
    assert [layer.name for layer in permuted.layers] == [layer.name for layer in model.layers]
    for name, weights in weights_by_layer(model).items():
        for w, w0 in zip(weights, before[name], strict=True):
            np.testing.assert_array_equal(w, w0, err_msg=name)
    convs = set(kernels(model))
    assert convs == {
        "block1_conv1_conv",
        "block1_down_conv",
        "block2_conv1_conv",
        "block2_down_conv",
    }
    copied = weights_by_layer(permuted)
    assert list(copied) == list(before)
    for name, weights in before.items():
        if name not in convs:  # BatchNorm statistics, the Dense logits, ...
            assert len(copied[name]) == len(weights)
            for w, w0 in zip(copied[name], weights, strict=True):
                np.testing.assert_array_equal(w, w0, err_msg=name)


def test_bias_unchanged():
    inputs = keras.Input((6, 6, 3))
    outputs = keras.layers.Conv2D(4, 3, bias_initializer="random_normal", name="conv")(inputs)
    model = keras.Model(inputs, outputs)
    permuted = permute(model, seed=0)
    np.testing.assert_array_equal(
        as_numpy(permuted.get_layer("conv").bias), as_numpy(model.get_layer("conv").bias)
    )


def test_seed_reproducibility():
    model = tiny_vgg()
    first, again = kernels(permute(model, seed=11)), kernels(permute(model, seed=11))
    assert_same_kernels(again, first)
    other = kernels(permute(model, seed=12))
    assert not np.array_equal(other["block2_conv1_conv"], first["block2_conv1_conv"])
    fresh = [kernels(permute(model))["block2_conv1_conv"] for _ in range(2)]
    assert not np.array_equal(*fresh)  # seed=None: fresh entropy


# --- closed-form functional check -----------------------------------------------------------


def randomize_batchnorm(model, rng):
    for layer in all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            for w in layer.weights:
                w.assign(rng.uniform(0.5, 1.5, w.shape).astype("float32"))


def test_channel_constant_filters_compute_the_same_function():
    # Channel pooling of identical filters is permutation-invariant: with W[:, :, i, o] = K_o for
    # every input channel i, the permuted copy computes the same function.
    model = tiny_vgg("strided_relu")
    rng = np.random.default_rng(0)
    randomize_batchnorm(model, rng)  # the copy must carry every other weight too
    for layer in all_layers(model):
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, c_in, c_out = layer.kernel.shape
            k_o = rng.standard_normal((kh, kw, 1, c_out)).astype("float32")
            layer.kernel.assign(np.repeat(k_o, c_in, axis=2))
    x = images()
    permuted = permute(model, seed=0)
    np.testing.assert_allclose(
        as_numpy(permuted(x, training=False)),
        as_numpy(model(x, training=False)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_first_layer_on_channel_replicated_images():
    # sum_i K[perm_o(i), o] * x_i = sum_i K[i, o] * x when every input channel x_i is the same
    # image x: permuting the input axis of the first conv is invisible on gray RGB images and
    # visible on colour ones (permuting the output axis instead would change both).
    model = tiny_vgg("max")
    randomize_batchnorm(model, np.random.default_rng(1))
    permuted = permute(model, seed=0, layers="block1_conv1_conv")
    gray = np.repeat(images((2, 8, 8, 1)), 3, axis=-1)
    np.testing.assert_allclose(
        as_numpy(permuted(gray, training=False)),
        as_numpy(model(gray, training=False)),
        rtol=1e-5,
        atol=1e-6,
    )
    colour = images()
    difference = as_numpy(permuted(colour, training=False)) - as_numpy(
        model(colour, training=False)
    )
    assert np.max(np.abs(difference)) > 1e-3


def test_generic_model_changes_its_outputs():
    model = tiny_vgg("strided")
    x = images()
    difference = as_numpy(permute(model, seed=0)(x, training=False)) - as_numpy(
        model(x, training=False)
    )
    assert np.max(np.abs(difference)) > 1e-3


# --- which layers ---------------------------------------------------------------------------


def test_blur_and_depthwise_left_alone_single_channel_skipped():
    model = tiny_vgg("blur")
    assert isinstance(model.get_layer("block1_down"), BlurPool2D)
    originals = kernels(model)
    permuted = permute(model, seed=2)
    assert_same_kernels(kernels(permuted), expected_kernels(originals, 2, originals))
    assert isinstance(permuted.get_layer("block1_down"), BlurPool2D)

    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, name="gray")(inputs)  # one input channel: left alone
    x = keras.layers.DepthwiseConv2D(3, name="depthwise")(x)
    x = keras.layers.SeparableConv2D(5, 3, name="separable")(x)
    x = keras.layers.Conv2D(10, 1, groups=5, name="grouped")(x)
    outputs = keras.layers.Conv2D(3, 1, name="mixing")(x)
    model = keras.Model(inputs, outputs)
    before = weights_by_layer(model)
    after = weights_by_layer(permute(model, seed=4))
    for name in ("gray", "depthwise", "separable", "grouped"):
        for w, w0 in zip(after[name], before[name], strict=True):
            np.testing.assert_array_equal(w, w0, err_msg=name)
    expected = expected_kernels({"mixing": before["mixing"][0]}, 4, ["mixing"])
    np.testing.assert_array_equal(after["mixing"][0], expected["mixing"])


def test_sequential_model():
    model = keras.Sequential(
        [keras.Input((6, 6, 2)), keras.layers.Conv2D(3, 3, name="a"), keras.layers.ReLU()]
    )
    originals = kernels(model)
    assert_same_kernels(kernels(permute(model, seed=9)), expected_kernels(originals, 9, ["a"]))


# --- errors ---------------------------------------------------------------------------------


def test_unknown_layer_names():
    model = tiny_vgg("blur")
    with pytest.raises(ValueError, match=r"`layers`.*'nope' is not a layer") as info:
        permute(model, layers=["block1_conv1_conv", "nope"])
    message = str(info.value)
    assert "\n" not in message and "'block2_conv1_conv'" in message
    with pytest.raises(ValueError, match=r"`layers`.*'block1_down' is a BlurPool2D"):
        permute(model, layers="block1_down")
    with pytest.raises(ValueError, match=r"`layers`.*'block1_conv1_bn' is a BatchNormalization"):
        permute(model, layers="block1_conv1_bn")
    with pytest.raises(ValueError, match="`layers`"):
        permute(model, layers=[])
    with pytest.raises(TypeError, match="`layers`"):
        permute(model, layers=3)

    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, name="gray")(inputs)
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3, name="second")(x))
    with pytest.raises(ValueError, match=r"`layers`.*'gray' has one input channel.*'second'"):
        permute(model, layers="gray")


def test_model_without_permutable_convolution():
    inputs = keras.Input((8, 8, 3))
    dense = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
    with pytest.raises(ValueError, match="`model` has no convolution.*model='"):
        permute(dense)
    gray = keras.Input((8, 8, 1))
    single = keras.Model(gray, keras.layers.Conv2D(4, 3)(gray))
    with pytest.raises(ValueError, match="`model` has no convolution"):
        permute(single)
    with pytest.raises(TypeError, match="`model` must be a keras.Model"):
        permute("model.keras")
    unbuilt = keras.Sequential([keras.layers.Conv2D(2, 3)])
    with pytest.raises(ValueError, match="`model` must be built"):
        permute(unbuilt)


@pytest.mark.parametrize("seed", ["x", -1, 2**32, 1.5, True])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match=r"`seed` must be an integer .* or None; received seed="):
        permute(tiny_vgg(), seed=seed)


# --- mixed precision ------------------------------------------------------------------------


def test_mixed_bfloat16_policy_kept():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = cifar_vgg("strided")
    finally:
        keras.mixed_precision.set_global_policy(previous)
    originals = kernels(model)
    permuted = permute(model, seed=0)  # under the default policy again: the copy keeps its own
    for layer, original in zip(all_layers(permuted), all_layers(model), strict=True):
        if not isinstance(layer, keras.layers.InputLayer):  # float32 inputs either way
            assert layer.dtype_policy.name == original.dtype_policy.name, layer.name
    assert permuted.inputs[0].dtype == model.inputs[0].dtype == "float32"
    conv = permuted.get_layer("block4_conv2_conv")
    assert conv.dtype_policy.name == "mixed_bfloat16"
    assert keras.backend.standardize_dtype(conv.kernel.dtype) == "float32"
    assert_same_kernels(kernels(permuted), expected_kernels(originals, 0, originals))
