"""Bounding boxes and keypoints through the deformation layers: they move to where the warped
images show them, with the images' own draw, in every Keras box format and wherever the layers
run (eagerly, in tf.data, in models, under XLA; on every backend)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.interpolate import RegularGridInterpolator
from scipy.optimize import root

from deformstab_tf.deformations import (
    affine_displacement,
    affine_matrices,
    deform_boxes,
    deform_keypoints,
    temperature_range,
)
from deformstab_tf.layers import RandomAffine, RandomDiffeomorphism, RandomThinPlateSpline
from tests.backends import BACKEND, as_numpy

# Backend-independent: CI also runs this file with KERAS_BACKEND=jax (and torch).
pytestmark = pytest.mark.backends

LAYERS = {
    "tps": lambda **kw: RandomThinPlateSpline(grid_size=3, max_displacement=2.0, **kw),
    "affine": lambda **kw: RandomAffine(rotation=15, scale=0.1, shear=0.1, translation=0.05, **kw),
    "diffeo": lambda **kw: RandomDiffeomorphism(cutoff=3, displacement=1.5, **kw),
}
FORMATS = (
    "xyxy",
    "yxyx",
    "xywh",
    "center_xywh",
    "center_yxhw",
    "rel_xyxy",
    "rel_yxyx",
    "rel_xywh",
    "rel_center_xywh",
)


def field_of(layer, size, batch=4):
    transformation = layer.get_random_transformation(np.zeros((batch, size, size, 1), "float32"))
    return as_numpy(transformation["displacement"]).astype("float32")


def reference_forward(field, keypoints):
    """Where each ``(x, y)`` keypoint goes, from SciPy: a root of ``q - u(q) - p`` per point,
    with `u` interpolated linearly (extrapolated beyond the pixel centres) by SciPy."""
    height, width = field.shape[:2]
    u = RegularGridInterpolator(
        (np.arange(height), np.arange(width)),
        field.astype("float64"),
        bounds_error=False,
        fill_value=None,
    )
    moved = []
    for x, y in keypoints.astype("float64"):
        p = np.array([y - 0.5, x - 0.5])
        solution = root(lambda q, p=p: q - u(q[None])[0] - p, p + u(p[None])[0], tol=1e-12)
        assert np.abs(solution.fun).max() < 1e-8, solution
        moved.append([solution.x[1] + 0.5, solution.x[0] + 0.5])
    return np.array(moved)


# The package's magnitudes: Ruderman et al.'s CIFAR-10 and ImageNet TPS, Petrini et al.'s
# diffeomorphisms (delta = 1 and up to the largest natural temperature), strong affine maps.
MAGNITUDES = {
    "tps_cifar": (lambda: RandomThinPlateSpline(grid_size=3, max_displacement=2.0, seed=1), 32),
    "tps_imagenet": (
        lambda: RandomThinPlateSpline(grid_size=5, max_displacement=10.0, seed=1),
        224,
    ),
    "diffeo_delta_1": (lambda: RandomDiffeomorphism(cutoff=3, displacement=1.0, seed=1), 32),
    "diffeo_t_max": (
        lambda: RandomDiffeomorphism(cutoff=3, temperature=temperature_range(32, 3)[1], seed=2),
        32,
    ),
    "affine": (
        lambda: RandomAffine(rotation=30, scale=0.2, shear=0.2, translation=0.1, seed=1),
        48,
    ),
}


def folds(field):
    """Whether the backward map ``q - u(q)`` folds somewhere (its Jacobian is not positive)."""
    along_y, along_x = np.gradient(field, axis=0), np.gradient(field, axis=1)
    determinant = (1 - along_y[..., 0]) * (1 - along_x[..., 1]) - along_x[..., 0] * along_y[..., 1]
    return determinant.min() <= 0.05


@pytest.mark.parametrize("case", MAGNITUDES)
def test_keypoints_match_a_numerical_inverse_of_the_field(case):
    make, size = MAGNITUDES[case]
    fields = field_of(make(), size)
    keypoints = np.random.default_rng(0).uniform(0, size, (len(fields), 40, 2)).astype("float32")
    moved = as_numpy(deform_keypoints(keypoints, fields))
    errors, compared = [], 0
    for field, points, ours in zip(fields, keypoints, moved, strict=True):
        if folds(field):  # an overlapping draw: the inverse has several branches
            continue
        compared += 1
        expected = reference_forward(field, points)
        inside = np.all((expected >= 0) & (expected <= size), axis=-1)
        borderline = np.any(np.minimum(np.abs(expected), np.abs(expected - size)) < 1e-3, -1)
        visible = ours[:, 0] >= 0
        np.testing.assert_array_equal(visible[~borderline], inside[~borderline])
        both = visible & inside
        errors.append(np.linalg.norm(ours[both] - expected[both], axis=-1))
        np.testing.assert_array_equal(ours[~visible], -1.0)
    errors = np.concatenate(errors)
    assert compared >= 2 and errors.size >= 40
    # Targets: median <= 0.05 px, max <= 0.25 px; measured ~1e-6 px (float32 rounding).
    assert np.median(errors) <= 0.05 and errors.max() <= 0.25, (np.median(errors), errors.max())
    assert errors.max() <= 1e-3


def test_affine_keypoints_follow_the_closed_form_map():
    rng = np.random.default_rng(3)
    size = (24, 40)
    matrices = affine_matrices(
        rotation=rng.uniform(-40, 40, 4).astype("float32"),
        scale=rng.uniform(0.7, 1.3, 4).astype("float32"),
        shear=rng.uniform(-0.3, 0.3, 4).astype("float32"),
        translation=rng.uniform(-4, 4, 4).astype("float32"),
    )
    field = affine_displacement(matrices, *size)
    keypoints = rng.uniform(0, 40, (4, 30, 2)).astype("float32") * np.float32([1, 0.6])
    moved = as_numpy(deform_keypoints(keypoints, field))
    a = as_numpy(matrices).astype("float64")
    centre = (np.array(size) - 1) / 2.0
    p = keypoints[..., ::-1] - 0.5 - centre  # (y, x) about the centre, in pixel-centre units
    q = np.einsum("bij,bnj->bni", a[:, :, :2], p) + a[:, None, :, 2] + centre + 0.5
    expected = q[..., ::-1]
    inside = np.all((expected >= 0) & (expected <= np.float32(size[::-1])), axis=-1)
    visible = moved[..., 0] >= 0
    np.testing.assert_array_equal(visible, inside)
    np.testing.assert_allclose(moved[visible], expected[visible], atol=2e-4)


# -- one sample's images, masks, boxes and keypoints: the same draw ----------------------------

SIZE = 40
BLOBS = np.float32([[14.5, 15.0], [26.0, 13.5], [20.5, 26.5]])  # (x, y)
RECTANGLES = np.float32([[11, 12, 20, 19], [22, 21, 29, 30]])  # xyxy, on pixel edges


def scene(batch=3):
    """Images with a Gaussian blob at each keypoint (channel 0), masks with two rectangles
    (ids 1, 2) and their boxes; the same scene in every sample."""
    rows, cols = np.mgrid[0:SIZE, 0:SIZE] + 0.5  # pixel centres
    blobs = sum(np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * 0.8**2)) for x, y in BLOBS)
    masks = np.zeros((SIZE, SIZE), "int32")
    for label, (x1, y1, x2, y2) in enumerate(RECTANGLES.astype(int), start=1):
        masks[y1:y2, x1:x2] = label
    return {
        "images": np.repeat(blobs[None, ..., None].astype("float32"), batch, axis=0),
        "segmentation_masks": np.repeat(masks[None, ..., None], batch, axis=0),
        "bounding_boxes": {
            "boxes": np.repeat(RECTANGLES[None], batch, axis=0),
            "labels": np.repeat(np.int32([[1, 2]]), batch, axis=0),
        },
        "keypoints": np.repeat(BLOBS[None], batch, axis=0),
    }


def assert_one_draw_per_sample(out, expect_different=True):
    """Each sample's keypoints sit on its warped blobs and its boxes around its warped masks
    (which a different draw for any of them would break), and the draws differ per sample."""
    images = as_numpy(out["images"])[..., 0]
    masks = as_numpy(out["segmentation_masks"])[..., 0]
    boxes = as_numpy(out["bounding_boxes"]["boxes"])
    labels = as_numpy(out["bounding_boxes"]["labels"])
    keypoints = as_numpy(out["keypoints"])
    rows, cols = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    for image, mask, sample_boxes, sample_labels, points in zip(
        images, masks, boxes, labels, keypoints, strict=True
    ):
        for x, y in points:
            assert x >= 0, "every blob stays in the image"
            near = (cols - x) ** 2 + (rows - y) ** 2 <= 6.0**2
            weights = image * near
            centroid = np.array([(weights * cols).sum(), (weights * rows).sum()]) / weights.sum()
            assert np.abs(centroid - [x, y]).max() <= 0.25, (centroid, (x, y))
        np.testing.assert_array_equal(sample_labels, [1, 2])
        for label, box in enumerate(sample_boxes, start=1):
            ys, xs = np.nonzero(mask == label)
            extent = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]  # pixel edges
            np.testing.assert_allclose(box, extent, atol=1.0)
    if expect_different:
        assert np.abs(keypoints[0] - keypoints[1]).max() > 0.05


def numpy_tree(tree):
    return keras.tree.map_structure(as_numpy, tree)


@pytest.mark.parametrize("kind", LAYERS)
def test_images_masks_boxes_and_keypoints_share_each_samples_draw_eagerly(kind):
    layer = LAYERS[kind](seed=3, fill_mode="constant", bounding_box_format="xyxy")
    out = layer(scene())
    assert_one_draw_per_sample(out)
    assert keras.backend.standardize_dtype(out["keypoints"].dtype) == "float32"
    shared = LAYERS[kind](seed=3, fill_mode="constant", bounding_box_format="xyxy",
                          same_on_batch=True)(scene())  # fmt: skip
    assert_one_draw_per_sample(shared, expect_different=False)
    np.testing.assert_allclose(as_numpy(shared["keypoints"])[1], as_numpy(shared["keypoints"])[0])


@pytest.mark.parametrize("kind", LAYERS)
def test_the_same_draw_in_tf_data_batched_and_per_image(kind):
    layer = LAYERS[kind](seed=4, fill_mode="constant", bounding_box_format="xyxy")
    batched = tf.data.Dataset.from_tensors(scene()).map(layer)
    for out in batched:
        assert isinstance(out["keypoints"], tf.Tensor)
        assert_one_draw_per_sample(numpy_tree(out))
    singles = tf.data.Dataset.from_tensor_slices(scene()).map(layer).batch(3)
    for out in singles:
        assert_one_draw_per_sample(numpy_tree(out))


@pytest.mark.parametrize("kind", LAYERS)
def test_the_same_draw_compiled_and_in_a_model(kind):
    layer = LAYERS[kind](seed=5, fill_mode="constant", bounding_box_format="xyxy")
    data = scene()
    if BACKEND == "tensorflow":
        compiled = tf.function(lambda d: layer(d, training=True), jit_compile=True)
        assert_one_draw_per_sample(numpy_tree(compiled(data)))
    elif BACKEND == "jax":
        import jax

        state = [v.value for v in layer.non_trainable_variables]
        step = jax.jit(lambda s, d: layer.stateless_call([], s, d, training=True))
        out, _ = step(state, data)
        assert_one_draw_per_sample(out)
    inputs = {
        "images": keras.Input((SIZE, SIZE, 1), name="images"),
        "segmentation_masks": keras.Input(
            (SIZE, SIZE, 1), dtype="int32", name="segmentation_masks"
        ),
        "bounding_boxes": {
            "boxes": keras.Input((2, 4), name="boxes"),
            "labels": keras.Input((2,), dtype="int32", name="labels"),
        },
        "keypoints": keras.Input((3, 2), name="keypoints"),
    }
    model = keras.Model(inputs, layer(inputs))
    assert_one_draw_per_sample(model(data, training=True))
    # Inference is the identity for every entry.
    same = numpy_tree(model(data, training=False))
    np.testing.assert_array_equal(same["keypoints"], data["keypoints"])
    np.testing.assert_array_equal(same["bounding_boxes"]["boxes"], RECTANGLES[None].repeat(3, 0))


# -- boxes: formats, clipping, marking, padding ------------------------------------------------


@pytest.mark.parametrize("bounding_box_format", FORMATS)
def test_every_keras_box_format_gives_the_same_boxes(bounding_box_format):
    keras_version = tuple(int(part) for part in keras.__version__.split(".")[:2])
    if bounding_box_format == "rel_center_xywh" and keras_version < (3, 15):
        # Keras 3.14's rel_center_xywh -> xyxy is no inverse of xyxy -> rel_center_xywh
        # ([2, 3, 10, 12] comes back as [1.5, 4, 7.5, 16] at 24 x 32); 3.15 fixed it.
        pytest.skip("Keras < 3.15 converts rel_center_xywh boxes wrongly")
    convert = keras.utils.bounding_boxes.convert_format
    size = (24, 32)
    images = np.zeros((2, *size, 1), "float32")
    xyxy = np.float32([[[2, 3, 10, 12], [20, 4, 31, 22]], [[0, 0, 32, 24], [5, 5, 6, 6]]])
    labels = np.int32([[0, 1], [2, 3]])

    def run(boxes, box_format):
        layer = RandomThinPlateSpline(max_displacement=2.0, seed=2, bounding_box_format=box_format)
        out = layer({"images": images, "bounding_boxes": {"boxes": boxes, "labels": labels}})
        return numpy_tree(out["bounding_boxes"])

    expected = run(xyxy, "xyxy")
    given = as_numpy(convert(xyxy, "xyxy", bounding_box_format, height=size[0], width=size[1]))
    out = run(given, bounding_box_format.upper())  # case-insensitive, as Keras
    back = convert(out["boxes"], bounding_box_format, "xyxy", height=size[0], width=size[1])
    np.testing.assert_allclose(as_numpy(back), expected["boxes"], atol=1e-4)
    np.testing.assert_array_equal(out["labels"], expected["labels"])
    # Moved, but not far: TPS displacements of at most ~2 px.
    assert 0.01 < np.abs(expected["boxes"] - xyxy).max() < 3.0
    # A whole-image box stays in the image (TPS moves the border too), and no label is lost.
    whole = expected["boxes"][1, 0]
    assert whole.min() >= 0 and whole[2] <= 32 and whole[3] <= 24 and whole[2] - whole[0] > 28
    np.testing.assert_array_equal(expected["labels"], labels)


def test_boxes_and_keypoints_that_leave_the_image_are_marked_not_dropped():
    layer = RandomAffine(translation=(0.25, 0.25), bounding_box_format="xyxy")
    data = {
        "images": np.zeros((1, 16, 16, 1), "float32"),
        "bounding_boxes": {
            "boxes": np.float32([[[2, 2, 6, 6], [10, 10, 15, 15], [13, 2, 16, 4], [0, 0, 0, 0]]]),
            "labels": np.int32([[7, 8, 9, -1]]),
        },
        "keypoints": np.float32([[[2, 2], [13, 1], [-1, -1], [np.nan, 3], [17, 3], [3.5, 0]]]),
    }
    out = numpy_tree(layer(data))
    boxes, labels = out["bounding_boxes"]["boxes"][0], out["bounding_boxes"]["labels"][0]
    np.testing.assert_allclose(boxes[:3], [[6, 6, 10, 10], [14, 14, 16, 16], [16, 6, 16, 8]])
    # Keras's rule (clip_to_image_size): a box without area left the image: label -1.
    np.testing.assert_array_equal(labels, [7, 8, -1, -1])
    keypoints = out["keypoints"][0]
    np.testing.assert_allclose(keypoints[0], [6, 6])
    np.testing.assert_allclose(keypoints[5], [7.5, 4])
    # Moved out (13 + 4 > 16), marked invisible before, not finite, or outside to begin with.
    np.testing.assert_array_equal(keypoints[1:5], -1.0)
    assert keypoints.shape == (6, 2)


def test_ragged_boxes_in_tf_data_are_padded_as_keras_pads_them():
    boxes = tf.ragged.constant(
        [[[1.0, 2, 10, 12]], [[1.0, 2, 10, 12], [3, 3, 8, 8]]], ragged_rank=1
    )
    labels = tf.ragged.constant([[1], [2, 3]])
    data = {
        "images": tf.zeros((2, 16, 16, 3)),
        "bounding_boxes": {"boxes": boxes, "labels": labels},
    }
    layer = RandomDiffeomorphism(seed=0, bounding_box_format="xyxy")
    out = next(iter(tf.data.Dataset.from_tensors(data).map(layer)))
    assert tuple(out["bounding_boxes"]["boxes"].shape) == (2, 2, 4)
    np.testing.assert_array_equal(out["bounding_boxes"]["labels"], [[1, -1], [2, 3]])


def test_single_images_take_unbatched_boxes_and_keypoints():
    layer = RandomDiffeomorphism(seed=1, bounding_box_format="rel_xyxy")
    out = layer(
        {
            "images": np.zeros((16, 16, 3), "float32"),
            "bounding_boxes": {
                "boxes": np.float32([[0.1, 0.1, 0.5, 0.6]]),
                "labels": np.int32([4]),
            },
            "keypoints": np.float32([[8, 8]]),
        }
    )
    assert tuple(out["bounding_boxes"]["boxes"].shape) == (1, 4)
    assert tuple(out["keypoints"].shape) == (1, 2)


def test_deformed_box_extent_is_close_to_a_densely_sampled_outline():
    # Ruderman et al.'s ImageNet TPS, boxes inside the image, against their outlines sampled
    # every 0.05 px: never beyond, and short by < 0.05 px (measured: up to ~0.045 px).
    layer = RandomThinPlateSpline(grid_size=5, max_displacement=10.0, seed=3)
    field = field_of(layer, 224, batch=2)
    corners = np.random.default_rng(1).uniform(20, 204, (2, 5, 2, 2))
    boxes = np.concatenate([corners.min(2), corners.max(2)], axis=-1).astype("float32")
    ours = as_numpy(deform_boxes(boxes, field))
    t = np.linspace(0.0, 1.0, int(224 / 0.05) + 1)[:, None]
    for b in range(2):
        for x1, y1, x2, y2 in boxes[b]:
            top, left = [x1, y1] + t * [x2 - x1, 0], [x1, y1] + t * [0, y2 - y1]
            outline = np.concatenate([top, top + [0, y2 - y1], left, left + [x2 - x1, 0]])
            moved = as_numpy(deform_keypoints(outline[None].astype("float32"), field[b : b + 1]))
            assert moved.min() >= 0  # every sample stayed in the image
            dense = np.concatenate([moved[0].min(0), moved[0].max(0)])
            box = ours[b][np.all(boxes[b] == [x1, y1, x2, y2], axis=-1)][0]
            shortfall = np.concatenate([box[:2] - dense[:2], dense[2:] - box[2:]])
            assert shortfall.min() >= -1e-3, shortfall  # never beyond the outline
            assert shortfall.max() <= 0.05, shortfall


def test_box_and_keypoint_errors_name_the_argument():
    images = np.zeros((2, 8, 8, 1), "float32")
    boxes = {"boxes": np.zeros((2, 1, 4), "float32"), "labels": np.zeros((2, 1), "int32")}
    with pytest.raises(ValueError, match="bounding_box_format=None"):
        RandomAffine()({"images": images, "bounding_boxes": boxes})
    with pytest.raises(ValueError, match="bounding_box_format='corners'"):
        RandomAffine(bounding_box_format="corners")
    with pytest.raises(ValueError, match="keypoints.shape=\\(2, 3\\)"):
        RandomAffine()({"images": images, "keypoints": np.zeros((2, 3), "float32")})
    with pytest.raises(ValueError, match="bounding_boxes\\['boxes'\\].shape=\\(1, 4\\)"):
        RandomAffine(bounding_box_format="xyxy")(
            {
                "images": images,
                "bounding_boxes": {"boxes": np.zeros((1, 4)), "labels": np.int32([0])},
            }
        )
    with pytest.raises(ValueError, match="bounding_boxes"):
        RandomAffine(bounding_box_format="xyxy")({"images": images, "bounding_boxes": [1, 2]})
    with pytest.raises(ValueError, match="iterations=0"):
        deform_keypoints(np.zeros((1, 2), "float32"), np.zeros((1, 8, 8, 2), "float32"), 0)
    layer = RandomAffine(bounding_box_format="CENTER_XYWH", seed=1)
    assert layer.bounding_box_format == "center_xywh"
    assert RandomAffine.from_config(layer.get_config()).bounding_box_format == "center_xywh"


def test_image_only_inputs_take_the_same_path_as_before():
    # An image-only dict does not touch the box and keypoint code.
    layer = RandomThinPlateSpline(seed=0)
    images = np.random.default_rng(0).random((2, 16, 16, 1)).astype("float32")
    np.testing.assert_array_equal(
        as_numpy(layer({"images": images})["images"]),
        as_numpy(RandomThinPlateSpline(seed=0)(images)),
    )
