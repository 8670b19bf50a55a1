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

import numpy as np

from deformstab_tf._validation import check_choice
from deformstab_tf.deformations import _backend
from deformstab_tf.deformations.affine import _affine_field, check_matrices

FILL_MODES = ("nearest", "reflect", "wrap", "constant")
INTERPOLATIONS = ("bilinear", "nearest")


def _check_numeric(argument, tensor):
    dtype = _backend.dtype_name(tensor)
    if not _backend.is_numeric(dtype):
        raise TypeError(
            f"`{argument}` must have a numeric (float or integer) dtype. "
            f"Received: {argument}.dtype={dtype}"
        )


def warp(
    images,
    displacement,
    interpolation="bilinear",
    fill_mode="nearest",
    fill_value=0.0,
    dtype=None,
):
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
        dtype: the output dtype. By default bilinear output keeps a floating input dtype and is
            float32 for integer input, and nearest output keeps the input dtype (so masks stay
            masks). An integer dtype (``"uint8"`` for images as ``tf.data`` pipelines carry
            them) rounds half to even, as ``np.round``, and clips to the dtype's range, inside
            the compiled resample.

    Returns:
        The warped images, same shape, a tensor of the backend that ran, in `dtype`.

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
    name, B, images, dtype = _check_arguments(images, interpolation, fill_mode, fill_value, dtype)
    displacement = B.convert_to_tensor(displacement)
    _check_numeric("displacement", displacement)
    if len(images.shape) == 3:
        if len(displacement.shape) == 3:
            displacement = displacement[None]
        return warp(images[None], displacement, interpolation, fill_mode, fill_value, dtype)[0]
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
    return _dispatch(
        name, _field_neighbours, _resample, images, displacement, interpolation, fill_mode,
        fill_value, dtype,
    )  # fmt: skip


_STATIC = ("interpolation", "fill_mode", "fill_value", "dtype")


def _in_two_stages(name, neighbours, images, transform, fill_mode, fill_value, dtype):
    """Bilinear resampling as two compiled functions: `neighbours` (`_field_neighbours` or
    `_affine_neighbours`) computes each output pixel's first neighbour and weights once, and
    `_blend` gathers and blends them.

    In one compiled function XLA fuses the index arithmetic into the gather's loop and recomputes
    it for every channel of every neighbour: 1.6x (float32) to 2.2x (uint8) slower on CPU at
    224 px. Inside an outer compiled function (a model under XLA, ``jax.jit``) the two are
    inlined and fuse as one.
    """
    stage = _backend.compiled(neighbours, name, static_argnames=("fill_mode",))
    index, weight_y, weight_x = stage(images, transform, fill_mode=fill_mode)
    blend = _backend.compiled(_blend, name, static_argnames=("fill_mode", "fill_value", "dtype"))
    return blend(
        images,
        index,
        weight_y,
        weight_x,
        fill_mode=fill_mode,
        fill_value=float(fill_value),
        dtype=dtype,
    )


def warp_affine(
    images,
    matrices,
    interpolation="bilinear",
    fill_mode="nearest",
    fill_value=0.0,
    dtype=None,
):
    """`warp` along affine maps, from their matrices: the same images as
    ``warp(images, affine_displacement(matrices, H, W))``, without a dense field.

    On TensorFlow and JAX, bilinear sampling is two compiled functions, as in `warp`: the affine
    map fused into the computation of each pixel's neighbour index and weights, then the gather
    and blend; the field path is three (field, indices, gather). On PyTorch it is
    the field path (``grid_sample``).

    Args:
        images: ``(B, H, W, C)`` or a single ``(H, W, C)`` image, channels last, any numeric dtype.
        matrices: forward maps about the image centre, ``(B, 2, 3)``, ``(B, 3, 3)`` or one
            ``(2, 3)`` matrix for every image, on ``(y, x, 1)`` (see `affine_matrices`): content
            at ``p`` moves to ``A p + t``.
        interpolation, fill_mode, fill_value, dtype: as in `warp`.

    Returns:
        The warped images, as `warp` returns them.

    Raises:
        ValueError: on bad shapes, and, when called eagerly, on matrices that are not finite or
            not invertible.

    Example:

    >>> from deformstab_tf.deformations import affine_displacement, affine_matrices
    >>> images = np.random.rand(2, 8, 8, 3).astype("float32")
    >>> A = affine_matrices(rotation=[10.0, -5.0], scale=1.1)
    >>> fast = warp_affine(images, A, fill_mode="reflect")
    >>> dense = warp(images, affine_displacement(A, 8, 8), fill_mode="reflect")
    >>> float(np.abs(np.asarray(fast) - np.asarray(dense)).max()) < 1e-5
    True
    """
    name, B, images, dtype = _check_arguments(images, interpolation, fill_mode, fill_value, dtype)
    matrices = check_matrices(B, matrices)
    if len(images.shape) == 3:
        return warp_affine(images[None], matrices, interpolation, fill_mode, fill_value, dtype)[0]
    if matrices.shape[0] not in (1, None) and images.shape[0] not in (None, matrices.shape[0]):
        raise ValueError(
            "`matrices` must hold one matrix per image, or one for all. Received: "
            f"images.shape={tuple(images.shape)}, matrices.shape={tuple(matrices.shape)}"
        )
    if _backend.is_concrete(matrices):
        entries = _backend.to_numpy(matrices[:, :2, :2], "float64")
        determinant = entries[:, 0, 0] * entries[:, 1, 1] - entries[:, 0, 1] * entries[:, 1, 0]
        if not (np.all(np.isfinite(_backend.to_numpy(matrices))) and np.all(determinant != 0)):
            raise ValueError(
                "`matrices` must be finite and invertible. Received: "
                f"matrices={_backend.to_numpy(matrices).tolist()!r}"
            )
    return _dispatch(
        name, _affine_neighbours, _resample_affine, images, matrices, interpolation, fill_mode,
        fill_value, dtype,
    )  # fmt: skip


