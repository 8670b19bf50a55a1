"""Reference architectures of Petrini et al.'s (2021) CIFAR-10 comparison (test error vs R).

Petrini et al. find that across architectures and training-set sizes the test error follows
`0.2 * sqrt(R)` (R = D / G at the network's output). Next to `cifar_vgg` and `resnet18`
(`resnet18(widths=...)` narrows it), these builders give the weak and the mobile end of that
range:

- `fully_connected`: Flatten -> [Dense -> ReLU] x depth -> Dense logits.
- `lenet`: LeNet-5 with ReLU and max pooling.
- `mobilenet_v2`, `efficientnet_b0`: `keras.applications` networks built from scratch at the data's
  image size (no pretrained weights), with a linear `logits` layer.

All return functional models mapping images in [0, 1] to logits (no softmax: the training loss
takes `from_logits=True`) whose last layer is named `logits`. Their layer names do not follow the
`block{b}_...` scheme of `probe_layer_names`, so the stability measures probe them at the
`"units"` selection (`deformstab_tf.measures.features.default_probe_layer_names`): `input`, the
output of every unit (a conv or dense layer with the normalisation and activation that follow
it), every pooling layer, and `logits`, the network's output, last.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import keras
from keras import layers

from deformstab_tf._validation import (
    check_positive_int,
    check_range,
    standardize_data_format,
)
from deformstab_tf.models.downsampling import spatial_and_channels
from deformstab_tf.models.vgg import default_input_shape

LENET_KERNEL = 5  # the 5x5 "valid" convolutions of LeNet-5
LENET_POOL = 2
APPLICATIONS_MIN_SIZE = 32  # the smallest image side keras.applications accepts
# The classifier initialiser of keras.applications' EfficientNet (kept for its head here).
EFFICIENTNET_DENSE_INITIALIZER = {
    "class_name": "VarianceScaling",
    "config": {"scale": 1.0 / 3.0, "mode": "fan_out", "distribution": "uniform"},
}


def _check_widths(argument, value, allow_empty=False):
    """A tuple of positive ints from a sequence (non-empty unless `allow_empty`); a one-line
    ValueError otherwise."""
    if (
        isinstance(value, (str, bytes))
        or not isinstance(value, Sequence)
        or (not value and not allow_empty)
        or not all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in value
        )
    ):
        raise ValueError(
            f"`{argument}` must be a {'' if allow_empty else 'non-empty '}sequence of positive "
            f"integers; received {argument}={value!r}."
        )
    return tuple(int(v) for v in value)


def _check_fixed_shape(input_shape):
    """`input_shape` as a tuple of positive ints (a Flatten layer needs every size)."""
    shape = tuple(input_shape) if isinstance(input_shape, Sequence) else None
    if (
        not shape
        or isinstance(input_shape, (str, bytes))
        or not all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in shape
        )
    ):
        raise ValueError(
            "`input_shape` must be a non-empty sequence of positive integers (a Flatten layer "
            f"needs every size); received input_shape={input_shape!r}."
        )
    return tuple(int(v) for v in shape)


def fully_connected(
    input_shape=None,
    num_classes=10,
    width=500,
    depth=2,
    kernel_initializer="he_normal",
    name="fully_connected",
):
    """Builds a fully-connected ReLU net: Flatten -> [Dense(width) -> ReLU] x depth -> logits.

    The defaults are Petrini et al.'s (2021) "FC" net: two hidden layers of 500 units
    (1,792,010 parameters on 32x32x3 images, 10 classes); having no convolution, it has no
    built-in stability to deformations and marks the high-error end of their error-vs-R plot.

    Layer names: `input`, `flatten`, `dense{k}` and `relu{k}` for hidden layer `k = 1..depth`,
    `logits`. Probe points (the `"units"` selection): `input`, `relu1`, ..., `relu{depth}`,
    `logits`.

    Args:
        input_shape: shape of one input without the batch axis, every size fixed; default
            `(32, 32, 3)` (`(3, 32, 32)` for `channels_first`).
        num_classes: number of logits.
        width: units of every hidden layer.
        depth: number of hidden layers (0: a linear classifier).
        kernel_initializer: initializer of all dense kernels; the default `"he_normal"` keeps
            the activations' scale through the ReLU layers, whatever `depth`.
        name: model name.

    Returns:
        A functional `keras.Model` mapping inputs to logits.

    Raises:
        ValueError: on a non-positive `num_classes` or `width`, a negative `depth`, or an
            `input_shape` with an unknown or non-positive size.

    Example:

    >>> model = fully_connected(input_shape=(4, 4, 3), num_classes=2, width=8)
    >>> model.output.shape, model.count_params()  # 48*8+8 + 8*8+8 + 8*2+2
    ((None, 2), 482)
    """
    if input_shape is None:
        input_shape = default_input_shape(32, 32, 3, None)
    input_shape = _check_fixed_shape(input_shape)
    check_positive_int("num_classes", num_classes)
    check_positive_int("width", width)
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 0:
        raise ValueError(f"`depth` must be an integer >= 0; received depth={depth!r}.")

    inputs = keras.Input(shape=input_shape, name="input")
    x = layers.Flatten(name="flatten")(inputs)
    for k in range(1, int(depth) + 1):
        x = layers.Dense(width, kernel_initializer=kernel_initializer, name=f"dense{k}")(x)
        x = layers.ReLU(name=f"relu{k}")(x)
    outputs = layers.Dense(num_classes, kernel_initializer=kernel_initializer, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def lenet_min_input_size(stages):
    """The smallest image side that `stages` LeNet stages (5x5 "valid" conv, 2x2 max pool)
    reduce to at least 1x1: 16 for LeNet-5's two."""
    size = 1
    for _ in range(stages):
        size = LENET_POOL * size + LENET_KERNEL - 1
    return size


