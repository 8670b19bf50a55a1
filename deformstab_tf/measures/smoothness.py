"""Spatial smoothness of convolution kernels, and the Gaussian-smoothing intervention
(Ruderman et al., 2018, §4 and Fig. 5a)."""

import keras
import numpy as np

from deformstab_tf._validation import check_model
from deformstab_tf.deformations._backend import to_numpy
from deformstab_tf.measures.results import MeasureResult

ONE_BY_ONE = "1x1 kernel: no spatial neighbours"


def kernel_smoothness(model):
    """Total variation over L1 norm, `TV(W) / ||W||_1`, of every convolution kernel.

    For a kernel `W` of shape `(h, w, in, out)` (for `DepthwiseConv2D` and the depthwise part of
    `SeparableConv2D`: `(h, w, in, multiplier)`):

        TV(W) = sum |W[i, j] - W[i + 1, j]| + |W[i, j] - W[i, j + 1]|

    over spatial neighbours, all channels. Lower is smoother; 0 for spatially constant kernels
    (including all-zero ones). Freshly initialised 3x3 `lecun_normal` kernels give about 1.87.
    Layers nested in sub-models are included.

    Args:
        model: a Keras model.

    Returns:
        A `MeasureResult` mapping layer name -> TV / L1, in layer order. 1x1 kernels have no
        spatial neighbours: they are left out and listed in `metadata["skipped"]`.

    Example:

    >>> model = deformstab_tf.cifar_vgg("max")
    >>> result = kernel_smoothness(model)   # per conv layer: block1_conv1_conv, ...
    >>> round(result.mean(), 1)   # about 1.87 at initialisation
    1.9
    """
    check_model("model", model)
    values, skipped = {}, {}
    for layer, kernel in conv_kernels(model):
        weights = to_numpy(kernel, dtype=np.float64)
        if weights.shape[0] == 1 and weights.shape[1] == 1:
            skipped[layer.name] = ONE_BY_ONE
            continue
        total_variation = (
            np.abs(np.diff(weights, axis=0)).sum() + np.abs(np.diff(weights, axis=1)).sum()
        )
        l1 = np.abs(weights).sum()
        values[layer.name] = float(total_variation / l1) if l1 > 0 else 0.0
    return MeasureResult("smoothness", values, metadata={"skipped": skipped})


def smooth_kernels(model, sigma):
    """Convolves every convolution kernel spatially with a Gaussian of std `sigma`, in place.

    The intervention of Ruderman et al. (Fig. 5a): smoother filters, lower deformation
    sensitivity. Each `(h, w)` slice of each kernel (all in/out channels; the depthwise kernel of
    a `SeparableConv2D`) is replaced by its Gaussian-filtered version, kept at the same `(h, w)`
    size with zero padding outside the kernel, and not renormalised (the Gaussian sums to 1 over
    its support, but weight falling outside the kernel is lost). The sampled Gaussian has radius
    `int(4 * sigma + 0.5)` taps, as `scipy.ndimage.gaussian_filter(w, sigma, mode="constant")`.
    1x1 kernels (no spatial extent) are left unchanged. `sigma=0` changes nothing. Biases are
    untouched.

    Args:
        model: a Keras model; its weights are modified.
        sigma: standard deviation in pixels, `>= 0`.

    Returns:
        The names of the layers whose kernels were smoothed.

    Example:

    >>> model = deformstab_tf.build_vgg([(8,), (16,)], input_shape=(16, 16, 3))
    >>> before = kernel_smoothness(model)
    >>> smooth_kernels(model, sigma=1.0)
    ['block1_conv1_conv', 'block2_conv1_conv']
    >>> all(kernel_smoothness(model)[name] < before[name] for name in before)
    True
    """
    check_model("model", model)
    sigma = float(sigma)
    if not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f"`sigma` must be a finite number >= 0. Received: sigma={sigma!r}")
    smoothed = []
    if sigma == 0:
        return smoothed
    for layer, kernel in conv_kernels(model):
        weights = to_numpy(kernel, dtype=np.float64)
        height, width = weights.shape[:2]
        if height == 1 and width == 1:
            continue
        filtered = np.einsum(
            "ik,jl,kl...->ij...",
            gaussian_filter_matrix(height, sigma),
            gaussian_filter_matrix(width, sigma),
            weights,
        )
        kernel.assign(filtered.astype(keras.backend.standardize_dtype(kernel.dtype)))
        smoothed.append(layer.name)
    return smoothed


def gaussian_filter_matrix(size, sigma):
    """`(size, size)` matrix `A` with `(A @ v)[i] = sum_k g(i - k) v[k]`: a 1-D Gaussian filter
    with zero padding, `g` sampled on `[-r, r]`, `r = int(4 sigma + 0.5)`, and normalised to 1."""
    radius = int(4.0 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    offset = np.arange(size)[:, None] - np.arange(size)[None, :]
    return np.where(np.abs(offset) <= radius, taps[np.clip(offset + radius, 0, 2 * radius)], 0.0)


def conv_kernels(model):
    """`(layer, spatial kernel variable)` for every 2-D convolution in `model`, nested included."""
    seen = set()
    for layer in _layers(model):
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, keras.layers.SeparableConv2D):
            yield layer, layer.depthwise_kernel
        elif isinstance(layer, (keras.layers.DepthwiseConv2D, keras.layers.Conv2D)):
            yield layer, layer.kernel


def _layers(model):
    for layer in getattr(model, "layers", []):
        yield layer
        if isinstance(layer, keras.Model):
            yield from _layers(layer)
