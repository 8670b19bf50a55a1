"""The one resampler every deformation in the package goes through.

Convention (shared by the whole package): a displacement field ``u`` of shape ``(B, H, W, 2)``,
last axis ``(dy, dx)``, in pixels, means *content moves by u*::

    out[b, y, x] = img[b, y - u[b, y, x, 0], x - u[b, y, x, 1]]

Pixel centres are the integer coordinates ``0..H-1`` and ``0..W-1``. This is the convention of the
old ``tfa.image.dense_image_warp`` and of Petrini et al.'s ``deform``.

The resampler is written once in Keras backend ops (see `_backend`): it runs on TensorFlow ops in
``tf.data`` and ``tf.function`` whatever the Keras backend, and on the active backend otherwise,
compiled by XLA on TensorFlow (``tf.function(jit_compile=True)``) and on JAX (``jax.jit``).
PyTorch has no such compiler for it eagerly, so there the resampler is
``torch.nn.functional.grid_sample`` (`_grid_sample`), with the same fill modes and rounding: the
same images to float32 precision, several times faster than the ops run one by one.
"""

from deformstab_tf._validation import check_choice
from deformstab_tf.deformations import _backend

FILL_MODES = ("nearest", "reflect", "wrap", "constant")
INTERPOLATIONS = ("bilinear", "nearest")


def _check_numeric(argument, tensor):
    dtype = _backend.dtype_name(tensor)
    if not _backend.is_numeric(dtype):
        raise TypeError(
            f"`{argument}` must have a numeric (float or integer) dtype. "
            f"Received: {argument}.dtype={dtype}"
        )


def warp(images, displacement, interpolation="bilinear", fill_mode="nearest", fill_value=0.0):
    """Resamples images along a dense displacement field ("content moves by u").

    ``out[b, y, x] = images[b, y - u[b, y, x, 0], x - u[b, y, x, 1]]``, sampled bilinearly (or at
    the nearest pixel). Samples that fall outside the image follow `fill_mode`, applied to each
    neighbouring pixel that bilinear interpolation reads:
    ``"nearest"`` clamps to the edge, ``"reflect"`` mirrors about the edge
    (``d c b a | a b c d | d c b a``), ``"wrap"`` tiles the image, ``"constant"`` reads
    `fill_value`.

    Runs on the active Keras backend (TensorFlow, JAX), XLA-compiled, and on TensorFlow ops inside
    a TensorFlow graph (``tf.data``, ``tf.function``) whatever the backend. On PyTorch it runs
    ``torch.nn.functional.grid_sample`` on the images' device (64-bit integer images with
    nearest interpolation excepted), and returns a channels-last view of grid_sample's
    channels-first result (the layout a following convolution wants).

    Args:
        images: ``(B, H, W, C)`` or a single ``(H, W, C)`` image, channels last, any numeric dtype.
        displacement: ``(B, H, W, 2)`` (or ``(H, W, 2)`` for a single image; a ``(1, H, W, 2)``
            field is broadcast over the batch), last axis ``(dy, dx)`` in pixels.
        interpolation: ``"bilinear"`` or ``"nearest"``.
        fill_mode: one of ``"nearest"``, ``"reflect"``, ``"wrap"``, ``"constant"``.
        fill_value: the value read outside the image with ``fill_mode="constant"``.

    Returns:
        The warped images, same shape, a tensor of the backend that ran. Bilinear output keeps a
        floating input dtype and is float32 for integer input; nearest output keeps the input
        dtype (so masks stay masks).

    Raises:
        ValueError: on bad shapes, and, when called eagerly, on a non-finite `displacement`.
            Traced (in `tf.function`, `tf.data`, `jax.jit`, a model) the field is not checked: a
            NaN displacement gives NaN at that pixel (never a plausible value), and `+-inf` gives
            NaN except with `fill_mode="nearest"`, which clamps it to the edge.

    Example:

    >>> images = np.random.rand(2, 8, 8, 3).astype("float32")
    >>> shift_right = np.tile(np.float32([0.0, 1.0]), (2, 8, 8, 1))
    >>> tuple(warp(images, shift_right, fill_mode="wrap").shape)
    (2, 8, 8, 3)
    """
    check_choice("interpolation", interpolation, INTERPOLATIONS)
    check_choice("fill_mode", fill_mode, FILL_MODES)
    if isinstance(fill_value, bool) or not isinstance(fill_value, (int, float)):
        raise TypeError(f"`fill_value` must be a number. Received: fill_value={fill_value!r}")
    name = _backend.backend_name(images)
    B = _backend.ops(name)
    images = B.convert_to_tensor(images)
    displacement = B.convert_to_tensor(displacement)
    _check_numeric("images", images)
    _check_numeric("displacement", displacement)
    if len(images.shape) == 3:
        if len(displacement.shape) == 3:
            displacement = displacement[None]
        return warp(images[None], displacement, interpolation, fill_mode, fill_value)[0]
    if len(images.shape) != 4:
        raise ValueError(
            "`images` must have rank 4 (B, H, W, C) or 3 (H, W, C). "
            f"Received: images.shape={tuple(images.shape)}"
        )
    if len(displacement.shape) != 4 or displacement.shape[-1] not in (2, None):
        raise ValueError(
            "`displacement` must have shape (B, H, W, 2) with last axis (dy, dx). "
            f"Received: displacement.shape={tuple(displacement.shape)}"
        )
    if any(
        a is not None and b is not None and a != b
        for a, b in zip(displacement.shape[1:3], images.shape[1:3], strict=True)
    ):
        raise ValueError(
            "`displacement` must match the spatial size of `images`. Received: "
            f"images.shape={tuple(images.shape)}, "
            f"displacement.shape={tuple(displacement.shape)}"
        )
    if _backend.is_concrete(displacement) and not _finite_on_torch(name, displacement):
        finite = B.numpy.isfinite(displacement)
        if not bool(B.numpy.all(finite)):
            count = int(B.numpy.sum(B.cast(B.numpy.logical_not(finite), "int32")))
            raise ValueError(
                f"`displacement` must be finite; it holds NaN or inf at {count} entries."
            )
    resample = _backend.compiled(
        _resample, name, static_argnames=("interpolation", "fill_mode", "fill_value")
    )
    return resample(
        images,
        displacement,
        interpolation=interpolation,
        fill_mode=fill_mode,
        fill_value=float(fill_value),
    )


