"""Measures against plain NumPy re-implementations on tiny models."""

import gc
import json
import warnings
import weakref

import keras
import numpy as np
import pytest
import scipy.ndimage
import tensorflow as tf

from deformstab_tf.callbacks import StabilityCallback
from deformstab_tf.deformations.layers import RandomThinPlateSpline
from deformstab_tf.measures import (
    MeasureResult,
    ProbeFeatures,
    kernel_smoothness,
    normalized_sensitivity,
    relative_stability,
    shift_consistency,
    smooth_kernels,
)
from deformstab_tf.measures._common import derive_seed, resolve_seed
from tests.references import numpy_padded_shift

NAMES = ["input", "block1_conv1", "block1_down", "block2_conv1"]
SHAPE = (8, 8, 3)


def tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(SHAPE, name="input")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="block1_conv1")(inputs)
    x = keras.layers.MaxPooling2D(name="block1_down")(x)
    x = keras.layers.Conv2D(5, 3, padding="same", activation="relu", name="block2_conv1")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(3, name="logits")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).normal(size=(8, *SHAPE)).astype("float32")


def smooth_warp(batch):
    """A fixed, non-trivial bilinear warp (NumPy): content moves by a smooth sine field."""
    batch = np.asarray(batch, dtype=np.float64)
    rows, cols = np.meshgrid(np.arange(8.0), np.arange(8.0), indexing="ij")
    src_rows = rows - 0.8 * np.sin(np.pi * cols / 7)
    src_cols = cols - 0.6 * np.sin(np.pi * rows / 7)
    out = np.empty_like(batch)
    for b in range(len(batch)):
        for c in range(batch.shape[-1]):
            out[b, ..., c] = scipy.ndimage.map_coordinates(
                batch[b, ..., c], [src_rows, src_cols], order=1, mode="nearest"
            )
    return out.astype(np.float32)


def reference_features(model, names, x):
    """Flattened float64 features from an independent sub-model and `predict`."""
    outputs = [model.input if n == "input" else model.get_layer(n).output for n in names]
    features = keras.Model(model.input, outputs).predict(np.asarray(x), verbose=0)
    return [np.asarray(f, np.float64).reshape(len(x), -1) for f in features]


def cosine_distance(a, b):
    return 1.0 - np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def distinct_pairs(n):
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


# -- normalised sensitivity ---------------------------------------------------------------------


def test_sensitivity_matches_numpy_with_streaming(model, images):
    result = normalized_sensitivity(model, images, smooth_warp, layers=NAMES, batch_size=3)
    clean = reference_features(model, NAMES, images)
    deformed = reference_features(model, NAMES, smooth_warp(images))
    assert list(result) == NAMES
    for name, f, g in zip(NAMES, clean, deformed, strict=True):
        numerator = np.mean(cosine_distance(f, g))
        denominator = np.median([cosine_distance(f[i], f[j]) for i, j in distinct_pairs(8)])
        np.testing.assert_allclose(result[name], numerator / denominator, rtol=1e-5)
        np.testing.assert_allclose(result.details["deformation"][name], numerator, rtol=1e-5)
        np.testing.assert_allclose(result.details["pairs"][name], denominator, rtol=1e-5)
    # 3 batches: 3 clean passes (the clean features are kept), 3 deformed passes.
    assert result.metadata["forward_passes"] == 6


def test_sensitivity_precise_for_nearly_parallel_representations(model, images):
    # Probe images share a large common component: cos(r(x), r(y)) = 1 - 1e-7, below float32
    # resolution. Centring before the Gram matrix keeps the distances accurate.
    x = (30.0 + 0.01 * images).astype("float32")
    with pytest.warns(UserWarning, match="look like 0..255 pixels"):  # values far above 1
        result = normalized_sensitivity(model, x, smooth_warp, layers=NAMES, batch_size=3)
    clean = reference_features(model, NAMES, x)
    deformed = reference_features(model, NAMES, smooth_warp(x))
    for name, f, g in zip(NAMES, clean, deformed, strict=True):
        pairs = [cosine_distance(f[i], f[j]) for i, j in distinct_pairs(8)]
        assert np.median(pairs) < 1e-6
        expected = np.mean(cosine_distance(f, g)) / np.median(pairs)
        np.testing.assert_allclose(result[name], expected, rtol=1e-4)


def test_sensitivity_independent_of_batch_size(model, images):
    small = normalized_sensitivity(model, images, smooth_warp, layers=NAMES, batch_size=2)
    whole = normalized_sensitivity(model, images, smooth_warp, layers=NAMES, batch_size=64)
    assert whole.metadata["forward_passes"] == 2
    np.testing.assert_allclose(list(small.values()), list(whole.values()), rtol=1e-5)