def _dispatch(
    name, neighbours, resample, images, transform, interpolation, fill_mode, fill_value, dtype
):
    """Samples `images` where `transform` (a field or matrices) sends each pixel: bilinear in two
    compiled stages on TensorFlow and JAX (`_in_two_stages`, with `neighbours`), else in one
    (`resample`, compiled)."""
    if name != "torch" and interpolation == "bilinear":
        return _in_two_stages(name, neighbours, images, transform, fill_mode, fill_value, dtype)
    resample = _backend.compiled(resample, name, static_argnames=_STATIC)
    return resample(
        images,
        transform,
        interpolation=interpolation,
        fill_mode=fill_mode,
        fill_value=float(fill_value),
        dtype=dtype,
    )


def _check_arguments(images, interpolation, fill_mode, fill_value, dtype):
    """The checks `warp` and `warp_affine` share: ``(backend name, ops, images as a tensor of
    rank 3 or 4, the output dtype name or None)``."""
    check_choice("interpolation", interpolation, INTERPOLATIONS)
    check_choice("fill_mode", fill_mode, FILL_MODES)
    if isinstance(fill_value, bool) or not isinstance(fill_value, (int, float)):
        raise TypeError(f"`fill_value` must be a number. Received: fill_value={fill_value!r}")
    if dtype is not None:
        try:
            name = _backend.standardize_dtype(dtype)
        except (TypeError, ValueError, AttributeError):
            name = None
        if name is None or not _backend.is_numeric(name):
            raise TypeError(
                f"`dtype` must be a numeric (float or integer) dtype. Received: dtype={dtype!r}"
            )
        dtype = name
    name = _backend.backend_name(images)
    B = _backend.ops(name)
    images = B.convert_to_tensor(images)
    _check_numeric("images", images)
    if len(images.shape) not in (3, 4):
        raise ValueError(
            "`images` must have rank 4 (B, H, W, C) or 3 (H, W, C). "
            f"Received: images.shape={tuple(images.shape)}"
        )
    return name, B, images, dtype


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
# ops run one by one. XLA compiles once per input shape and argument combination. Nearest
# sampling, and PyTorch; bilinear sampling on TensorFlow and JAX runs the same ops in two
# compiled functions (`_in_two_stages`).
def _resample(B, images, displacement, interpolation, fill_mode, fill_value, dtype):
    if B.name == "torch":
        sample_dtype = _grid_sample_dtype(_backend.dtype_name(images), interpolation)
        if sample_dtype is not None:
            out = _grid_sample(
                images, displacement, interpolation, fill_mode, fill_value, sample_dtype
            )
            return out if dtype is None else _to_dtype(B, out, dtype)
    source_y, source_x = _field_sources(B, images, displacement)
    return _sample(B, images, source_y, source_x, interpolation, fill_mode, fill_value, dtype)


def _resample_affine(B, images, matrices, interpolation, fill_mode, fill_value, dtype):
    # (Nearest sampling, and PyTorch; see `_affine_neighbours` for bilinear.) The affine field's
    # formula inside the resample's compiled function: XLA fuses it into the gather's loop, so
    # no field is stored. (Sampling coordinates built as a row term plus a column term, which an
    # affine map is, made the same fused loop 2.2x slower on CPU under XLA, with the same
    # operations; PyTorch's grid_sample takes the field.)
    _, height, width, _ = B.core.shape(images)
    field = _affine_field(B, matrices, height, width)
    return _resample(B, images, field, interpolation, fill_mode, fill_value, dtype)


