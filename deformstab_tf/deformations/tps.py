"""Thin-plate-spline (TPS) displacement fields (Ruderman et al. 2018, section 2.1).

The TPS interpolant with kernel ``phi(r) = r^2 log r`` plus an affine part passes exactly through
the control displacements. On a *fixed* control grid it is linear in the displacements,
``u = M d``, with an ``(H*W, K)`` matrix ``M`` that depends only on the sizes: it is solved once in
float64 and cached, so a batch of random warps is a single matmul with no per-sample solve.
"""

import numpy as np

from deformstab_tf._validation import check_positive_int
from deformstab_tf.deformations import _backend


def control_grid(height, width, grid_size):
    """The evenly spaced ``grid_size x grid_size`` control points, corners included.

    Returns:
        A float64 numpy array ``(grid_size**2, 2)`` of ``(y, x)`` pixel coordinates, row-major
        (``y`` varies slowest), matching the order of the displacements `tps_displacement` takes.
    """
    check_positive_int("height", height)
    check_positive_int("width", width)
    check_positive_int("grid_size", grid_size)
    if grid_size < 2:
        raise ValueError(f"`grid_size` must be an integer >= 2. Received: grid_size={grid_size!r}")
    if grid_size > min(height, width):
        raise ValueError(
            f"`grid_size` must be at most the image size {min(height, width)} "
            f"(height={height}, width={width}). Received: grid_size={grid_size}"
        )
    ys, xs = np.meshgrid(
        np.linspace(0.0, height - 1.0, grid_size),
        np.linspace(0.0, width - 1.0, grid_size),
        indexing="ij",
    )
    return np.stack([ys.ravel(), xs.ravel()], axis=-1)


def _tps_kernel(squared_distance):
    """``phi(r) = r^2 log r``, written as ``0.5 r^2 log r^2`` with ``phi(0) = 0``."""
    safe = np.where(squared_distance > 0.0, squared_distance, 1.0)
    return 0.5 * squared_distance * np.log(safe)


@_backend.host_constant
def tps_interpolation_matrix(height, width, grid_size):
    """The cached ``(H*W, K)`` float32 matrix ``M`` with ``u = M d`` on the fixed control grid.

    Row ``y * W + x`` holds the weights of the ``K = grid_size**2`` control displacements at
    pixel ``(y, x)``. Solved in float64 with coordinates scaled to ``[0, 1]`` (the TPS interpolant
    with an affine part does not depend on the scale, and the scaled system is well conditioned).
    """
    points = control_grid(height, width, grid_size)
    scale = float(max(height, width) - 1) or 1.0
    points = points / scale
    k = points.shape[0]
    ys, xs = np.meshgrid(np.arange(height) / scale, np.arange(width) / scale, indexing="ij")
    pixels = np.stack([ys.ravel(), xs.ravel()], axis=-1)

    system = np.zeros((k + 3, k + 3))
    system[:k, :k] = _tps_kernel(((points[:, None] - points[None]) ** 2).sum(-1))
    affine = np.concatenate([np.ones((k, 1)), points], axis=1)
    system[:k, k:] = affine
    system[k:, :k] = affine.T
    # Columns: the spline coefficients for a unit displacement at each control point.
    rhs = np.concatenate([np.eye(k), np.zeros((3, k))], axis=0)
    coefficients = np.linalg.solve(system, rhs)

    basis = np.concatenate(
        [
            _tps_kernel(((pixels[:, None] - points[None]) ** 2).sum(-1)),
            np.ones((pixels.shape[0], 1)),
            pixels,
        ],
        axis=1,
    )
    matrix = (basis @ coefficients).astype(np.float32)
    matrix.setflags(write=False)
    return matrix


def tps_displacement(displacements, height, width, grid_size):
    """Dense TPS displacement field from displacements on the fixed control grid.

    Runs on the active Keras backend, or on TensorFlow ops inside a TensorFlow graph (as `warp`).

    Args:
        displacements: ``(B, K, 2)`` or ``(B, grid_size, grid_size, 2)`` control displacements in
            pixels, last axis ``(dy, dx)``, in the row-major order of `control_grid`.
        height, width: the image size.
        grid_size: the control grid is ``grid_size x grid_size``, evenly spaced, corners included.

    Returns:
        A float32 field ``(B, H, W, 2)``; at every control point it equals that point's
        displacement.

    Example:

    >>> d = np.random.uniform(-2.0, 2.0, (4, 9, 2))
    >>> tuple(tps_displacement(d, 32, 32, grid_size=3).shape)
    (4, 32, 32, 2)
    """
    control_grid(height, width, grid_size)  # validates the sizes, naming the argument
    B = _backend.ops(_backend.backend_name(displacements))
    matrix = _transposed_matrix(int(height), int(width), int(grid_size))
    displacements = B.cast(B.convert_to_tensor(displacements), "float32")
    k = grid_size * grid_size
    if len(displacements.shape) == 4:
        displacements = B.numpy.reshape(displacements, (-1, k, 2))
    if len(displacements.shape) != 3 or tuple(displacements.shape[1:]) != (k, 2):
        raise ValueError(
            f"`displacements` must have shape (B, {k}, 2) or (B, {grid_size}, {grid_size}, 2) "
            f"for grid_size={grid_size}. Received: displacements.shape="
            f"{tuple(displacements.shape)}"
        )
    # (B*2, K) @ (K, H*W): one plain matmul. Measured faster than a batched einsum, in graph mode
    # and even more under XLA, where the einsum's layout doubled the cost of the warp after it.
    rows = B.numpy.reshape(B.numpy.transpose(displacements, (0, 2, 1)), (-1, k))
    field = B.numpy.matmul(rows, B.convert_to_tensor(matrix))
    return B.numpy.transpose(B.numpy.reshape(field, (-1, 2, height, width)), (0, 2, 3, 1))