def test_sensitivity_averages_several_deformations(model, images):
    warps = [smooth_warp, lambda x: np.roll(x, 1, axis=2)]
    calls = []

    def alternate(batch):
        calls.append(None)
        return warps[(len(calls) - 1) % 2](batch)

    result = normalized_sensitivity(
        model, images, alternate, layers=NAMES, batch_size=5, num_deformations=2
    )
    clean = reference_features(model, NAMES, images)
    for layer, name in enumerate(NAMES):
        numerator = np.mean(
            [
                cosine_distance(clean[layer], reference_features(model, NAMES, w(images))[layer])
                for w in warps
            ]
        )
        np.testing.assert_allclose(result.details["deformation"][name], numerator, rtol=1e-5)


def test_sensitivity_seed_reaches_seeded_callables(model, images):
    def random_roll(batch, seed):
        shift = np.random.default_rng(seed).integers(1, 4)
        return tf.roll(batch, int(shift), axis=1)

    first = normalized_sensitivity(model, images, random_roll, layers=NAMES, seed=3)
    again = normalized_sensitivity(model, images, random_roll, layers=NAMES, seed=3)
    assert first == again


def test_dead_units_give_finite_documented_values(images):
    keras.utils.set_random_seed(0)
    inputs = keras.Input(SHAPE, name="input")
    dead = keras.layers.Conv2D(2, 3, kernel_initializer="zeros", name="dead")(inputs)
    outputs = keras.layers.Dense(2, name="head")(keras.layers.Flatten()(dead))
    model = keras.Model(inputs, outputs)
    # Two all-zero probe images: at the input d_cos(0, 0) = 0 and d_cos(0, x) = 1.
    x = images.copy()
    x[:2] = 0.0
    roll = lambda b: tf.roll(b, 1, axis=2)
    result = normalized_sensitivity(model, x, roll, layers=["input", "dead"], batch_size=3)
    assert result["dead"] == 0.0  # 0 / 0: constant representation, perfectly stable
    f, g = x.reshape(8, -1).astype(np.float64), np.roll(x, 1, axis=2).reshape(8, -1)

    def rule(a, b):
        if not a.any() and not b.any():
            return 0.0
        if not a.any() or not b.any():
            return 1.0
        return cosine_distance(a, b)

    numerator = np.mean([rule(f[i], g[i]) for i in range(8)])
    denominator = np.median([rule(f[i], f[j]) for i, j in distinct_pairs(8)])
    np.testing.assert_allclose(result["input"], numerator / denominator, rtol=1e-5)
    stability = relative_stability(model, x, roll, layers=["input", "dead"], batch_size=3)
    assert stability.details["D"]["dead"] == stability.details["G"]["dead"] == 0.0
    assert stability["dead"] == 1.0
    assert all(np.isfinite(v) for v in [*result.values(), *stability.values()])


# -- relative stability -------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["median", "mean"])
def test_relative_stability_matches_numpy(model, images, reduction):
    seed = 7
    result = relative_stability(
        model, images, smooth_warp, layers=NAMES, batch_size=3, reduction=reduction, seed=seed
    )
    deformed = smooth_warp(images)
    # The documented noise: image i draws xi from default_rng([seed, i]), scaled to |tau x - x|.
    noisy = np.empty_like(images)
    for i in range(len(images)):
        xi = np.random.default_rng([seed, i]).standard_normal(SHAPE)
        change = np.linalg.norm((deformed[i] - images[i]).astype(np.float64))
        noisy[i] = images[i] + xi / np.linalg.norm(xi) * change
    reduce = np.median if reduction == "median" else np.mean
    features = [reference_features(model, NAMES, x) for x in (images, deformed, noisy)]
    for layer, name in enumerate(NAMES):
        f, fd, fn = (feature[layer] for feature in features)
        pairs = reduce([np.sum((f[i] - f[j]) ** 2) for i, j in distinct_pairs(8)])
        d = reduce(np.sum((fd - f) ** 2, axis=1)) / pairs
        g = reduce(np.sum((fn - f) ** 2, axis=1)) / pairs
        np.testing.assert_allclose(result.details["D"][name], d, rtol=1e-5)
        np.testing.assert_allclose(result.details["G"][name], g, rtol=1e-5)
        np.testing.assert_allclose(result[name], d / g, rtol=1e-5)
    np.testing.assert_allclose(result["input"], 1.0, rtol=1e-5)  # same norm at the input


def test_relative_stability_same_seed_same_numbers_any_batch_size(model, images):
    a = relative_stability(model, images, smooth_warp, layers=NAMES, batch_size=3, seed=1)
    b = relative_stability(model, images, smooth_warp, layers=NAMES, batch_size=8, seed=1)
    c = relative_stability(model, images, smooth_warp, layers=NAMES, batch_size=8, seed=2)
    np.testing.assert_allclose(list(a.values()), list(b.values()), rtol=1e-5)
    assert list(b.details["G"].values()) != list(c.details["G"].values())


def test_bad_reduction_names_argument(model, images):
    with pytest.raises(ValueError, match="reduction.*'max'"):
        relative_stability(model, images, smooth_warp, reduction="max")


# -- probe points and input validation ----------------------------------------------------------