def _finite_on_torch(name, displacement):
    """Whether a concrete PyTorch float field is finite, in one vectorised pass (NaN and inf
    reach its extremes), where ``isfinite`` and ``all`` take several times as long. False when
    it is not, or not known: then the generic check runs (and counts the bad entries)."""
    if name != "torch" or not displacement.is_floating_point() or displacement.numel() == 0:
        return False
    import torch

    # Reduced in memory order: the fields' (B, 2, H, W) layout seen as (B, H, W, 2) would be
    # copied first.
    order = sorted(range(displacement.ndim), key=lambda axis: -displacement.stride(axis))
    low, high = torch.aminmax(displacement.permute(order))
    return bool(torch.isfinite(low) & torch.isfinite(high))


# Compiled whatever the caller does (eager, graph, tf.data, jit, or inside an XLA model): the
# index arithmetic and the gather fuse, which makes the resample ~4x faster on CPU than the same
# ops run one by one. XLA compiles once per input shape and argument combination.
def _resample(B, images, displacement, interpolation, fill_mode, fill_value):
    if B.name == "torch":
        sample_dtype = _grid_sample_dtype(_backend.dtype_name(images), interpolation)
        if sample_dtype is not None:
            return _grid_sample(
                images, displacement, interpolation, fill_mode, fill_value, sample_dtype
            )
    batch, height, width, channels = B.core.shape(images)
    displacement = B.cast(displacement, "float32")
    displacement = B.numpy.broadcast_to(displacement, (batch, height, width, 2))
    rows = B.numpy.arange(height, dtype="float32")[None, :, None]
    cols = B.numpy.arange(width, dtype="float32")[None, None, :]
    source_y = rows - displacement[..., 0]
    source_x = cols - displacement[..., 1]

    # One flat gather for all the pixels that are read: (B*H*W, C) rows.
    flat = B.numpy.reshape(images, (-1, channels))
    image_dtype = _backend.dtype_name(images)

    if interpolation == "nearest":
        iy, inside_y = _fold_index(B, B.numpy.floor(source_y + 0.5), height, fill_mode)
        ix, inside_x = _fold_index(B, B.numpy.floor(source_x + 0.5), width, fill_mode)
        base = B.numpy.reshape(B.numpy.arange(batch, dtype="int32") * (height * width), (-1, 1, 1))
        values = _backend.take_rows(B, flat, base + iy * width + ix)
        if fill_mode == "constant":
            inside = B.numpy.logical_and(inside_y, inside_x)[..., None]
            fill = B.cast(B.convert_to_tensor(fill_value, "float32"), image_dtype)
            values = B.numpy.where(inside, values, fill)
        return values

    out_dtype = image_dtype if "float" in image_dtype else "float32"
    y0, y1, wy, inside_y = _bilinear_axis(B, source_y, height, fill_mode)
    x0, x1, wx, inside_x = _bilinear_axis(B, source_x, width, fill_mode)
    # The four neighbours stacked on one axis: (B, H, W, 4) -> one gather -> (B, H, W, 4, C).
    base = B.numpy.reshape(B.numpy.arange(batch, dtype="int32") * (height * width), (-1, 1, 1, 1))
    rows = B.numpy.stack([y0, y0, y1, y1], axis=-1) * width
    index = base + rows + B.numpy.stack([x0, x1, x0, x1], axis=-1)
    values = B.cast(_backend.take_rows(B, flat, index), "float32")
    if fill_mode == "constant":
        both = B.numpy.logical_and
        inside = B.numpy.stack(
            [
                both(inside_y[0], inside_x[0]),
                both(inside_y[0], inside_x[1]),
                both(inside_y[1], inside_x[0]),
                both(inside_y[1], inside_x[1]),
            ],
            axis=-1,
        )
        values = B.numpy.where(inside[..., None], values, fill_value)
    wy, wx = wy[..., None], wx[..., None]
    top = values[..., 0, :] * (1.0 - wx) + values[..., 1, :] * wx
    bottom = values[..., 2, :] * (1.0 - wx) + values[..., 3, :] * wx
    out = top * (1.0 - wy) + bottom * wy
    return B.cast(out, out_dtype)


