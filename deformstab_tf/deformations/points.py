"""Keypoints and bounding boxes through a displacement field: where the warped image shows them.

Under the package's convention (see `warp`) the warped image shows at ``q`` the input's content
at ``q - u(q)``. A point ``p`` of the input therefore moves to the ``q`` that solves
``q - u(q) = p``: the *forward* map, the inverse of the backward map that `warp` samples. It is
solved per point, vectorised, with a fixed number of damped Newton iterations on the field
sampled bilinearly at ``q`` (continued linearly up to a pixel beyond the outermost pixel centres,
which is exact for affine fields), starting at ``q0 = p + u(p)``.

Coordinates here are those of Keras's bounding boxes: pixels, ``x`` right and ``y`` down, the
image covering ``[0, W] x [0, H]``, so the pixel in row ``i`` and column ``j`` is the unit square
centred on ``(x, y) = (j + 0.5, i + 0.5)`` (a keypoint given as a pixel index ``(j, i)``, as in
COCO's annotations, is ``(j + 0.5, i + 0.5)`` here). Keypoints are ``(x, y)``; boxes ``xyxy``.

Like the other field functions these run on the ops of the backend their input belongs to (the
active backend's, or TensorFlow's inside a TensorFlow graph; jitted on JAX, and compiled with the
rest under XLA), and they take a ``(1, H, W, 2)`` field for a whole batch of points
(``same_on_batch``). The Newton iterations are a ``fori_loop``: a small graph in ``tf.data``.
"""

from deformstab_tf._validation import check_positive_int
from deformstab_tf.deformations import _backend

# Newton iterations of the forward map: a bilinear field converges to float32 rounding in 2-4,
# an affine one in 1; the rest is margin for damped steps where the field is steep.
NEWTON_ITERATIONS = 10
# Intervals per box edge: every pixel up to 32-pixel images, 32 beyond (see `deform_boxes`).
BOX_EDGE_INTERVALS = 32
# A forward point whose residual |q - u(q) - p| stays above this (a field that folds, so that
# Newton found no inverse) is reported as having left the image rather than at a wrong place.
_RESIDUAL_TOLERANCE = 0.05
# The marker of a keypoint that is not in the image (Keras marks boxes that are with label -1).
INVISIBLE = -1.0


def _sample(B, flat, base, height, width, points):
    """The bilinear field at `points` ``(Bp, N, 2)`` ``(y, x)`` (pixel-centre coordinates) and
    its derivatives along y and x, each ``(Bp, N, 2)``.

    Up to one pixel beyond the outermost pixel centres (where box edges lie: half a pixel out)
    the field continues linearly from the outermost cells, exactly for affine fields; further
    out it stays constant, so that no far-away point solves ``q - u(q) = p`` spuriously.
    """
    located = []
    for axis, size in ((0, height), (1, width)):
        coordinate = points[..., axis]
        slope = B.cast(B.numpy.abs(coordinate - 0.5 * (size - 1)) <= 0.5 * (size + 1), "float32")
        coordinate = B.numpy.clip(coordinate, -1.0, float(size))
        low = B.numpy.clip(B.numpy.floor(coordinate), 0.0, float(max(size - 2, 0)))
        weight = coordinate - low  # in [-1, 2]: linear beyond the outermost cells
        low = B.numpy.clip(B.cast(low, "int32"), 0, max(size - 2, 0))  # NaN-safe index
        located.append((low, B.numpy.minimum(low + 1, size - 1), weight[..., None], slope))
    (y0, y1, wy, slope_y), (x0, x1, wx, slope_x) = located
    index = base + B.numpy.stack([y0 * width + x0, y0 * width + x1, y1 * width + x0,
                                  y1 * width + x1], axis=-1)  # fmt: skip
    values = _backend.take_rows(B, flat, index)  # (Bp, N, 4, 2)
    v00, v01, v10, v11 = (values[..., k, :] for k in range(4))
    top = v00 + wx * (v01 - v00)
    bottom = v10 + wx * (v11 - v10)
    along_x = (v01 - v00) + wy * ((v11 - v10) - (v01 - v00))
    return (
        top + wy * (bottom - top),
        (bottom - top) * slope_y[..., None],
        along_x * slope_x[..., None],
    )


