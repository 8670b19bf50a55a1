"""Switchable downsampling ("interleaved pooling") and the probe-point naming of the builders.

The models in `deformstab_tf.models` take a `downsample` switch whose valid values are listed in
`DOWNSAMPLING`. `downsampling_layers` is the one place that maps a switch value to Keras layers;
`Subsample2D` and `BlurPool2D` are the two layers Keras does not provide.

Every downsampling variant uses "same"-style padding, so a step with stride `s` maps a spatial
size `n` to `ceil(n / s)` whatever the pooling kernel size: the variants of one architecture have
the same feature-map sizes and their layer-wise measurements line up point by point.

The builders name their probe points (the representations the stability measures read) `input`,
`block{b}_conv{k}` (output of a conv unit, after its ReLU) and `block{b}_down` (output of a
downsampling unit); `probe_layer_names` lists them in forward order.
"""

from __future__ import annotations

import math
import re

import keras
import numpy as np
from keras import layers, ops

from deformstab_tf._validation import check_choice, check_positive_int, standardize_data_format
from deformstab_tf.models.normalization import BatchNormalization

DOWNSAMPLING = ("subsample", "max", "avg", "strided", "strided_relu", "blur", "none")
"""Valid values of the `downsample` switch of the model builders.

- `subsample`: keep the top-left pixel of each `strides x strides` cell (`x[:, ::2, ::2]`).
- `max`, `avg`: max / average pooling, window `pool_size`, stride `strides`.
- `strided`: a `pool_size x pool_size` convolution with stride `strides`, same channel count.
- `strided_relu`: the same convolution -> BatchNormalization -> ReLU.
- `blur`: anti-aliased max pooling (Zhang 2019): max pooling with window `pool_size` at stride 1,
  then `BlurPool2D` (binomial low-pass of size `blur_size`) with stride `strides`.
- `none`: no downsampling (an identity layer keeps the probe-point name).
"""

BLUR_PADDINGS = ("reflect", "constant", "symmetric")

_PROBE_NAME = re.compile(r"^(input|stem|block\d+_(conv\d+|down|out))$")


def as_pair(argument, value):
    """Return `value` (an int or a pair of ints, all >= 1) as a tuple `(rows, cols)`."""
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2:
        raise ValueError(
            f"`{argument}` must be an integer or a pair of integers; received {argument}={value!r}."
        )
    for item in pair:
        check_positive_int(argument, item)
    return tuple(int(v) for v in pair)


BLUR_SIZES = range(2, 8)


def check_blur_size(blur_size):
    """Raises a ValueError naming `blur_size` unless it is an integer in 2..7 (Zhang's sizes)."""
    if isinstance(blur_size, bool) or blur_size not in BLUR_SIZES:
        raise ValueError(
            f"`blur_size` must be an integer in 2..7; received blur_size={blur_size!r}. "
            "Valid choices: 2, 3, 4, 5, 6, 7."
        )


def binomial_filter(filter_size):
    """Normalised 2-D binomial low-pass filter of shape `(filter_size, filter_size)`.

    The 1-D taps are row `filter_size - 1` of Pascal's triangle (`[1, 1]`, `[1, 2, 1]`,
    `[1, 3, 3, 1]`, ...); the 2-D filter is their outer product divided by its sum.
    """
    check_positive_int("filter_size", filter_size)
    taps = np.array([math.comb(filter_size - 1, k) for k in range(filter_size)], dtype="float64")
    kernel = np.outer(taps, taps)
    return kernel / kernel.sum()


