"""Max-entropy diffeomorphisms (Petrini et al. 2021, "Relative stability toward diffeomorphisms").

Pixel index ``0..n-1`` maps to ``[0, 1]`` (so border pixels do not move) and a scalar field
``u(x, y) = sum_{i,j=1..c} C_ij sin(i pi x) sin(j pi y)`` with ``C_ij ~ N(0, 1/(i^2 + j^2))``,
kept where ``sqrt(i^2 + j^2) < c + 0.5`` (cut-off ``c``), gives ``dx = sqrt(T) * W * u``; ``dy``
the same with an independent field and ``H``. Unlike the authors' code, images need not be square.
"""

import math

import numpy as np

from deformstab_tf._validation import check_non_negative, check_positive_int
from deformstab_tf.deformations import _backend


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


@_backend.host_constant
def _modes(size, cutoff):
    """``sin(k pi x)``, ``x = linspace(0, 1, size)``, ``k = 1..cutoff``: ``(size, cutoff)``."""
    x = np.linspace(0.0, 1.0, size)
    k = np.arange(1, cutoff + 1)
    return np.sin(np.pi * x[:, None] * k[None, :]).astype(np.float32)


@_backend.host_constant
def mode_amplitudes(cutoff):
    """Standard deviations ``1/sqrt(i^2 + j^2)`` of ``C_ij``, 0 beyond the cut-off: ``(c, c)``."""
    k = np.arange(1, cutoff + 1)
    radius = np.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
    return np.where(radius < cutoff + 0.5, 1.0 / radius, 0.0).astype(np.float32)


def diffeo_displacement(coefficients, height, width, temperature=None, displacement=None):
    """Dense displacement field of the sine-series diffeomorphism from given coefficients.

    Runs on the active Keras backend, or on TensorFlow ops inside a TensorFlow graph (as `warp`).

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

    Example:

    >>> coefficients = np.random.standard_normal((4, 2, 3, 3))
    >>> tuple(diffeo_displacement(coefficients, 32, 32, displacement=1.0).shape)
    (4, 32, 32, 2)
    """
    B = _backend.ops(_backend.backend_name(coefficients))
    coefficients = B.cast(B.convert_to_tensor(coefficients), "float32")
    if len(coefficients.shape) != 4 or coefficients.shape[1] != 2:
        raise ValueError(
            "`coefficients` must have shape (B, 2, c, c). "
            f"Received: coefficients.shape={tuple(coefficients.shape)}"
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
    weights = coefficients * B.convert_to_tensor(mode_amplitudes(cutoff))
    modes_y = B.convert_to_tensor(_modes(height, cutoff))  # (H, c): sin(j pi y)
    # (c, W): sin(i pi x)
    modes_x = B.convert_to_tensor(np.ascontiguousarray(_modes(width, cutoff).T))
    # fields[b, y, x, f] = sum_ij C[b, f, i, j] sin(i pi x) sin(j pi y), as two plain matmuls
    # per field, (H, c) @ C^T @ (c, W) (XLA handles these far better than the 3-operand einsum).
    fields = B.numpy.matmul(modes_y, B.numpy.matmul(B.numpy.swapaxes(weights, -1, -2), modes_x))
    fields = B.numpy.transpose(fields, (0, 2, 3, 1))
    if temperature is not None:
        # sqrt(T) * n per axis.
        strength = B.numpy.sqrt(B.cast(B.convert_to_tensor(temperature), "float32"))
        scale = strength[..., None] * B.convert_to_tensor(np.float32([height, width]))
    else:
        # sqrt(T(delta, c, n)) * n = 2 delta / sqrt(pi ln c), the same on both axes.
        strength = B.cast(B.convert_to_tensor(displacement), "float32")
        scale = (
            strength[..., None]
            * (2.0 / math.sqrt(math.pi * math.log(cutoff)))
            * B.numpy.ones((2,), "float32")
        )
    return fields * B.numpy.reshape(scale, (-1, 1, 1, 2))
