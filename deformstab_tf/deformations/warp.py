"""The one resampler every deformation in the package goes through.

Convention (shared by the whole package): a displacement field ``u`` of shape ``(B, H, W, 2)``,
last axis ``(dy, dx)``, in pixels, means *content moves by u*::

    out[b, y, x] = img[b, y - u[b, y, x, 0], x - u[b, y, x, 1]]

Pixel centres are the integer coordinates ``0..H-1`` and ``0..W-1``. This is the convention of the
old ``tfa.image.dense_image_warp`` and of Petrini et al.'s ``deform``.
"""

import tensorflow as tf

from deformstab_tf._validation import check_choice

FILL_MODES = ("nearest", "reflect", "wrap", "constant")
INTERPOLATIONS = ("bilinear", "nearest")


def _check_numeric(argument, tensor):
    dtype = tf.as_dtype(tensor.dtype)
    if not (dtype.is_floating or dtype.is_integer) or dtype.is_bool:
        raise TypeError(
            f"`{argument}` must have a numeric (float or integer) dtype. "
            f"Received: {argument}.dtype={dtype.name}"
        )


def _fold_index(index, size, fill_mode):
    """Maps integer sample coordinates into ``[0, size)`` according to `fill_mode`.

    Returns the folded int32 index and, for ``"constant"``, a boolean mask of the coordinates
    that fell inside the image (None otherwise).
    """
    index = tf.cast(index, tf.int32)
    if fill_mode == "nearest":
        return tf.clip_by_value(index, 0, size - 1), None
    if fill_mode == "wrap":
        return tf.math.floormod(index, size), None
    if fill_mode == "reflect":
        # Half-sample symmetric, as Keras and scipy.ndimage: (d c b a | a b c d | d c b a).
        period = tf.math.floormod(index, 2 * size)
        return tf.where(period >= size, 2 * size - 1 - period, period), None
    inside = (index >= 0) & (index < size)
    return tf.clip_by_value(index, 0, size - 1), inside


def warp(images, displacement, interpolation="bilinear", fill_mode="nearest", fill_value=0.0):
    """Resamples images along a dense displacement field ("content moves by u").

    ``out[b, y, x] = images[b, y - u[b, y, x, 0], x - u[b, y, x, 1]]``, sampled bilinearly (or at
    the nearest pixel). Samples that fall outside the image follow `fill_mode`, applied to each
    neighbouring pixel that bilinear interpolation reads:
    ``"nearest"`` clamps to the edge, ``"reflect"`` mirrors about the edge
    (``d c b a | a b c d | d c b a``), ``"wrap"`` tiles the image, ``"constant"`` reads
    `fill_value`.

    Args:
        images: ``(B, H, W, C)`` or a single ``(H, W, C)`` image, channels last, any numeric dtype.
        displacement: ``(B, H, W, 2)`` (or ``(H, W, 2)`` for a single image; a ``(1, H, W, 2)``
            field is broadcast over the batch), last axis ``(dy, dx)`` in pixels.
        interpolation: ``"bilinear"`` or ``"nearest"``.
        fill_mode: one of ``"nearest"``, ``"reflect"``, ``"wrap"``, ``"constant"``.
        fill_value: the value read outside the image with ``fill_mode="constant"``.

    Returns:
        The warped images, same shape. Bilinear output keeps a floating input dtype and is
        float32 for integer input; nearest output keeps the input dtype (so masks stay masks).

    Raises:
        ValueError: on bad shapes, and, when called eagerly, on a non-finite `displacement`.
            Traced (in `tf.function`, `tf.data`, a model) the field is not checked: a NaN
            displacement gives NaN at that pixel (never a plausible value), and `+-inf` gives NaN
            except with `fill_mode="nearest"`, which clamps it to the edge.

    Example:

    >>> images = tf.random.uniform((2, 8, 8, 3))
    >>> shift_right = tf.tile([[[[0.0, 1.0]]]], [2, 8, 8, 1])
    >>> warp(images, shift_right, fill_mode="wrap").shape
    TensorShape([2, 8, 8, 3])
    """
    check_choice("interpolation", interpolation, INTERPOLATIONS)
    check_choice("fill_mode", fill_mode, FILL_MODES)
    if isinstance(fill_value, bool) or not isinstance(fill_value, (int, float)):
        raise TypeError(f"`fill_value` must be a number. Received: fill_value={fill_value!r}")
    images = tf.convert_to_tensor(images)
    displacement = tf.convert_to_tensor(displacement)
    _check_numeric("images", images)
    _check_numeric("displacement", displacement)
    if images.shape.rank == 3:
        if displacement.shape.rank == 3:
            displacement = displacement[None]
        return warp(images[None], displacement, interpolation, fill_mode, fill_value)[0]
    if images.shape.rank != 4:
        raise ValueError(
            "`images` must have rank 4 (B, H, W, C) or 3 (H, W, C). "
            f"Received: images.shape={images.shape}"
        )
    if displacement.shape.rank != 4 or displacement.shape[-1] not in (2, None):
        raise ValueError(
            "`displacement` must have shape (B, H, W, 2) with last axis (dy, dx). "
            f"Received: displacement.shape={displacement.shape}"
        )
    if not displacement.shape[1:3].is_compatible_with(images.shape[1:3]):
        raise ValueError(
            "`displacement` must match the spatial size of `images`. Received: "
            f"images.shape={images.shape}, displacement.shape={displacement.shape}"
        )

    if tf.executing_eagerly() and not tf.reduce_all(tf.math.is_finite(displacement)):
        raise ValueError(
            "`displacement` must be finite; it holds NaN or inf at "
            f"{int(tf.reduce_sum(tf.cast(~tf.math.is_finite(displacement), tf.int32)))} entries."
        )
    return _resample(images, displacement, interpolation, fill_mode, float(fill_value))


