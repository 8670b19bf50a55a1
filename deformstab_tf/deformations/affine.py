"""Affine displacement fields about the image centre.

Matrices act on ``(y, x, 1)`` column vectors relative to the image centre ``((H-1)/2, (W-1)/2)``
and map where content *is* to where it *goes* (the package's "content moves by u" convention):
content at ``p`` moves to ``A p + t``.
"""

import math

from deformstab_tf._validation import check_positive_int
from deformstab_tf.deformations import _backend


def affine_matrices(rotation=0.0, scale=1.0, shear=0.0, translation=0.0):
    """Forward ``(B, 2, 3)`` affine matrices from parameters (each a scalar or a ``(B,)`` tensor).

    The map is ``translate . rotate . shear . scale``, about the image centre, on ``(y, x)``.
    Runs on the active Keras backend, or on TensorFlow ops inside a TensorFlow graph.

    Args:
        rotation: degrees, positive is counter-clockwise as displayed (row 0 at the top).
        scale: zoom factor, a scalar/``(B,)`` for isotropic scale or a pair ``(scale_y, scale_x)``
            of scalars/``(B,)`` tensors.
        shear: shear factor(s) ``s``: ``x += s_x * y`` and ``y += s_y * x``; a scalar/``(B,)`` for
            ``s_x`` alone or a pair ``(s_y, s_x)``.
        translation: pixels, a scalar/``(B,)`` for both axes alike or a pair ``(t_y, t_x)``.

    Returns:
        float32 matrices ``(B, 2, 3)`` (B = 1 when every parameter is a scalar).

    Example:

    >>> np.asarray(affine_matrices(rotation=90.0, translation=(1.0, 0.0))).round(6) + 0.0
    array([[[ 0., -1.,  1.],
            [ 1.,  0.,  0.]]], dtype=float32)
    """
    parameters = [rotation, scale, shear, translation]
    flat = [v for p in parameters for v in (p if isinstance(p, (tuple, list)) else [p])]
    sample = next((v for v in flat if not isinstance(v, (int, float))), None)
    B = _backend.ops(_backend.backend_name(sample))

    def scalar(value):
        return B.cast(B.convert_to_tensor(value), "float32")

    def pair(argument, value):
        if isinstance(value, (tuple, list)):
            if len(value) != 2:
                raise ValueError(
                    f"`{argument}` must be a scalar or a pair (y, x). "
                    f"Received: {argument}={value!r}"
                )
            return scalar(value[0]), scalar(value[1])
        value = scalar(value)
        return value, value

    angle = scalar(rotation) * (math.pi / 180.0)
    scale_y, scale_x = pair("scale", scale)
    if isinstance(shear, (tuple, list)):
        shear_y, shear_x = pair("shear", shear)
    else:
        shear_x = scalar(shear)
        shear_y = B.numpy.zeros_like(shear_x)
    shift_y, shift_x = pair("translation", translation)
    cos, sin = B.numpy.cos(angle), B.numpy.sin(angle)
    # rotate . shear . scale on (y, x):
    #   R = [[cos, -sin], [sin, cos]], Sh = [[1, s_y], [s_x, 1]] (rows: y, x), S = diag(s_y, s_x).
    a00 = (cos - sin * shear_x) * scale_y
    a01 = (cos * shear_y - sin) * scale_x
    a10 = (sin + cos * shear_x) * scale_y
    a11 = (sin * shear_y + cos) * scale_x
    entries = [B.numpy.reshape(e, (-1,)) for e in (a00, a01, shift_y, a10, a11, shift_x)]
    # Scalars and (B,) parameters mix freely: `+` broadcasts them to the batch size.
    batch = B.core.shape(sum(entries))[0]
    entries = [B.numpy.broadcast_to(e, (batch,)) for e in entries]
    return B.numpy.reshape(B.numpy.stack(entries, axis=-1), (-1, 2, 3))


def affine_displacement(matrices, height, width):
    """Dense displacement field of forward affine maps about the image centre.

    Runs on the active Keras backend (XLA-compiled), or on TensorFlow ops inside a TensorFlow
    graph (as `warp`).

    Args:
        matrices: ``(B, 2, 3)``, ``(B, 3, 3)`` or a single ``(2, 3)`` matrix on ``(y, x, 1)``
            centred coordinates, mapping content positions to where they move
            (see `affine_matrices`).
        height, width: the image size.

    Returns:
        A float32 field ``(B, H, W, 2)`` with ``u(q) = q - A^{-1} (q - t)``, so that
        ``warp(images, u)`` moves the content at ``p`` to ``A p + t``.

    Example:

    >>> field = affine_displacement(affine_matrices(translation=(2.0, -1.0)), 8, 8)
    >>> np.asarray(field)[0, 3, 3]
    array([ 2., -1.], dtype=float32)
    """
    check_positive_int("height", height)
    check_positive_int("width", width)
    name = _backend.backend_name(matrices)
    B = _backend.ops(name)
    matrices = check_matrices(B, matrices)
    field = _backend.compiled(_affine_field, name, static_argnames=("height", "width"))
    return field(matrices, height=int(height), width=int(width))


def check_matrices(B, matrices):
    """`matrices` as float32 ``(B, 2 or 3, 3)`` (a single ``(2, 3)`` / ``(3, 3)`` gets a batch
    axis), or raises a ValueError naming the argument."""
    matrices = B.cast(B.convert_to_tensor(matrices), "float32")
    if len(matrices.shape) == 2:
        matrices = matrices[None]
    if len(matrices.shape) != 3 or matrices.shape[-1] != 3 or matrices.shape[-2] not in (2, 3):
        raise ValueError(
            f"`matrices` must have shape (B, 2, 3), (B, 3, 3) or (2, 3). "
            f"Received: matrices.shape={tuple(matrices.shape)}"
        )
    return matrices


def _inverse(B, matrices):
    """The inverse maps' entries ``(i00, i01, i10, i11)`` and the translation ``(t_y, t_x)``,
    each ``(B,)``: content at ``q`` came from ``inv (q - t)`` (centred coordinates)."""
    a, b, t_y = matrices[:, 0, 0], matrices[:, 0, 1], matrices[:, 0, 2]
    c, d, t_x = matrices[:, 1, 0], matrices[:, 1, 1], matrices[:, 1, 2]
    determinant = a * d - b * c
    # Closed-form 2x2 inverse: exact for the identity, so zero magnitude is an exact no-op.
    inv = B.numpy.stack([d, -b, -c, a], axis=-1) / determinant[:, None]
    return (inv[:, 0], inv[:, 1], inv[:, 2], inv[:, 3]), (t_y, t_x)


# Elementwise over (B, H, W): fused by XLA into one loop instead of ~15 full-size ops.
def _affine_field(B, matrices, height, width):
    (i00, i01, i10, i11), (t_y, t_x) = _inverse(B, matrices)
    # (the sizes are tensors in a shape-generic trace, as inside the resample's)
    centre_y = (B.cast(height, "float32") - 1.0) / 2.0
    centre_x = (B.cast(width, "float32") - 1.0) / 2.0
    ys = B.numpy.arange(height, dtype="float32")[None, :, None] - centre_y
    xs = B.numpy.arange(width, dtype="float32")[None, None, :] - centre_x
    qy = ys - t_y[:, None, None]
    qx = xs - t_x[:, None, None]
    source_y = i00[:, None, None] * qy + i01[:, None, None] * qx
    source_x = i10[:, None, None] * qy + i11[:, None, None] * qx
    return B.numpy.stack([ys - source_y, xs - source_x], axis=-1)
