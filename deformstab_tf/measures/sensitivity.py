"""Normalised deformation sensitivity per probe point (Ruderman et al., 2018)."""

import math

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


def normalized_sensitivity(
    model,
    images,
    deformation,
    layers=None,
    batch_size=64,
    num_deformations=1,
    seed=None,
    feature_cache_bytes=DEFAULT_CACHE,
    extra_inputs=None,
):
    """Normalised sensitivity of each probe point to a deformation (Ruderman et al., 2018).

    For probe point `l` with flattened representation `r_l`:

        S_l = mean_x d_cos(r_l(x), r_l(tau x)) / median_{x != y} d_cos(r_l(x), r_l(y)),

    with `d_cos = 1 - cos`, the mean over probe images (and over `num_deformations` draws of
    `tau` per image) and the median over all pairs of distinct probe images. The model runs with
    `training=False`.

    Dead units: `d_cos(0, 0) = 0` and `d_cos(0, r) = 1` for `r != 0`. A ratio `0 / 0` (a probe
    point constant over the probe set and its deformations, e.g. all-zero) is reported as 0
    (perfectly stable); `x / 0` with `x > 0` as `inf`. A probe point whose representations are
    not finite, or computed from non-finite representations or weights (a diverged network),
    is NaN, with a warning; otherwise no NaN is produced. (TensorFlow can turn NaN into finite
    numbers — a conv with a fused ReLU gives 0 for NaN weights, max pooling drops NaN — so the
    layers upstream are checked too, lest a diverged unit read as a dead, "stable" one.)

    Cost: one forward pass per batch of clean images and one per batch and deformation draw
    (beyond `feature_cache_bytes` of clean features, `n (n - 1) / 2 + 1` clean passes of `n`
    batches; see `ProbeFeatures.distances`). Memory: the cached clean features (or those of two
    batches) plus `N^2` floats per probe point.

    Args:
        model: a Keras model: functional or `Sequential` (any probe point, nested models
            included); with several inputs, see `extra_inputs`; subclassed models are measured
            at `"input"` and `"output"` only (they have no graph to probe), with a warning.
        images: `(N, H, W, C)` probe images matching the model's (image) input, at least 2
            distinct ones (fewer is an error), in the range the model was trained on: float
            images in `[0, 1]` for the models this package trains (a warning says when they
            look like 0..255 pixels, uint8 or values far above 1, for a model without a
            rescaling layer).
        deformation: any callable on a batch of images returning the same shape; a Keras layer is
            called with `training=True` (e.g. `RandomThinPlateSpline(seed=...)`).
        layers: probe points: `None` (the default probe points: `probe_layer_names(model)` for
            models from `deformstab_tf.models`, else the unit outputs, also inside nested
            models), a named selection (`"units"`, `"activations"`, `"blocks"`, `"all"`), a list
            of layer names (`"input"` is the images, `"backbone/layer"` a nested layer) or a
            predicate on a layer; see `resolve_probe_layers`.
        batch_size: images per forward pass.
        num_deformations: draws of the deformation per image averaged in the numerator.
        seed: seeds the deformations: with an integer the result is a measurement — the same
            seed, model and images give the same numbers on every call. A deformation layer of
            this package (`RandomThinPlateSpline`, ...) then draws from `seed` (one derived seed
            per batch and draw; its own seed generator is neither used nor advanced, so a
            reused layer gives the same numbers), and a `deformation` callable that accepts a
            `seed` parameter gets the derived seed. With `None` (the default) a layer draws from
            its own seed generator: a fresh random draw on every call, reproducible only by
            re-creating the layer with its seed. Other Keras layers always use their own
            generator.
        feature_cache_bytes: memory for keeping clean features when there are more probe
            images than `batch_size` (default 1 GiB; see `ProbeFeatures.distances`): the cost
            stays one clean pass per batch while they fit. The results do not depend on it.
        extra_inputs: for a model with several inputs, the others (one row per probe image,
            held fixed while the images, which feed the first input of rank 4, are deformed):
            a dict by input name or a list in input order; see `check_probe_inputs`.

    Returns:
        A `MeasureResult` mapping probe name -> `S_l`, in forward order; `details` holds the
        numerator (`"deformation"`) and denominator (`"pairs"`) per probe point.

    Example:

    >>> model = deformstab_tf.build_vgg([(8,), (16,)], input_shape=(16, 16, 3))
    >>> x_probe = np.random.default_rng(0).random((16, 16, 16, 3), dtype="float32")
    >>> tps = deformstab_tf.RandomThinPlateSpline(grid_size=3, max_displacement=1.0, seed=0)
    >>> result = normalized_sensitivity(model, x_probe, tps)   # the paper: 128 images
    >>> list(result)   # print(result) shows the table
    ['input', 'block1_conv1', 'block1_down', 'block2_conv1', 'block2_down']
    >>> all(value > 0 for value in result.values())
    True
    """
    check_model("model", model)
    probe = ProbeFeatures.for_model(model, layers)
    return normalized_sensitivity_from_probe(
        probe,
        images,
        deformation,
        batch_size,
        num_deformations,
        seed,
        feature_cache_bytes=feature_cache_bytes,
        extra_inputs=extra_inputs,
    )


def normalized_sensitivity_from_probe(
    probe,
    images,
    deformation,
    batch_size=64,
    num_deformations=1,
    seed=None,
    deformed=None,
    feature_cache_bytes=DEFAULT_CACHE,
    extra_inputs=None,
):
    """`normalized_sensitivity` on a prebuilt `ProbeFeatures` (reuses its traced functions).

    `deformed`: optional precomputed deformed images `tau x`, aligned with `images`; then
    `deformation` is not called (`StabilityCallback` deforms its probe set once, so every
    measurement sees the same deformations).
    """
    images, extras = probe.check_inputs(images, extra_inputs)
    if deformed is None:
        check_deformation(deformation)
    check_positive_int("batch_size", batch_size)
    check_non_negative("feature_cache_bytes", feature_cache_bytes)
    check_positive_int("num_deformations", num_deformations)
    root_seed = resolve_seed(seed)

    def deform(batch, batch_index, start):
        if deformed is not None:
            return [deformed[start : start + batch.shape[0]]]
        return [
            call_perturbation(
                deformation,
                batch,
                seed=derive_seed(root_seed, batch_index, draw),
                seed_layers=seed is not None,
            )
            for draw in range(num_deformations)
        ]

    distances, forward_passes = probe.distances(
        images, deform, batch_size, "cosine", feature_cache_bytes, extras
    )
    values, numerators, denominators = {}, {}, {}
    for name, d in zip(probe.names, distances, strict=True):
        if not d.finite:  # a diverged network: no number that reads as a result
            values[name] = numerators[name] = denominators[name] = math.nan
            continue
        numerators[name] = float(np.mean(d.paired))
        denominators[name] = float(np.median(d.distinct_pairs()))
        values[name] = safe_ratio(numerators[name], denominators[name], if_both_zero=0.0)
    diverged = [name for name, d in zip(probe.names, distances, strict=True) if not d.finite]
    if diverged:
        warn_non_finite("sensitivity", diverged)
    return MeasureResult(
        "sensitivity",
        values,
        details={"deformation": numerators, "pairs": denominators},
        metadata={
            "num_images": int(images.shape[0]),
            "batch_size": batch_size,
            "num_deformations": num_deformations,
            "seed": seed,
            "forward_passes": forward_passes,
        },
    )