# Compiled with XLA whatever the caller does (eager, graph, tf.data, or inside an XLA model):
# the index arithmetic and the gather fuse, which makes the resample ~4x faster on CPU than the
# same ops run one by one. XLA compiles once per input shape and argument combination;
# `reduce_retracing` traces one shape-generic function once a second image size is seen, so
# images of many sizes (a model zoo) do not retrace per size.
@tf.function(jit_compile=True, reduce_retracing=True)
def _resample(images, displacement, interpolation, fill_mode, fill_value):
    shape = tf.shape(images)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    displacement = tf.cast(displacement, tf.float32)
    displacement = tf.broadcast_to(displacement, tf.stack([batch, height, width, 2]))
    rows = tf.cast(tf.range(height), tf.float32)[None, :, None]
    cols = tf.cast(tf.range(width), tf.float32)[None, None, :]
    source_y = rows - displacement[..., 0]
    source_x = cols - displacement[..., 1]

    # One flat gather for all the pixels that are read: (B*H*W, C) rows.
    flat = tf.reshape(images, tf.stack([-1, channels]))

    if interpolation == "nearest":
        iy, inside_y = _fold_index(tf.floor(source_y + 0.5), height, fill_mode)
        ix, inside_x = _fold_index(tf.floor(source_x + 0.5), width, fill_mode)
        base = tf.reshape(tf.range(batch) * height * width, [-1, 1, 1])
        values = tf.gather(flat, base + iy * width + ix)
        if fill_mode == "constant":
            inside = (inside_y & inside_x)[..., None]
            values = tf.where(inside, values, tf.cast(fill_value, values.dtype))
        return values

    out_dtype = images.dtype if images.dtype.is_floating else tf.float32
    y0, y1, wy, inside_y = _bilinear_axis(source_y, height, fill_mode)
    x0, x1, wx, inside_x = _bilinear_axis(source_x, width, fill_mode)
    # The four neighbours stacked on one axis: (B, H, W, 4) -> one gather -> (B, H, W, 4, C).
    base = tf.reshape(tf.range(batch) * height * width, [-1, 1, 1, 1])
    rows = tf.stack([y0, y0, y1, y1], axis=-1) * width
    index = base + rows + tf.stack([x0, x1, x0, x1], axis=-1)
    values = tf.cast(tf.gather(flat, index), tf.float32)
    if fill_mode == "constant":
        inside = tf.stack(
            [
                inside_y[0] & inside_x[0],
                inside_y[0] & inside_x[1],
                inside_y[1] & inside_x[0],
                inside_y[1] & inside_x[1],
            ],
            axis=-1,
        )
        values = tf.where(inside[..., None], values, fill_value)
    wy, wx = wy[..., None], wx[..., None]
    top = values[..., 0, :] * (1.0 - wx) + values[..., 1, :] * wx
    bottom = values[..., 2, :] * (1.0 - wx) + values[..., 3, :] * wx
    out = top * (1.0 - wy) + bottom * wy
    return tf.cast(out, out_dtype)