@pytest.mark.backends  # also with KERAS_BACKEND=jax
def test_probe_cache_reuses_and_does_not_keep_models_alive(images):
    model = tiny_model(seed=3)
    assert ProbeFeatures.for_model(model, NAMES) is ProbeFeatures.for_model(model, NAMES)
    normalized_sensitivity(model, images, smooth_warp, layers=NAMES)
    shift_consistency(model, images, max_shift=1)
    reference = weakref.ref(model)
    del model
    gc.collect()
    assert reference() is None


def test_default_probe_points_of_a_foreign_model(images):
    keras.utils.set_random_seed(0)
    inputs = keras.Input(SHAPE)
    x = keras.layers.Conv2D(4, 3, name="conv_a")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.AveragePooling2D(2, name="pool_a")(x)
    x = keras.layers.Flatten(name="flat")(x)
    outputs = keras.layers.Dense(2, name="dense_a")(x)
    model = keras.Model(inputs, outputs)
    # The unit of conv_a ends after its BatchNormalization.
    assert ProbeFeatures(model).names == ["input", "bn", "pool_a", "dense_a"]
    predicate = lambda layer: isinstance(layer, (keras.layers.InputLayer, keras.layers.Conv2D))
    assert ProbeFeatures(model, predicate).names == ["input", "conv_a"]


def test_wrong_image_shape_names_images_and_both_shapes(model):
    with pytest.raises(ValueError, match=r"`images`.*\(4, 9, 9, 3\).*\(None, 8, 8, 3\)"):
        normalized_sensitivity(model, np.zeros((4, 9, 9, 3)), smooth_warp)


def test_unknown_layers_lists_available(model, images):
    with pytest.raises(ValueError, match=r"'nope'.*Available: \['input', 'block1_conv1'"):
        normalized_sensitivity(model, images, smooth_warp, layers=["input", "nope"])


@pytest.mark.parametrize("measure", [normalized_sensitivity, relative_stability])
def test_one_probe_image_is_an_error(model, images, measure):
    with pytest.raises(ValueError, match="at least 2 probe images"):
        measure(model, images[:1], smooth_warp)


def test_bad_batch_size_and_feature_cache_bytes(model, images):
    with pytest.raises(ValueError, match="batch_size=0"):
        normalized_sensitivity(model, images, smooth_warp, batch_size=0)
    for measure in (normalized_sensitivity, relative_stability):
        for budget in (-1, "1GB", None, float("nan")):
            with pytest.raises(ValueError, match=r"`feature_cache_bytes`.*received"):
                measure(model, images, smooth_warp, feature_cache_bytes=budget)


# -- odd probe images, arguments and seeds ------------------------------------------------------


@pytest.mark.parametrize("measure", [normalized_sensitivity, relative_stability])
def test_fewer_than_two_distinct_probe_images_is_an_error(model, images, measure):
    same = np.repeat(images[:1], 8, axis=0)  # S = x / 0 = inf, R = inf / inf = NaN otherwise
    with pytest.raises(ValueError, match=r"`images`.*2 distinct.*8 images of which 1 distinct"):
        measure(model, same, smooth_warp)
    with pytest.raises(ValueError, match=r"`images`.*2 distinct"):
        shift_consistency(model, same, max_shift=1)
    with pytest.raises(ValueError, match=r"`probe_images`.*2 distinct"):
        StabilityCallback(same, smooth_warp)


def test_mostly_identical_probe_images_warn_that_the_median_is_zero(model, images):
    x = np.concatenate([np.repeat(images[:1], 7, axis=0), images[1:2]])  # 21 of 28 pairs equal
    with pytest.warns(UserWarning, match="21 of the 28 pairs of probe images are identical"):
        result = normalized_sensitivity(model, x, smooth_warp, layers=NAMES)
    f = reference_features(model, NAMES, x)[0]  # at the input
    g = reference_features(model, NAMES, smooth_warp(x))[0]
    assert np.median([cosine_distance(f[i], f[j]) for i, j in distinct_pairs(8)]) == 0
    assert np.mean(cosine_distance(f, g)) > 0 and result["input"] == np.inf  # documented x / 0
    x[2:4] = images[2:4]  # 10 of 28 pairs equal: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        normalized_sensitivity(model, x, smooth_warp, layers=NAMES)


def test_probe_images_out_of_the_models_range_warn(model):
    pixels = np.random.default_rng(1).random((6, *SHAPE)).astype("float32")  # [0, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        normalized_sensitivity(model, pixels, smooth_warp, layers=NAMES)
    uint8 = (pixels * 255).astype(np.uint8)
    for x, kind in [(uint8, "uint8"), (uint8.astype("float32"), "float32")]:
        with pytest.warns(UserWarning, match=rf"0..255 pixels \({kind}, values up to 25\d"):
            normalized_sensitivity(model, x, smooth_warp, layers=NAMES)
    # A model that rescales its input takes 0..255 pixels, and warns about [0, 1] images.
    inputs = keras.Input(SHAPE)
    x = keras.layers.Rescaling(1 / 255, name="rescale")(inputs)
    x = keras.layers.Conv2D(2, 3, activation="relu", name="conv")(x)
    rescaling = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        normalized_sensitivity(rescaling, uint8, smooth_warp)
    with pytest.warns(UserWarning, match=r"rescales its input by 0.003922.*expects 0..255"):
        normalized_sensitivity(rescaling, pixels, smooth_warp)


