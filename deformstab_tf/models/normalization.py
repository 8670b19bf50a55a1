"""`BatchNormalization`: Keras's layer, on TensorFlow's fused kernel where it can be.

Keras 3 normalises in separate ops: float32 casts, `tf.nn.moments`, the affine transform, and
their gradients. On a CPU that runs bfloat16 convolutions on AMX these ops take most of a
`cifar_vgg` training step (about 55%), so a bfloat16 step gains little over a float32 one.
TensorFlow's `FusedBatchNormV3` (oneDNN on CPU, what tf.keras 2 used by default, `fused=True`)
does the same computation in one kernel forward and one backward: `cifar_vgg` trains about 2x
faster in bfloat16 and in float32 (`benchmarks/bench_pipeline.py --precision`).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from deformstab_tf._validation import check_model, check_positive_int

_FUSED_INPUT_DTYPES = ("float16", "bfloat16", "float32")


@keras.saving.register_keras_serializable(package="deformstab_tf")
class BatchNormalization(layers.BatchNormalization):
    """`keras.layers.BatchNormalization` on TensorFlow's fused kernel where it applies.

    The same layer, arguments, variables, config and results (to float rounding) as Keras's.
    On the TensorFlow backend, a 4-D input normalised over its channel axis (first or last
    after the batch) in float16, bfloat16 or float32 runs TensorFlow's `FusedBatchNormV3`, in
    training and in inference; the moving statistics follow Keras's update exactly
    (`moving = moving * momentum + batch * (1 - momentum)`, with the biased batch variance).
    Everything else — other backends, masks, `renorm`, `synchronized=True`, float64, other
    ranks or axes — runs Keras's own code. The model builders of this package use it; a model
    saved with it loads wherever `deformstab_tf` is imported.

    Args:
        **kwargs: those of `keras.layers.BatchNormalization` (`axis`, `momentum`, `epsilon`,
            `center`, `scale`, initializers, ...).

    Example:

    >>> layer = BatchNormalization(axis=-1)
    >>> x = keras.random.normal((8, 4, 4, 3), seed=0)
    >>> reference = keras.layers.BatchNormalization(axis=-1)
    >>> y, y_ref = layer(x, training=True), reference(x, training=True)
    >>> bool(keras.ops.max(keras.ops.abs(y - y_ref)) < 1e-5)
    True
    """

    def call(self, inputs, training=None, mask=None):
        data_format = self._fused_data_format(inputs, mask)
        if data_format is None:
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf  # the fused kernel is TensorFlow's; other backends never get here

        x = tf.cast(inputs, self.compute_dtype)
        channels = x.shape[-1 if data_format == "NHWC" else 1]
        scale = self.gamma.value if self.scale else tf.ones([channels], "float32")
        offset = self.beta.value if self.center else tf.zeros([channels], "float32")
        if training and self.trainable:
            y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
                x=x,
                scale=scale,
                offset=offset,
                mean=tf.zeros([0], "float32"),
                variance=tf.zeros([0], "float32"),
                epsilon=self.epsilon,
                data_format=data_format,
                is_training=True,
            )
            # The kernel returns the unbiased (n / (n - 1)) variance; Keras averages the biased one.
            count = tf.cast(tf.size(x, out_type=tf.int64) // channels, "float32")
            variance = variance * ((count - 1.0) / tf.maximum(count, 1.0))
            momentum = self.momentum
            self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
            self.moving_variance.assign(
                self.moving_variance * momentum + variance * (1.0 - momentum)
            )
        else:
            y, *_ = tf.raw_ops.FusedBatchNormV3(
                x=x,
                scale=scale,
                offset=offset,
                mean=self.moving_mean.value,
                variance=self.moving_variance.value,
                epsilon=self.epsilon,
                data_format=data_format,
                is_training=False,
            )
        return y

    def _fused_data_format(self, inputs, mask):
        """`"NHWC"` / `"NCHW"` when the fused kernel computes what Keras's code would, else None."""
        if (
            keras.backend.backend() != "tensorflow"
            or mask is not None
            or self.renorm
            or self.synchronized
            or len(inputs.shape) != 4
            or self.compute_dtype not in _FUSED_INPUT_DTYPES
            or self.variable_dtype != "float32"
        ):
            return None
        axis = self.axis % 4
        return {3: "NHWC", 1: "NCHW"}.get(axis)


def recalibrate_batch_norm(model, images, batch_size=250):
    """Re-estimates the moving statistics of every BatchNormalization layer of `model` from
    `images`, in place: their mean and (biased) variance under the model's current weights.

    A transform of a trained network's weights (e.g. `permute_input_channels`) leaves its
    BatchNormalization layers with statistics of the old pre-activations; in inference they
    then shift and scale the new ones wrongly, and the network measured is a broken one rather
    than the transformed one. This runs the model in training mode over `images` batch by
    batch, each layer normalising with the batch's own statistics, and sets each moving mean /
    variance to the image-weighted average of its batch means / variances (Keras's update with
    `momentum = seen / (seen + batch)`; each layer's momentum is restored after). The averaged
    batch variances leave out the spread of the batch means: use large batches.

    Layers that act only in training (dropout, this package's deformation layers) act during
    the passes; gamma, beta and all other weights are unchanged. The passes run in the model's
    compute dtype: wrap the call in `deformstab_tf.measures.features.float32_compute(model)`
    for float32 statistics of a mixed-precision model.

    Args:
        model: a built `keras.Model`; nested models' BatchNormalization layers are included.
        images: `(N, ...)` inputs of the model, e.g. training images without augmentation.
        batch_size: images per pass, a positive integer.

    Returns:
        The number of BatchNormalization layers recalibrated.

    Raises:
        TypeError: if `model` is not a Keras model.
        ValueError: for a non-positive `batch_size` or no images.

    Example:

    >>> model = deformstab_tf.build_vgg([(4,), (8,)], input_shape=(8, 8, 3))
    >>> images = np.random.default_rng(0).random((64, 8, 8, 3), dtype="float32")
    >>> recalibrate_batch_norm(model, images, batch_size=32)
    2
    """
    check_model("model", model)
    check_positive_int("batch_size", batch_size)
    count = int(np.shape(images)[0]) if np.ndim(images) else 0
    if count == 0:
        raise ValueError(f"`images` holds no image; received shape {np.shape(images)}.")
    norms = list(_batch_norm_layers(model))
    momenta = [layer.momentum for layer in norms]
    try:
        seen = 0
        for start in range(0, count, batch_size):
            batch = images[start : start + batch_size]
            size = int(np.shape(batch)[0])
            for layer in norms:
                layer.momentum = seen / (seen + size)
            model(batch, training=True)
            seen += size
    finally:
        for layer, momentum in zip(norms, momenta, strict=True):
            layer.momentum = momentum
    return len(norms)


def _batch_norm_layers(model):
    """Every `keras.layers.BatchNormalization` of `model`, nested models included, once."""
    seen = set()
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found = _batch_norm_layers(layer)
        elif isinstance(layer, layers.BatchNormalization):
            found = [layer]
        else:
            found = []
        for norm in found:
            if id(norm) not in seen:
                seen.add(id(norm))
                yield norm