@keras.saving.register_keras_serializable(package="deformstab_tf")
class Subsample2D(layers.Layer):
    """Keeps the top-left pixel of every `strides` cell: `x[:, ::s0, ::s1, :]`.

    Plain subsampling without any low-pass, the "subsample" variant of Ruderman et al. (2018).
    The output spatial size is `ceil(input_size / strides)`.

    Where it runs: inside models (also under XLA, `jit_compile=True`) and in `tf.data` on the
    TensorFlow backend; it is built from `keras.ops` only (tested on TensorFlow and JAX).

    Args:
        strides: int or pair of ints, the subsampling factor along rows and columns.
        data_format: `"channels_last"` (default from the Keras config) or `"channels_first"`.

    Input shape:
        4D tensor `(batch, rows, cols, channels)` for `channels_last`,
        `(batch, channels, rows, cols)` for `channels_first`.

    Output shape:
        4D tensor with `rows` and `cols` replaced by `ceil(rows / strides[0])`,
        `ceil(cols / strides[1])`.

    Example:

    >>> x = np.arange(16, dtype="float32").reshape(1, 4, 4, 1)
    >>> Subsample2D(2)(x)[0, :, :, 0].numpy()
    array([[ 0.,  2.],
           [ 8., 10.]], dtype=float32)
    """

    def __init__(self, strides=2, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.strides = as_pair("strides", strides)
        self.data_format = standardize_data_format(data_format)

    def call(self, inputs):
        rows, cols = self.strides
        if self.data_format == "channels_last":
            return inputs[:, ::rows, ::cols, :]
        return inputs[:, :, ::rows, ::cols]

    def compute_output_shape(self, input_shape):
        return _strided_output_shape(input_shape, self.strides, self.data_format)

    def get_config(self):
        config = super().get_config()
        config.update({"strides": self.strides, "data_format": self.data_format})
        return config


@keras.saving.register_keras_serializable(package="deformstab_tf")
class BlurPool2D(layers.Layer):
    """Anti-aliased downsampling: a fixed binomial low-pass filter applied with a stride.

    Each channel is filtered separately (depthwise) with the normalised outer product of the
    binomial taps `[1, 1]`, `[1, 2, 1]`, `[1, 3, 3, 1]`, ... of length `filter_size`, then kept
    every `strides` pixels, following the description in Zhang, "Making Convolutional Networks
    Shift-Invariant Again" (ICML 2019). The input is padded by `(filter_size - 1) // 2` pixels
    before and `ceil((filter_size - 1) / 2)` after each spatial axis, so the output spatial size
    is `ceil(input_size / strides)`. The filter has no trainable weights.

    Where it runs: inside models (also under XLA, `jit_compile=True`) and in `tf.data` on the
    TensorFlow backend; it is built from `keras.ops` only (tested on TensorFlow and JAX).

    Args:
        filter_size: int >= 1, the number of binomial taps per axis (1 = plain subsampling,
            2 = box filter, 3 = `[1, 2, 1] / 4`, ...; Zhang uses 2..7, default 4).
        strides: int or pair of ints, the downsampling factor.
        padding: how to pad the borders: `"reflect"` (mirror without repeating the edge pixel,
            default), `"symmetric"` (mirror repeating the edge pixel) or `"constant"` (zeros).
            `"reflect"` needs a spatial size larger than the padding.
        data_format: `"channels_last"` (default from the Keras config) or `"channels_first"`.

    Input shape:
        4D tensor `(batch, rows, cols, channels)` for `channels_last`,
        `(batch, channels, rows, cols)` for `channels_first`. The channel count must be known.

    Output shape:
        4D tensor with `rows` and `cols` replaced by `ceil(rows / strides[0])`,
        `ceil(cols / strides[1])`.

    Example:

    >>> x = np.ones((2, 8, 8, 3), dtype="float32")
    >>> y = BlurPool2D(filter_size=3, strides=2)(x)
    >>> tuple(y.shape), float(ops.max(ops.abs(y - 1.0)))
    ((2, 4, 4, 3), 0.0)
    """

    def __init__(self, filter_size=4, strides=2, padding="reflect", data_format=None, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("filter_size", filter_size)
        check_choice("padding", padding, BLUR_PADDINGS)
        self.filter_size = int(filter_size)
        self.strides = as_pair("strides", strides)
        self.padding = padding
        self.data_format = standardize_data_format(data_format)
        self._depthwise_kernel = None

    @property
    def filter(self):
        """The 2-D low-pass filter, a numpy array of shape `(filter_size, filter_size)`."""
        return binomial_filter(self.filter_size)

    @property
    def _pad_before_after(self):
        before = (self.filter_size - 1) // 2
        return before, self.filter_size - 1 - before

    def build(self, input_shape):
        channel_axis = -1 if self.data_format == "channels_last" else 1
        spatial_axes = (1, 2) if self.data_format == "channels_last" else (2, 3)
        channels = input_shape[channel_axis]
        if channels is None:
            raise ValueError(
                f"BlurPool2D needs a known channel count; received input_shape={input_shape}."
            )
        if self.padding == "reflect":
            # Mirror padding without the edge pixel needs that many pixels beyond the edge.
            largest_pad = max(self._pad_before_after)
            for axis in spatial_axes:
                size = input_shape[axis]
                if size is not None and size <= largest_pad:
                    raise ValueError(
                        f"BlurPool2D(filter_size={self.filter_size}, padding='reflect') needs "
                        f"spatial sizes > {largest_pad}; received input_shape={input_shape}. "
                        "Use padding='symmetric' or 'constant', or a smaller filter_size."
                    )
        # Depthwise kernel layout: (rows, cols, channels, depth_multiplier=1).
        kernel = np.tile(self.filter[:, :, None, None], (1, 1, channels, 1))
        self._depthwise_kernel = kernel.astype("float32")

    def call(self, inputs):
        before, after = self._pad_before_after
        spatial_pad = [[before, after], [before, after]]
        if self.data_format == "channels_last":
            pad_width = [[0, 0], *spatial_pad, [0, 0]]
        else:
            pad_width = [[0, 0], [0, 0], *spatial_pad]
        spatial_axes = (1, 2) if self.data_format == "channels_last" else (2, 3)
        if not (before or after):  # a 1-tap filter (PyTorch's padding rejects zero widths)
            padded = inputs
        elif self.padding == "symmetric" and all(
            inputs.shape[axis] is not None and inputs.shape[axis] >= after for axis in spatial_axes
        ):
            # Mirrored edge slices: `ops.pad`'s "symmetric" is "replicate" on PyTorch.
            padded = inputs
            for axis in spatial_axes:
                padded = _symmetric_pad(padded, before, after, axis)
        else:
            padded = ops.pad(inputs, pad_width, mode=self.padding)
        # 16-bit inputs are filtered in float32: the CPU's depthwise kernels have no native
        # bfloat16 path (forward + backward of cifar_vgg's four units 2.2x faster so).
        dtype = keras.backend.standardize_dtype(inputs.dtype)
        compute_dtype = "float32" if dtype in ("float16", "bfloat16") else dtype
        filtered = ops.depthwise_conv(
            ops.cast(padded, compute_dtype),
            ops.cast(self._depthwise_kernel, compute_dtype),
            strides=self.strides,
            padding="valid",
            data_format=self.data_format,
        )
        return ops.cast(filtered, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return _strided_output_shape(input_shape, self.strides, self.data_format)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filter_size": self.filter_size,
                "strides": self.strides,
                "padding": self.padding,
                "data_format": self.data_format,
            }
        )
        return config


def _symmetric_pad(x, before, after, axis):
    """`x` padded along `axis` with its edge slices mirrored (``d c b a | a b c d | d c b a``),
    for pads no wider than the axis."""

    def edge(start, stop):
        index = [slice(None)] * len(x.shape)
        index[axis] = slice(start, stop)
        return ops.flip(x[tuple(index)], axis=axis)

    parts = [edge(0, before)] if before else []
    parts.append(x)
    if after:
        parts.append(edge(-after, None))
    return ops.concatenate(parts, axis=axis)


def _strided_output_shape(input_shape, strides, data_format):
    output_shape = list(input_shape)
    spatial_axes = (1, 2) if data_format == "channels_last" else (2, 3)
    for axis, stride in zip(spatial_axes, strides, strict=True):
        if output_shape[axis] is not None:
            output_shape[axis] = -(-output_shape[axis] // stride)
    return tuple(output_shape)


def downsampling_layers(
    name,
    channels=None,
    *,
    pool_size=2,
    strides=2,
    blur_size=4,
    blur_padding="reflect",
    blur_max_pool=True,
    kernel_initializer="lecun_normal",
    data_format=None,
    layer_name="down",
    batch_norm_momentum=0.9,
):
    """The layers of one downsampling unit of the `downsample` switch, in application order.

    This is the single mapping from a switch value (see `DOWNSAMPLING`) to Keras layers. The last
    layer of the unit is named `layer_name`; inner layers of multi-layer units are named
    `{layer_name}_conv`, `{layer_name}_bn` (for `strided_relu`) and `{layer_name}_pool` (the
    stride-1 max pooling of `blur`).

    Args:
        name: one of `DOWNSAMPLING`.
        channels: channel count of the input; needed by `strided` and `strided_relu`, whose
            convolution keeps the channel count.
        pool_size: int or pair, window of `max`/`avg` pooling, kernel size of the `strided`
            convolutions and window of the stride-1 max pooling in `blur`.
        strides: int or pair, the downsampling factor (also the step of `subsample` and `blur`).
        blur_size: number of binomial taps of `blur` (see `BlurPool2D`).
        blur_padding: border padding of `BlurPool2D`: `"reflect"`, `"symmetric"` or `"constant"`.
        blur_max_pool: if False, `blur` is `BlurPool2D` alone, Zhang's replacement for a
            strided convolution (a stride-1 convolution followed by a blur); used in ResNets.
        kernel_initializer: initializer of the `strided` convolutions.
        data_format: `"channels_last"` or `"channels_first"`; None = Keras config.
        layer_name: name of the last layer of the unit.
        batch_norm_momentum: momentum of the BatchNormalization of `strided_relu`.

    Returns:
        A list of Keras layers; apply them in order (`for layer in units: x = layer(x)`).

    Example:

    >>> units = downsampling_layers("blur", layer_name="block1_down")
    >>> [layer.name for layer in units]
    ['block1_down_pool', 'block1_down']
    """
    check_choice("downsample", name, DOWNSAMPLING)
    pool_size = as_pair("pool_size", pool_size)
    strides = as_pair("strides", strides)
    data_format = standardize_data_format(data_format)
    channel_axis = -1 if data_format == "channels_last" else 1
    if name in ("strided", "strided_relu") and channels is None:
        raise ValueError(f"downsample={name!r} needs `channels`; received channels=None.")

    if name == "none":
        return [layers.Identity(name=layer_name)]
    if name == "subsample":
        return [Subsample2D(strides, data_format=data_format, name=layer_name)]
    if name == "max":
        return [
            layers.MaxPooling2D(
                pool_size, strides, padding="same", data_format=data_format, name=layer_name
            )
        ]
    if name == "avg":
        return [
            layers.AveragePooling2D(
                pool_size, strides, padding="same", data_format=data_format, name=layer_name
            )
        ]
    if name in ("strided", "strided_relu"):
        # No bias: the following conv -> BatchNorm (or the classifier's bias) absorbs it.
        conv = layers.Conv2D(
            channels,
            pool_size,
            strides,
            padding="same",
            use_bias=False,
            kernel_initializer=kernel_initializer,
            data_format=data_format,
            name=layer_name if name == "strided" else f"{layer_name}_conv",
        )
        if name == "strided":
            return [conv]
        return [
            conv,
            BatchNormalization(
                axis=channel_axis, momentum=batch_norm_momentum, name=f"{layer_name}_bn"
            ),
            layers.ReLU(name=layer_name),
        ]
    # name == "blur"
    blur = BlurPool2D(
        blur_size, strides, padding=blur_padding, data_format=data_format, name=layer_name
    )
    if not blur_max_pool:
        return [blur]
    return [
        layers.MaxPooling2D(
            pool_size, 1, padding="same", data_format=data_format, name=f"{layer_name}_pool"
        ),
        blur,
    ]


def min_input_size(downsample, strides, blur_size=4, blur_padding="reflect"):
    """Smallest spatial size a downsampling unit accepts (per axis, as a pair).

    A step must see at least `strides` pixels (else it does not downsample), and `blur` with
    reflect padding needs more pixels than its padding.
    """
    strides = as_pair("strides", strides)
    if downsample == "none":
        return (1, 1)
    need = strides
    if downsample == "blur":
        pad_after = blur_size - 1 - (blur_size - 1) // 2
        blur_need = pad_after + 1 if blur_padding == "reflect" else 1
        need = tuple(max(n, blur_need) for n in need)
    return need


def check_input_size(input_shape, spatial_shape, steps):
    """Raise a ValueError if `spatial_shape` is too small for the downsampling `steps`.

    Args:
        input_shape: the `input_shape` argument as received (for the message).
        spatial_shape: `(rows, cols)`; None entries are not checked.
        steps: sequence of `(label, strides_pair, min_size_pair)` in forward order.
    """

    def first_failure(size_rc):
        size = list(size_rc)
        for index, (label, step_strides, need) in enumerate(steps):
            for axis in range(2):
                if size[axis] is not None and size[axis] < need[axis]:
                    return index, label, tuple(size), need
            size = [
                None if s is None else -(-s // st) for s, st in zip(size, step_strides, strict=True)
            ]
        return None

    failure = first_failure(spatial_shape)
    if failure is None:
        return
    index, label, size, need = failure
    smallest = []
    for axis in range(2):
        if spatial_shape[axis] is None:
            smallest.append(None)
            continue
        n = 1
        while first_failure(tuple(n if a == axis else None for a in range(2))) is not None:
            n += 1
        smallest.append(n)
    raise ValueError(
        f"`input_shape` is too small for {len(steps)} downsampling steps: received "
        f"input_shape={tuple(input_shape)}; the spatial size reaching step {index + 1} "
        f"({label}) would be {size[0]}x{size[1]}, which needs at least {need[0]}x{need[1]}. "
        f"Use a spatial size of at least {smallest[0]}x{smallest[1]}, or fewer downsampling steps."
    )


def spatial_and_channels(argument, input_shape, data_format):
    """Split a 3-element `input_shape` into `((rows, cols), channels)` for `data_format`."""
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
        raise ValueError(
            f"`{argument}` must have 3 entries (rows, cols, channels) or (channels, rows, cols); "
            f"received {argument}={input_shape!r}."
        )
    if data_format == "channels_last":
        return input_shape[:2], input_shape[2]
    return input_shape[1:], input_shape[0]


def probe_layer_names(model):
    """Names of the probe points of a model built by `deformstab_tf.models`, in forward order.

    Probe points are the representations the stability measures read: `input`, every conv unit
    (`block{b}_conv{k}`, after its ReLU), every downsampling unit (`block{b}_down`) and, for
    ResNets, the stem (`stem`) and each residual block's output (`block{b}_out`).
    `cifar_vgg` has 13 of them, `imagenet_vgg` 19, `resnet18` 21.

    Args:
        model: a Keras model built by `build_vgg`, `cifar_vgg`, `imagenet_vgg`, `build_resnet` or
            `resnet18` (or loaded from a `.keras` file saved from one).

    Returns:
        A list of layer names; `model.get_layer(name).output` is the probe's tensor.

    Raises:
        ValueError: if the model has no layers named in this scheme.

    Example:

    >>> probe_layer_names(deformstab_tf.cifar_vgg())[:4]
    ['input', 'block1_conv1', 'block1_conv2', 'block1_down']
    """
    # Functional models list layers in topological order; all probes lie on one chain,
    # so this order is the forward order.
    names = [layer.name for layer in model.layers if _PROBE_NAME.match(layer.name)]
    if "input" not in names or len(names) < 2:
        raise ValueError(
            f"Model {model.name!r} was not built by deformstab_tf builders: it has no input layer "
            "named 'input' followed by layers named 'block{b}_conv{k}' / 'block{b}_down'. Use "
            "deformstab_tf.models.build_vgg / build_resnet, or pick layer names yourself."
        )
    return names
