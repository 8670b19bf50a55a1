"""The resampler against scipy.ndimage and a plain numpy reference."""

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from deformstab_tf.deformations import (
    FILL_MODES,
    affine_displacement,
    affine_matrices,
    shift,
    warp,
    warp_affine,
)
from tests.backends import as_numpy, dtype_of, traced
from tests.references import numpy_padded_shift, numpy_warp

# Backend-independent: CI also runs this file with KERAS_BACKEND=jax (see README).
pytestmark = pytest.mark.backends

# scipy.ndimage modes that read each out-of-range neighbour the way ours do.
SCIPY_MODE = {
    "nearest": "nearest",
    "reflect": "reflect",
    "wrap": "grid-wrap",
    "constant": "grid-constant",
}


def numpy_bilinear(images, displacement, fill_mode, fill_value=0.0):
    """Plain numpy: out[b,y,x] = img[b, y - dy, x - dx], per-neighbour fill."""
    b, h, w, c = images.shape
    out = np.zeros(images.shape, np.float64)
    for n in range(b):
        for y in range(h):
            for x in range(w):
                sy = y - displacement[n, y, x, 0]
                sx = x - displacement[n, y, x, 1]
                y0, x0 = int(np.floor(sy)), int(np.floor(sx))
                total = np.zeros(c)
                for yy, wy in ((y0, 1 - (sy - y0)), (y0 + 1, sy - y0)):
                    for xx, wx in ((x0, 1 - (sx - x0)), (x0 + 1, sx - x0)):
                        total += wy * wx * read(images[n], yy, xx, fill_mode, fill_value)
                out[n, y, x] = total
    return out


def read(image, y, x, fill_mode, fill_value):
    h, w = image.shape[:2]
    if fill_mode == "constant":
        if 0 <= y < h and 0 <= x < w:
            return image[y, x]
        return np.full(image.shape[-1], fill_value)
    if fill_mode == "nearest":
        return image[min(max(y, 0), h - 1), min(max(x, 0), w - 1)]
    if fill_mode == "wrap":
        return image[y % h, x % w]
    # reflect: d c b a | a b c d | d c b a
    y, x = y % (2 * h), x % (2 * w)
    return image[y if y < h else 2 * h - 1 - y, x if x < w else 2 * w - 1 - x]


@pytest.mark.parametrize("fill_mode", FILL_MODES)
@pytest.mark.parametrize("magnitude", [4.0, 30.0])  # within one image size, and several periods
def test_bilinear_matches_numpy_and_scipy(fill_mode, magnitude):
    rng = np.random.default_rng(0)
    images = rng.random((2, 7, 9, 3))
    displacement = rng.uniform(-magnitude, magnitude, (2, 7, 9, 2))
    out = as_numpy(
        warp(images.astype("float32"), displacement, fill_mode=fill_mode, fill_value=0.5)
    )
    np.testing.assert_allclose(out, numpy_bilinear(images, displacement, fill_mode, 0.5), atol=2e-5)
    ys, xs = np.meshgrid(np.arange(7), np.arange(9), indexing="ij")
    for n in range(2):
        coords = [ys - displacement[n, ..., 0], xs - displacement[n, ..., 1]]
        for ch in range(3):
            expected = ndimage.map_coordinates(
                images[n, ..., ch], coords, order=1, mode=SCIPY_MODE[fill_mode], cval=0.5
            )
            np.testing.assert_allclose(out[n, ..., ch], expected, atol=2e-5)


@pytest.mark.parametrize("fill_mode", FILL_MODES)
def test_bilinear_on_images_one_or_two_pixels_wide(fill_mode):
    # Where every neighbour is an edge pixel, and sources lie several periods outside.
    rng = np.random.default_rng(7)
    for height, width in ((5, 1), (1, 5), (4, 2), (3, 3)):
        images = rng.random((2, height, width, 2))
        displacement = rng.uniform(-2.5 * width, 2.5 * width, (2, height, width, 2))
        out = as_numpy(warp(images.astype("float32"), displacement, fill_mode=fill_mode))
        expected = numpy_bilinear(images, displacement, fill_mode)
        np.testing.assert_allclose(out, expected, atol=2e-5, err_msg=f"{height}x{width}")