# -- PyTorch: torch.nn.functional.grid_sample -----------------------------------------------------
# grid_sample reads pixel centres at normalised coordinates (2 x + 1) / W - 1 (align_corners=False);
# its padding modes are our fill modes: "border" clamps to the edge pixel ("nearest"),
# "reflection" mirrors about -0.5 and W - 0.5 and then clamps ("reflect", d c b a | a b c d, as
# `_bilinear_axis` folds), "zeros" reads 0 outside (with "constant", the fill value is added back
# for the weight that fell outside). "wrap" samples the wrapped coordinate from an image padded
# circularly by one row and column, so the last pixel's right neighbour is the first.
_PADDING_MODES = {
    "nearest": "border",
    "reflect": "reflection",
    "wrap": "border",
    "constant": "zeros",
}
_SMALL_INTEGERS = ("int8", "uint8", "int16", "uint16")


def _grid_sample_dtype(image_dtype, interpolation):
    """The float dtype grid_sample samples `image_dtype` in, or None for the gather path.

    Bilinear samples in float32, as the gather path does. Nearest copies values, so it samples in
    a float dtype that holds every value of the input: the input's own float32 / float64, float32
    for the narrower floats and 8- and 16-bit integers, float64 for 32-bit integers; 64-bit
    integers (beyond float64's 2**53) keep the gather path.
    """
    if interpolation == "bilinear":
        return "float32"
    if image_dtype in ("float32", "float64"):
        return image_dtype
    if "float" in image_dtype or image_dtype in _SMALL_INTEGERS:
        return "float32"
    if image_dtype in ("int32", "uint32"):
        return "float64"
    return None