@pytest.mark.parametrize("measure", [normalized_sensitivity, relative_stability])
def test_a_seeded_measurement_repeats_with_a_reused_deformation_layer(model, measure):
    x = np.random.default_rng(2).random((6, *SHAPE)).astype("float32")
    layer = RandomThinPlateSpline(3, 1.5, seed=0)
    first = measure(model, x, layer, layers=NAMES, batch_size=4, seed=5)
    again = measure(model, x, layer, layers=NAMES, batch_size=4, seed=5)
    other_layer = measure(model, x, RandomThinPlateSpline(3, 1.5, seed=9), layers=NAMES,
                          batch_size=4, seed=5)  # fmt: skip
    assert first == again == other_layer  # the measurement's seed draws the deformations
    assert measure(model, x, layer, layers=NAMES, batch_size=4, seed=6) != first
    # The layer's own seed generator was neither used nor advanced.
    np.testing.assert_array_equal(layer(x), RandomThinPlateSpline(3, 1.5, seed=0)(x))
    if measure is normalized_sensitivity:  # against NumPy on the layer's draws for that seed
        root = resolve_seed(5)
        deformed = np.concatenate(
            [
                layer.transform_images(
                    x[s : s + 4],
                    layer.get_random_transformation(
                        x[s : s + 4], seed=derive_seed(root, s // 4, 0)
                    ),
                )
                for s in (0, 4)
            ]
        )
        clean, warped = (
            reference_features(model, NAMES, x),
            reference_features(model, NAMES, deformed),
        )
        for name, f, g in zip(NAMES, clean, warped, strict=True):
            expected = np.mean(cosine_distance(f, g)) / np.median(
                [cosine_distance(f[i], f[j]) for i, j in distinct_pairs(6)]
            )
            np.testing.assert_allclose(first[name], expected, rtol=1e-4)
    # Without a seed the layer draws from its generator: two calls, two random draws.
    unseeded = [measure(model, x, layer, layers=NAMES) for _ in range(2)]
    assert unseeded[0] != unseeded[1]


def test_wrong_argument_types_name_the_argument(model, images):
    for deformation, message in [("tps", r"deformation='tps'.*deformation_layer\('tps'"),
                                 (42, "deformation=42")]:  # fmt: skip
        for measure in (normalized_sensitivity, relative_stability):
            with pytest.raises(TypeError, match=rf"`deformation` must be callable.*{message}"):
                measure(model, images, deformation)
    for measure in (
        lambda m: normalized_sensitivity(m, images, smooth_warp),
        lambda m: shift_consistency(m, images, max_shift=1),
        kernel_smoothness,
    ):
        with pytest.raises(TypeError, match=r"`model` must be a keras.Model.*'run/model.keras'"):
            measure("run/model.keras")
    with pytest.raises(TypeError, match=r"`images` must be a numeric array.*str"):
        normalized_sensitivity(model, "images", smooth_warp)
    with pytest.raises(TypeError, match=r"`layers` must be None, .*layers=42"):
        normalized_sensitivity(model, images, smooth_warp, layers=42)
    with pytest.raises(ValueError, match=r"`seed` must be an integer.*seed=-1"):
        normalized_sensitivity(model, images, smooth_warp, seed=-1)


# -- shift consistency --------------------------------------------------------------------------


def test_shift_consistency_is_one_for_a_circularly_invariant_model(images):
    keras.utils.set_random_seed(1)
    inputs = keras.Input(SHAPE)
    concat = keras.ops.concatenate
    wrap = keras.layers.Lambda(lambda t: concat([t[:, :, -1:], t, t[:, :, :1]], axis=2))(
        keras.layers.Lambda(lambda t: concat([t[:, -1:], t, t[:, :1]], axis=1))(inputs)
    )
    x = keras.layers.Conv2D(6, 3, activation="relu")(wrap)  # a circular convolution
    outputs = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    result = shift_consistency(model, images, max_shift=3, batch_size=3, seed=0)
    assert result["output"] == 1.0


@pytest.mark.parametrize("fill_mode", ["wrap", "constant"])
def test_shift_consistency_matches_numpy(images, fill_mode):
    keras.utils.set_random_seed(2)
    x = np.concatenate([images, images[:, ::-1]])  # 16 images
    model = keras.Sequential(
        [keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(5, name="head")]
    )
    result = shift_consistency(model, x, max_shift=2, batch_size=5, fill_mode=fill_mode, seed=4)
    offsets = np.random.default_rng(4).integers(-2, 2, size=(16, 2, 2), endpoint=True)
    top1 = [
        model.predict(
            np.stack([numpy_padded_shift(x[i], *offsets[i, k], fill_mode) for i in range(16)]),
            verbose=0,
        ).argmax(-1)
        for k in (0, 1)
    ]
    assert result["output"] == pytest.approx(np.mean(top1[0] == top1[1]))
    assert 0.0 < result["output"] < 1.0  # the test discriminates


def test_shift_consistency_pairs_per_image_and_standard_error(images):
    """Several pairs per image: the offsets' documented draw, the mean over all pairs, and the
    standard error over images of each image's fraction of agreeing pairs."""
    keras.utils.set_random_seed(2)
    x = np.concatenate([images, images[:, ::-1]])  # 16 images
    model = keras.Sequential(
        [keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(5, name="head")]
    )
    result = shift_consistency(model, x, max_shift=2, batch_size=6, seed=7, pairs_per_image=3)
    offsets = np.random.default_rng(7).integers(-2, 2, size=(16, 3, 2, 2), endpoint=True)

    def top1(p, k):  # pair p, shift k of every image
        shifted = [numpy_padded_shift(x[i], *offsets[i, p, k], "wrap") for i in range(16)]
        return model.predict(np.stack(shifted), verbose=0).argmax(-1)

    agree = np.stack([top1(p, 0) == top1(p, 1) for p in range(3)], axis=1)
    per_image = agree.mean(axis=1)
    assert result["output"] == pytest.approx(per_image.mean())
    assert 0.0 < result["output"] < 1.0
    expected_error = per_image.std(ddof=1) / np.sqrt(16)
    assert result.details["standard_error"]["output"] == pytest.approx(expected_error)
    assert result.metadata["pairs_per_image"] == 3
    # One pair per image (the default, test above): a binomial standard error.
    one = shift_consistency(model, x, max_shift=2, seed=7)
    p = one["output"]
    assert one.details["standard_error"]["output"] == pytest.approx(
        np.sqrt(p * (1 - p) * 16 / 15 / 16)
    )
    with pytest.raises(ValueError, match="pairs_per_image"):
        shift_consistency(model, x, max_shift=2, pairs_per_image=0)


def test_shift_consistency_bad_arguments(model, images):
    with pytest.raises(ValueError, match="max_shift=-1"):
        shift_consistency(model, images, max_shift=-1)
    with pytest.raises(ValueError, match="fill_mode"):
        shift_consistency(model, images, max_shift=1, fill_mode="mirror")


# -- kernel smoothness --------------------------------------------------------------------------


def numpy_tv_over_l1(w):
    h, k = w.shape[:2]
    tv = 0.0
    for i in range(h):
        for j in range(k):
            if i + 1 < h:
                tv += np.abs(w[i, j] - w[i + 1, j]).sum()
            if j + 1 < k:
                tv += np.abs(w[i, j] - w[i, j + 1]).sum()
    return tv / np.abs(w).sum()


def conv_zoo(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 5, padding="same", name="conv5")(inputs)
    x = keras.layers.Conv2D(4, 1, name="conv1x1")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise")(x)
    x = keras.layers.SeparableConv2D(4, 3, padding="same", name="separable")(x)
    return keras.Model(inputs, x)


def test_kernel_smoothness_matches_numpy_and_reports_1x1():
    model = conv_zoo()
    result = kernel_smoothness(model)
    assert list(result) == ["conv5", "depthwise", "separable"]
    assert "conv1x1" in result.metadata["skipped"]
    kernels = {
        "conv5": model.get_layer("conv5").kernel,
        "depthwise": model.get_layer("depthwise").kernel,
        "separable": model.get_layer("separable").depthwise_kernel,
    }
    for name, kernel in kernels.items():
        np.testing.assert_allclose(result[name], numpy_tv_over_l1(kernel.numpy()), rtol=1e-6)


def test_kernel_smoothness_at_lecun_normal_initialisation():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4, 4, 128)), keras.layers.Conv2D(128, 3, kernel_initializer="lecun_normal")]
    )
    assert kernel_smoothness(model)[model.layers[0].name] == pytest.approx(1.87, abs=0.03)


