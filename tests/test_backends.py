"""The same numbers on every backend: the active backend's ops against TensorFlow's, and the
measures against a float64 NumPy reference.

Inside a TensorFlow graph (``tf.function``, ``tf.data``) the deformations run on TensorFlow ops
whatever the Keras backend, so one process on another backend (CI: ``KERAS_BACKEND=jax``) holds
both implementations: the same field gives the same image on each to 1e-5. On the TensorFlow
backend both paths are the same ops, so those tests are skipped there.

The measures run models on the active backend; for the same weights and deformed images they give
the NumPy reference's numbers (`tests/references.py`) on every backend, so the backends agree to
1e-5 (S, D, G, R, TV / L1, shift consistency; also through `StabilityCallback`).
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from deformstab_tf.callbacks import StabilityCallback
from deformstab_tf.data import synthetic
from deformstab_tf.deformations import (
    FILL_MODES,
    INTERPOLATIONS,
    affine_displacement,
    affine_matrices,
    diffeo_displacement,
    tps_displacement,
    tps_displacement_from_points,
    warp,
)
from deformstab_tf.layers import RandomAffine, RandomDiffeomorphism, RandomThinPlateSpline
from deformstab_tf.measures import (
    kernel_smoothness,
    normalized_sensitivity,
    relative_stability,
    shift_consistency,
)
from deformstab_tf.training import check_config
from tests.backends import (  # noqa: F401  (host_only_through_keras: a fixture)
    BACKEND,
    as_numpy,
    dtype_of,
    host_only_through_keras,
    other_backend_only,
)
from tests.references import (
    TINY_CNN_PROBES,
    numpy_measures,
    numpy_sine_warp,
    numpy_warp,
    tiny_cnn,
    tiny_cnn_weights,
)

pytestmark = pytest.mark.backends

LAYERS = {
    "tps": lambda **kw: RandomThinPlateSpline(grid_size=3, max_displacement=2.0, **kw),
    "affine": lambda **kw: RandomAffine(rotation=15, scale=0.1, shear=0.1, translation=0.1, **kw),
    "diffeo": lambda **kw: RandomDiffeomorphism(cutoff=3, displacement=1.5, **kw),
}


def on_tensorflow(function, *arrays):
    """`function(*arrays)` run inside a tf.function, i.e. on TensorFlow ops, as numpy."""
    out = tf.function(function, autograph=False)(*[tf.constant(a) for a in arrays])
    assert isinstance(out, tf.Tensor)
    return out.numpy()


def on_active(function, *arrays):
    out = function(*arrays)
    assert not isinstance(out, tf.Tensor), f"ran on TensorFlow, not {BACKEND}"
    return as_numpy(out)


@other_backend_only
@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("fill_mode", FILL_MODES)
def test_warp_gives_the_same_image_on_both_backends(interpolation, fill_mode):
    rng = np.random.default_rng(0)
    images = rng.random((3, 11, 13, 2)).astype("float32")
    field = rng.uniform(-20, 20, (3, 11, 13, 2)).astype("float32")  # also far outside

    def run(x, u):
        return warp(x, u, interpolation=interpolation, fill_mode=fill_mode, fill_value=0.3)

    np.testing.assert_allclose(
        on_active(run, images, field), on_tensorflow(run, images, field), atol=1e-5
    )


@other_backend_only
def test_integer_and_16_bit_images_keep_their_dtype_on_both_backends():
    rng = np.random.default_rng(1)
    field = rng.uniform(-3, 3, (2, 8, 8, 2)).astype("float32")
    masks = rng.integers(0, 9, (2, 8, 8, 1)).astype("int32")
    ours = warp(masks, field, interpolation="nearest")
    assert dtype_of(ours) == "int32"
    theirs = on_tensorflow(lambda x, u: warp(x, u, interpolation="nearest"), masks, field)
    np.testing.assert_array_equal(as_numpy(ours), theirs)
    halves = keras.ops.cast(rng.random((2, 8, 8, 3)), "bfloat16")
    assert dtype_of(warp(halves, field)) == "bfloat16"


@other_backend_only
def test_displacement_fields_agree_on_both_backends():
    rng = np.random.default_rng(2)
    d = rng.uniform(-2, 2, (4, 16, 2)).astype("float32")
    run = lambda d: tps_displacement(d, 20, 24, grid_size=4)
    np.testing.assert_allclose(on_active(run, d), on_tensorflow(run, d), atol=1e-5)

    points = rng.uniform(0, 15, (2, 6, 2)).astype("float32")
    d = rng.uniform(-2, 2, (2, 6, 2)).astype("float32")
    run = lambda p, d: tps_displacement_from_points(p, d, 16, 16)
    np.testing.assert_allclose(on_active(run, points, d), on_tensorflow(run, points, d), atol=1e-4)

    parameters = rng.uniform(-1, 1, (4, 5)).astype("float32")

    def affine(p):
        matrices = affine_matrices(
            rotation=p[:, 0] * 30, scale=1 + 0.1 * p[:, 1], shear=0.1 * p[:, 2],
            translation=(2 * p[:, 3], 2 * p[:, 4]),
        )  # fmt: skip
        return affine_displacement(matrices, 12, 9)

    np.testing.assert_allclose(
        on_active(affine, parameters), on_tensorflow(affine, parameters), atol=1e-5
    )

    coefficients = rng.standard_normal((3, 2, 4, 4)).astype("float32")
    strength = np.float32([0.5, 1.0, 2.0])
    run = lambda c, s: diffeo_displacement(c, 15, 21, displacement=s)
    np.testing.assert_allclose(
        on_active(run, coefficients, strength),
        on_tensorflow(run, coefficients, strength),
        atol=1e-5,
    )


@other_backend_only
@pytest.mark.parametrize("kind", LAYERS)
def test_a_layer_gives_the_same_image_for_the_same_drawn_transformation(kind):
    layer = LAYERS[kind](seed=4, fill_mode="reflect")
    images = np.random.default_rng(3).random((4, 16, 20, 3)).astype("float32")
    transformation = layer.get_random_transformation(images)
    field = as_numpy(transformation["displacement"])
    ours = on_active(lambda x: layer.transform_images(x, transformation), images)
    theirs = on_tensorflow(
        lambda x, u: layer.transform_images(x, {"displacement": u}), images, field
    )
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert np.abs(ours - images).max() > 1e-2


@other_backend_only
@pytest.mark.parametrize("kind", LAYERS)
def test_tf_data_runs_on_tensorflow_ops_reproducibly_and_adds_no_weights(kind, tmp_path):
    images = np.random.default_rng(4).random((6, 16, 20, 3)).astype("float32")

    def pipeline(layer):
        ds = tf.data.Dataset.from_tensor_slices(images).batch(3).map(layer)
        return np.concatenate([batch.numpy() for batch in ds])

    layer = LAYERS[kind](seed=8)
    weights_before = [w.path for w in layer.weights]
    first = pipeline(layer)
    np.testing.assert_array_equal(first, pipeline(LAYERS[kind](seed=8)))
    assert np.abs(first - images).max() > 1e-2
    # The next epoch continues the layer's TensorFlow seed stream.
    assert np.abs(pipeline(layer) - first).max() > 1e-2
    # The TensorFlow twin of the seed generator is not a weight: the layer saves as before.
    assert [w.path for w in layer.weights] == weights_before
    inputs = keras.Input((16, 20, 3))
    model = keras.Model(inputs, layer(inputs))
    model.save(tmp_path / "model.keras")
    restored = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(as_numpy(restored.predict(images, verbose=0)), images)
    assert restored.layers[1].get_config() == layer.get_config()


# -- the resampler against its float64 reference; PyTorch's grid_sample path ---------------------

torch_only = pytest.mark.skipif(BACKEND != "torch", reason="PyTorch's grid_sample path")


def reference_case(interpolation, seed=0):
    """Non-square images and a field whose sources lie within the image, a few pixels outside
    and several periods outside (per image); for nearest, quarter pixels (exact .5 ties)."""
    rng = np.random.default_rng(seed)
    images = rng.random((3, 9, 14, 2)).astype("float32")
    magnitudes = np.float32([1.5, 6.0, 40.0])[:, None, None, None]
    field = (rng.uniform(-1, 1, (3, 9, 14, 2)) * magnitudes).astype("float32")
    if interpolation == "nearest":
        field = np.round(field * 4) / 4
    return images, field


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("fill_mode", FILL_MODES)
def test_warp_matches_the_float64_reference(interpolation, fill_mode):
    images, field = reference_case(interpolation)
    for fill_value in (0.0, 0.3, -2.0):
        out = warp(images, field, interpolation, fill_mode, fill_value)
        assert dtype_of(out) == "float32"
        expected = numpy_warp(images, field, interpolation, fill_mode, fill_value)
        np.testing.assert_allclose(as_numpy(out), expected, atol=1e-5, err_msg=f"{fill_value}")
        if fill_mode != "constant":
            break
    # One field for the whole batch, and a single image.
    out = warp(images, field[:1], interpolation, fill_mode, 0.3)
    expected = numpy_warp(images, field[:1], interpolation, fill_mode, 0.3)
    np.testing.assert_allclose(as_numpy(out), expected, atol=1e-5)
    out = warp(images[2], field[2], interpolation, fill_mode, 0.3)
    expected = numpy_warp(images[2:], field[2:], interpolation, fill_mode, 0.3)[0]
    np.testing.assert_allclose(as_numpy(out), expected, atol=1e-5)


@pytest.mark.parametrize("fill_mode", FILL_MODES)
def test_warp_of_integer_and_64_bit_images_matches_the_reference(fill_mode):
    _, field = reference_case("nearest", seed=1)
    rng = np.random.default_rng(2)
    # Which input value each output copies (1-based; 0 reads the fill value), from the reference.
    source = numpy_warp(
        np.arange(3 * 9 * 14 * 2).reshape(3, 9, 14, 2) + 1, field, "nearest", fill_mode
    )
    source = source.astype(np.int64)
    for dtype, high in (("uint8", 256), ("int16", 2**15), ("int32", 2**31), ("int64", 2**62)):
        masks = rng.integers(0, high, (3, 9, 14, 2)).astype(dtype)
        if dtype_of(keras.ops.convert_to_tensor(masks)) != dtype:
            continue  # JAX without x64 holds no int64
        out = warp(masks, field, "nearest", fill_mode, fill_value=9)
        assert dtype_of(out) == dtype
        # Nearest copies values exactly: 32- and 64-bit integers too (beyond float32's 2**24).
        expected = np.where(source > 0, masks.reshape(-1)[source - 1], 9)
        np.testing.assert_array_equal(as_numpy(out), expected, err_msg=dtype)
    images = rng.integers(0, 256, (3, 9, 14, 2)).astype("uint8")
    _, field = reference_case("bilinear", seed=3)
    out = warp(images, field, "bilinear", fill_mode, fill_value=9)
    assert dtype_of(out) == "float32"
    expected = numpy_warp(images, field, "bilinear", fill_mode, 9)
    np.testing.assert_allclose(as_numpy(out), expected, atol=256 * 1e-5)
    doubles = rng.random((3, 9, 14, 2))
    out = warp(doubles, field, "bilinear", fill_mode, fill_value=0.5)
    assert dtype_of(out) == dtype_of(keras.ops.convert_to_tensor(doubles))  # JAX: float32
    expected = numpy_warp(doubles, field, "bilinear", fill_mode, 0.5)
    np.testing.assert_allclose(as_numpy(out), expected, atol=1e-5)


@torch_only
def test_on_torch_warp_resamples_with_grid_sample(monkeypatch):
    import torch

    calls = []
    grid_sample = torch.nn.functional.grid_sample

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return grid_sample(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "grid_sample", spy)
    padding = {"nearest": "border", "reflect": "reflection", "wrap": "border", "constant": "zeros"}
    for interpolation in INTERPOLATIONS:
        images, field = reference_case(interpolation)
        for fill_mode in FILL_MODES:
            calls.clear()
            out = warp(images, field, interpolation, fill_mode, 0.3)
            assert isinstance(out, torch.Tensor) and out.shape == images.shape
            assert calls == [
                {"mode": interpolation, "padding_mode": padding[fill_mode], "align_corners": False}
            ]
            expected = numpy_warp(images, field, interpolation, fill_mode, 0.3)
            np.testing.assert_allclose(as_numpy(out), expected, atol=1e-5)
    # A layer resamples through it; 64-bit integers (nearest) keep the gather path.
    calls.clear()
    LAYERS["tps"](seed=1)(images)
    assert len(calls) == 1
    calls.clear()
    masks = np.arange(3 * 9 * 14 * 2).reshape(3, 9, 14, 2)
    out = warp(masks, field, "nearest")
    assert calls == [] and dtype_of(out) == "int64"
    np.testing.assert_array_equal(as_numpy(out), numpy_warp(masks, field, "nearest"))
    # Inside a TensorFlow graph (tf.data): TensorFlow ops, not grid_sample.
    on_tensorflow(lambda x, u: warp(x, u), images, field)
    assert calls == []


@torch_only
@pytest.mark.parametrize("fill_mode", FILL_MODES)
def test_on_torch_gradients_through_grid_sample_equal_tensorflows(fill_mode):
    import torch

    rng = np.random.default_rng(5)
    images = rng.random((2, 7, 10, 3)).astype("float32")
    field = rng.uniform(-6, 6, (2, 7, 10, 2)).astype("float32")
    weights = rng.standard_normal((2, 7, 10, 3)).astype("float32")

    x = torch.tensor(images, requires_grad=True)
    u = torch.tensor(field, requires_grad=True)
    (warp(x, u, fill_mode=fill_mode, fill_value=0.7) * torch.tensor(weights)).sum().backward()

    def tf_gradients(images, field):
        with tf.GradientTape() as tape:
            tape.watch([images, field])
            out = warp(images, field, fill_mode=fill_mode, fill_value=0.7)
            loss = tf.reduce_sum(out * weights)
        return tf.concat([tf.reshape(g, [-1]) for g in tape.gradient(loss, [images, field])], 0)

    expected = on_tensorflow(tf_gradients, images, field)
    ours = np.concatenate([as_numpy(x.grad).ravel(), as_numpy(u.grad).ravel()])
    np.testing.assert_allclose(ours, expected, atol=1e-4)
    # A zero field that wants a gradient gets grid_sample's (not the exact-identity shortcut's).
    u = torch.zeros(field.shape, requires_grad=True)
    warp(torch.tensor(images), u, fill_mode=fill_mode).sum().backward()
    assert np.abs(as_numpy(u.grad)).max() > 0.1


@torch_only
def test_under_torch_compile_grid_sample_gives_the_same_images_and_nan_for_a_bad_field():
    import torch

    images, field = reference_case("bilinear")
    images, field = images[:, :6, :7], field[:, :6, :7]
    for fill_mode in ("nearest", "constant"):
        compiled = torch.compile(lambda x, u, mode=fill_mode: warp(x, u, fill_mode=mode))
        out = as_numpy(compiled(torch.tensor(images), torch.tensor(field)))
        np.testing.assert_allclose(out, numpy_warp(images, field, "bilinear", fill_mode), atol=1e-5)
        # Traced, the field is not checked: NaN gives NaN; inf too, except that "nearest"
        # clamps it to the edge (as the ops path does).
        bad = field.copy()
        bad[0, 1, 2, 0], bad[1, 3, 4, 1] = np.nan, np.inf
        out = as_numpy(compiled(torch.tensor(images), torch.tensor(bad)))
        assert np.isnan(out[0, 1, 2]).all()
        assert np.isnan(out[1, 3, 4]).all() == (fill_mode != "nearest")
        finite = np.ones(out.shape[:3], bool)
        finite[0, 1, 2] = finite[1, 3, 4] = False
        np.testing.assert_allclose(
            out[finite], numpy_warp(images, field, "bilinear", fill_mode)[finite], atol=1e-5
        )


# -- measures and the callback on every backend --------------------------------------------------

PROBE_SHAPE = (8, 8, 8, 3)
TEST_SPLIT_SUM = 239.22652425331762  # of a tiny synthetic task's test split, on TensorFlow
TOLERANCE = {"rtol": 5e-6, "atol": 1e-9}  # to the float64 reference: backends agree to 1e-5


@pytest.fixture(autouse=True)
def _cuda_like(request):
    """The measures' and the callback's tests run with tensors that reach NumPy only through
    `keras.ops.convert_to_numpy` (see `host_only_through_keras`)."""
    if "probe_images" in request.fixturenames:
        request.getfixturevalue("host_only_through_keras")


@pytest.fixture(scope="module")
def probe_images():
    return np.random.default_rng(0).normal(0.5, 0.25, PROBE_SHAPE).astype("float32")


def measure_all(model, images, seed=3, batch_size=4):
    """S (with its numerator and denominator), R / D / G, TV / L1 and shift consistency."""
    s = normalized_sensitivity(
        model, images, numpy_sine_warp, layers=TINY_CNN_PROBES, batch_size=batch_size
    )
    r = relative_stability(
        model, images, numpy_sine_warp, layers=TINY_CNN_PROBES, batch_size=batch_size, seed=seed
    )
    return {
        "S": dict(s),
        "deformation": s.details["deformation"],
        "pairs": s.details["pairs"],
        "R": dict(r),
        "D": r.details["D"],
        "G": r.details["G"],
        "smoothness": dict(kernel_smoothness(model)),
        "shift_consistency": shift_consistency(
            model, images, max_shift=2, batch_size=batch_size, seed=seed
        )["output"],
    }


def assert_same_numbers(measured, expected):
    assert measured["shift_consistency"] == expected["shift_consistency"]
    for key, values in expected.items():
        if key == "shift_consistency":
            continue
        assert list(measured[key]) == list(values), key
        np.testing.assert_allclose(
            list(measured[key].values()), list(values.values()), **TOLERANCE, err_msg=key
        )


def test_measures_give_the_reference_numbers_also_after_the_weights_change(probe_images):
    weights = tiny_cnn_weights(seed=0)
    model = tiny_cnn(weights)
    assert_same_numbers(
        measure_all(model, probe_images), numpy_measures(weights, probe_images, numpy_sine_warp, 3)
    )
    # One probe point (the extractor then has a single output).
    single = normalized_sensitivity(model, probe_images, numpy_sine_warp, layers=["conv2"])
    expected = numpy_measures(weights, probe_images, numpy_sine_warp, 3)["S"]["conv2"]
    np.testing.assert_allclose(single["conv2"], expected, **TOLERANCE)
    # New weights, the same model (and compiled functions): the new numbers, not stale ones.
    changed = tiny_cnn_weights(seed=1, scale=2.0)
    for name, values in changed.items():
        model.get_layer(name).set_weights(values)
    assert_same_numbers(
        measure_all(model, probe_images), numpy_measures(changed, probe_images, numpy_sine_warp, 3)
    )


def test_a_mixed_precision_model_is_measured_in_float32_on_every_backend(probe_images):
    weights = tiny_cnn_weights(seed=2)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = tiny_cnn(weights)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("conv1").compute_dtype == "bfloat16"
    measured = measure_all(model, probe_images)
    assert_same_numbers(measured, numpy_measures(weights, probe_images, numpy_sine_warp, 3))
    assert model.get_layer("conv1").compute_dtype == "bfloat16"  # the policy is restored


def test_the_callback_measures_the_reference_numbers_during_fit(probe_images, tmp_path):
    weights = tiny_cnn_weights(seed=0)
    model = tiny_cnn(weights)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(1)
    x, y = rng.random((32, 8, 8, 3)).astype("float32"), rng.integers(0, 3, 32)
    stability = StabilityCallback(
        probe_images,
        numpy_sine_warp,
        layers=TINY_CNN_PROBES,
        measures=("sensitivity", "relative_stability", "shift_consistency", "smoothness"),
        log_dir=tmp_path,
        batch_size=3,
        seed=3,
        max_shift=2,
    )
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[stability])
    assert [record["epoch"] for record in stability.history] == [0, 1, 2]
    initial = stability.history[0]["results"]
    measured = {
        "S": dict(initial["sensitivity"]),
        "deformation": initial["sensitivity"].details["deformation"],
        "pairs": initial["sensitivity"].details["pairs"],
        "R": dict(initial["relative_stability"]),
        "D": initial["relative_stability"].details["D"],
        "G": initial["relative_stability"].details["G"],
        "smoothness": dict(initial["smoothness"]),
        "shift_consistency": initial["shift_consistency"]["output"],
    }
    assert_same_numbers(measured, numpy_measures(weights, probe_images, numpy_sine_warp, 3))
    # After training: the trained weights' numbers (what a direct measurement gives now).
    trained = {k: model.get_layer(k).get_weights() for k in weights}
    last = stability.history[-1]["results"]["sensitivity"]
    expected = numpy_measures(trained, probe_images, numpy_sine_warp, 3)["S"]
    np.testing.assert_allclose(list(last.values()), list(expected.values()), **TOLERANCE)
    assert last["conv2"] != initial["sensitivity"]["conv2"]
    for key in ("stability/sensitivity/mean", "stability/relative_stability/R/conv2",
                "stability/shift_consistency", "stability/smoothness/conv1"):  # fmt: skip
        assert len(history.history[key]) == 2 and np.isfinite(history.history[key]).all(), key
    written = os.listdir(tmp_path / "stability")
    assert "measurements.json" in written and any("tfevents" in name for name in written)


def test_the_synthetic_task_is_the_same_data_on_every_backend():
    train, test, info = synthetic(
        num_classes=3, image_size=8, samples_per_epoch=6, test_size=6, batch_size=6, seed=0
    )
    images, labels = next(iter(test))
    # Drawn with TensorFlow ops and seed streams whatever the backend (computed on TensorFlow).
    np.testing.assert_array_equal(labels.numpy(), [0, 1, 2, 0, 1, 2])
    np.testing.assert_allclose(np.sum(images.numpy(), dtype=np.float64), TEST_SPLIT_SUM, rtol=1e-6)
    assert next(iter(train))[0].shape == (6, 8, 8, 3)


@pytest.mark.skipif(BACKEND == "tensorflow", reason="every strategy runs on TensorFlow")
def test_a_tensorflow_strategy_on_another_backend_is_an_error_naming_the_setting():
    with pytest.raises(ValueError, match=f"`strategy`='mirrored'.*'{BACKEND}'"):
        check_config({"strategy": "mirrored"})
    check_config({"strategy": "default"})


@pytest.mark.usefixtures("host_only_through_keras")
def test_a_run_trains_measures_and_reports_with_tensors_that_stay_on_their_device(tmp_path):
    """The main job's path (`train_run` with the callback, then `stability_report` of the saved
    model) on the active backend, with tensors that reach NumPy only through
    `keras.ops.convert_to_numpy` on PyTorch (what CUDA tensors allow)."""
    from deformstab_tf.deformations import deformation_layer
    from deformstab_tf.reports import stability_report
    from deformstab_tf.training import train_run
    from tests.references import TINY_RUN

    summary = train_run(
        str(tmp_path / "run"),
        verbose=0,
        **{**TINY_RUN, "epochs": 1, "measures": ["sensitivity", "relative_stability",
                                                 "shift_consistency", "smoothness"]},
    )  # fmt: skip
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    images = np.random.default_rng(0).random((6, 16, 16, 3)).astype("float32")
    report = stability_report(
        str(tmp_path / "run" / "model.keras"),
        images,
        deformation_layer("tps", 1.0, seed=0),
        measures=("sensitivity", "relative_stability", "shift_consistency", "smoothness"),
        max_shift=2,
        verbose=0,
    )
    assert np.isfinite(report["sensitivity"].mean())


def _float32_settings():
    """TensorFlow's TF32 flag and the active backend's float32 precision settings."""
    settings = {"tf32": tf.config.experimental.tensor_float_32_execution_enabled()}
    if BACKEND == "jax":
        import jax

        settings["jax"] = jax.config.jax_default_matmul_precision
    elif BACKEND == "torch":
        import torch

        settings["torch"] = (
            torch.backends.cuda.matmul.fp32_precision,
            torch.backends.cudnn.conv.fp32_precision,
        )
    return settings


IEEE_FLOAT32 = {"tf32": False, "jax": "highest", "torch": ("ieee", "ieee")}


def test_measures_compute_float32_without_tensorfloat32_and_restore_the_settings(probe_images):
    """TF32 (default on Ampere+ GPUs) is off while the measures run the model, on every
    backend, and the user's settings are back afterwards (on a CPU the flags still exist)."""
    seen = []

    class Spy(keras.layers.Layer):
        def call(self, x):
            seen.append(_float32_settings())
            return x

    inputs = keras.Input(PROBE_SHAPE[1:])
    x = keras.layers.Conv2D(4, 3, name="conv")(Spy()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(x)))
    seen.clear()  # the functional model's construction called the layer symbolically
    before = _float32_settings()
    assert before == {key: value for key, value in {
        "tf32": True, "jax": None, "torch": ("none", "tf32")}.items() if key in before
    }  # fmt: skip  (the libraries' defaults)
    normalized_sensitivity(model, probe_images, numpy_sine_warp, layers=["conv"], batch_size=4)
    shift_consistency(model, probe_images, max_shift=1, batch_size=4, seed=0)
    assert seen and all(s == {k: IEEE_FLOAT32[k] for k in s} for s in seen), seen
    assert _float32_settings() == before