def _forward(B, points, displacement, iterations):
    """``q`` with ``q - u(q) = p`` for `points` ``p`` ``(Bp, N, 2)`` ``(y, x)`` in pixel-centre
    coordinates (float32), and whether each converged (residual below the tolerance).

    Damped Newton with a fixed number of iterations and one field sample each: a step is kept
    only where it lowers the residual ``|q - u(q) - p|`` (then the next one may be twice as long,
    up to the full Newton step), else the point stays and tries a quarter of the step. The
    Newton direction lowers the residual wherever ``I - du/dq`` is invertible, so every point
    ends at least as close as its start, even where the field folds.
    """
    displacement = B.cast(displacement, "float32")
    points = B.cast(points, "float32")
    batch, height, width = B.core.shape(displacement)[:3]
    flat = B.numpy.reshape(displacement, (-1, 2))
    base = B.numpy.reshape(B.numpy.arange(batch, dtype="int32") * (height * width), (-1, 1, 1))

    def evaluate(q):
        u, along_y, along_x = _sample(B, flat, base, height, width, q)
        residual = q - u - points
        return q, residual, B.numpy.sum(residual * residual, axis=-1), along_y, along_x

    def iterate(_, state):
        q, residual, squared, along_y, along_x, damping = state
        # J = I - du/dq = [[a, b], [c, d]] on (y, x); the Newton step is J^{-1} residual, and
        # the fixed-point step (residual itself) where J is singular.
        a, b = 1.0 - along_y[..., 0], -along_x[..., 0]
        c, d = -along_y[..., 1], 1.0 - along_x[..., 1]
        determinant = a * d - b * c
        regular = B.numpy.abs(determinant) > 1e-6
        safe = B.numpy.where(regular, determinant, 1.0)
        newton = B.numpy.stack(
            [
                (d * residual[..., 0] - b * residual[..., 1]) / safe,
                (a * residual[..., 1] - c * residual[..., 0]) / safe,
            ],
            axis=-1,
        )
        step = B.numpy.where(regular[..., None], newton, residual)
        candidate = evaluate(q - damping[..., None] * step)
        better = candidate[2] < squared
        kept = tuple(
            B.numpy.where(
                better[..., None] if len(new.shape) > len(better.shape) else better, new, old
            )
            for new, old in zip(candidate, state[:5], strict=True)
        )
        damping = B.numpy.where(better, B.numpy.minimum(2.0 * damping, 1.0), 0.25 * damping)
        return (*kept, damping)

    state = evaluate(points + _sample(B, flat, base, height, width, points)[0])
    state = B.core.fori_loop(0, iterations, iterate, (*state, B.numpy.ones_like(state[2])))
    q, _, squared = state[:3]
    return q, squared <= _RESIDUAL_TOLERANCE**2


def _run(function, name, static_argnames):
    """`function(B, ...)` on backend `name`: jitted on JAX (once per shape; op by op, JAX would
    dispatch every op of every iteration from Python), plain elsewhere. Not XLA-compiled on
    TensorFlow, unlike `warp`: the number of boxes and keypoints changes from batch to batch,
    and each new count would compile anew."""
    if name == "jax":
        return _backend.compiled(function, name, static_argnames=static_argnames)
    backend = _backend.ops(name)
    return lambda *args, **kwargs: function(backend, *args, **kwargs)


def _batched(B, argument, value, last, displacement):
    """`value` as a float32 ``(batch, N, last)`` tensor, whether it was unbatched, and the
    field's ``(height, width)``."""
    value = B.cast(B.convert_to_tensor(value), "float32")
    single = len(value.shape) == 2
    if single:
        value = value[None]
    if len(value.shape) != 3 or value.shape[-1] not in (last, None):
        raise ValueError(
            f"`{argument}` must have shape (batch, N, {last}) or (N, {last}). "
            f"Received: {argument}.shape={tuple(value.shape)}"
        )
    if len(displacement.shape) != 4 or displacement.shape[-1] not in (2, None):
        raise ValueError(
            "`displacement` must have shape (B, H, W, 2) with last axis (dy, dx). "
            f"Received: displacement.shape={tuple(displacement.shape)}"
        )
    height, width = displacement.shape[1], displacement.shape[2]
    if height is None or width is None:
        raise ValueError(
            "`displacement` needs a static height and width. "
            f"Received: displacement.shape={tuple(displacement.shape)}"
        )
    return value, single, (int(height), int(width))