def _sample(B, images, source_y, source_x, interpolation, fill_mode, fill_value, dtype):
    """The resample proper: `images` ``(B, H, W, C)`` read at ``(source_y, source_x)``, each
    ``(B, H, W)`` in pixel coordinates, the way `warp` documents."""
    batch, height, width, channels = B.core.shape(images)
    image_dtype = _backend.dtype_name(images)

    if interpolation == "nearest":
        # One flat gather for all the pixels that are read: (B*H*W, C) rows.
        flat = B.numpy.reshape(images, (-1, channels))
        iy, inside_y = _fold_index(B, B.numpy.floor(source_y + 0.5), height, fill_mode)
        ix, inside_x = _fold_index(B, B.numpy.floor(source_x + 0.5), width, fill_mode)
        base = B.numpy.reshape(B.numpy.arange(batch, dtype="int32") * (height * width), (-1, 1, 1))
        values = _backend.take_rows(B, flat, base + iy * width + ix)
        if fill_mode == "constant":
            inside = B.numpy.logical_and(inside_y, inside_x)[..., None]
            fill = B.cast(B.convert_to_tensor(fill_value, "float32"), image_dtype)
            values = B.numpy.where(inside, values, fill)
        return values if dtype is None else _to_dtype(B, values, dtype)

    index, wy, wx = _neighbours(B, images, source_y, source_x, fill_mode)
    return _blend(B, images, index, wy, wx, fill_mode, fill_value, dtype)


def _field_neighbours(B, images, displacement, fill_mode):
    """`_neighbours` of the samples that `displacement` reads (the first stage of `warp`)."""
    return _neighbours(B, images, *_field_sources(B, images, displacement), fill_mode)


def _field_sources(B, images, displacement):
    """The pixel coordinates ``(source_y, source_x)`` that a backward `displacement` reads."""
    batch, height, width, _ = B.core.shape(images)
    displacement = B.cast(displacement, "float32")
    displacement = B.numpy.broadcast_to(displacement, (batch, height, width, 2))
    rows = B.numpy.arange(height, dtype="float32")[None, :, None]
    cols = B.numpy.arange(width, dtype="float32")[None, None, :]
    source_y = rows - displacement[..., 0]
    source_x = cols - displacement[..., 1]
    return source_y, source_x


def _affine_neighbours(B, images, matrices, fill_mode):
    """`_neighbours` of the samples that affine `matrices` read (the first stage of
    `warp_affine`): the affine field's formula, fused by XLA into the index arithmetic (no field
    is stored)."""
    _, height, width, _ = B.core.shape(images)
    field = _affine_field(B, matrices, height, width)
    return _field_neighbours(B, images, field, fill_mode)


def _neighbours(B, images, source_y, source_x, fill_mode):
    """Where bilinear sampling of `images` at ``(source_y, source_x)`` reads: the flat int32
    index of each sample's first (top-left) neighbour in the image that `_pad` pads, and the
    weights ``(wy, wx)`` of the neighbours below and to the right, each ``(B, H, W)``.

    Padded by the pixel that the fill mode reads next to its last row and column (and, for
    "constant", a border of fill_value all round), the image holds the four neighbours of a
    sample at fixed offsets from its top-left one: one index per pixel.
    """
    batch, height, width, _ = B.core.shape(images)
    border = 2 if fill_mode == "constant" else 1
    padded_height, padded_width = height + border, width + border
    y0, wy = _bilinear_axis(B, source_y, height, fill_mode)
    x0, wx = _bilinear_axis(B, source_x, width, fill_mode)
    base = B.numpy.arange(batch, dtype="int32") * (padded_height * padded_width)
    index = B.numpy.reshape(base, (-1, 1, 1)) + y0 * padded_width + x0
    return index, wy, wx


def _blend(B, images, index, wy, wx, fill_mode, fill_value, dtype):
    """Bilinear samples of `images` from `_neighbours`' ``(index, wy, wx)``: one gather of the
    four neighbours stacked -> ``(B, H, W, 4, C)``, blended in float32, cast to `dtype`."""
    channels = B.core.shape(images)[3]
    image_dtype = _backend.dtype_name(images)
    padded = _pad(B, images, fill_mode, fill_value)
    padded_width = B.core.shape(padded)[2]
    offsets = B.convert_to_tensor([0, 1, padded_width, padded_width + 1], "int32")
    flat = B.numpy.reshape(padded, (-1, channels))
    values = B.cast(_backend.take_rows(B, flat, index[..., None] + offsets), "float32")
    wy, wx = wy[..., None], wx[..., None]
    top = values[..., 0, :] * (1.0 - wx) + values[..., 1, :] * wx
    bottom = values[..., 2, :] * (1.0 - wx) + values[..., 3, :] * wx
    out = top * (1.0 - wy) + bottom * wy
    if dtype is None:
        dtype = image_dtype if "float" in image_dtype else "float32"
    return _to_dtype(B, out, dtype)