def test_bilinear_in_a_trace_over_images_of_several_widths():
    # A trace generalised over image sizes (TensorFlow's reduce_retracing) has no static size.
    rng = np.random.default_rng(8)
    resample = traced(lambda images, field: warp(images, field, fill_mode="reflect"))
    for width in (4, 6, 9, 1):
        images = rng.random((1, 3, width, 2))
        displacement = rng.uniform(-3, 3, (1, 3, width, 2))
        out = as_numpy(resample(images.astype("float32"), displacement.astype("float32")))
        expected = numpy_bilinear(images, displacement, "reflect")
        np.testing.assert_allclose(out, expected, atol=2e-5, err_msg=f"width {width}")


@pytest.mark.parametrize("fill_mode", FILL_MODES)
def test_nearest_interpolation_keeps_dtype_and_matches_scipy(fill_mode):
    rng = np.random.default_rng(1)
    masks = rng.integers(0, 5, (1, 6, 8, 1)).astype("int32")
    displacement = rng.uniform(-3, 3, (1, 6, 8, 2)).astype("float32")
    # Keep away from the .5 ties where rounding conventions differ.
    displacement = np.round(displacement * 4) / 4 + 0.1
    out = warp(masks, displacement, interpolation="nearest", fill_mode=fill_mode, fill_value=9)
    assert dtype_of(out) == "int32"
    ys, xs = np.meshgrid(np.arange(6), np.arange(8), indexing="ij")
    coords = [ys - displacement[0, ..., 0], xs - displacement[0, ..., 1]]
    expected = ndimage.map_coordinates(
        masks[0, ..., 0], coords, order=0, mode=SCIPY_MODE[fill_mode], cval=9
    )
    np.testing.assert_array_equal(as_numpy(out)[0, ..., 0], expected)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "uint8", "int32"])
def test_zero_displacement_is_exact_identity(dtype):
    images = keras.ops.cast(np.random.default_rng(2).integers(0, 255, (2, 5, 6, 4)), dtype)
    out = warp(images, np.zeros((2, 5, 6, 2)), fill_mode="constant", fill_value=7.0)
    assert dtype_of(out) == (dtype if "float" in dtype else "float32")
    np.testing.assert_array_equal(
        as_numpy(out).astype("float64"), as_numpy(images).astype("float64")
    )


def test_single_image_and_broadcast_field():
    rng = np.random.default_rng(3)
    images = rng.random((3, 6, 6, 2)).astype("float32")
    field = rng.uniform(-1, 1, (1, 6, 6, 2)).astype("float32")
    batched = as_numpy(warp(images, field))
    for n in range(3):
        np.testing.assert_allclose(as_numpy(warp(images[n], field[0])), batched[n], atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    dy=st.integers(-12, 12),
    dx=st.integers(-12, 12),
)
def test_circular_shift_equals_np_roll(h, w, dy, dx):
    images = np.arange(2 * h * w * 3, dtype="float32").reshape(2, h, w, 3)
    np.testing.assert_array_equal(
        as_numpy(shift(images, dy, dx)), np.roll(images, (dy, dx), axis=(1, 2))
    )


def test_shift_with_fill_equals_roll_in_the_interior_and_per_image_offsets():
    images = np.random.default_rng(4).random((2, 8, 8, 1)).astype("float32")
    out = as_numpy(shift(images, 2, -3, fill_mode="constant", fill_value=-1.0))
    rolled = np.roll(images, (2, -3), axis=(1, 2))
    np.testing.assert_array_equal(out[:, 2:, :-3], rolled[:, 2:, :-3])
    assert np.all(out[:, :2] == -1.0) and np.all(out[:, :, -3:] == -1.0)
    per_image = as_numpy(shift(images, np.array([1, -1]), np.array([0, 2])))
    np.testing.assert_array_equal(per_image[0], np.roll(images[0], (1, 0), axis=(0, 1)))
    np.testing.assert_array_equal(per_image[1], np.roll(images[1], (-1, 2), axis=(0, 1)))


@pytest.mark.parametrize("fill_mode", FILL_MODES)
def test_per_image_shifts_match_numpy_pad(fill_mode):
    images = np.random.default_rng(5).random((3, 6, 7, 2)).astype("float32")
    dy, dx = np.array([2, -3, 0]), np.array([-1, 3, 5])
    shifted = as_numpy(shift(images, dy, dx, fill_mode=fill_mode))
    for b in range(3):
        np.testing.assert_array_equal(
            shifted[b], numpy_padded_shift(images[b], dy[b], dx[b], fill_mode)
        )