def lenet(
    input_shape=None,
    num_classes=10,
    filters=(6, 16),
    units=(120, 84),
    kernel_initializer="he_normal",
    data_format=None,
    name="lenet",
):
    """Builds a LeNet-5-like CNN with ReLUs and max pooling (Petrini et al.'s 2021 "LeNet").

    For every entry of `filters` a stage 5x5 `Conv2D` ("valid" padding, with bias) -> `ReLU` ->
    2x2 `MaxPooling2D`; then `Flatten`; for every entry of `units` a `Dense` -> `ReLU`; then the
    `Dense` logits. With the defaults on 32x32x3 images: 32 -> conv 28 -> pool 14 -> conv 10 ->
    pool 5, 5*5*16 = 400 features -> 120 -> 84 -> 10 logits (62,006 parameters).

    Layer names: `input`; the weight layers are numbered `k = 1, 2, ...` in forward order, convs
    first: `conv{k}` -> `relu{k}` -> `pool{k}` for the stages, `flatten`, `dense{k}` -> `relu{k}`
    (LeNet-5: `dense3`, `relu3`, `dense4`, `relu4`), then `logits`. Probe points (the `"units"`
    selection): `input`, `relu1`, `pool1`, `relu2`, `pool2`, `relu3`, `relu4`, `logits`.

    Args:
        input_shape: shape of one image without the batch axis, sizes fixed; default
            `(32, 32, 3)` (`(3, 32, 32)` for `channels_first`).
        num_classes: number of logits.
        filters: conv widths, one per stage.
        units: hidden dense widths (may be empty).
        kernel_initializer: initializer of all conv and dense kernels (default `"he_normal"`,
            for ReLU nets without normalisation).
        data_format: `"channels_last"` or `"channels_first"`; None = Keras config.
        name: model name.

    Returns:
        A functional `keras.Model` mapping images to logits.

    Raises:
        ValueError: on a non-positive `num_classes`, empty or non-positive `filters`,
            non-positive `units`, or an `input_shape` too small for the stages (16x16 for two)
            or with an unknown size.

    Example:

    >>> model = lenet(input_shape=(16, 16, 1), filters=(2, 4), units=(8,))
    >>> model.get_layer("pool2").output.shape, model.output.shape
    ((None, 1, 1, 4), (None, 10))
    """
    check_positive_int("num_classes", num_classes)
    filters = _check_widths("filters", filters)
    units = _check_widths("units", units, allow_empty=True)
    data_format = standardize_data_format(data_format)
    if input_shape is None:
        input_shape = default_input_shape(32, 32, 3, data_format)
    input_shape = _check_fixed_shape(input_shape)
    spatial, _ = spatial_and_channels("input_shape", input_shape, data_format)
    need = lenet_min_input_size(len(filters))
    if min(spatial) < need:
        raise ValueError(
            f"`input_shape` is too small for {len(filters)} LeNet stages ({LENET_KERNEL}x"
            f"{LENET_KERNEL} valid conv, {LENET_POOL}x{LENET_POOL} max pool): received "
            f"input_shape={input_shape}; use a spatial size of at least {need}x{need}."
        )

    inputs = keras.Input(shape=input_shape, name="input")
    x = inputs
    for k, width in enumerate(filters, start=1):
        x = layers.Conv2D(
            width,
            LENET_KERNEL,
            kernel_initializer=kernel_initializer,
            data_format=data_format,
            name=f"conv{k}",
        )(x)
        x = layers.ReLU(name=f"relu{k}")(x)
        x = layers.MaxPooling2D(LENET_POOL, data_format=data_format, name=f"pool{k}")(x)
    x = layers.Flatten(data_format=data_format, name="flatten")(x)
    for k, width in enumerate(units, start=len(filters) + 1):
        x = layers.Dense(width, kernel_initializer=kernel_initializer, name=f"dense{k}")(x)
        x = layers.ReLU(name=f"relu{k}")(x)
    outputs = layers.Dense(num_classes, kernel_initializer=kernel_initializer, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def _applications_input(input_shape):
    """The checked `input_shape` (default 32x32x3 in the Keras data format) and its Input."""
    data_format = standardize_data_format(None)  # keras.applications follow the Keras config
    if input_shape is None:
        input_shape = default_input_shape(32, 32, 3, data_format)
    spatial, channels = spatial_and_channels("input_shape", input_shape, data_format)
    if any(
        size is not None and (not isinstance(size, numbers.Integral) or size < 1)
        for size in (*spatial, channels)
    ) or not isinstance(channels, numbers.Integral):
        raise ValueError(
            "`input_shape` must hold positive integers (spatial sizes may be None); received "
            f"input_shape={tuple(input_shape)!r}."
        )
    if any(size is not None and size < APPLICATIONS_MIN_SIZE for size in spatial):
        raise ValueError(
            f"`input_shape` is too small for keras.applications: received "
            f"input_shape={tuple(input_shape)!r}; use a spatial size of at least "
            f"{APPLICATIONS_MIN_SIZE}x{APPLICATIONS_MIN_SIZE}."
        )
    return tuple(input_shape), keras.Input(shape=tuple(input_shape), name="input")


def mobilenet_v2(
    input_shape=None, num_classes=10, alpha=1.0, batch_norm_momentum=0.9, name="mobilenet_v2"
):
    """Builds `keras.applications.MobileNetV2` from scratch (no pretrained weights) for logits.

    The backbone is Keras's (`include_top=False`, `weights=None`, width multiplier `alpha`) at
    the data's image size, followed by the head Keras would add, global average pooling
    (`avg_pool`) and a linear `Dense` (`logits`; the same as `classifier_activation=None`, with
    a stable name: Keras leaves its pooling layer unnamed, so its name would change with the
    number of models built before). The images enter as they are, in [0, 1] (MobileNetV2 has no
    preprocessing layer).

    This is the ImageNet network: at 32x32 its stride-2 stem and four stride-2 stages leave 1x1
    feature maps (Petrini et al. use the CIFAR variant of kuangliu/pytorch-cifar, with stride 1
    in the stem and in the second stage: 4x4 maps). For `num_classes=10`, `alpha=1.0`:
    2,270,794 parameters (2,236,682 trainable).

    Probe points (the `"units"` selection, 55): `input`, `Conv1_relu`, then per inverted-residual
    block its `*_expand_relu` (not the first block's), `*_depthwise_relu` and `*_project_BN`,
    `out_relu`, `avg_pool`, `logits`.

    Args:
        input_shape: shape of one image without the batch axis, in the Keras data format;
            default `(32, 32, 3)`. Spatial sizes must be at least 32 (or None).
        num_classes: number of logits.
        alpha: width multiplier of every layer but the last 1x1 conv (1280 channels unless
            `alpha > 1`).
        batch_norm_momentum: momentum of every BatchNormalization's moving statistics; 0.9
            as the package's other builders (and PyTorch's 0.1), not Keras's ImageNet 0.999:
            trained from scratch, the moving statistics at 0.999 lag so far behind the weights
            that the network in inference mode is broken (on 1,000 CIFAR-10 images, 3,000
            steps: test accuracy 0.10, one class for every image, at training accuracy 0.93).
        name: model name.

    Returns:
        A functional `keras.Model` mapping images to logits.

    Raises:
        ValueError: on a non-positive `num_classes` or `alpha`, a `batch_norm_momentum`
            outside [0, 1], or an `input_shape` smaller than 32x32.

    Example:

    >>> model = mobilenet_v2(alpha=0.35)
    >>> model.get_layer("out_relu").output.shape, model.output.shape
    ((None, 1, 1, 1280), (None, 10))
    """
    check_positive_int("num_classes", num_classes)
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, numbers.Real)
        or not 0 < alpha < math.inf  # also rejects NaN
    ):
        raise ValueError(f"`alpha` must be a finite number > 0; received alpha={alpha!r}.")
    check_range("batch_norm_momentum", batch_norm_momentum, 0, 1)
    input_shape, inputs = _applications_input(input_shape)
    backbone = keras.applications.MobileNetV2(
        input_shape=input_shape,
        alpha=float(alpha),
        include_top=False,
        weights=None,
        input_tensor=inputs,
    )
    _set_batch_norm_momentum(backbone, batch_norm_momentum)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(backbone.output)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def efficientnet_b0(
    input_shape=None, num_classes=10, batch_norm_momentum=0.9, name="efficientnet_b0"
):
    """Builds `keras.applications.EfficientNetB0` from scratch (no pretrained weights) for logits.

    The backbone is Keras's (`include_top=False`, `weights=None`) at the data's image size,
    followed by the head Keras would add, global average pooling (`avg_pool`) -> `Dropout(0.2)`
    (`top_dropout`) -> a linear `Dense` with Keras's initialiser (`logits`; the same as
    `classifier_activation=None`, under the package's name of the classifier).

    Inputs: Keras's EfficientNet expects 0..255 pixels; it starts with `Rescaling(1/255)` and a
    `Normalization` layer (mean 0 and variance 1, i.e. the identity, when not adapted, as with
    `weights=None`). Both are left out here (the graph is re-run without them, by
    `keras.models.clone_model`), so the network takes images in [0, 1], as the package's data
    sources give them and its other models take them, and holds no unadapted layer. (Putting a
    `Rescaling(255)` in front would compute the same, but the measures would then warn that the
    model expects 0..255 pixels, as they look for pixel-scale `Rescaling` layers.)

    This is the ImageNet network: at 32x32 its five stride-2 steps leave 1x1 feature maps
    (Petrini et al. use the CIFAR variant of kuangliu/pytorch-cifar, whose stem has stride 1:
    2x2 maps). For `num_classes=10`: 4,062,374 parameters (4,020,358 trainable).

    Probe points (the `"units"` selection, 100): `input`, `stem_activation`, then per MBConv
    block its `*_expand_activation` (not the first block's), `*_activation`, the
    squeeze-and-excitation branch (`*_se_squeeze`, `*_se_reduce`, `*_se_expand`) and
    `*_project_bn`, `top_activation`, `avg_pool`, `logits`.

    Args:
        input_shape: shape of one image without the batch axis, in the Keras data format;
            default `(32, 32, 3)`. Spatial sizes must be at least 32 (or None).
        num_classes: number of logits.
        batch_norm_momentum: momentum of every BatchNormalization's moving statistics; 0.9
            as in `mobilenet_v2` (Keras's EfficientNet keeps 0.99).
        name: model name.

    Returns:
        A functional `keras.Model` mapping images in [0, 1] to logits.

    Raises:
        ValueError: on a non-positive `num_classes`, a `batch_norm_momentum` outside [0, 1],
            or an `input_shape` smaller than 32x32.

    Example:

    >>> model = efficientnet_b0(num_classes=3)
    >>> model.get_layer("top_activation").output.shape, model.output.shape
    ((None, 1, 1, 1280), (None, 3))
    """
    check_positive_int("num_classes", num_classes)
    check_range("batch_norm_momentum", batch_norm_momentum, 0, 1)
    input_shape, inputs = _applications_input(input_shape)
    backbone = keras.applications.EfficientNetB0(
        input_shape=input_shape,
        include_top=False,
        weights=None,
        input_tensor=inputs,
    )
    _set_batch_norm_momentum(backbone, batch_norm_momentum)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(backbone.output)
    x = layers.Dropout(0.2, name="top_dropout")(x)
    outputs = layers.Dense(
        num_classes,
        kernel_initializer=keras.initializers.get(EFFICIENTNET_DENSE_INITIALIZER),
        name="logits",
    )(x)
    return _without_preprocessing(keras.Model(inputs, outputs, name=name))


def _set_batch_norm_momentum(model, momentum):
    """Gives every BatchNormalization of a keras.applications backbone `momentum` (they take no
    such argument and keep Keras's ImageNet settings, 0.999 in MobileNetV2)."""
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = float(momentum)


def _skip_preprocessing(layer, *args, **kwargs):
    """Calls `layer`, except the pixel `Rescaling` / `Normalization` of keras.applications."""
    if isinstance(layer, (layers.Rescaling, layers.Normalization)):
        return args[0]
    return layer(*args, **kwargs)


def _without_preprocessing(model):
    """A copy of `model` without its `Rescaling` and `Normalization` layers: fresh layers of the
    same configurations (sharing them would leave `layer.output` in the first graph)."""
    return keras.models.clone_model(model, call_function=_skip_preprocessing)