def _grid_sample(images, displacement, interpolation, fill_mode, fill_value, sample_dtype):
    """`_resample` on PyTorch: ``torch.nn.functional.grid_sample``, on the images' device.

    The images are handed over as a transposed view, ``(B, C, W, H)``, with no copy: then the
    grid's last axis is ``(y, x)``, the order of the displacement's, and the grid is one fused
    ``base + u * scale``. The output is grid_sample's ``(B, C, H, W)`` seen channels last.
    """
    import torch

    batch, height, width, _ = images.shape
    dtype = getattr(torch, sample_dtype)
    # One copy of a field laid out (B, 2, H, W) (the TPS and diffeomorphism fields): the reads
    # below are then copy-free.
    u = displacement.to(torch.float32).contiguous()
    if (
        interpolation == "bilinear"
        and _backend.is_concrete(u)
        and not (torch.is_grad_enabled() and u.requires_grad)
        and u.numel()
        and _is_zero(torch, u)
    ):
        # A zero field is the identity, exactly, as on the other backends: grid_sample reads a
        # pixel centre through normalised coordinates, to float32 rounding (~1e-7 * size pixels).
        # Eagerly only (warp synchronises there already, for its finiteness check), and not
        # when the field wants a gradient (grid_sample's is the bilinear one).
        out_dtype = images.dtype if images.is_floating_point() else torch.float32
        return images.to(torch.float32).to(out_dtype, copy=True)
    # Pixel centres in normalised coordinates, (H, W, 2) as (y, x): the identity grid.
    sizes = (height, width)
    axes = [
        (torch.arange(size, dtype=torch.float32, device=images.device) * 2.0 + 1.0) / size - 1.0
        for size in sizes
    ]
    base = torch.stack(torch.broadcast_tensors(axes[0][:, None], axes[1][None, :]), dim=-1)
    to_normalised = base.new_tensor([2.0 / height, 2.0 / width])
    samples = images.permute(0, 3, 2, 1).to(dtype)
    if interpolation == "bilinear" and fill_mode != "wrap":
        # source = pixel - u, on (.., H, W * 2) rows: a last axis of 2 would make the broadcast
        # 3x slower than one long one.
        grid = torch.addcmul(
            base.reshape(height, width * 2),
            u.reshape(-1, height, width * 2),
            to_normalised.repeat(width),
            value=-1.0,
        ).reshape(-1, height, width, 2)
    else:
        # Pixel coordinates: rounded (nearest), wrapped into [0, size) (wrap), then normalised.
        pixels = torch.stack(
            torch.broadcast_tensors(
                torch.arange(height, dtype=torch.float32, device=images.device)[:, None],
                torch.arange(width, dtype=torch.float32, device=images.device)[None, :],
            ),
            dim=-1,
        )
        source = pixels - u
        if interpolation == "nearest":
            source = torch.floor(source + 0.5)  # halves round up, as in `_resample`
            if fill_mode == "constant":
                inside = ((source >= 0) & (source < base.new_tensor(sizes))).all(dim=-1)
        if fill_mode == "wrap":
            source = torch.remainder(source, base.new_tensor(sizes))
            if interpolation == "bilinear":
                samples = torch.nn.functional.pad(samples, (0, 1, 0, 1), mode="circular")
                to_normalised = base.new_tensor([2.0 / (height + 1), 2.0 / (width + 1)])
        grid = (source + 0.5) * to_normalised - 1.0
    grid = grid.to(dtype).expand(batch, height, width, 2)
    out = torch.nn.functional.grid_sample(
        samples,
        grid,
        mode=interpolation,
        padding_mode=_PADDING_MODES[fill_mode],
        align_corners=False,
    ).permute(0, 2, 3, 1)  # (B, C, H, W), the grid's H and W: as (B, H, W, C)
    image_dtype = _backend.dtype_name(images)
    if interpolation == "nearest":
        out = out.to(images.dtype)
        if fill_mode == "constant":
            fill = torch.tensor(fill_value, dtype=torch.float32).to(images.dtype)
            out = torch.where(inside[..., None], out, fill.to(images.device))
        return out
    if fill_mode == "constant" and fill_value != 0.0:
        # The weight that bilinear interpolation puts inside the image, per axis, is
        # clip(min(s + 1, size - s), 0, 1) at source coordinate s; in normalised coordinates g,
        # clip((1 - |g|) size / 2 + 1 / 2, 0, 1). The rest reads fill_value.
        half_sizes = base.new_tensor([height / 2.0, width / 2.0])
        inside = torch.clamp((1.0 - torch.abs(grid)) * half_sizes + 0.5, 0.0, 1.0).prod(dim=-1)
        out = out + fill_value * (1.0 - inside)[..., None]
    if not _backend.is_concrete(displacement):
        # Traced (torch.compile), a non-finite field is not checked: make it NaN, as `_resample`
        # does, where grid_sample would read a plausible value (except that "nearest" clamps an
        # infinite coordinate to the edge, as `_resample` does).
        bad = torch.isnan(u) if fill_mode == "nearest" else ~torch.isfinite(u)
        out = torch.where(bad.any(dim=-1, keepdim=True), torch.nan, out)
    return out.to(images.dtype) if "float" in image_dtype else out


