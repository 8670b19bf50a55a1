"""ResNet-18-style CNNs whose stride-2 stages use the switchable downsampling of the VGGs."""

from __future__ import annotations

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
from deformstab_tf.models.vgg import default_input_shape

STEMS = ("cifar", "imagenet")


def _conv_bn(x, filters, kernel_size, strides, name, options):
    data_format = options["data_format"]
    channel_axis = -1 if data_format == "channels_last" else 1
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides,
        padding="same",
        use_bias=False,  # BatchNorm's offset makes a bias redundant
        kernel_initializer=options["kernel_initializer"],
        data_format=data_format,
        name=f"{name}_conv",
    )(x)
    return BatchNormalization(
        axis=channel_axis, momentum=options["batch_norm_momentum"], name=f"{name}_bn"
    )(x)


def _apply(units, x):
    for layer in units:
        x = layer(x)
    return x


def _basic_block(x, filters, b, downsamples, downsample, options):
    """One residual block `b`; `downsamples` marks the first block of stages 2-4."""
    data_format = options["data_format"]
    init = options["kernel_initializer"]
    channel_axis = -1 if data_format == "channels_last" else 1
    in_channels = x.shape[channel_axis]
    strided = downsamples and downsample == "strided"

    def switch_units(channels, layer_name):
        # Zhang (2019) anti-aliases a strided conv as conv(stride 1) -> ReLU -> BlurPool, so
        # `blur` here is BlurPool alone (no stride-1 max pool).
        return downsampling_layers(
            downsample,
            channels,
            pool_size=options["pool_size"],
            strides=options["strides"],
            blur_size=options["blur_size"],
            blur_max_pool=False,
            kernel_initializer=init,
            data_format=data_format,
            layer_name=layer_name,
            batch_norm_momentum=options["batch_norm_momentum"],
        )

    # Main path.
    y = _conv_bn(x, filters, 3, options["strides"] if strided else 1, f"block{b}_conv1", options)
    y = layers.ReLU(name=f"block{b}_conv1")(y)
    if downsamples:
        if strided:
            # The stride-2 conv1 already downsampled; keep the probe name.
            y = layers.Identity(name=f"block{b}_down")(y)
        else:
            y = _apply(switch_units(filters, f"block{b}_down"), y)
    y = _conv_bn(y, filters, 3, 1, f"block{b}_conv2", options)

    # Shortcut: downsample first (cheaper), then a 1x1 conv if the width changes.
    shortcut = x
    if downsamples and strided:
        shortcut = _conv_bn(x, filters, 1, options["strides"], f"block{b}_shortcut", options)
    else:
        if downsamples:
            shortcut = _apply(switch_units(in_channels, f"block{b}_shortcut_down"), shortcut)
        if in_channels != filters:
            shortcut = _conv_bn(shortcut, filters, 1, 1, f"block{b}_shortcut", options)

    out = layers.Add(name=f"block{b}_add")([y, shortcut])
    return layers.ReLU(name=f"block{b}_out")(out)