def test_bad_arguments_name_the_argument():
    images = np.zeros((1, 4, 4, 1), "float32")
    field = np.zeros((1, 4, 4, 2), "float32")
    with pytest.raises(ValueError, match="fill_mode='mirror'"):
        warp(images, field, fill_mode="mirror")
    with pytest.raises(ValueError, match="interpolation='bicubic'"):
        warp(images, field, interpolation="bicubic")
    with pytest.raises(ValueError, match="images.shape"):
        warp(np.zeros((4, 4), "float32"), field)
    with pytest.raises(ValueError, match="displacement"):
        warp(images, np.zeros((1, 5, 4, 2), "float32"))
    with pytest.raises(TypeError, match="images.dtype=bool"):
        warp(np.zeros((1, 4, 4, 1), bool), field)
    with pytest.raises(TypeError, match="dy"):
        shift(images, 0.5, 1)


def test_non_finite_displacement_is_an_error_eagerly_and_never_a_plausible_value_traced():
    images = np.arange(16, dtype="float32").reshape(1, 4, 4, 1)
    field = np.zeros((1, 4, 4, 2), "float32")
    field[0, 1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="`displacement` must be finite; .* at 1 entries"):
        warp(images, field)
    for fill_mode in FILL_MODES:
        out = as_numpy(
            traced(lambda x, u, mode=fill_mode: warp(x, u, fill_mode=mode))(images, field)
        )
        assert np.isnan(out[0, 1, 2, 0]), fill_mode
        finite = np.ones_like(out, bool)
        finite[0, 1, 2, 0] = False
        np.testing.assert_array_equal(out[finite], images[finite])


def float64_affine_field(matrices, height, width):
    """The field of `affine_displacement`, in float64 from the (float32) matrices."""
    m = np.asarray(matrices, np.float64)
    a, b, t_y, c, d, t_x = (m[:, i, j] for i, j in ((0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)))
    det = a * d - b * c
    inv = [v[:, None, None] / det[:, None, None] for v in (d, -b, -c, a)]
    ys = np.arange(height)[None, :, None] - (height - 1) / 2
    xs = np.arange(width)[None, None, :] - (width - 1) / 2
    qy, qx = ys - t_y[:, None, None], xs - t_x[:, None, None]
    return np.stack([ys - (inv[0] * qy + inv[1] * qx), xs - (inv[2] * qy + inv[3] * qx)], -1)


def random_matrices(batch, seed):
    rng = np.random.default_rng(seed)
    return np.asarray(
        affine_matrices(
            rotation=rng.uniform(-25, 25, batch).astype("float32"),
            scale=(rng.uniform(0.7, 1.3, batch).astype("float32"), np.float32(1.1)),
            shear=(rng.uniform(-0.2, 0.2, batch).astype("float32"), np.float32(0.1)),
            translation=(rng.uniform(-5, 5, batch).astype("float32"), np.float32(-2.0)),
        )
    )


@pytest.mark.parametrize("fill_mode", FILL_MODES)
@pytest.mark.parametrize("size", [(13, 17), (64, 48)])
def test_warp_affine_matches_the_dense_field_and_the_float64_reference(fill_mode, size):
    height, width = size
    images = np.random.default_rng(1).random((4, height, width, 3)).astype("float32")
    matrices = random_matrices(4, seed=2)
    fast = as_numpy(warp_affine(images, matrices, fill_mode=fill_mode, fill_value=0.25))
    dense = as_numpy(
        warp(
            images,
            affine_displacement(matrices, height, width),
            fill_mode=fill_mode,
            fill_value=0.25,
        )
    )
    field = float64_affine_field(matrices, height, width)
    reference = numpy_warp(images.astype(np.float64), field, "bilinear", fill_mode, 0.25)
    np.testing.assert_allclose(fast, reference, atol=1e-5)
    np.testing.assert_allclose(fast, dense, atol=1e-5)
    # Nearest reads the same pixels (a coordinate within float32 rounding of a half-pixel tie
    # may round the other way: none in these draws).
    fast = as_numpy(warp_affine(images, matrices, "nearest", fill_mode, 0.25))
    reference = numpy_warp(images.astype(np.float64), field, "nearest", fill_mode, 0.25)
    np.testing.assert_array_equal(fast, reference.astype("float32"))