def test_smooth_kernels_matches_scipy_and_lowers_tv():
    model = conv_zoo()
    before = {w.path: w.numpy() for w in model.weights}
    assert smooth_kernels(model, 0.0) == []
    assert all(np.array_equal(w.numpy(), before[w.path]) for w in model.weights)

    profile = [kernel_smoothness(model)]
    for sigma in (0.5, 1.0, 2.0):
        model = conv_zoo()
        smoothed = smooth_kernels(model, sigma)
        assert smoothed == ["conv5", "depthwise", "separable"]
        kernel = model.get_layer("conv5").kernel.numpy()
        original = before[model.get_layer("conv5").kernel.path]
        assert kernel.shape == original.shape
        for a, b in [(0, 0), (2, 3)]:
            expected = scipy.ndimage.gaussian_filter(
                original[:, :, a, b].astype(np.float64), sigma, mode="constant", cval=0.0
            )
            np.testing.assert_allclose(kernel[:, :, a, b], expected, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(  # 1x1 kernels untouched
            model.get_layer("conv1x1").kernel.numpy(),
            before[model.get_layer("conv1x1").kernel.path],
        )
        profile.append(kernel_smoothness(model))
    for name in profile[0]:
        values = [p[name] for p in profile]
        assert all(a > b for a, b in zip(values, values[1:], strict=False)), (name, values)


def test_smooth_kernels_rejects_negative_sigma():
    with pytest.raises(ValueError, match="sigma=-1.0"):
        smooth_kernels(conv_zoo(), -1.0)


# -- result type --------------------------------------------------------------------------------


def test_measure_result_mapping_json_and_table():
    result = MeasureResult(
        "relative_stability",
        {"input": 1.0, "block1_conv1": 0.25},
        details={"D": {"input": 0.5, "block1_conv1": 0.1}},
        metadata={"reduction": "median"},
    )
    assert dict(result) == {"input": 1.0, "block1_conv1": 0.25}
    assert MeasureResult.from_dict(json.loads(result.to_json())) == result
    lines = str(result).splitlines()
    assert lines[0].split() == ["probe", "relative_stability", "D"]
    assert len({len(line) for line in lines}) == 1  # aligned columns
    with pytest.raises(KeyError, match="Available"):
        result["nope"]
    assert result.mean() == pytest.approx(0.625)


@pytest.mark.backends  # also with KERAS_BACKEND=jax
def test_a_diverged_model_gives_nan_with_one_warning_never_a_result(images):
    model = tiny_model()
    # NaN weights in the classifier (a NaN before a ReLU that TensorFlow fuses into the conv
    # kernel comes out as 0 in graph mode, which reads as a dead unit).
    kernel = model.get_layer("logits").kernel
    kernel.assign(np.full(kernel.shape, np.nan, "float32"))
    layers = ["input", "block1_down", "logits"]
    for measure in (normalized_sensitivity, relative_stability):
        with pytest.warns(RuntimeWarning, match=r"non-finite representations.*'logits'") as w:
            result = measure(model, images, smooth_warp, layers=layers)
        assert len([x for x in w if issubclass(x.category, RuntimeWarning)]) == 1
        assert np.isfinite(result["block1_down"])  # before the diverged layer: a real value
        assert np.isnan(result["logits"])
        assert np.isnan(result.mean())  # a mean over the surviving layers would read as a result
        for component in result.details.values():
            assert np.isnan(component["logits"])
    with pytest.warns(RuntimeWarning, match="shift_consistency"):
        consistency = shift_consistency(model, images, max_shift=2, seed=0)
    assert np.isnan(consistency["output"])
    # The documented dead-unit rule still holds for exact zeros (a finite model).
    assert np.isfinite(normalized_sensitivity(tiny_model(), images, smooth_warp).mean())


def test_nan_weights_hidden_by_fused_relu_and_pooling_still_give_nan(images):
    model = tiny_model()
    kernel = model.get_layer("block1_conv1").kernel
    kernel.assign(np.full(kernel.shape, np.nan, "float32"))
    # In graph mode TensorFlow (2.21, CPU) computes this conv + fused ReLU as exact zeros and
    # everything after it as finite constants: read naively, a perfectly stable (dead) network.
    for measure in (normalized_sensitivity, relative_stability):
        with pytest.warns(RuntimeWarning, match=r"weights.*'block1_conv1'") as w:
            result = measure(model, images, smooth_warp)
        assert len(w) == 1
        assert np.isfinite(result["input"])
        assert all(np.isnan(result[name]) for name in list(result)[1:])
    with pytest.warns(RuntimeWarning, match="shift_consistency"):
        assert np.isnan(shift_consistency(model, images, max_shift=2, seed=0)["output"])


def test_non_finite_probe_images_name_images(model, images):
    bad = images.copy()
    bad[2, 1, 1, 0] = np.inf
    for measure in (normalized_sensitivity, relative_stability):
        with pytest.raises(ValueError, match=r"`images` must be finite.* 1 entries"):
            measure(model, bad, smooth_warp)
    with pytest.raises(ValueError, match=r"`images` must be finite"):
        shift_consistency(model, bad, max_shift=1)


@pytest.mark.parametrize("measure", [normalized_sensitivity, relative_stability])
def test_feature_cache_gives_the_same_numbers_with_one_clean_pass_per_batch(model, images, measure):
    many = np.concatenate([images, images[::-1] * 0.5])  # 16 images, batches of 4
    cached = measure(model, many, smooth_warp, batch_size=4, seed=0)
    recomputed = measure(model, many, smooth_warp, batch_size=4, seed=0, feature_cache_bytes=0)
    single = measure(model, many, smooth_warp, batch_size=16, seed=0)
    for other in (recomputed, single):
        np.testing.assert_allclose(list(cached.values()), list(other.values()), rtol=1e-6)
    perturbed = 1 if measure is normalized_sensitivity else 2
    # 4 clean passes (one per batch) instead of n (n - 1) / 2 + 1 = 7, plus the perturbed ones.
    assert cached.metadata["forward_passes"] == 4 + 4 * perturbed
    assert recomputed.metadata["forward_passes"] == 7 + 4 * perturbed
    # The budget is all or nothing, on float32 features of every probe point: just enough
    # caches, one byte less recomputes, with the same numbers.
    outputs = ProbeFeatures.for_model(model).extractor(many[:1])
    needed = 4 * len(many) * sum(int(np.prod(o.shape[1:])) for o in outputs)
    for budget, clean_passes in ((needed, 4), (needed - 1, 7)):
        result = measure(model, many, smooth_warp, batch_size=4, seed=0, feature_cache_bytes=budget)
        assert result.metadata["forward_passes"] == clean_passes + 4 * perturbed
        np.testing.assert_allclose(list(cached.values()), list(result.values()), rtol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_a_mixed_precision_model_is_measured_in_float32(images, policy):
    """A model trained under a 16-bit policy measures as its float32 twin (same weights) does:
    the measures trace the forward pass in float32; the model's policies are left as they were."""
    from deformstab_tf.models import build_vgg

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        mixed = build_vgg([[4, 4], [8]], "blur", input_shape=(16, 16, 3), num_classes=3)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    twin = build_vgg([[4, 4], [8]], "blur", input_shape=(16, 16, 3), num_classes=3)
    twin.set_weights(mixed.get_weights())
    probe = np.random.default_rng(1).uniform(size=(8, 16, 16, 3)).astype("float32")
    # The mixed model's own forward pass differs from float32: the comparison can fail.
    own = np.asarray(mixed(probe, training=False), np.float32)
    assert np.max(np.abs(own - np.asarray(twin(probe, training=False)))) > 1e-4

    def warp(batch):
        return tf.roll(batch, 1, axis=2)

    for measure in (normalized_sensitivity, relative_stability):
        a = measure(mixed, probe, warp, batch_size=4, seed=0)
        b = measure(twin, probe, warp, batch_size=4, seed=0)
        np.testing.assert_allclose(list(a.values()), list(b.values()), rtol=1e-5, atol=1e-7)
    a, b = shift_consistency(mixed, probe, 2, seed=0), shift_consistency(twin, probe, 2, seed=0)
    assert a["output"] == b["output"]
    assert {layer.dtype_policy.name for layer in mixed.layers[1:]} == {policy}


# -- models without a graph, several inputs, many models -----------------------------------------


class Subclassed(keras.Model):
    """A subclassed model (no graph of layers): conv -> pool -> dense."""

    def __init__(self):
        super().__init__(name="subclassed")
        self.conv = keras.layers.Conv2D(4, 3, activation="relu")
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.head = keras.layers.Dense(3)

    def call(self, x):
        return self.head(self.pool(self.conv(x)))


@pytest.mark.backends  # also with KERAS_BACKEND=jax
def test_a_subclassed_model_is_measured_at_input_and_output_with_one_warning(images):
    keras.utils.set_random_seed(5)
    model = Subclassed()
    with pytest.raises(ValueError, match=r"'subclassed' \(Subclassed\).*not been built.*model\("):
        normalized_sensitivity(model, images, smooth_warp)
    model(images[:1])
    with pytest.warns(UserWarning, match="inner layers cannot be probed") as caught:
        result = normalized_sensitivity(model, images, smooth_warp, batch_size=3)
    # One of ours (Keras's PyTorch backend adds a NumPy DeprecationWarning of its own).
    ours = [w for w in caught if issubclass(w.category, UserWarning)]
    assert len(ours) == 1 and list(result) == ["input", "output"]
    # Reference: the same layers and weights in a functional graph (the advice of the warning).
    inputs = keras.Input(SHAPE)
    functional = keras.Model(inputs, model.call(inputs))
    head = functional.layers[-1].name
    expected = normalized_sensitivity(functional, images, smooth_warp, layers=["input", head])
    np.testing.assert_allclose(list(result.values()), list(expected.values()), rtol=1e-5)
    clean = model.predict(images, verbose=0).astype(np.float64)
    deformed = model.predict(smooth_warp(images), verbose=0)
    numerator = np.mean(cosine_distance(clean, deformed))
    denominator = np.median([cosine_distance(clean[i], clean[j]) for i, j in distinct_pairs(8)])
    assert result["output"] == pytest.approx(numerator / denominator, rel=1e-4)
    with pytest.warns(UserWarning, match="only 'input' and 'output' are measured"):
        r = relative_stability(model, images, smooth_warp, layers=["output"], seed=0)
    assert list(r) == ["output"] and np.isfinite(r["output"])
    assert shift_consistency(model, images, max_shift=2, seed=0)["output"] >= 0.0
    with pytest.raises(ValueError, match=r"only 'input' and 'output'.*layers=\['conv'\].*Model"):
        normalized_sensitivity(model, images, smooth_warp, layers=["conv"])


def image_and_vector_model():
    keras.utils.set_random_seed(6)
    image = keras.Input(SHAPE, name="image")
    vector = keras.Input((5,), name="meta")
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(image)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Concatenate(name="joined")([x, vector])
    outputs = keras.layers.Dense(4, name="head")(x)
    return keras.Model([vector, image], outputs)  # the image input second


@pytest.mark.backends  # also with KERAS_BACKEND=jax
def test_a_model_with_an_image_and_a_vector_input_takes_extra_inputs(images):
    model = image_and_vector_model()
    vectors = np.random.default_rng(1).normal(size=(8, 5)).astype("float32")
    names = ["input", "conv", "joined", "head"]
    with pytest.raises(ValueError, match=r"2 inputs.*'image'.*\['meta'\].*`extra_inputs`"):
        normalized_sensitivity(model, images, smooth_warp, layers=names)
    result = normalized_sensitivity(
        model, images, smooth_warp, layers=names, batch_size=3, extra_inputs={"meta": vectors}
    )
    # NumPy reference: the model's features on clean and deformed images, vectors held fixed.
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in names[1:]])
    clean = [images.reshape(8, -1)] + probe.predict([vectors, images], verbose=0)
    deformed = [smooth_warp(images).reshape(8, -1)] + probe.predict(
        [vectors, smooth_warp(images)], verbose=0
    )
    for name, f, g in zip(names, clean, deformed, strict=True):
        f, g = np.asarray(f, np.float64).reshape(8, -1), np.asarray(g, np.float64).reshape(8, -1)
        numerator = np.mean(cosine_distance(f, g))
        denominator = np.median([cosine_distance(f[i], f[j]) for i, j in distinct_pairs(8)])
        np.testing.assert_allclose(result[name], numerator / denominator, rtol=1e-5)
    # A list in input order, or the one array, give the same numbers.
    for extra in ([vectors], vectors):
        again = normalized_sensitivity(
            model, images, smooth_warp, layers=names, batch_size=5, extra_inputs=extra
        )
        np.testing.assert_allclose(list(again.values()), list(result.values()), rtol=1e-5)
    r = relative_stability(model, images, smooth_warp, layers=names, extra_inputs=vectors, seed=0)
    assert r["input"] == pytest.approx(1.0) and np.isfinite(r["head"])
    # Shift consistency: the top-1 classes of two shifted copies, vectors held fixed.
    consistency = shift_consistency(model, images, 2, batch_size=3, seed=4, extra_inputs=vectors)
    offsets = np.random.default_rng(4).integers(-2, 2, size=(8, 2, 2), endpoint=True)
    top1 = [
        model.predict(
            [vectors, np.stack([numpy_padded_shift(images[i], *offsets[i, k], "wrap")
                                for i in range(8)])],
            verbose=0,
        ).argmax(-1)
        for k in (0, 1)
    ]  # fmt: skip
    assert consistency["output"] == pytest.approx(np.mean(top1[0] == top1[1]))
    bad = [
        ({"vector": vectors}, r"must name the model's other inputs, \['meta'\]"),
        (vectors[:5], r"input 'meta' must have shape \(8, 5\).*received shape \(5, 5\)"),
        ([vectors, vectors], r"must hold 1 arrays.*received 2"),
    ]
    for extra, message in bad:
        with pytest.raises(ValueError, match=message):
            normalized_sensitivity(model, images, smooth_warp, layers=names, extra_inputs=extra)
    with pytest.raises(ValueError, match="single input; `extra_inputs`"):
        normalized_sensitivity(tiny_model(), images, smooth_warp, extra_inputs=vectors)


