"""Displacement fields (TPS, affine, diffeomorphism) against scipy and closed forms."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from scipy.interpolate import RBFInterpolator

from deformstab_tf.deformations import (
    affine_displacement,
    affine_matrices,
    control_grid,
    diffeo_displacement,
    shift,
    temperature_for_displacement,
    temperature_range,
    tps_displacement,
    tps_displacement_from_points,
    typical_displacement,
    warp,
)
from tests.backends import as_numpy

# Backend-independent: CI also runs this file with KERAS_BACKEND=jax (see README).
pytestmark = pytest.mark.backends


def pixel_grid(h, w):
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([ys.ravel(), xs.ravel()], axis=-1).astype(float)


@pytest.mark.parametrize("height,width,grid_size", [(32, 32, 3), (20, 28, 3), (24, 17, 5)])
def test_tps_equals_scipy_rbf_interpolator_at_every_pixel(height, width, grid_size):
    rng = np.random.default_rng(0)
    d = rng.uniform(-2, 2, (2, grid_size**2, 2))
    field = as_numpy(tps_displacement(d, height, width, grid_size))
    points = control_grid(height, width, grid_size)
    for n in range(2):
        expected = RBFInterpolator(points, d[n], kernel="thin_plate_spline", degree=1)(
            pixel_grid(height, width)
        ).reshape(height, width, 2)
        np.testing.assert_allclose(field[n], expected, atol=1e-3)


@pytest.mark.parametrize("height,width,grid_size", [(33, 33, 3), (17, 33, 5)])
def test_tps_passes_exactly_through_control_displacements(height, width, grid_size):
    d = np.random.default_rng(1).uniform(-3, 3, (1, grid_size, grid_size, 2)).astype("float32")
    field = as_numpy(tps_displacement(d, height, width, grid_size))[0]
    points = control_grid(height, width, grid_size).astype(int)  # integer here by construction
    np.testing.assert_allclose(field[points[:, 0], points[:, 1]], d.reshape(-1, 2), atol=1e-5)


def test_tps_from_points_equals_scipy_for_scattered_points():
    rng = np.random.default_rng(2)
    points = rng.uniform(0, 23, (2, 7, 2))
    d = rng.uniform(-2, 2, (2, 7, 2))
    field = as_numpy(tps_displacement_from_points(points, d, 24, 24))
    for n in range(2):
        expected = RBFInterpolator(points[n], d[n], kernel="thin_plate_spline", degree=1)(
            pixel_grid(24, 24)
        ).reshape(24, 24, 2)
        np.testing.assert_allclose(field[n], expected, atol=1e-3)
    # And on the fixed grid it agrees with the precomputed-matrix path.
    grid = control_grid(16, 16, 3)
    d = rng.uniform(-2, 2, (3, 9, 2))
    np.testing.assert_allclose(
        as_numpy(tps_displacement_from_points(grid, d, 16, 16)),
        as_numpy(tps_displacement(d, 16, 16, 3)),
        atol=1e-4,
    )


@settings(max_examples=20, deadline=None)
@given(
    coefficients=st.lists(st.floats(-0.2, 0.2), min_size=6, max_size=6),
    grid_size=st.integers(2, 5),
    height=st.integers(6, 20),
    width=st.integers(6, 20),
)
def test_tps_reproduces_affine_displacements_exactly(coefficients, grid_size, height, width):
    """The interpolant has an affine part and no bending for affine data: control displacements
    sampled from an affine field give back that field at every pixel."""
    a = np.array(coefficients).reshape(2, 3)

    def affine_field(points):
        return points @ a[:, :2].T * 10 + a[:, 2] * 10

    d = affine_field(control_grid(height, width, grid_size))[None]
    field = as_numpy(tps_displacement(d, height, width, grid_size))[0]
    expected = affine_field(pixel_grid(height, width)).reshape(height, width, 2)
    np.testing.assert_allclose(field, expected, atol=2e-3)


def test_tps_bad_arguments():
    with pytest.raises(ValueError, match="grid_size=1"):
        control_grid(8, 8, 1)
    with pytest.raises(ValueError, match="grid_size=9"):
        control_grid(8, 12, 9)
    with pytest.raises(ValueError, match="displacements"):
        tps_displacement(np.zeros((2, 8, 2)), 16, 16, 3)


def test_tps_from_points_names_coincident_and_collinear_control_points():
    zeros = np.zeros((1, 4, 2), "float32")
    coincident = np.array([[0, 0], [5, 5], [0, 0], [0, 5]], "float32")
    with pytest.raises(ValueError, match=r"`control_points` must be distinct: .*\[0.0, 0.0\]"):
        tps_displacement_from_points(coincident, zeros, 8, 8)
    collinear = np.array([[0, 0], [1, 1], [2, 2], [3, 3]], "float32")
    with pytest.raises(ValueError, match="`control_points` do not determine"):
        tps_displacement_from_points(collinear, zeros, 8, 8)


def test_rotation_matches_scipy_ndimage_rotate_in_the_interior():
    rng = np.random.default_rng(3)
    image = ndimage.gaussian_filter(rng.random((33, 33)), 1.5)
    angle = 17.0
    field = affine_displacement(affine_matrices(rotation=angle), 33, 33)
    out = as_numpy(warp(image[None, ..., None].astype("float32"), field))[0, ..., 0]
    expected = ndimage.rotate(image, angle, reshape=False, order=1)
    interior = (slice(8, -8), slice(8, -8))
    np.testing.assert_allclose(out[interior], expected[interior], atol=1e-4)


def test_affine_field_moves_content_to_a_p_plus_t():
    rng = np.random.default_rng(4)
    matrices = as_numpy(
        affine_matrices(
            rotation=rng.uniform(-30, 30, 3),
            scale=(rng.uniform(0.8, 1.2, 3), rng.uniform(0.8, 1.2, 3)),
            shear=(rng.uniform(-0.2, 0.2, 3), rng.uniform(-0.2, 0.2, 3)),
            translation=(rng.uniform(-3, 3, 3), rng.uniform(-3, 3, 3)),
        )
    )
    field = as_numpy(affine_displacement(matrices, 9, 12))
    centred = pixel_grid(9, 12) - [4.0, 5.5]
    for n in range(3):
        source = centred - field[n].reshape(-1, 2)
        moved = source @ matrices[n, :, :2].T + matrices[n, :, 2]
        np.testing.assert_allclose(moved, centred, atol=1e-4)


def test_affine_matrices_mix_scalar_and_batched_parameters():
    angles = np.array([0.0, 90.0, -30.0])
    matrices = as_numpy(affine_matrices(rotation=angles, scale=2.0, translation=(1.0, np.zeros(3))))
    assert matrices.shape == (3, 2, 3)
    for n, angle in enumerate(np.deg2rad(angles)):
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        np.testing.assert_allclose(matrices[n, :, :2], 2.0 * rotation, atol=1e-6)
        np.testing.assert_allclose(matrices[n, :, 2], [1.0, 0.0])


def test_affine_identity_is_exact_and_integer_translation_is_a_shift():
    assert np.all(as_numpy(affine_displacement(affine_matrices(), 7, 5)) == 0.0)
    images = np.random.default_rng(5).random((1, 8, 8, 2)).astype("float32")
    field = affine_displacement(affine_matrices(translation=(2.0, -1.0)), 8, 8)
    np.testing.assert_allclose(
        as_numpy(warp(images, field, fill_mode="wrap")), as_numpy(shift(images, 2, -1)), atol=1e-6
    )


def test_diffeomorphism_is_zero_on_the_border_for_non_square_images():
    coefficients = np.random.default_rng(12).standard_normal((4, 2, 5, 5))
    field = as_numpy(diffeo_displacement(coefficients, 20, 31, temperature=3e-3))
    assert field.shape == (4, 20, 31, 2)
    for border in (field[:, 0], field[:, -1], field[:, :, 0], field[:, :, -1]):
        np.testing.assert_allclose(border, 0.0, atol=1e-5)
    assert np.abs(field).max() > 0.1


def test_diffeomorphism_mode_orientation_follows_the_formula():
    # A single coefficient C_12 of the dx field: u(x, y) = sin(pi x) sin(2 pi y) / sqrt(5).
    coefficients = np.zeros((1, 2, 3, 3), "float32")
    coefficients[0, 1, 0, 1] = 1.0
    height, width, temperature = 9, 13, 1e-3
    field = as_numpy(diffeo_displacement(coefficients, height, width, temperature=temperature))[0]
    y = np.linspace(0, 1, height)[:, None]
    x = np.linspace(0, 1, width)[None, :]
    expected = np.sin(np.pi * x) * np.sin(2 * np.pi * y) / np.sqrt(5)
    np.testing.assert_allclose(field[..., 1], math.sqrt(temperature) * width * expected, atol=1e-5)
    np.testing.assert_allclose(field[..., 0], 0.0, atol=1e-7)


def _rms_central_displacement(cutoff, temperature=None, displacement=None, n=33, draws=4000):
    coefficients = np.random.default_rng(cutoff).standard_normal((draws, 2, cutoff, cutoff))
    field = as_numpy(
        diffeo_displacement(coefficients, n, n, temperature=temperature, displacement=displacement)
    )
    return float(np.sqrt(np.mean(np.sum(field[:, n // 2, n // 2] ** 2, axis=-1))))


def test_diffeomorphism_central_displacement_matches_closed_form_and_typical_displacement():
    n, temperature = 33, 1e-3
    for cutoff in (3, 10):
        rms = _rms_central_displacement(cutoff, temperature=temperature, n=n)
        # Exact: E|u(centre)|^2 = 2 T n^2 sum_{i,j odd, r < c + 1/2} 1 / (i^2 + j^2).
        odd = [
            1 / (i * i + j * j)
            for i in range(1, cutoff + 1, 2)
            for j in range(1, cutoff + 1, 2)
            if math.hypot(i, j) < cutoff + 0.5
        ]
        exact = n * math.sqrt(2 * temperature * sum(odd))
        assert rms == pytest.approx(exact, rel=0.05)
    # typical_displacement is the large-c form of the same quantity (27% low at c = 3).
    cutoff = 10
    rms = _rms_central_displacement(cutoff, temperature=temperature, n=n)
    assert rms == pytest.approx(typical_displacement(temperature, cutoff, n), rel=0.15)
    # `displacement=delta` draws the same field as the temperature that gives delta.
    delta = typical_displacement(temperature, cutoff, n)
    assert _rms_central_displacement(cutoff, displacement=delta, n=n) == pytest.approx(rms, 1e-4)


def test_temperature_formulas_match_the_spec_table():
    for cutoff, (t_min, t_max) in {3: (2.83e-4, 1.31e-2), 5: (1.93e-4, 3.21e-3)}.items():
        assert temperature_range(32, cutoff) == pytest.approx((t_min, t_max), rel=5e-3)
    assert temperature_range(32, 15) == pytest.approx((1.15e-4, 2.12e-4), rel=5e-3)
    t_min, _ = temperature_range(32, 3)
    assert typical_displacement(t_min, 3, 32) == pytest.approx(0.5)
    assert temperature_for_displacement(1.7, 4, 28) == pytest.approx(
        4 * 1.7**2 / (math.pi * 28**2 * math.log(4))
    )
    assert typical_displacement(temperature_for_displacement(1.7, 4, 28), 4, 28) == pytest.approx(
        1.7
    )
    with pytest.raises(ValueError, match="cutoff=1"):
        temperature_range(32, 1)


def test_field_functions_name_bad_arguments():
    with pytest.raises(ValueError, match="height=0"):
        affine_displacement(affine_matrices(), 0, 5)
    with pytest.raises(ValueError, match="width=2.5"):
        affine_displacement(affine_matrices(), 4, 2.5)
    with pytest.raises(ValueError, match="scale"):
        affine_matrices(scale=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="height=0"):
        diffeo_displacement(np.zeros((1, 2, 3, 3)), 0, 5, temperature=1e-3)
    with pytest.raises(ValueError, match="temperature"):
        diffeo_displacement(np.zeros((1, 2, 3, 3)), 5, 5)
    with pytest.raises(ValueError, match="height='a'"):
        tps_displacement(np.zeros((1, 9, 2)), "a", 5, 3)
    with pytest.raises(ValueError, match="size=0"):
        temperature_range(0, 3)
    with pytest.raises(ValueError, match="temperature=-1"):
        typical_displacement(-1, 3, 32)
    with pytest.raises(ValueError, match="delta=-0.5"):
        temperature_for_displacement(-0.5, 3, 32)
    with pytest.raises(TypeError, match="fill_value"):
        warp(np.zeros((1, 4, 4, 1), "float32"), np.zeros((1, 4, 4, 2), "float32"), fill_value="x")