def test_warp_affine_single_image_shared_matrix_traced_and_bad_matrices():
    images = np.random.default_rng(3).random((3, 9, 11, 2)).astype("float32")
    matrix = random_matrices(1, seed=4)
    shared = as_numpy(warp_affine(images, matrix))
    np.testing.assert_allclose(as_numpy(warp_affine(images[1], matrix[0])), shared[1], atol=1e-6)
    np.testing.assert_allclose(
        as_numpy(warp_affine(images, np.repeat(matrix, 3, axis=0))), shared, atol=1e-6
    )
    np.testing.assert_allclose(
        as_numpy(traced(lambda x, a: warp_affine(x, a))(images, matrix)), shared, atol=1e-6
    )
    identity = np.float32([[1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(as_numpy(warp_affine(images, identity)), images)
    with pytest.raises(ValueError, match="matrices.shape"):
        warp_affine(images, np.zeros((3, 2, 2), "float32"))
    with pytest.raises(ValueError, match="one matrix per image"):
        warp_affine(images, np.repeat(matrix, 2, axis=0))
    with pytest.raises(ValueError, match="`matrices` must be finite and invertible"):
        warp_affine(images, np.float32([[1, 2, 0], [2, 4, 0]]))
    with pytest.raises(ValueError, match="`matrices` must be finite and invertible"):
        warp_affine(images, np.float32([[np.nan, 0, 0], [0, 1, 0]]))
    with pytest.raises(ValueError, match="fill_mode='mirror'"):
        warp_affine(images, identity, fill_mode="mirror")


@pytest.mark.parametrize("fill_mode", FILL_MODES)
def test_integer_output_dtype_rounds_and_clips_the_float_path(fill_mode):
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, (3, 10, 12, 3)).astype("uint8")
    field = rng.uniform(-4, 4, (3, 10, 12, 2)).astype("float32")
    for fill_value in (0.0, 300.0, -7.0, 127.5):
        floats = as_numpy(warp(images, field, fill_mode=fill_mode, fill_value=fill_value))
        out = warp(images, field, fill_mode=fill_mode, fill_value=fill_value, dtype="uint8")
        assert dtype_of(out) == "uint8"
        expected = np.clip(np.round(floats), 0, 255)
        # The same float32 arithmetic, compiled apart: a value within rounding of a half may
        # round the other way.
        assert np.abs(as_numpy(out).astype(int) - expected).max() <= 1
        assert (as_numpy(out) != expected).mean() < 1e-3
        matrices = random_matrices(3, seed=7)
        floats = as_numpy(warp_affine(images, matrices, "bilinear", fill_mode, fill_value))
        out = warp_affine(images, matrices, "bilinear", fill_mode, fill_value, dtype="uint8")
        assert dtype_of(out) == "uint8"
        expected = np.clip(np.round(floats), 0, 255)
        assert np.abs(as_numpy(out).astype(int) - expected).max() <= 1
        assert (as_numpy(out) != expected).mean() < 1e-3
    # Halves round to even, as np.round; nearest copies and casts.
    ramp = np.float32([0.5, 1.5, 2.5, -0.5, 254.5, 255.5, 300.0, -3.0]).reshape(1, 1, 8, 1)
    out = warp(ramp, np.zeros((1, 1, 8, 2), "float32"), dtype="uint8")
    np.testing.assert_array_equal(as_numpy(out).ravel(), [0, 2, 2, 0, 254, 255, 255, 0])
    out = warp(ramp, np.zeros((1, 1, 8, 2), "float32"), "nearest", dtype="int16")
    np.testing.assert_array_equal(as_numpy(out).ravel(), [0, 2, 2, 0, 254, 256, 300, -3])
    with pytest.raises(TypeError, match="dtype='bool'"):
        warp(ramp, np.zeros((1, 1, 8, 2), "float32"), dtype="bool")
    with pytest.raises(TypeError, match="dtype='pixels'"):
        warp_affine(ramp, np.float32([[1, 0, 0], [0, 1, 0]]), dtype="pixels")