def _bilinear_axis(source, size, fill_mode):
    """The two neighbours (int32, inside ``[0, size)``) and the weight of the second along one
    axis, and for ``"constant"`` whether each neighbour lies inside the image.

    The fill mode is applied once to the continuous coordinate rather than to each neighbour:
    mirroring and tiling commute with linear interpolation, so this reads exactly the values that
    per-neighbour folding reads, for half the integer work.
    """
    size_f = tf.cast(size, tf.float32)
    if fill_mode == "constant":
        low = tf.floor(source)
        weight = source - low
        low = tf.cast(low, tf.int32)
        high = low + 1
        inside = ((low >= 0) & (low < size), (high >= 0) & (high < size))
        return (
            tf.clip_by_value(low, 0, size - 1),
            tf.clip_by_value(high, 0, size - 1),
            weight,
            inside,
        )
    if fill_mode == "wrap":
        source = tf.math.floormod(source, size_f)
        low = tf.floor(source)
        weight = source - low
        low = tf.minimum(tf.cast(low, tf.int32), size - 1)  # floormod may round up to `size`
        high = tf.where(low + 1 >= size, 0, low + 1)
        return low, high, weight, None
    if fill_mode == "reflect":
        # Mirror about -0.5 and size - 0.5 (d c b a | a b c d | d c b a), period 2 * size.
        folded = tf.math.floormod(source + 0.5, 2.0 * size_f)
        source = tf.where(folded < size_f, folded, 2.0 * size_f - folded) - 0.5
    # "nearest", and "reflect" after folding: clamp to the outermost pixel centres.
    source = tf.clip_by_value(source, 0.0, size_f - 1.0)
    low = tf.floor(source)
    weight = source - low
    low = tf.cast(low, tf.int32)
    return low, tf.minimum(low + 1, size - 1), weight, None


def shift(images, dy, dx, fill_mode="wrap", fill_value=0.0):
    """Translates images by whole pixels: content moves down by `dy` and right by `dx`.

    Args:
        images: ``(B, H, W, C)`` or ``(H, W, C)``, channels last.
        dy, dx: integers, or integer tensors of shape ``(B,)`` for one shift per image.
        fill_mode: as in `warp`; ``"wrap"`` (the default) is a circular shift, equal to
            ``np.roll(images, (dy, dx), axis=(1, 2))``.
        fill_value: the value shifted in with ``fill_mode="constant"``.

    Returns:
        The shifted images, same shape and dtype (values are copied, never interpolated).
    """
    for argument, value in (("dy", dy), ("dx", dx)):
        value = tf.convert_to_tensor(value)
        if not value.dtype.is_integer:
            raise TypeError(
                f"`{argument}` must be an integer (whole-pixel shift). "
                f"Received: {argument}={value!r} of dtype {value.dtype.name}"
            )
    images = tf.convert_to_tensor(images)
    if images.shape.rank == 3:
        return shift(images[None], dy, dx, fill_mode, fill_value)[0]
    shape = tf.shape(images)
    offsets = tf.stack(
        [
            tf.broadcast_to(tf.cast(dy, tf.float32), shape[:1]),
            tf.broadcast_to(tf.cast(dx, tf.float32), shape[:1]),
        ],
        axis=-1,
    )
    displacement = tf.broadcast_to(
        offsets[:, None, None, :], tf.stack([shape[0], shape[1], shape[2], 2])
    )
    return warp(images, displacement, "nearest", fill_mode, fill_value)
