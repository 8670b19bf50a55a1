"""Relative stability to deformations vs noise per probe point (Petrini et al. 2021;
Tomasini et al. 2022)."""

import math

import keras
import numpy as np

from deformstab_tf._validation import check_model, check_non_negative, check_positive_int
from deformstab_tf.measures._common import (
    call_perturbation,
    check_deformation,
    derive_seed,
    resolve_seed,
    safe_ratio,
    warn_non_finite,
)
from deformstab_tf.measures.features import DEFAULT_CACHE, ProbeFeatures
from deformstab_tf.measures.results import MeasureResult

REDUCTIONS = {"median": np.median, "mean": np.mean}


def relative_stability(
    model,
    images,
    deformation,
    layers=None,
    batch_size=64,
    reduction="median",
    seed=None,
    feature_cache_bytes=DEFAULT_CACHE,
    extra_inputs=None,
):
    """Stability to a deformation relative to noise of the same norm, per probe point.

    For each probe image `x`, `tau x` is the deformed image and `x + eta` a noisy one with
    `eta = ||tau x - x||_2 * xi / ||xi||_2`, `xi` standard Gaussian (noise as large as the
    deformation's change). At probe point `l` with flattened representation `r`:

        D_l = <||r(tau x) - r(x)||^2>_x / <||r(x) - r(z)||^2>_{x != z}
        G_l = <||r(x + eta) - r(x)||^2>_x / <||r(x) - r(z)||^2>_{x != z}
        R_l = D_l / G_l

    `<.>` is `reduction`, applied separately to the numerator (over the N probe images) and to
    the denominator (over the N (N - 1) / 2 pairs of distinct probe images). The default
    `"median"` follows the authors' code (which, unlike here, also counts the zero self-distances
    in the denominator's median); `"mean"` gives plain averages. `R < 1`: the probe point is more
    stable to the deformation than to noise. At the input, `D = G` by construction (`R = 1`).

    Ratios `0 / 0` (a probe point that does not change at all, e.g. dead) are reported as
    `D = G = 0` and `R = 1`; `x / 0` with `x > 0` as `inf`. A probe point whose representations
    are not finite, or computed from non-finite representations or weights (a diverged
    network), is NaN in R, D and G, with a warning (see `normalized_sensitivity`).

    Cost: forward passes over the clean images (one when `len(images) <= batch_size`, see
    `ProbeFeatures.distances`), the deformed and the noisy images.

    Args:
        model: a Keras model; see `normalized_sensitivity` (subclassed models: input and output
            only; several inputs: `extra_inputs`).
        images: `(N, H, W, C)` probe images matching the model's (image) input, at least 2
            distinct, in the range the model was trained on; see `normalized_sensitivity`.
        deformation: any callable on a batch of images returning the same shape; a Keras layer is
            called with `training=True` (e.g. `RandomDiffeomorphism(seed=...)`).
        layers: probe points; see `normalized_sensitivity`.
        batch_size: images per forward pass.
        reduction: `"median"` (default) or `"mean"`.
        seed: seeds the noise `xi` (image `i` draws from `numpy.random.default_rng([seed, i])`,
            so the noise does not depend on `batch_size`) and the deformations, as in
            `normalized_sensitivity`: with an integer, a deformation layer of this package draws
            from `seed` (a measurement: the same numbers on every call, also with a reused
            layer); with `None` it draws from its own seed generator (and the noise from fresh
            entropy).
        feature_cache_bytes: see `normalized_sensitivity`.
        extra_inputs: a model's other inputs, held fixed (the noise too is added to the images
            only); see `normalized_sensitivity`.

    Returns:
        A `MeasureResult` mapping probe name -> `R_l`; `details["D"]` and `details["G"]` map
        probe name -> `D_l` and `G_l`.

    Example:

    >>> model = deformstab_tf.build_vgg([(8,), (16,)], input_shape=(16, 16, 3))
    >>> x_probe = np.random.default_rng(0).random((16, 16, 16, 3), dtype="float32")
    >>> diffeo = deformstab_tf.RandomDiffeomorphism(cutoff=3, displacement=1.0, seed=0)
    >>> result = relative_stability(model, x_probe, diffeo, seed=0)   # the paper: 500 images
    >>> list(result), sorted(result.details)
    (['input', 'block1_conv1', 'block1_down', 'block2_conv1', 'block2_down'], ['D', 'G'])
    >>> round(result["input"], 6)   # at the input, D = G by construction
    1.0
    """
    check_model("model", model)
    probe = ProbeFeatures.for_model(model, layers)
    return relative_stability_from_probe(
        probe,
        images,
        deformation,
        batch_size,
        reduction,
        seed,
        feature_cache_bytes=feature_cache_bytes,
        extra_inputs=extra_inputs,
    )