def _to_dtype(B, values, dtype):
    """`values` cast to `dtype`; to an integer dtype rounded half to even (as ``np.round``) and
    clipped to its range."""
    source = _backend.dtype_name(values)
    if source == dtype:
        return values
    if "int" in dtype:
        info = np.iinfo(dtype)
        low, high = int(info.min), int(info.max)
        if "float" in source:
            values = B.numpy.round(values)
            # The range's ends as the float dtype holds them (float32(2**31 - 1) is 2**31).
            top = np.float32(high)
            high = float(top if int(top) <= high else np.nextafter(top, np.float32(0)))
            low = float(low)
        else:
            source_info = np.iinfo(source)
            low, high = max(low, int(source_info.min)), min(high, int(source_info.max))
        values = B.numpy.clip(values, low, high)
    return B.cast(values, dtype)


def _pad(B, images, fill_mode, fill_value):
    """`images` with the pixels that bilinear sampling reads beyond the last row and column
    (see `_bilinear_axis`): the edge ("nearest", and "reflect" after folding), the first row
    and column ("wrap"), or a border of `fill_value` on every side ("constant", in float32
    where the images' dtype cannot hold `fill_value` exactly)."""
    if fill_mode == "constant":
        dtype = _backend.dtype_name(images)
        if not _holds(dtype, fill_value):
            images, dtype = B.cast(images, "float32"), "float32"
        fill = int(fill_value) if "int" in dtype else fill_value
        return B.numpy.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=fill)
    edge = (slice(0, 1),) if fill_mode == "wrap" else (slice(-1, None),)
    images = B.numpy.concatenate([images, images[(slice(None), *edge)]], axis=1)
    return B.numpy.concatenate([images, images[(slice(None), slice(None), *edge)]], axis=2)


def _holds(dtype, value):
    """Whether `dtype` represents `value` exactly, as float32 reads it."""
    if dtype in ("float32", "float64"):
        return True
    if "int" in dtype:
        info = np.iinfo(dtype)
        return float(value).is_integer() and info.min <= value <= info.max
    return False


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
    """The first neighbour of each sample along one axis, as an int32 index into the image
    padded by `_pad`, and the weight of the second (the neighbour at index + 1).

    The fill mode is applied once to the continuous coordinate rather than to each neighbour:
    mirroring and tiling commute with linear interpolation, so this reads exactly the values that
    per-neighbour folding reads, for half the integer work. The first neighbour is clamped into
    the image, so the second is at most the padding pixel; a non-finite coordinate gives a NaN
    weight (a NaN sample), except that "nearest" clamps an infinite one to the edge.
    """
    size_f = B.cast(size, "float32")
    if fill_mode == "constant":
        # In the image padded by one pixel of fill_value on each side: a sample in (-1, size)
        # reads one or two image pixels, one further out reads the border with weight 1 or 0.
        clamped = B.numpy.clip(source, -1.0, size_f)
        low = B.numpy.clip(B.cast(B.numpy.floor(clamped), "int32"), -1, size - 1)
        # source - source: 0, or NaN for an infinite source (as for a NaN one).
        weight = clamped - B.cast(low, "float32") + (source - source)
        return low + 1, weight
    if fill_mode == "wrap":
        source = _fold(B, source, size_f)
        # Into [0, size): the fold may round to `size` (that is 0) or a hair below 0.
        source = B.numpy.maximum(B.numpy.where(source >= size_f, source - size_f, source), 0.0)
        low = B.numpy.floor(source)
        weight = source - low
        return B.numpy.clip(B.cast(low, "int32"), 0, size - 1), weight
    if fill_mode == "reflect":
        # Mirror about -0.5 and size - 0.5 (d c b a | a b c d | d c b a), period 2 * size.
        folded = _fold(B, source + 0.5, 2.0 * size_f)
        source = B.numpy.where(folded < size_f, folded, 2.0 * size_f - folded) - 0.5
    # "nearest", and "reflect" after folding: clamp to the outermost pixel centres.
    source = B.numpy.clip(source, 0.0, size_f - 1.0)
    low = B.numpy.floor(source)
    weight = source - low
    return B.numpy.clip(B.cast(low, "int32"), 0, size - 1), weight


def _fold(B, source, period):
    """`source` modulo `period` as ``x - period * floor(x / period)``: 15% faster over the
    resample than ``mod`` (floating ``floormod``) under XLA on CPU. It may round to `period`
    itself or to a hair below 0; the callers map both into the image."""
    return source - period * B.numpy.floor(source / period)


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
