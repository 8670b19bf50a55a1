"""Probe points: units after their non-linearity, named selections, nested models."""

import keras
import numpy as np
import pytest

from deformstab_tf.measures import ProbeFeatures, normalized_sensitivity, resolve_probe_layers

SHAPE = (8, 8, 3)


def _images(count=4):
    return np.random.default_rng(0).random((count, *SHAPE)).astype("float32")


def _backbone(name="backbone"):
    inputs = keras.Input(SHAPE)
    x = keras.layers.Conv2D(4, 3, padding="same", name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="c1_bn")(x)
    x = keras.layers.ReLU(name="c1_relu")(x)
    y = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c2")(x)
    x = keras.layers.Add(name="b1_add")([x, y])
    x = keras.layers.Activation("relu", name="b1_out")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    return keras.Model(inputs, x, name=name)


def _outer(backbone):
    inputs = keras.Input(SHAPE, name="image")
    x = backbone(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(x))


def test_units_end_after_the_non_linearity_and_selections():
    keras.utils.set_random_seed(0)
    model = _backbone()
    assert resolve_probe_layers(model, None) == ["input", "c1_relu", "c2", "pool"]
    assert resolve_probe_layers(model, "units") == ["input", "c1_relu", "c2", "pool"]
    assert resolve_probe_layers(model, "activations") == ["input", "c1_relu", "c2", "b1_out"]
    assert resolve_probe_layers(model, "blocks") == ["input", "b1_out"]
    assert resolve_probe_layers(model, "all")[:3] == ["input", "c1", "c1_bn"]
    # A list holding a selection's name means a layer of that name.
    with pytest.raises(ValueError, match=r"unknown layers \['units'\]"):
        resolve_probe_layers(model, ["units"])


def test_nested_model_is_probed_inside_by_default_with_exact_features():
    keras.utils.set_random_seed(0)
    backbone = _backbone()
    model = _outer(backbone)
    names = resolve_probe_layers(model)
    assert names == [
        "input", "backbone/c1_relu", "backbone/c2", "backbone/pool", "gap", "head",
    ]  # fmt: skip
    images = _images()
    features = ProbeFeatures.for_model(model).extractor(images)
    for name, feature in zip(names[1:4], features[1:4], strict=True):
        inner = backbone.get_layer(name.split("/")[1]).output
        expected = keras.Model(backbone.input, inner)(images)
        np.testing.assert_allclose(feature.numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(features[-1].numpy(), model(images).numpy(), rtol=1e-6)
    result = normalized_sensitivity(model, images, lambda b: b[:, :, ::-1], layers="blocks")
    assert list(result) == ["input", "backbone/b1_out"]
    with pytest.raises(ValueError, match=r"unknown layers \['backbone/nope'\].*backbone/c1"):
        resolve_probe_layers(model, ["backbone/nope"])


def test_two_levels_and_sequential_nesting():
    keras.utils.set_random_seed(0)
    middle_input = keras.Input(SHAPE)
    middle = keras.Model(middle_input, _backbone("inner")(middle_input), name="middle")
    model = _outer(middle)
    names = resolve_probe_layers(model)
    assert names[:3] == ["input", "middle/inner/c1_relu", "middle/inner/c2"]
    images = _images()
    features = ProbeFeatures.for_model(model).extractor(images)
    inner = middle.get_layer("inner")
    expected = keras.Model(inner.input, inner.get_layer("c2").output)(images)
    np.testing.assert_allclose(features[2].numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)

    sequential = keras.Sequential(
        [
            keras.Input(SHAPE),
            keras.layers.Conv2D(3, 3, padding="same", name="s_conv"),
            keras.layers.ReLU(name="s_relu"),
        ],
        name="seq",
    )
    model = _outer(sequential)
    assert resolve_probe_layers(model)[:2] == ["input", "seq/s_relu"]
    features = ProbeFeatures.for_model(model, ["input", "seq/s_relu", "head"]).extractor(images)
    np.testing.assert_allclose(features[1].numpy(), sequential(images).numpy(), rtol=1e-6)
    outer_sequential = keras.Sequential([keras.Input(SHAPE), sequential, keras.layers.Flatten()])
    assert resolve_probe_layers(outer_sequential) == ["input", "seq/s_relu"]


def test_a_shared_layer_is_probed_at_its_first_call():
    keras.utils.set_random_seed(0)
    inner_input = keras.Input(SHAPE)
    conv = keras.layers.Conv2D(3, 3, padding="same", name="shared")
    inner = keras.Model(inner_input, conv(conv(inner_input)), name="twice")
    model = _outer(inner)
    images = _images()
    feature = ProbeFeatures.for_model(model, ["twice/shared"]).extractor(images)
    np.testing.assert_allclose(feature.numpy(), conv(images).numpy(), rtol=1e-6, atol=1e-6)