def deform_keypoints(keypoints, displacement, iterations=NEWTON_ITERATIONS):
    """Moves keypoints to where `warp(images, displacement)` shows them.

    Each point ``p`` goes to the ``q`` with ``q - u(q) = p`` (damped Newton on the bilinear
    field, see the module docstring). Against a per-point SciPy root solve of the same field the
    error is float32 rounding, ~1e-5 px at most, for affine maps and for the package's TPS (``3,
    2`` on 32 px, ``5, 10`` on 224 px) and diffeomorphisms (``c = 3``, ``delta = 1`` up to the
    largest natural temperature). Where a field folds (``det(I - du/dq) <= 0`` somewhere, as
    some diffeomorphisms near the largest natural temperature do) a point has several images or
    the solver may find none; then it is reported as having left the image.

    Args:
        keypoints: ``(batch, K, 2)`` or ``(K, 2)``, ``(x, y)`` in pixels with the image covering
            ``[0, W] x [0, H]`` (a pixel's centre is at ``index + 0.5``).
        displacement: ``(batch, H, W, 2)`` or ``(1, H, W, 2)`` (one field for every sample), last
            axis ``(dy, dx)``, as `warp` takes it.
        iterations: the number of Newton iterations.

    Returns:
        float32 keypoints of the input's shape. A keypoint that is not in the image, before or
        after the warp (``x`` outside ``[0, W]`` or ``y`` outside ``[0, H]``, or not finite), is
        ``(-1, -1)``: kept in place in the tensor, never dropped, and marked the way Keras marks
        the boxes its layers push out of the image (label -1).

    Example:

    >>> field = np.zeros((1, 16, 16, 2), "float32")
    >>> field[..., 1] = 2.0                                     # content moves 2 px right
    >>> np.asarray(deform_keypoints([[3.5, 8.0], [15.0, 8.0]], field))
    array([[ 5.5,  8. ],
           [-1. , -1. ]], dtype=float32)
    """
    check_positive_int("iterations", iterations)
    name = _backend.backend_name(displacement)
    B = _backend.ops(name)
    displacement = B.convert_to_tensor(displacement)
    keypoints, single, (height, width) = _batched(B, "keypoints", keypoints, 2, displacement)
    move = _run(_move_keypoints, name, ("height", "width", "iterations"))
    moved = move(keypoints, displacement, height=height, width=width, iterations=iterations)
    return moved[0] if single else moved


def _inside(B, points, height, width):
    """Whether ``(x, y)`` points lie in ``[0, W] x [0, H]`` (False for NaN)."""
    x, y = points[..., 0], points[..., 1]
    return B.numpy.logical_and(
        B.numpy.logical_and(x >= 0.0, x <= float(width)),
        B.numpy.logical_and(y >= 0.0, y <= float(height)),
    )


def _move_keypoints(B, keypoints, displacement, height, width, iterations):
    # (x, y) in [0, W] x [0, H]  ->  (y, x) in pixel-centre coordinates, and back.
    points = B.numpy.stack([keypoints[..., 1], keypoints[..., 0]], axis=-1) - 0.5
    q, converged = _forward(B, points, displacement, iterations)
    moved = B.numpy.stack([q[..., 1], q[..., 0]], axis=-1) + 0.5
    visible = B.numpy.logical_and(
        B.numpy.logical_and(_inside(B, keypoints, height, width), converged),
        _inside(B, moved, height, width),
    )
    return B.numpy.where(visible[..., None], moved, INVISIBLE)


