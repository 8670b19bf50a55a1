"""Translation-sensitivity maps and local homogeneity against float64 NumPy references and
exact invariances, on every backend; through the plan, the callback and the reports on
TensorFlow."""

import json
import os

import keras
import numpy as np
import pytest

from deformstab_tf import plots
from deformstab_tf.measures import (
    MeasureResult,
    local_homogeneity,
    plan,
    similarity_map,
    translation_sensitivity_map,
)
from tests.references import (
    TINY_CNN_PROBES,
    numpy_padded_shift,
    numpy_tiny_cnn,
    tiny_cnn,
    tiny_cnn_weights,
)

TOLERANCE = {"rtol": 0, "atol": 2e-6}  # cosine similarities in [0, 1], float32 features


def _cosine(a, b):
    """Row-wise cosine similarity with the measures' rule for zero vectors."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
    cosine = np.sum(a * b, axis=1) / np.where(norms > 0, norms, 1.0)
    return np.where(both_zero, 1.0, np.where(norms > 0, cosine, 0.0))


def numpy_translation_maps(features, images, max_shift, fill_mode):
    """`{probe: (2s+1, 2s+1)}` maps of `features(images) -> {probe: (N, F)}`, as documented."""
    clean = features(images)
    size = 2 * max_shift + 1
    maps = {name: np.zeros((size, size)) for name in clean}
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            moved = features(np.stack([numpy_padded_shift(x, dy, dx, fill_mode) for x in images]))
            for name in clean:
                similarity = _cosine(clean[name], moved[name]).mean()
                maps[name][dy + max_shift, dx + max_shift] = similarity
    return maps


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).normal(0.5, 0.25, (6, 8, 8, 3)).astype("float32")


@pytest.mark.backends
@pytest.mark.parametrize("fill_mode", ["wrap", "constant", "reflect", "nearest"])
def test_maps_are_the_float64_reference(images, fill_mode):
    weights = tiny_cnn_weights(seed=0)
    result = translation_sensitivity_map(
        tiny_cnn(weights), images, 2, TINY_CNN_PROBES, batch_size=4, fill_mode=fill_mode
    )
    expected = numpy_translation_maps(lambda x: numpy_tiny_cnn(weights, x)[0], images, 2, fill_mode)
    assert list(result) == TINY_CNN_PROBES
    rings = np.maximum(*np.abs(np.mgrid[-2:3, -2:3]))
    for name, reference in expected.items():
        np.testing.assert_allclose(similarity_map(result, name), reference, **TOLERANCE)
        assert result[name] == pytest.approx(reference.mean(), abs=2e-6)
        for k in (1, 2):
            details = result.details[f"distance_{k}"][name]
            assert details == pytest.approx(reference[rings == k].mean(), abs=2e-6)
    # the input's map is the images' own self-similarity; no shift: identical
    assert similarity_map(result, "input")[2, 2] == pytest.approx(1.0, abs=1e-6)
    assert result.metadata["forward_passes"] >= 25 * 2  # every offset of both batches
    json.loads(result.to_json())  # the maps travel with the result


class CircularPad(keras.layers.Layer):
    """Pads height and width circularly, so a following 'valid' convolution is circular."""

    def __init__(self, pad, **kwargs):
        super().__init__(**kwargs)
        self.pad = pad

    def call(self, x):
        p = self.pad
        x = keras.ops.concatenate([x[:, -p:], x, x[:, :p]], axis=1)
        return keras.ops.concatenate([x[:, :, -p:], x, x[:, :, :p]], axis=2)


@pytest.mark.backends
def test_a_circular_convolution_then_global_pooling_is_exactly_shift_invariant(images):
    inputs = keras.Input((8, 8, 3), name="input")
    x = CircularPad(1)(inputs)
    x = keras.layers.Conv2D(6, 3, activation="relu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))
    probes = ["input", "conv", "gap", "logits"]
    wrap = translation_sensitivity_map(model, images, 3, probes, batch_size=4)
    for name in ("gap", "logits"):  # invariant: the map is 1 everywhere
        np.testing.assert_allclose(similarity_map(wrap, name), 1.0, atol=1e-6)
    # the convolution itself is equivariant, not invariant; with zeros shifted in, nothing is
    assert wrap["conv"] < 0.99
    constant = translation_sensitivity_map(model, images, 3, ["gap"], fill_mode="constant")
    assert constant["gap"] < 0.999


@pytest.mark.backends
def test_local_homogeneity_is_the_reference_and_orders_smooth_and_noisy_images(images):
    distance, fill = 1, "reflect"
    result = local_homogeneity(images, distance, batch_size=4)
    reference = numpy_translation_maps(lambda x: {"input": x.reshape(len(x), -1)}, images, 1, fill)
    ring = np.maximum(*np.abs(np.mgrid[-1:2, -1:2])) == distance
    assert result["input"] == pytest.approx(reference["input"][ring].mean(), abs=2e-6)
    assert 0 < result.details["standard_error"]["input"] < 0.05
    # the same number as the map at the input
    identity = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Identity()])
    mapped = translation_sensitivity_map(identity, images, 1, ["input"], fill_mode=fill)
    assert mapped.details["distance_1"]["input"] == pytest.approx(result["input"], abs=1e-6)

    rng = np.random.default_rng(1)
    photos = rng.random((8, 16, 16, 3)).astype("float32")
    blocky = np.repeat(np.repeat(photos[:, ::4, ::4], 4, axis=1), 4, axis=2)
    noisy = np.clip(blocky + rng.normal(0, 0.2, blocky.shape), 0, 1).astype("float32")
    h = {name: local_homogeneity(x)["input"] for name, x in
         [("noise", photos), ("blocky", blocky), ("noisy", noisy)]}  # fmt: skip
    assert h["noise"] < h["noisy"] < h["blocky"]
    assert local_homogeneity(np.full((3, 8, 8, 1), 0.3, "float32"))["input"] == pytest.approx(1.0)
    assert local_homogeneity(np.zeros((2, 8, 8, 1), "uint8"))["input"] == 1.0  # cos(0, 0) = 1


def test_bad_arguments_are_one_line_errors(images):
    model = tiny_cnn(tiny_cnn_weights())
    for kwargs, match in [
        ({"max_shift": -1}, "max_shift"),
        ({"max_shift": 1.5}, "max_shift"),
        ({"fill_mode": "mirror"}, "fill_mode"),
        ({"batch_size": 0}, "batch_size"),
    ]:
        with pytest.raises(ValueError, match=match):
            translation_sensitivity_map(model, images, **{"max_shift": 1, **kwargs})
    for kwargs, match in [
        ({"distance": 0}, "distance"),
        ({"distance": 8}, "distance"),
        ({"fill_mode": "mirror"}, "fill_mode"),
    ]:
        with pytest.raises(ValueError, match=match):
            local_homogeneity(images, **kwargs)
    with pytest.raises(ValueError, match="images"):
        local_homogeneity(images[0])
    zero = translation_sensitivity_map(model, images, 0, ["input", "conv2"])
    assert similarity_map(zero, "conv2").tolist() == [[1.0]] and not zero.details
    with pytest.raises(ValueError, match="translation_map result"):
        similarity_map(MeasureResult("sensitivity", {"input": 0.1}), "input")
    with pytest.raises(ValueError, match="name"):
        similarity_map(zero, "conv9")


def test_the_plan_the_callback_and_the_reports_take_the_map(images, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from deformstab_tf import reports
    from deformstab_tf.callbacks import StabilityCallback

    spec = plan.MEASURES["translation_map"]
    assert spec.needs_features and spec.per_layer and not spec.needs_deformation
    model = tiny_cnn(tiny_cnn_weights())
    alone = translation_sensitivity_map(model, images, 1, fill_mode="reflect", batch_size=4)
    measured = plan.measure(
        model, "translation_map", images, max_shift=1, fill_mode="reflect", batch_size=4
    )
    assert measured["translation_map"] == alone

    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = np.random.default_rng(2).random((16, 8, 8, 3), "float32"), np.arange(16) % 3
    stability = StabilityCallback(
        images, None, measures="translation_map", log_dir=tmp_path, max_shift=1, batch_size=4
    )
    history = model.fit(x, y, epochs=1, verbose=0, callbacks=[stability])
    last = stability.history[-1]["results"]["translation_map"]
    assert history.history["stability/translation_map/mean"] == [pytest.approx(last.mean())]
    events = EventAccumulator(str(tmp_path / "stability"), size_guidance={"tensors": 0})
    events.Reload()
    assert {"translation_map", "translation_map/mean", "profile"} <= set(events.Tags()["tensors"])
    with pytest.raises(ValueError, match="fill_mode"):
        StabilityCallback(images, None, measures="translation_map", fill_mode="mirror")

    report = reports.measure_model(
        model,
        dataset="synthetic",
        num_images=4,
        image_size=8,
        measures=["translation_map"],
        max_shift=1,
        fill_mode="constant",
        output_dir=tmp_path / "report",
        verbose=0,
    )
    files = {os.path.basename(f) for f in report.files}
    assert {"translation_map.png", "profile.png", "report.json"} <= files
    with open(tmp_path / "report" / "report.json") as file:
        saved = MeasureResult.from_dict(json.load(file)["results"]["translation_map"])
    assert saved.metadata["fill_mode"] == "constant"
    assert similarity_map(saved, "input").shape == (3, 3)
    with pytest.raises(ValueError, match="max_shift"):
        reports.measure_model(model, measures=["translation_map"], max_shift=-1)

    figure = plots.plot_translation_maps({"a": last, "b": alone}, layers=["input", "conv2"])
    assert len(figure.axes) == 5  # 2 x 2 maps and the colour bar
