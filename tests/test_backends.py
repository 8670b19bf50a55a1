"""The same numbers on every backend: the active backend's ops against TensorFlow's.

Inside a TensorFlow graph (``tf.function``, ``tf.data``) the deformations run on TensorFlow ops
whatever the Keras backend, so one process on another backend (CI: ``KERAS_BACKEND=jax``) holds
both implementations: the same field gives the same image on each to 1e-5. On the TensorFlow
backend both paths are the same ops, so these tests are skipped there.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

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
from tests.backends import BACKEND, as_numpy, dtype_of, other_backend_only

pytestmark = [pytest.mark.backends, other_backend_only]

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