def deform_boxes(boxes, displacement, intervals=BOX_EDGE_INTERVALS, iterations=NEWTON_ITERATIONS):
    """The boxes around the deformed outlines of `boxes` (``xyxy``), unclipped.

    Each edge is sampled at ``n + 1`` evenly spaced points, ``n = min(max(H, W), intervals)``
    (every pixel or finer up to 32-pixel images with the default, 32 intervals beyond); the
    samples move as `deform_keypoints` moves points, then per edge and per side of the box a
    parabola through the outermost sample and its two neighbours gives one more sample at its
    vertex, and the new box is the min / max of all of them: about 150 moved points per box.

    Every sample lies on the deformed outline, so the result is never larger than the outline's
    extent; it falls short of it by at most ``kappa s^2 / 8`` without the parabola step (``s``:
    the sample spacing, the edge length over ``n``; ``kappa``: the largest second derivative of
    the deformed edge), and by less with it. Measured against outlines sampled every 0.02 px, on
    draws that do not fold: at most 0.022 px (TPS ``3, 2`` on 32 px: 0.004; ``5, 10`` on 224 px:
    0.021; diffeomorphisms ``c = 3``, ``delta = 1`` on 32 px: 0.003, at the largest natural
    temperature 0.009 on 32 px and 0.002 on 224 px; ``c = 10`` at the largest natural temperature
    on 64 px: 0.018), and 0 for affine maps (straight edges: the corners are the extremes). On a
    draw that folds, the deformed outline overlaps itself and the box can be off by pixels.

    Args:
        boxes: ``(batch, N, 4)`` or ``(N, 4)`` in ``xyxy`` pixels (see the module docstring).
        displacement: ``(batch, H, W, 2)`` or ``(1, H, W, 2)``, as `warp` takes it.
        intervals: the most sample intervals per edge.
        iterations: the number of Newton iterations.

    Returns:
        float32 ``xyxy`` boxes of the input's shape; clip them to the image with
        ``keras.utils.bounding_boxes.clip_to_image_size``, as the layers do.

    Example:

    >>> field = np.zeros((1, 16, 16, 2), "float32")
    >>> field[..., 0] = -1.0                                     # content moves 1 px up
    >>> np.asarray(deform_boxes([[2.0, 4.0, 6.0, 8.0]], field))
    array([[2., 3., 6., 7.]], dtype=float32)
    """
    check_positive_int("intervals", intervals)
    check_positive_int("iterations", iterations)
    name = _backend.backend_name(displacement)
    B = _backend.ops(name)
    displacement = B.convert_to_tensor(displacement)
    boxes, single, (height, width) = _batched(B, "boxes", boxes, 4, displacement)
    count = min(max(height, width), intervals) + 1
    move = _run(_move_boxes, name, ("count", "iterations"))
    moved = move(boxes, displacement, count=count, iterations=iterations)
    return moved[0] if single else moved


def _move_boxes(B, boxes, displacement, count, iterations):
    batch, number = B.core.shape(boxes)[:2]
    x1, y1, x2, y2 = (boxes[..., k] for k in range(4))  # (batch, N) each

    def corner(y, x):
        return B.numpy.stack([y, x], axis=-1) - 0.5  # (y, x) in pixel-centre coordinates

    # The four edges, (batch, N, 4, 2) starts and ends: top, bottom, left, right.
    starts = B.numpy.stack([corner(y1, x1), corner(y2, x1), corner(y1, x1), corner(y1, x2)], 2)
    ends = B.numpy.stack([corner(y1, x2), corner(y2, x2), corner(y2, x1), corner(y2, x2)], 2)
    spans = ends - starts

    def extents(points):
        """(y, x) pixel-centre points, moved, as the four quantities whose maxima are the box:
        (-x_min, -y_min, x_max, y_max) in box coordinates."""
        flat = B.numpy.reshape(points, (batch, -1, 2))
        q = B.numpy.reshape(_forward(B, flat, displacement, iterations)[0], B.core.shape(points))
        q = q + 0.5
        return B.numpy.stack([-q[..., 1], -q[..., 0], q[..., 1], q[..., 0]], axis=-1)

    # Coarse: `count` samples per edge -> values (batch, N, edge, sample, extent).
    t = B.numpy.linspace(0.0, 1.0, count, dtype="float32")[:, None]
    values = extents(starts[..., None, :] + t * spans[..., None, :])
    best = B.numpy.max(values, axis=3)  # (batch, N, edge, extent)
    # Refined: per edge and extent, a parabola through the best sample and its neighbours; its
    # vertex, a point of the same outline, can only raise the maximum.
    centre = B.numpy.clip(B.numpy.argmax(values, axis=3), 1, count - 2)[..., None, :]
    below, at, above = (
        B.numpy.take_along_axis(values, centre + offset, axis=3)[..., 0, :] for offset in (-1, 0, 1)
    )
    curvature = below - 2.0 * at + above
    concave = curvature < 0.0
    shift = 0.5 * (below - above) / B.numpy.where(concave, curvature, -1.0)
    shift = B.numpy.where(concave, B.numpy.clip(shift, -1.0, 1.0), 0.0)
    vertex = (B.cast(centre[..., 0, :], "float32") + shift) / float(count - 1)  # (b, N, e, k)
    refined = extents(starts[..., None, :] + vertex[..., None] * spans[..., None, :])
    # refined[..., e, k, j]: extent j at the vertex found for extent k; keep j == k.
    diagonal = B.numpy.sum(refined * B.convert_to_tensor(_EYE4), axis=-1)
    result = B.numpy.max(B.numpy.maximum(best, diagonal), axis=2)  # (batch, N, extent)
    return B.numpy.stack([-result[..., 0], -result[..., 1], result[..., 2], result[..., 3]], -1)


_EYE4 = [[1.0 if i == j else 0.0 for j in range(4)] for i in range(4)]
