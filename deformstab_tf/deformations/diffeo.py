"""Max-entropy diffeomorphisms (Petrini et al. 2021, "Relative stability toward diffeomorphisms").

Pixel index ``0..n-1`` maps to ``[0, 1]`` (so border pixels do not move) and a scalar field
``u(x, y) = sum_{i,j=1..c} C_ij sin(i pi x) sin(j pi y)`` with ``C_ij ~ N(0, 1/(i^2 + j^2))``,
kept where ``sqrt(i^2 + j^2) < c + 0.5`` (cut-off ``c``), gives ``dx = sqrt(T) * W * u``; ``dy``
the same with an independent field and ``H``. Unlike the authors' code, images need not be square.
"""

import functools
import math

import numpy as np
import tensorflow as tf

from deformstab_tf._validation import check_non_negative, check_positive_int


def _check_cutoff(cutoff):
    if isinstance(cutoff, bool) or not isinstance(cutoff, (int, np.integer)) or cutoff < 2:
        raise ValueError(
            f"`cutoff` must be an integer >= 2 (the log of the cut-off sets the scale). "
            f"Received: cutoff={cutoff!r}"
        )


def temperature_range(size, cutoff):
    """``(T_min, T_max)`` of natural diffeomorphisms for an image of side `size`.

    ``T_min = 1 / (pi n^2 ln c)`` (typical displacement of half a pixel) and
    ``T_max = 4 / (pi^3 c^2 ln c)`` (the largest temperature without overhangs).
    """
    _check_cutoff(cutoff)
    check_positive_int("size", size)
    log = math.log(cutoff)
    return 1.0 / (math.pi * size**2 * log), 4.0 / (math.pi**3 * cutoff**2 * log)


def typical_displacement(temperature, cutoff, size):
    """Typical displacement in pixels at the image centre: ``delta = (n/2) sqrt(pi T ln c)``.

    This is the large-``c`` form of the RMS length of the displacement at the centre (at
    ``c = 3`` the exact RMS is 27% larger; at ``c = 10``, 10%).
    """
    _check_cutoff(cutoff)
    check_non_negative("temperature", temperature)
    check_positive_int("size", size)
    return size * math.sqrt(math.pi * temperature * math.log(cutoff)) / 2.0


def temperature_for_displacement(delta, cutoff, size):
    """The temperature of typical displacement `delta` pixels: ``4 delta^2 / (pi n^2 ln c)``."""
    _check_cutoff(cutoff)
    check_non_negative("delta", delta)
    check_positive_int("size", size)
    return 4.0 * delta**2 / (math.pi * size**2 * math.log(cutoff))


@functools.lru_cache(maxsize=64)
def _modes(size, cutoff):
    """``sin(k pi x)``, ``x = linspace(0, 1, size)``, ``k = 1..cutoff``: ``(size, cutoff)``."""
    x = np.linspace(0.0, 1.0, size)
    k = np.arange(1, cutoff + 1)
    return np.sin(np.pi * x[:, None] * k[None, :]).astype(np.float32)


@functools.lru_cache(maxsize=64)
def mode_amplitudes(cutoff):
    """Standard deviations ``1/sqrt(i^2 + j^2)`` of ``C_ij``, 0 beyond the cut-off: ``(c, c)``."""
    k = np.arange(1, cutoff + 1)
    radius = np.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
    return np.where(radius < cutoff + 0.5, 1.0 / radius, 0.0).astype(np.float32)


def diffeo_displacement(coefficients, height, width, temperature=None, displacement=None):
    """Dense displacement field of the sine-series diffeomorphism from given coefficients.

    Args:
        coefficients: ``(B, 2, c, c)`` standard-normal draws for the ``(v, u)`` fields (``dy``
            first, then ``dx``); they are multiplied here by the mode amplitudes
            ``1/sqrt(i^2+j^2)`` and cut off at ``sqrt(i^2+j^2) < c + 0.5``.
        height, width: the image size.
        temperature: scalar or ``(B,)`` temperatures ``T``: ``dy = sqrt(T) H v``,
            ``dx = sqrt(T) W u`` (Petrini et al.'s definition, per axis).
        displacement: instead of `temperature`, scalar or ``(B,)`` typical displacements
            ``delta`` in pixels: ``T = temperature_for_displacement(delta, c, n)`` with ``n`` the
            size of each axis, so ``delta`` means the same on both axes of a non-square image.

    Returns:
        A float32 field ``(B, H, W, 2)``, exactly zero on the border.
    """
    coefficients = tf.cast(coefficients, tf.float32)
    if coefficients.shape.rank != 4 or coefficients.shape[1] != 2:
        raise ValueError(
            "`coefficients` must have shape (B, 2, c, c). "
            f"Received: coefficients.shape={coefficients.shape}"
        )
    if (temperature is None) == (displacement is None):
        raise ValueError(
            "Give exactly one of `temperature` and `displacement`. Received: "
            f"temperature={temperature!r}, displacement={displacement!r}"
        )
    cutoff = int(coefficients.shape[-1])
    _check_cutoff(cutoff)
    check_positive_int("height", height)
    check_positive_int("width", width)
    weights = coefficients * tf.constant(mode_amplitudes(cutoff))
    modes_y = tf.constant(_modes(height, cutoff))  # (H, c): sin(j pi y)
    modes_x = tf.constant(_modes(width, cutoff))  # (W, c): sin(i pi x)
    # fields[b, y, x, f] = sum_ij C[b, f, i, j] sin(i pi x) sin(j pi y), as two plain matmuls
    # per field, (H, c) @ C^T @ (c, W) (XLA handles these far better than the 3-operand einsum).
    fields = tf.matmul(modes_y, tf.matmul(weights, modes_x, transpose_a=True, transpose_b=True))
    fields = tf.transpose(fields, [0, 2, 3, 1])
    if temperature is not None:
        # sqrt(T) * n per axis.
        scale = tf.sqrt(tf.cast(temperature, tf.float32))[..., None] * tf.constant(
            [float(height), float(width)]
        )
    else:
        # sqrt(T(delta, c, n)) * n = 2 delta / sqrt(pi ln c), the same on both axes.
        scale = (
            tf.cast(displacement, tf.float32)[..., None]
            * (2.0 / math.sqrt(math.pi * math.log(cutoff)))
            * tf.ones([2])
        )
    return fields * tf.reshape(scale, [-1, 1, 1, 2])
