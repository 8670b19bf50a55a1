"""Affine displacement fields about the image centre.

Matrices act on ``(y, x, 1)`` column vectors relative to the image centre ``((H-1)/2, (W-1)/2)``
and map where content *is* to where it *goes* (the package's "content moves by u" convention):
content at ``p`` moves to ``A p + t``.
"""

import math

import tensorflow as tf

from deformstab_tf._validation import check_positive_int


def affine_matrices(rotation=0.0, scale=1.0, shear=0.0, translation=0.0):
    """Forward ``(B, 2, 3)`` affine matrices from parameters (each a scalar or a ``(B,)`` tensor).

    The map is ``translate . rotate . shear . scale``, about the image centre, on ``(y, x)``:

    Args:
        rotation: degrees, positive is counter-clockwise as displayed (row 0 at the top).
        scale: zoom factor, a scalar/``(B,)`` for isotropic scale or a pair ``(scale_y, scale_x)``
            of scalars/``(B,)`` tensors.
        shear: shear factor(s) ``s``: ``x += s_x * y`` and ``y += s_y * x``; a scalar/``(B,)`` for
            ``s_x`` alone or a pair ``(s_y, s_x)``.
        translation: pixels, a scalar/``(B,)`` for both axes alike or a pair ``(t_y, t_x)``.

    Returns:
        float32 matrices ``(B, 2, 3)`` (B = 1 when every parameter is a scalar).
    """

    def pair(argument, value):
        if isinstance(value, (tuple, list)):
            if len(value) != 2:
                raise ValueError(
                    f"`{argument}` must be a scalar or a pair (y, x). "
                    f"Received: {argument}={value!r}"
                )
            return tf.cast(value[0], tf.float32), tf.cast(value[1], tf.float32)
        value = tf.cast(value, tf.float32)
        return value, value

    angle = tf.cast(rotation, tf.float32) * (math.pi / 180.0)
    scale_y, scale_x = pair("scale", scale)
    if isinstance(shear, (tuple, list)):
        shear_y, shear_x = pair("shear", shear)
    else:
        shear_y, shear_x = tf.zeros_like(tf.cast(shear, tf.float32)), tf.cast(shear, tf.float32)
    shift_y, shift_x = pair("translation", translation)
    cos, sin = tf.cos(angle), tf.sin(angle)
    # rotate . shear . scale on (y, x):
    #   R = [[cos, -sin], [sin, cos]], Sh = [[1, s_y], [s_x, 1]] (rows: y, x), S = diag(s_y, s_x).
    a00 = (cos - sin * shear_x) * scale_y
    a01 = (cos * shear_y - sin) * scale_x
    a10 = (sin + cos * shear_x) * scale_y
    a11 = (sin * shear_y + cos) * scale_x
    entries = [a00, a01, shift_y, a10, a11, shift_x]
    # Scalars and (B,) parameters mix freely: `+` broadcasts them to the batch size.
    batch = tf.shape(sum(tf.reshape(e, [-1]) for e in entries))[0]
    entries = [tf.broadcast_to(tf.reshape(e, [-1]), [batch]) for e in entries]
    return tf.reshape(tf.stack(entries, axis=-1), [-1, 2, 3])


def affine_displacement(matrices, height, width):
    """Dense displacement field of forward affine maps about the image centre.

    Args:
        matrices: ``(B, 2, 3)``, ``(B, 3, 3)`` or a single ``(2, 3)`` matrix on ``(y, x, 1)``
            centred coordinates, mapping content positions to where they move
            (see `affine_matrices`).
        height, width: the image size.

    Returns:
        A float32 field ``(B, H, W, 2)`` with ``u(q) = q - A^{-1} (q - t)``, so that
        ``warp(images, u)`` moves the content at ``p`` to ``A p + t``.
    """
    check_positive_int("height", height)
    check_positive_int("width", width)
    matrices = tf.cast(matrices, tf.float32)
    if matrices.shape.rank == 2:
        matrices = matrices[None]
    if matrices.shape.rank != 3 or matrices.shape[-1] != 3 or matrices.shape[-2] not in (2, 3):
        raise ValueError(
            f"`matrices` must have shape (B, 2, 3), (B, 3, 3) or (2, 3). "
            f"Received: matrices.shape={matrices.shape}"
        )
    return _affine_field(matrices, tf.constant(int(height)), tf.constant(int(width)))


# Elementwise over (B, H, W): fused by XLA into one loop instead of ~15 full-size TF ops. The
# sizes are tensors, so images of many sizes do not retrace (XLA compiles per size).
@tf.function(jit_compile=True, reduce_retracing=True)
def _affine_field(matrices, height, width):
    a, b, t_y = matrices[:, 0, 0], matrices[:, 0, 1], matrices[:, 0, 2]
    c, d, t_x = matrices[:, 1, 0], matrices[:, 1, 1], matrices[:, 1, 2]
    determinant = a * d - b * c
    # Closed-form 2x2 inverse: exact for the identity, so zero magnitude is an exact no-op.
    inv = tf.stack([d, -b, -c, a], axis=-1) / determinant[:, None]
    inv = inv[:, None, None, :]
    ys = tf.range(height, dtype=tf.float32)[None, :, None] - tf.cast(height - 1, tf.float32) / 2.0
    xs = tf.range(width, dtype=tf.float32)[None, None, :] - tf.cast(width - 1, tf.float32) / 2.0
    qy = ys - t_y[:, None, None]
    qx = xs - t_x[:, None, None]
    source_y = inv[..., 0] * qy + inv[..., 1] * qx
    source_x = inv[..., 2] * qy + inv[..., 3] * qx
    return tf.stack([ys - source_y, xs - source_x], axis=-1)