def relative_stability_from_probe(
    probe,
    images,
    deformation,
    batch_size=64,
    reduction="median",
    seed=None,
    deformed=None,
    feature_cache_bytes=DEFAULT_CACHE,
    extra_inputs=None,
):
    """`relative_stability` on a prebuilt `ProbeFeatures` (reuses its traced functions).

    `deformed`: optional precomputed deformed images `tau x`, aligned with `images`; then
    `deformation` is not called.
    """
    images, extras = probe.check_inputs(images, extra_inputs)
    if deformed is None:
        check_deformation(deformation)
    check_positive_int("batch_size", batch_size)
    check_non_negative("feature_cache_bytes", feature_cache_bytes)
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"`reduction` must be one of {sorted(REDUCTIONS)}. Received: reduction={reduction!r}"
        )
    reduce = REDUCTIONS[reduction]
    root_seed = resolve_seed(seed)

    def deform_and_add_noise(batch, batch_index, start):
        if deformed is not None:
            deformed_batch = deformed[start : start + batch.shape[0]]
        else:
            deformed_batch = call_perturbation(
                deformation,
                batch,
                seed=derive_seed(root_seed, batch_index),
                seed_layers=seed is not None,
            )
        deformed_batch = keras.ops.cast(keras.ops.convert_to_tensor(deformed_batch), batch.dtype)
        noisy = batch + matched_noise(deformed_batch - batch, root_seed, start)
        return [deformed_batch, noisy]

    distances, forward_passes = probe.distances(
        images, deform_and_add_noise, batch_size, "sqeuclidean", feature_cache_bytes, extras
    )
    components = {"D": {}, "G": {}}
    ratios = {}
    for name, d in zip(probe.names, distances, strict=True):
        if not d.finite:  # a diverged network: no number that reads as a result
            components["D"][name] = components["G"][name] = ratios[name] = math.nan
            continue
        pairs = float(reduce(d.distinct_pairs()))
        deformation_change = float(reduce(d.paired[0]))
        noise_change = float(reduce(d.paired[1]))
        components["D"][name] = safe_ratio(deformation_change, pairs, if_both_zero=0.0)
        components["G"][name] = safe_ratio(noise_change, pairs, if_both_zero=0.0)
        ratios[name] = safe_ratio(components["D"][name], components["G"][name], if_both_zero=1.0)
    diverged = [name for name, d in zip(probe.names, distances, strict=True) if not d.finite]
    if diverged:
        warn_non_finite("relative_stability", diverged)
    return MeasureResult(
        "relative_stability",
        ratios,
        details=components,
        metadata={
            "num_images": int(images.shape[0]),
            "batch_size": batch_size,
            "reduction": reduction,
            "seed": seed,
            "forward_passes": forward_passes,
        },
    )


def matched_noise(change, seed, start):
    """Gaussian noise with, per image, the L2 norm of `change` (a batch of image differences).

    Probe image `i = start + k` draws `xi` from `numpy.random.default_rng([seed, i])`.
    """
    ops = keras.ops
    change = ops.convert_to_tensor(change)
    count = change.shape[0]
    xi = np.stack(
        [
            np.random.default_rng([seed, start + k]).standard_normal(change.shape[1:])
            for k in range(count)
        ]
    )
    flat = xi.reshape(count, -1)
    direction = (flat / np.linalg.norm(flat, axis=1, keepdims=True)).reshape(xi.shape)
    norms = ops.sqrt(ops.sum(ops.square(ops.reshape(change, (count, -1))), axis=1))
    return ops.cast(direction, change.dtype) * ops.reshape(norms, (-1,) + (1,) * (xi.ndim - 1))
