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
from keras import layers

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
