"""The random deformation layers as a Keras user uses them."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from deformstab_tf.deformations import control_grid, tps_displacement, warp
from deformstab_tf.layers import RandomAffine, RandomDiffeomorphism, RandomThinPlateSpline
from tests.backends import BACKEND, as_numpy, dtype_of

# Backend-independent: CI also runs this file with KERAS_BACKEND=jax (see README).
pytestmark = pytest.mark.backends

LAYERS = {
    "tps": lambda **kw: RandomThinPlateSpline(grid_size=3, max_displacement=2.0, **kw),
    "affine": lambda **kw: RandomAffine(rotation=15, scale=0.1, shear=0.1, translation=0.1, **kw),
    "diffeo": lambda **kw: RandomDiffeomorphism(cutoff=3, displacement=1.5, **kw),
}
ZERO = {
    "tps": lambda **kw: RandomThinPlateSpline(max_displacement=0.0, **kw),
    "affine": lambda **kw: RandomAffine(**kw),
    "diffeo": lambda **kw: RandomDiffeomorphism(displacement=0.0, **kw),
}


def smooth_images(batch=4, size=(16, 20), channels=3, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.random((batch, *size, channels))
    # Smooth content so that every warp changes it measurably.
    return ndimage.uniform_filter(images, size=(1, 3, 3, 1), mode="nearest").astype("float32")


@pytest.mark.parametrize("kind", LAYERS)
def test_seeded_per_sample_draws_and_training_flag(kind):
    images = np.repeat(smooth_images(1), 4, axis=0)
    out = as_numpy(LAYERS[kind](seed=3)(images))
    again = as_numpy(LAYERS[kind](seed=3)(images))
    other = as_numpy(LAYERS[kind](seed=4)(images))
    np.testing.assert_array_equal(out, again)
    assert np.abs(out - other).max() > 1e-3
    # One warp per image by default: identical inputs come out different.
    assert np.abs(out[0] - out[1]).max() > 1e-3
    shared = as_numpy(LAYERS[kind](seed=3, same_on_batch=True)(images))
    np.testing.assert_allclose(shared, np.repeat(shared[:1], 4, axis=0), atol=1e-6)
    # A layer's calls go on through its sequence.
    layer = LAYERS[kind](seed=3)
    assert np.abs(as_numpy(layer(images)) - as_numpy(layer(images))).max() > 1e-3
    np.testing.assert_array_equal(LAYERS[kind](seed=3)(images, training=False), images)


@pytest.mark.parametrize("kind", LAYERS)
def test_stateless_call_threads_the_seed_state_as_calls_advance_it(kind):
    images = smooth_images(2)
    layer = LAYERS[kind](seed=5)  # never called: stateless_call needs nothing built
    state = [v.value for v in layer.non_trainable_variables]
    first, state = layer.stateless_call([], state, images, training=True)
    second, _ = layer.stateless_call([], state, images, training=True)
    stateful = LAYERS[kind](seed=5)
    np.testing.assert_array_equal(as_numpy(first), as_numpy(stateful(images)))
    np.testing.assert_array_equal(as_numpy(second), as_numpy(stateful(images)))
    assert np.abs(as_numpy(first) - as_numpy(second)).max() > 1e-3


@pytest.mark.parametrize("kind", ZERO)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "uint8"])
def test_zero_magnitude_is_exact_identity(kind, dtype):
    images = keras.ops.cast(np.random.default_rng(1).integers(0, 255, (2, 12, 12, 3)), dtype)
    out = ZERO[kind](seed=0, fill_mode="constant")(images)
    assert dtype_of(out) == ("uint8" if dtype == "uint8" else "float32")  # integers keep theirs
    np.testing.assert_array_equal(as_numpy(out), as_numpy(images).astype(dtype_of(out)))


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("policy", ["float16", "bfloat16", "mixed_float16"])
def test_output_in_the_compute_dtype(kind, policy):
    images = smooth_images(2)
    out = LAYERS[kind](seed=0, dtype=policy)(images)
    expected = keras.DTypePolicy(policy).compute_dtype
    assert dtype_of(out) == expected
    reference = as_numpy(LAYERS[kind](seed=0)(images))
    np.testing.assert_allclose(as_numpy(out).astype("float32"), reference, atol=2e-2)


@pytest.mark.parametrize("kind", LAYERS)
def test_single_image_channels_first_and_any_channel_count(kind):
    images = smooth_images(3, channels=5)
    batched = as_numpy(LAYERS[kind](seed=7)(images))
    single = as_numpy(LAYERS[kind](seed=7)(images[0]))
    assert single.shape == images[0].shape
    first = LAYERS[kind](seed=7, data_format="channels_first")(images.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(as_numpy(first).transpose(0, 2, 3, 1), batched, atol=1e-6)
    # The single image got the first draw of the same sequence (batch size 1).
    one = as_numpy(LAYERS[kind](seed=7)(images[:1]))
    np.testing.assert_allclose(single, one[0], atol=1e-6)


@pytest.mark.parametrize("kind", LAYERS)
def test_masks_get_the_same_warp_nearest_sampled(kind):
    rng = np.random.default_rng(2)
    masks = rng.integers(0, 4, (3, 16, 20, 1)).astype("int32")
    images = np.concatenate([smooth_images(3), masks.astype("float32")], axis=-1)
    out = LAYERS[kind](seed=5, interpolation="nearest")(
        {"images": images, "segmentation_masks": masks, "labels": np.arange(3)}
    )
    assert dtype_of(out["segmentation_masks"]) == "int32"
    np.testing.assert_array_equal(as_numpy(out["images"])[..., 3:], out["segmentation_masks"])
    np.testing.assert_array_equal(out["labels"], np.arange(3))
    assert np.any(as_numpy(out["segmentation_masks"]) != masks)


def test_tps_layer_field_is_the_tps_of_uniform_box_draws():
    # Nearest-sampled integer image: read the field back from the warp of a coordinate image.
    layer = RandomThinPlateSpline(grid_size=3, max_displacement=2.0, seed=11)
    transformation = layer.get_random_transformation(np.zeros((64, 17, 17, 1), "float32"))
    field = as_numpy(transformation["displacement"])
    points = control_grid(17, 17, 3).astype(int)
    at_points = field[:, points[:, 0], points[:, 1]]
    assert np.abs(at_points).max() <= 2.0 + 1e-5
    # Uniform on the box [-2, 2]^2 per axis: mean ~0, variance ~ 4/3 per axis, corners reached.
    assert abs(at_points.mean()) < 0.1
    assert at_points.var() == pytest.approx(4 / 3, rel=0.1)
    assert np.abs(at_points).max() > 1.9
    np.testing.assert_allclose(field, as_numpy(tps_displacement(at_points, 17, 17, 3)), atol=1e-4)


@pytest.mark.parametrize("kind", LAYERS)
def test_tf_data_pipeline_is_deterministic_with_a_seed(kind):
    images = smooth_images(6)

    def run():
        layer = LAYERS[kind](seed=21)
        ds = tf.data.Dataset.from_tensor_slices(images).batch(3).map(layer)
        return np.concatenate([b.numpy() for b in ds])

    first, second = run(), run()
    np.testing.assert_array_equal(first, second)
    assert np.abs(first - images).max() > 1e-3
    # Unbatched elements and dict elements work too.
    layer = LAYERS[kind](seed=21)
    ds = tf.data.Dataset.from_tensor_slices({"images": images, "labels": np.arange(6)}).map(layer)
    assert [tuple(e["images"].shape) for e in ds.take(2)] == [(16, 20, 3)] * 2


@pytest.mark.parametrize("kind", LAYERS)
def test_in_a_model_dynamic_batch_keras_file_and_xla(kind, tmp_path):
    inputs = keras.Input((16, 20, 3))
    x = LAYERS[kind](seed=1)(inputs)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    model.compile("sgd", "mse", jit_compile=True)
    assert model.jit_compile  # the layer must not switch XLA off
    images = smooth_images(5)
    model.fit(images, np.zeros((5, 2)), batch_size=3, epochs=1, verbose=0)
    # Inference is the identity, so predictions equal the head on the raw images.
    head = keras.Model(model.layers[2].input, model.output)
    np.testing.assert_allclose(
        model.predict(images, verbose=0), head.predict(images, verbose=0), atol=1e-5
    )
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_allclose(
        restored.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6
    )
    layer = restored.layers[1]
    assert type(layer) is type(model.layers[1])
    assert layer.get_config() == model.layers[1].get_config()
    if BACKEND == "tensorflow":  # dynamic batch size inside a graph
        fn = tf.function(
            lambda x: layer(x, training=True), input_signature=[tf.TensorSpec((None, 16, 20, 3))]
        )
        assert fn(images).shape == images.shape


def test_config_round_trip_keeps_the_draws():
    layer = RandomAffine(
        rotation=(-5, 20),
        scale=(0.9, 1.3),
        shear=0.2,
        translation=0.1,
        anisotropic_scale=True,
        fill_mode="constant",
        fill_value=0.5,
        seed=9,
    )
    clone = RandomAffine.from_config(layer.get_config())
    images = smooth_images(3)
    np.testing.assert_array_equal(layer(images), clone(images))
    diffeo = RandomDiffeomorphism(cutoff=4, temperature=(1e-4, 1e-3), seed=2)
    clone = RandomDiffeomorphism.from_config(diffeo.get_config())
    np.testing.assert_array_equal(diffeo(images), clone(images))


def test_affine_layer_rotation_only_matches_the_functional_rotation():
    images = smooth_images(1, size=(16, 16))
    layer = RandomAffine(rotation=(30, 30), seed=0, fill_mode="nearest")
    from deformstab_tf.deformations import affine_displacement, affine_matrices

    expected = warp(images, affine_displacement(affine_matrices(rotation=30.0), 16, 16))
    np.testing.assert_allclose(as_numpy(layer(images)), as_numpy(expected), atol=1e-5)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="grid_size=1"):
        RandomThinPlateSpline(grid_size=1)
    with pytest.raises(ValueError, match="grid_size=20"):
        RandomThinPlateSpline(grid_size=20)(np.zeros((1, 16, 16, 1), "float32"))
    with pytest.raises(ValueError, match="max_displacement=-1"):
        RandomThinPlateSpline(max_displacement=-1)
    with pytest.raises(ValueError, match="rotation=-5"):
        RandomAffine(rotation=-5)
    with pytest.raises(ValueError, match="scale"):
        RandomAffine(scale=1.5)
    with pytest.raises(ValueError, match="translation"):
        RandomAffine(translation=(0.2, 0.1))
    with pytest.raises(ValueError, match="cutoff=1"):
        RandomDiffeomorphism(cutoff=1)
    with pytest.raises(ValueError, match="temperature"):
        RandomDiffeomorphism(temperature=1e-3, displacement=1.0)
    with pytest.raises(ValueError, match="displacement"):
        RandomDiffeomorphism(displacement=-1.0)
    with pytest.raises(ValueError, match="fill_mode='mirror'"):
        RandomAffine(fill_mode="mirror")
    with pytest.raises(ValueError, match="interpolation='cubic'"):
        RandomThinPlateSpline(interpolation="cubic")
    with pytest.raises(ValueError, match="data_format"):
        RandomThinPlateSpline(data_format="NHWC")
    with pytest.raises(ValueError, match="rank"):
        RandomThinPlateSpline()(np.zeros((16, 16), "float32"))
    with pytest.raises(ValueError, match="rank"):
        RandomThinPlateSpline()(np.zeros((1, 1, 16, 16, 1), "float32"))
    with pytest.raises(TypeError, match="dtype=bool"):
        RandomThinPlateSpline()(np.zeros((1, 8, 8, 1), bool))
    if BACKEND == "tensorflow":
        with pytest.raises(TypeError, match="dtype=string"):
            RandomThinPlateSpline()(tf.fill((1, 8, 8, 1), "a"))
    with pytest.raises(ValueError, match="images"):
        RandomThinPlateSpline()({"pixels": np.zeros((1, 8, 8, 1), "float32")})


@pytest.mark.parametrize(
    "make, argument",
    [
        (lambda v: RandomThinPlateSpline(max_displacement=v), "max_displacement"),
        (lambda v: RandomAffine(rotation=v), "rotation"),
        (lambda v: RandomAffine(rotation=(0.0, v)), "rotation"),
        (lambda v: RandomAffine(scale=v), "scale"),
        (lambda v: RandomAffine(shear=v), "shear"),
        (lambda v: RandomAffine(translation=v), "translation"),
        (lambda v: RandomDiffeomorphism(displacement=v), "displacement"),
        (lambda v: RandomDiffeomorphism(temperature=(0.0, v)), "temperature"),
    ],
)
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_non_finite_magnitudes_are_rejected(make, argument, value):
    with pytest.raises(ValueError, match=f"`{argument}` must be a finite number"):
        make(value)


def test_every_layer_documents_its_shapes_where_it_runs_and_an_example():
    import inspect

    import deformstab_tf.layers

    for name in deformstab_tf.layers.__all__:
        doc = inspect.getdoc(getattr(deformstab_tf.layers, name))
        for section in ("Input shape:", "Output shape:", "Where it runs:", "Example:", ">>> "):
            assert section in doc, (name, section)


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("fill_mode", ["reflect", "constant"])
def test_uint8_images_come_back_uint8_rounded_from_the_float_path(kind, fill_mode):
    images = np.round(smooth_images(3) * 255).astype("uint8")
    out = LAYERS[kind](seed=2, fill_mode=fill_mode, fill_value=255.0)(images)
    assert dtype_of(out) == "uint8"
    floats = as_numpy(
        LAYERS[kind](seed=2, fill_mode=fill_mode, fill_value=255.0)(images.astype("float32"))
    )
    expected = np.clip(np.round(floats), 0, 255)
    # The same float32 arithmetic compiled apart: a value within rounding of a half may round
    # the other way.
    assert np.abs(as_numpy(out).astype(int) - expected).max() <= 1
    assert (as_numpy(out) != expected).mean() < 1e-3
    assert np.abs(as_numpy(out).astype(int) - images).max() > 10  # it did warp
    # Not training, or zero magnitude: the images as they came.
    np.testing.assert_array_equal(LAYERS[kind](seed=2)(images, training=False), images)
    assert dtype_of(ZERO[kind](seed=2)(images)) == "uint8"


@pytest.mark.parametrize("kind", LAYERS)
def test_uint8_images_keep_masks_exact_in_a_dict_channels_first_and_in_tf_data(kind):
    images = np.round(smooth_images(4, channels=3) * 255).astype("uint8")
    masks = np.random.default_rng(3).integers(0, 5, (4, 16, 20, 1)).astype("int32")
    as_uint8 = LAYERS[kind](seed=9)({"images": images, "segmentation_masks": masks})
    as_float = LAYERS[kind](seed=9)(
        {"images": images.astype("float32"), "segmentation_masks": masks}
    )
    assert dtype_of(as_uint8["images"]) == "uint8"
    assert dtype_of(as_uint8["segmentation_masks"]) == "int32"
    np.testing.assert_array_equal(
        as_numpy(as_uint8["segmentation_masks"]), as_numpy(as_float["segmentation_masks"])
    )
    first = LAYERS[kind](seed=9, data_format="channels_first")(images.transpose(0, 3, 1, 2))
    assert dtype_of(first) == "uint8"
    np.testing.assert_array_equal(
        as_numpy(first).transpose(0, 2, 3, 1), as_numpy(as_uint8["images"])
    )
    data = tf.data.Dataset.from_tensor_slices(images).batch(2).map(LAYERS[kind](seed=1))
    for batch in data:
        assert batch.dtype == tf.uint8 and tuple(batch.shape) == (2, 16, 20, 3)
