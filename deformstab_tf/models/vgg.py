"""VGG-style CNNs with a switchable downsampling layer after every block (Ruderman et al. 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from deformstab_tf._validation import check_range
from deformstab_tf.models.downsampling import (
    DOWNSAMPLING,
    as_pair,
    check_blur_size,
    check_choice,
    check_input_size,
    check_positive_int,
    downsampling_layers,
    min_input_size,
    spatial_and_channels,
    standardize_data_format,
)
from deformstab_tf.models.normalization import BatchNormalization

HEADS = ("gap", "flatten")

CIFAR_BLOCKS = ((32, 32), (64, 64), (128, 128), (256, 256))
IMAGENET_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def _validate_blocks(blocks):
    if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Sequence) or len(blocks) == 0:
        raise ValueError(
            "`blocks` must be a non-empty sequence of blocks, each a non-empty sequence of conv "
            f"widths, e.g. [(32, 32), (64, 64)]; received blocks={blocks!r}."
        )
    validated = []
    for index, block in enumerate(blocks):
        if isinstance(block, (str, bytes)) or not isinstance(block, Sequence) or len(block) == 0:
            raise ValueError(
                f"`blocks` must contain non-empty sequences of conv widths; block {index + 1} "
                f"is {block!r} (received blocks={blocks!r})."
            )
        for width in block:
            check_positive_int("blocks", width)
        validated.append(tuple(int(w) for w in block))
    return validated


def default_input_shape(rows, cols, channels, data_format):
    """`(rows, cols, channels)` or `(channels, rows, cols)` for `data_format`."""
    if standardize_data_format(data_format) == "channels_last":
        return (rows, cols, channels)
    return (channels, rows, cols)


def build_vgg(
    blocks,
    downsample="max",
    input_shape=None,
    num_classes=10,
    head="gap",
    pool_size=2,
    strides=2,
    blur_size=4,
    kernel_initializer="lecun_normal",
    data_format=None,
    name=None,
    batch_norm_momentum=0.9,
):
    """Builds a VGG-style CNN whose downsampling layers are a switch.

    Each conv unit is a 3x3 `Conv2D` ("same" padding, no bias since BatchNorm follows) ->
    `BatchNormalization` -> `ReLU`; a downsampling unit (see `DOWNSAMPLING`) follows every block.
    The head is global average pooling + one `Dense` layer (logits, no softmax), as in Ruderman et
    al. (2018, App. A.1), or `Flatten` + `Dense` as in Mouton et al. (2021).

    Layer names (the probe points of the stability measures): the input is `input`; the ReLU of
    conv unit `k` of block `b` is `block{b}_conv{k}` (its conv `block{b}_conv{k}_conv`, its
    BatchNorm `block{b}_conv{k}_bn`); the last layer of each downsampling unit is `block{b}_down`
    (an identity layer for `"none"`); the classifier is `logits`. See `probe_layer_names`.

    Args:
        blocks: sequence of blocks, each a sequence of conv widths,
            e.g. `[(32, 32), (64, 64), (128, 128), (256, 256)]`.
        downsample: one of `DOWNSAMPLING`: `"subsample"`, `"max"`, `"avg"`, `"strided"`,
            `"strided_relu"`, `"blur"` or `"none"`.
        input_shape: shape of one image without the batch axis; default `(32, 32, 3)`
            (`(3, 32, 32)` for `channels_first`). Spatial sizes may be None (variable size).
        num_classes: number of logits.
        head: `"gap"` (global average pooling + Dense) or `"flatten"` (Flatten + Dense).
        pool_size: int or pair; window of max/avg pooling, kernel size of the strided convs and
            window of the stride-1 max pooling in `"blur"`. With `strides`, spans Mouton et al.'s
            kernel-size-vs-stride grid.
        strides: int or pair, the downsampling factor of every unit.
        blur_size: number of binomial taps of the `"blur"` low-pass filter, 2..7.
        kernel_initializer: initializer of all conv and dense kernels; the default
            `"lecun_normal"` (truncated normal, std `1/sqrt(fan_in)`) is Ruderman et al.'s.
        data_format: `"channels_last"` or `"channels_first"`; None = Keras config.
        name: model name; default `f"vgg_{downsample}"`.
        batch_norm_momentum: momentum of every BatchNormalization's moving statistics
            (`moving = momentum * moving + (1 - momentum) * batch`). The default 0.9 (PyTorch's,
            as in the papers' code) lets them follow the weights within ~20 steps; Keras's 0.99
            needs ~300, so a short first epoch validates with statistics that are still mostly
            their initial values (chance accuracy).

    Returns:
        A functional `keras.Model` mapping images to logits.

    Raises:
        ValueError: on an unknown `downsample` or `head`, `blur_size` outside 2..7, empty `blocks`
            or an empty block, non-positive `num_classes`, or an input too small for the
            number of downsampling steps.

    Example:

    >>> model = build_vgg([(16,), (32,)], downsample="blur", input_shape=(16, 16, 3))
    >>> model.get_layer("block2_down").output.shape
    (None, 4, 4, 32)
    """
    blocks = _validate_blocks(blocks)
    check_choice("downsample", downsample, DOWNSAMPLING)
    check_choice("head", head, HEADS)
    check_range("batch_norm_momentum", batch_norm_momentum, 0, 1)
    check_positive_int("num_classes", num_classes)
    check_blur_size(blur_size)
    pool_size = as_pair("pool_size", pool_size)
    strides = as_pair("strides", strides)
    data_format = standardize_data_format(data_format)
    if input_shape is None:
        input_shape = default_input_shape(32, 32, 3, data_format)
    spatial, _ = spatial_and_channels("input_shape", input_shape, data_format)
    if downsample != "none":
        need = min_input_size(downsample, strides, blur_size)
        check_input_size(
            input_shape,
            spatial,
            [(f"block{b}_down", strides, need) for b in range(1, len(blocks) + 1)],
        )
    if head == "flatten" and None in spatial:
        raise ValueError(
            "`head='flatten'` needs a fixed spatial size; received "
            f"input_shape={tuple(input_shape)}. Use head='gap' for variable-size inputs."
        )
    channel_axis = -1 if data_format == "channels_last" else 1

    inputs = keras.Input(shape=tuple(input_shape), name="input")
    x = inputs
    for b, widths in enumerate(blocks, start=1):
        for k, width in enumerate(widths, start=1):
            unit = f"block{b}_conv{k}"
            x = layers.Conv2D(
                width,
                3,
                padding="same",
                use_bias=False,  # BatchNorm's offset makes a bias redundant
                kernel_initializer=kernel_initializer,
                data_format=data_format,
                name=f"{unit}_conv",
            )(x)
            x = BatchNormalization(
                axis=channel_axis, momentum=batch_norm_momentum, name=f"{unit}_bn"
            )(x)
            x = layers.ReLU(name=unit)(x)
        for layer in downsampling_layers(
            downsample,
            widths[-1],
            pool_size=pool_size,
            strides=strides,
            blur_size=blur_size,
            kernel_initializer=kernel_initializer,
            data_format=data_format,
            layer_name=f"block{b}_down",
            batch_norm_momentum=batch_norm_momentum,
        ):
            x = layer(x)
    if head == "gap":
        x = layers.GlobalAveragePooling2D(data_format=data_format, name="gap")(x)
    else:
        x = layers.Flatten(data_format=data_format, name="flatten")(x)
    outputs = layers.Dense(num_classes, kernel_initializer=kernel_initializer, name="logits")(x)
    return keras.Model(inputs, outputs, name=name or f"vgg_{downsample}")


def cifar_vgg(downsample="max", num_classes=10, input_shape=None, **kwargs):
    """Ruderman et al.'s CIFAR-10 VGG: blocks 2x32, 2x64, 2x128, 2x256 (8 conv units).

    It has 13 probe points: the input, 8 conv units and 4 downsampling units.

    Args:
        downsample: one of `DOWNSAMPLING`.
        num_classes: number of logits.
        input_shape: default `(32, 32, 3)` (`(3, 32, 32)` for `channels_first`).
        **kwargs: passed to `build_vgg` (`head`, `pool_size`, `strides`, `blur_size`,
            `kernel_initializer`, `data_format`, `name`, `batch_norm_momentum`).

    Returns:
        A functional `keras.Model` mapping images to logits.

    Example:

    >>> model = cifar_vgg("avg")
    >>> len(deformstab_tf.probe_layer_names(model))
    13
    """
    kwargs.setdefault("name", f"cifar_vgg_{downsample}")
    return build_vgg(
        CIFAR_BLOCKS,
        downsample=downsample,
        input_shape=input_shape,
        num_classes=num_classes,
        **kwargs,
    )


def imagenet_vgg(downsample="max", num_classes=1000, input_shape=None, **kwargs):
    """Ruderman et al.'s ImageNet VGG: blocks 2x64, 2x128, 3x256, 3x512, 3x512 (13 conv units).

    It has 19 probe points: the input, 13 conv units and 5 downsampling units.

    Args:
        downsample: one of `DOWNSAMPLING`.
        num_classes: number of logits.
        input_shape: default `(224, 224, 3)` (`(3, 224, 224)` for `channels_first`).
        **kwargs: passed to `build_vgg`.

    Returns:
        A functional `keras.Model` mapping images to logits.
    """
    kwargs.setdefault("name", f"imagenet_vgg_{downsample}")
    if input_shape is None:
        input_shape = default_input_shape(224, 224, 3, kwargs.get("data_format"))
    return build_vgg(
        IMAGENET_BLOCKS,
        downsample=downsample,
        input_shape=input_shape,
        num_classes=num_classes,
        **kwargs,
    )
