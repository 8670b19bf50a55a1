"""Small helpers shared by the measures: seeds, calling a deformation, ratios, validation."""

import inspect
import warnings

import keras
import numpy as np

from deformstab_tf._validation import check_callable, check_seed
from deformstab_tf.deformations.layers import BaseRandomDeformation


def call_perturbation(perturbation, images, seed=None, seed_layers=False):
    """Applies a deformation: Keras layers get `training=True`, callables accepting `seed` get it.

    Args:
        perturbation: a Keras layer or any callable on a batch of images.
        images: a batch `(B, H, W, C)`.
        seed: an integer passed as `seed=` to callables whose signature has a `seed` parameter;
            ignored otherwise (a Keras layer draws from its own seed generator) unless
            `seed_layers`.
        seed_layers: a deformation layer of this package draws this call's deformation from
            `seed` (not from its seed generator, which is left as it is), so the same seed gives
            the same deformations whatever the layer's history.
    """
    if isinstance(perturbation, BaseRandomDeformation) and seed is not None and seed_layers:
        images = perturbation._checked(images)
        transformation = perturbation.get_random_transformation(images, training=True, seed=seed)
        return perturbation.transform_images(images, transformation, training=True)
    if isinstance(perturbation, keras.layers.Layer):
        return perturbation(images, training=True)
    if seed is not None and _accepts_seed(perturbation):
        return perturbation(images, seed=seed)
    return perturbation(images)


def _accepts_seed(function):
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return "seed" in parameters


def derive_seed(seed, *indices):
    """A reproducible 31-bit integer seed from a root seed and indices (batch, draw, ...)."""
    return int(np.random.default_rng([seed, *indices]).integers(2**31 - 1))


def check_deformation(deformation, argument="deformation"):
    """Raises a TypeError naming `argument` unless `deformation` is a callable on images (a
    deformation layer, e.g. `deformation_layer("tps", 2.0, seed=0)`)."""
    hint = "Pass a deformation layer or a callable on a batch of images"
    if isinstance(deformation, str):
        hint += f", e.g. deformation_layer({deformation!r}, magnitude, seed=0)"
    check_callable(argument, deformation, hint + ".")


def resolve_seed(seed):
    """`seed`, or fresh OS entropy when `None` (never the global NumPy / TF / Keras state)."""
    check_seed("seed", seed, allow_none=True, limit=2**63)
    if seed is None:
        return int(np.random.SeedSequence().entropy % (2**63))
    return int(seed) % (2**63)  # NumPy seeds must be non-negative


def safe_ratio(numerator, denominator, if_both_zero):
    """`numerator / denominator`, with `0 / 0 -> if_both_zero` and `x / 0 -> inf` (x > 0)."""
    if denominator > 0:
        return numerator / denominator
    return if_both_zero if numerator == 0 else float("inf")


def warn_non_finite(measure, names):
    """One warning per measurement naming the probe points whose representations, or the
    representations or weights they are computed from, are not finite (NaN / inf: a diverged
    network); their values are NaN, never a number."""
    warnings.warn(
        f"{measure}: non-finite representations or weights (a diverged network?) at "
        f"{list(names)}; their values are NaN.",
        RuntimeWarning,
        stacklevel=3,
    )