def build_resnet(
    stage_blocks=(2, 2, 2, 2),
    widths=(64, 128, 256, 512),
    downsample="strided",
    input_shape=None,
    num_classes=10,
    stem="cifar",
    pool_size=2,
    strides=2,
    blur_size=4,
    kernel_initializer="he_normal",
    data_format=None,
    name=None,
    batch_norm_momentum=0.9,
):
    """Builds a ResNet (basic blocks) whose stage-entry downsampling is a switch.

    Stem, then stages of basic residual blocks (3x3 conv -> BN -> ReLU -> 3x3 conv -> BN, plus a
    shortcut, -> add -> ReLU), then global average pooling + `Dense` logits. The first block of
    every stage but the first downsamples, according to `downsample`:

    - `"strided"`: the standard ResNet: conv1 has stride `strides`, the shortcut is a 1x1 conv with
      stride `strides` -> BN.
    - any other value of `DOWNSAMPLING`: convs run at stride 1; the switch's downsampling unit is
      applied after conv1's ReLU on the main path and to the shortcut (before its 1x1 conv).
      `"blur"` here is `BlurPool2D` alone, Zhang's (2019) replacement for a strided conv;
      `"none"` does not downsample.

    The stem is not switched: `"cifar"` is a 3x3 conv (64 filters, stride 1) -> BN -> ReLU, as in
    CIFAR ResNets; `"imagenet"` is a 7x7 conv with stride 2 -> BN -> ReLU -> 3x3 max pool with
    stride 2.

    Probe points (see `probe_layer_names`), with residual blocks `b` numbered 1, 2, ... across
    stages: `input`; `stem` (stem output); for every block `block{b}_conv1` (conv1 after ReLU),
    `block{b}_down` (downsampling blocks only: the switch's output on the main path; an identity
    on the stride-2 conv1 for `"strided"`) and `block{b}_out` (block output after the final ReLU).
    ResNet-18 has 21: input, stem, 8 x conv1, 3 x down, 8 x out. Other names:
    `block{b}_conv{k}_conv` / `_bn`, `block{b}_shortcut_conv` / `_bn`,
    `block{b}_shortcut_down`, `block{b}_add`, `gap`, `logits`.

    Args:
        stage_blocks: number of residual blocks per stage.
        widths: filters per stage (same length as `stage_blocks`).
        downsample: one of `DOWNSAMPLING`; default `"strided"` (the standard ResNet).
        input_shape: default `(32, 32, 3)` (`(3, 32, 32)` for `channels_first`).
        num_classes: number of logits.
        stem: `"cifar"` or `"imagenet"`.
        pool_size: int or pair; pooling window / kernel size of the switch's unit (as in
            `build_vgg`; unused by `"strided"`, whose convs are 3x3 and 1x1).
        strides: int or pair, the downsampling factor of each stage.
        blur_size: number of binomial taps of `"blur"`, 2..7.
        kernel_initializer: initializer of all conv and dense kernels (default `"he_normal"`,
            the usual choice for ReLU ResNets).
        data_format: `"channels_last"` or `"channels_first"`; None = Keras config.
        name: model name; default `f"resnet_{downsample}"`.
        batch_norm_momentum: momentum of every BatchNormalization's moving statistics (see
            `build_vgg`; default 0.9).

    Returns:
        A functional `keras.Model` mapping images to logits.

    Raises:
        ValueError: on an unknown `downsample` or `stem`, `blur_size` outside 2..7, empty or
            mismatched `stage_blocks` / `widths`, non-positive `num_classes`, or an input too
            small for the number of downsampling steps.
    """
    check_choice("downsample", downsample, DOWNSAMPLING)
    check_choice("stem", stem, STEMS)
    check_positive_int("num_classes", num_classes)
    check_blur_size(blur_size)
    check_range("batch_norm_momentum", batch_norm_momentum, 0, 1)
    stage_blocks, widths = tuple(stage_blocks), tuple(widths)
    if not stage_blocks or len(stage_blocks) != len(widths):
        raise ValueError(
            "`stage_blocks` and `widths` must be non-empty and of equal length; received "
            f"stage_blocks={stage_blocks!r}, widths={widths!r}."
        )
    for count in stage_blocks:
        check_positive_int("stage_blocks", count)
    for width in widths:
        check_positive_int("widths", width)
    pool_size = as_pair("pool_size", pool_size)
    strides = as_pair("strides", strides)
    data_format = standardize_data_format(data_format)
    if input_shape is None:
        input_shape = default_input_shape(32, 32, 3, data_format)
    spatial, _ = spatial_and_channels("input_shape", input_shape, data_format)

    steps = []
    if stem == "imagenet":
        steps += [("stem conv", (2, 2), (2, 2)), ("stem max pool", (2, 2), (2, 2))]
    if downsample != "none":
        need = min_input_size(downsample, strides, blur_size)
        steps += [(f"stage {s} entry", strides, need) for s in range(2, len(stage_blocks) + 1)]
    check_input_size(input_shape, spatial, steps)

    options = {
        "pool_size": pool_size,
        "strides": strides,
        "blur_size": blur_size,
        "kernel_initializer": kernel_initializer,
        "data_format": data_format,
        "batch_norm_momentum": batch_norm_momentum,
    }
    inputs = keras.Input(shape=tuple(input_shape), name="input")
    if stem == "cifar":
        x = _conv_bn(inputs, widths[0], 3, 1, "stem", options)
        x = layers.ReLU(name="stem")(x)
    else:
        x = _conv_bn(inputs, widths[0], 7, 2, "stem", options)
        x = layers.ReLU(name="stem_relu")(x)
        x = layers.MaxPooling2D(3, 2, padding="same", data_format=data_format, name="stem")(x)

    b = 0
    for stage, (count, filters) in enumerate(zip(stage_blocks, widths, strict=True)):
        for index in range(count):
            b += 1
            downsamples = stage > 0 and index == 0
            x = _basic_block(x, filters, b, downsamples, downsample, options)

    x = layers.GlobalAveragePooling2D(data_format=data_format, name="gap")(x)
    outputs = layers.Dense(num_classes, kernel_initializer=kernel_initializer, name="logits")(x)
    return keras.Model(inputs, outputs, name=name or f"resnet_{downsample}")


def resnet18(downsample="strided", input_shape=None, num_classes=10, stem="cifar", **kwargs):
    """ResNet-18: 4 stages x 2 basic blocks, widths 64, 128, 256, 512.

    With `downsample="strided"` this is the standard ResNet-18 (the CIFAR variant with
    `stem="cifar"`: 11,173,962 trainable parameters for 10 classes; the ImageNet one with
    `stem="imagenet"`, 224x224 inputs and 1000 classes: 11,689,512). See `build_resnet` for the
    switch, the names and the 21 probe points.

    Args:
        downsample: one of `DOWNSAMPLING`.
        input_shape: default `(32, 32, 3)` (`(3, 32, 32)` for `channels_first`).
        num_classes: number of logits.
        stem: `"cifar"` (3x3 conv, no max pool) or `"imagenet"` (7x7 stride-2 conv + max pool).
        **kwargs: passed to `build_resnet` (`pool_size`, `strides`, `blur_size`,
            `kernel_initializer`, `data_format`, `name`, and `widths` to shrink the net).

    Returns:
        A functional `keras.Model` mapping images to logits.

    Example:

    >>> model = resnet18("blur")
    >>> model.get_layer("block3_down").output.shape
    (None, 16, 16, 128)
    """
    kwargs.setdefault("name", f"resnet18_{downsample}")
    return build_resnet(
        stage_blocks=(2, 2, 2, 2),
        downsample=downsample,
        input_shape=input_shape,
        num_classes=num_classes,
        stem=stem,
        **kwargs,
    )