def _is_zero(torch, u):
    low, high = torch.aminmax(u)  # one vectorised pass (``any`` takes ten times as long)
    return bool((low == 0) & (high == 0))


def _fold_index(B, index, size, fill_mode):
    """Maps integer sample coordinates into ``[0, size)`` according to `fill_mode`.

    Returns the folded int32 index and, for ``"constant"``, a boolean mask of the coordinates
    that fell inside the image (None otherwise).
    """
    index = B.cast(index, "int32")
    if fill_mode == "nearest":
        return B.numpy.clip(index, 0, size - 1), None
    if fill_mode == "wrap":
        return B.numpy.mod(index, size), None
    if fill_mode == "reflect":
        # Half-sample symmetric, as Keras and scipy.ndimage: (d c b a | a b c d | d c b a).
        period = B.numpy.mod(index, 2 * size)
        return B.numpy.where(period >= size, 2 * size - 1 - period, period), None
    inside = B.numpy.logical_and(index >= 0, index < size)
    return B.numpy.clip(index, 0, size - 1), inside


def _bilinear_axis(B, source, size, fill_mode):
    """The two neighbours (int32, inside ``[0, size)``) and the weight of the second along one
    axis, and for ``"constant"`` whether each neighbour lies inside the image.

    The fill mode is applied once to the continuous coordinate rather than to each neighbour:
    mirroring and tiling commute with linear interpolation, so this reads exactly the values that
    per-neighbour folding reads, for half the integer work.
    """
    size_f = B.cast(size, "float32")
    if fill_mode == "constant":
        low = B.numpy.floor(source)
        weight = source - low
        low = B.cast(low, "int32")
        high = low + 1
        inside = (
            B.numpy.logical_and(low >= 0, low < size),
            B.numpy.logical_and(high >= 0, high < size),
        )
        return (
            B.numpy.clip(low, 0, size - 1),
            B.numpy.clip(high, 0, size - 1),
            weight,
            inside,
        )
    if fill_mode == "wrap":
        source = B.numpy.mod(source, size_f)
        low = B.numpy.floor(source)
        weight = source - low
        low = B.numpy.minimum(B.cast(low, "int32"), size - 1)  # mod may round up to `size`
        high = B.numpy.where(low + 1 >= size, 0, low + 1)
        return low, high, weight, None
    if fill_mode == "reflect":
        # Mirror about -0.5 and size - 0.5 (d c b a | a b c d | d c b a), period 2 * size.
        folded = B.numpy.mod(source + 0.5, 2.0 * size_f)
        source = B.numpy.where(folded < size_f, folded, 2.0 * size_f - folded) - 0.5
    # "nearest", and "reflect" after folding: clamp to the outermost pixel centres.
    source = B.numpy.clip(source, 0.0, size_f - 1.0)
    low = B.numpy.floor(source)
    weight = source - low
    low = B.cast(low, "int32")
    return low, B.numpy.minimum(low + 1, size - 1), weight, None


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

    Example:

    >>> images = np.arange(16, dtype="float32").reshape(1, 4, 4, 1)
    >>> np.asarray(shift(images, 1, 0))[0, :, 0, 0]
    array([12.,  0.,  4.,  8.], dtype=float32)
    """
    B = _backend.ops(_backend.backend_name(images))
    offsets = []
    for argument, value in (("dy", dy), ("dx", dx)):
        value = B.convert_to_tensor(value)
        if "int" not in _backend.dtype_name(value):
            raise TypeError(
                f"`{argument}` must be an integer (whole-pixel shift). "
                f"Received: {argument}={value!r} of dtype {_backend.dtype_name(value)}"
            )
        offsets.append(B.cast(value, "float32"))
    images = B.convert_to_tensor(images)
    if len(images.shape) == 3:
        return shift(images[None], dy, dx, fill_mode, fill_value)[0]
    batch, height, width = B.core.shape(images)[:3]
    offsets = B.numpy.stack([B.numpy.broadcast_to(o, (batch,)) for o in offsets], axis=-1)
    displacement = B.numpy.broadcast_to(offsets[:, None, None, :], (batch, height, width, 2))
    return warp(images, displacement, "nearest", fill_mode, fill_value)