def test_measuring_many_models_in_one_process_retraces_nothing(monkeypatch):
    """A model zoo (different sizes, depths, widths) and a sweep print no retracing warning."""
    import logging

    from tensorflow.python.eager.polymorphic_function import polymorphic_function

    from deformstab_tf.deformations.layers import RandomAffine, RandomThinPlateSpline

    # Fresh retracing counters: earlier tests may have used up TensorFlow's two warnings per
    # function, which would hide new ones.
    monkeypatch.setattr(
        polymorphic_function,
        "_frequent_tracing_detector_manager",
        polymorphic_function._FrequentTracingDetectorManager(),
    )
    messages = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = Collect()
    tf.get_logger().addHandler(handler)
    try:
        for i in range(7):
            size = 8 + 2 * i
            keras.utils.set_random_seed(i)
            inputs = keras.Input((size, size, 3))
            x = inputs
            for depth in range(1 + i % 3):
                x = keras.layers.Conv2D(2 + i, 3, activation="relu", name=f"c{depth}")(x)
            x = keras.layers.GlobalAveragePooling2D()(x)
            model = keras.Model(inputs, keras.layers.Dense(3)(x))
            x_probe = np.random.default_rng(i).random((5, size, size, 3)).astype("float32")
            deformation = (RandomThinPlateSpline if i % 2 else RandomAffine)(seed=i)
            normalized_sensitivity(model, x_probe, deformation, batch_size=3)
            relative_stability(model, x_probe, deformation, batch_size=3, seed=0)
            shift_consistency(model, x_probe, max_shift=1, seed=0)
            for magnitude in (0.5, 1.0, 2.0):  # a sweep on the last model
                tps = RandomThinPlateSpline(max_displacement=magnitude, seed=0)
                normalized_sensitivity(model, x_probe, tps, batch_size=3)
    finally:
        tf.get_logger().removeHandler(handler)
    assert [m for m in messages if "retracing" in m] == []