@_backend.host_constant
def _transposed_matrix(height, width, grid_size):
    """``M^T``, ``(K, H*W)``, contiguous: the right operand of the field's matmul."""
    matrix = np.ascontiguousarray(tps_interpolation_matrix(height, width, grid_size).T)
    matrix.setflags(write=False)
    return matrix


def tps_displacement_from_points(control_points, displacements, height, width):
    """Dense TPS displacement field from arbitrary control points (one linear solve per sample).

    This is the general form (what ``tfa.image.sparse_image_warp`` computed on every call): it
    solves the ``(K+3) x (K+3)`` TPS system for each sample. For a fixed grid prefer
    `tps_displacement`, which needs no solve. Runs on the active Keras backend, or on TensorFlow
    ops inside a TensorFlow graph (as `warp`).

    Args:
        control_points: ``(B, K, 2)`` or ``(K, 2)`` control point ``(y, x)`` pixel coordinates,
            K >= 3 and not all on one line.
        displacements: ``(B, K, 2)`` displacements ``(dy, dx)`` at those points.
        height, width: the image size.

    Returns:
        A float32 field ``(B, H, W, 2)`` through the control displacements.

    Raises:
        ValueError: on bad shapes or sizes; when called eagerly, also on coincident control
            points or a singular system (all points on one line), naming `control_points`.

    Example:

    >>> points = np.float32([[0, 0], [0, 15], [15, 0], [15, 15], [7, 7]])
    >>> d = np.random.uniform(-1.0, 1.0, (2, 5, 2))
    >>> tuple(tps_displacement_from_points(points, d, 16, 16).shape)
    (2, 16, 16, 2)
    """
    check_positive_int("height", height)
    check_positive_int("width", width)
    B = _backend.ops(_backend.backend_name(displacements))
    displacements = B.cast(B.convert_to_tensor(displacements), "float32")
    control_points = B.cast(B.convert_to_tensor(control_points), "float32")
    if len(displacements.shape) != 3 or displacements.shape[-1] != 2:
        raise ValueError(
            "`displacements` must have shape (B, K, 2). "
            f"Received: shape={tuple(displacements.shape)}"
        )
    if len(control_points.shape) == 2:
        control_points = B.numpy.broadcast_to(control_points, B.core.shape(displacements))
    if len(control_points.shape) != 3 or control_points.shape[-1] != 2:
        raise ValueError(
            f"`control_points` must have shape (B, K, 2) or (K, 2). "
            f"Received: shape={tuple(control_points.shape)}"
        )
    concrete = _backend.is_concrete(control_points)
    if concrete:  # name a duplicate before the solve fails
        _check_distinct_points(B.convert_to_numpy(control_points))
    scale = float(max(height, width) - 1) or 1.0
    points = control_points / scale
    batch, k = B.core.shape(points)[:2]

    def kernel(squared_distance):
        safe = B.numpy.where(squared_distance > 0.0, squared_distance, 1.0)
        return 0.5 * squared_distance * B.numpy.log(safe)

    def squared_distances(a, b):
        return B.numpy.sum(B.numpy.square(a[:, :, None] - b[:, None]), axis=-1)

    affine = B.numpy.concatenate([B.numpy.ones((batch, k, 1)), points], axis=-1)
    top = B.numpy.concatenate([kernel(squared_distances(points, points)), affine], axis=-1)
    bottom = B.numpy.concatenate(
        [B.numpy.transpose(affine, (0, 2, 1)), B.numpy.zeros((batch, 3, 3))], axis=-1
    )
    system = B.numpy.concatenate([top, bottom], axis=1)
    rhs = B.numpy.concatenate([displacements, B.numpy.zeros((batch, 3, 2))], axis=1)
    try:
        coefficients = B.linalg.solve(system, rhs)  # (B, K+3, 2)
    except Exception as error:  # eager TensorFlow raises on a singular system
        if not concrete:
            raise
        raise _singular(B.convert_to_numpy(control_points)) from error
    if concrete and not bool(B.numpy.all(B.numpy.isfinite(coefficients))):  # JAX: inf/NaN
        raise _singular(B.convert_to_numpy(control_points))

    ys, xs = np.meshgrid(np.arange(height) / scale, np.arange(width) / scale, indexing="ij")
    pixels = B.convert_to_tensor(np.stack([ys.ravel(), xs.ravel()], -1).astype("float32"))
    to_points = squared_distances(  # (B, P, K)
        B.numpy.broadcast_to(pixels, (batch, height * width, 2)), points
    )
    field = B.numpy.matmul(kernel(to_points), coefficients[:, :-3])
    field += coefficients[:, -3:-2] + B.numpy.matmul(
        B.numpy.broadcast_to(pixels, (batch, height * width, 2)), coefficients[:, -2:]
    )
    return B.numpy.reshape(field, (-1, height, width, 2))


def _singular(control_points):
    return ValueError(
        "`control_points` do not determine a thin-plate spline: the TPS system is singular "
        "(are all points on one line?). Received: "
        f"control_points={_preview(control_points)}"
    )


def _check_distinct_points(points):
    """Coincident control points make the TPS system singular: name them (eager input only)."""
    for b, sample in enumerate(points.reshape(-1, *points.shape[-2:])):
        _, first, counts = np.unique(sample, axis=0, return_index=True, return_counts=True)
        if (counts > 1).any():
            duplicate = sample[first[counts > 1][0]].tolist()
            raise ValueError(
                "`control_points` must be distinct: sample "
                f"{b} has the point (y, x)={duplicate} more than once. Received: "
                f"control_points={_preview(points)}"
            )


def _preview(points):
    return np.array2string(np.asarray(points), threshold=12, precision=3)
