"""Shift consistency of the top-1 prediction (Zhang, 2019)."""

import functools
import math
import weakref

import keras
import numpy as np

from deformstab_tf import _keras_internals as internals
from deformstab_tf._validation import check_choice, check_non_negative_int, check_positive_int
from deformstab_tf.deformations._backend import (
    compiled_reading,
    full_float32_precision,
    to_numpy,
)
from deformstab_tf.deformations.warp import FILL_MODES, shift
from deformstab_tf.measures._common import resolve_seed, warn_non_finite
from deformstab_tf.measures.features import (
    check_probe_inputs,
    float32_compute,
    image_input_index,
)
from deformstab_tf.measures.results import MeasureResult

_PREDICTORS = weakref.WeakKeyDictionary()  # traced top-1 function per model, dies with it


def shift_consistency(
    model,
    images,
    max_shift,
    batch_size=64,
    fill_mode="wrap",
    seed=None,
    extra_inputs=None,
    pairs_per_image=1,
):
    """Probability that the top-1 prediction agrees for two random shifts of the same image.

    Each image is translated twice by whole pixels, by independent offsets `(dy, dx)` drawn
    uniformly from the integers in `[-max_shift, max_shift]` per axis (Zhang 2019 compares two
    random crops; a shift with a fill mode keeps the model's input size), `pairs_per_image`
    times. The model runs with `training=False`.

    Offsets are drawn as `numpy.random.default_rng(seed).integers(-max_shift, max_shift,
    size=(N, P, 2, 2), endpoint=True)` with `P = pairs_per_image`, indexed `[image, pair,
    first/second shift, (dy, dx)]` (with one pair, the same draws as `size=(N, 2, 2)`); content
    moves down by `dy` and right by `dx`.

    The measurement's own standard error, `details["standard_error"]["output"]`, is the sample
    standard deviation over images of each image's fraction of agreeing pairs, divided by
    `sqrt(N)`: images are independent, the pairs of one image are not. More pairs per image
    shrink it until the images' own spread dominates.

    Args:
        model: a classifier (top-1 = argmax of its flattened output): functional, `Sequential`
            or subclassed; with several inputs, see `extra_inputs`.
        images: `(N, H, W, C)` probe images, `N >= 2`, matching the model's (image) input.
        max_shift: largest shift in pixels per axis, a non-negative integer.
        batch_size: images per forward pass.
        fill_mode: what enters at the border: `"wrap"` (circular shift, the default),
            `"constant"` (zeros), `"nearest"` (edge pixel repeated) or `"reflect"`
            (`d c b a | a b c d | d c b a`).
        seed: seeds the offsets; the same seed gives the same number.
        extra_inputs: for a model with several inputs, the others, one row per image, held
            fixed while the images are shifted; see `normalized_sensitivity`.
        pairs_per_image: independent shift pairs drawn per image, a positive integer.

    Returns:
        A `MeasureResult` with one entry, `"output"`, the fraction of shift pairs whose two
        shifted copies get the same top-1 class, and its standard error in
        `details["standard_error"]`; NaN (with a warning) when the model's outputs or
        weights are not finite (a diverged network: NaN weights can give finite, constant
        outputs, which would read as perfect consistency).

    Example:

    >>> model = deformstab_tf.build_vgg([(8,), (16,)], input_shape=(16, 16, 3))
    >>> images = np.random.default_rng(0).random((32, 16, 16, 3), dtype="float32")
    >>> result = shift_consistency(model, images, max_shift=4, seed=0)
    >>> list(result), 0.0 <= result["output"] <= 1.0
    (['output'], True)
    >>> more = shift_consistency(model, images, max_shift=4, seed=0, pairs_per_image=5)
    >>> bool(more.details["standard_error"]["output"] < 0.1)
    True
    """
    images, extras = check_probe_inputs(model, images, extra_inputs)
    return shift_consistency_from_predictor(
        top1_predictor(model),
        images,
        max_shift,
        batch_size,
        fill_mode,
        seed,
        extras,
        pairs_per_image=pairs_per_image,
    )


def top1_predictor(model):
    """A compiled function `(images, extras) -> top-1 class` of `model` with `training=False`, on
    the active backend (cached per model, so repeated measurements do not retrace; a function of
    its own per model, so measuring many models retraces nothing either)."""
    if model not in _PREDICTORS:
        model_ref = weakref.ref(model)  # the cache must not keep the model alive
        image_index = image_input_index(model)

        def predict_top1(images, extras=()):
            ops = keras.ops
            model = model_ref()
            if extras:
                inputs = list(extras)
                inputs.insert(image_index, images)
                inputs = keras.tree.pack_sequence_as(internals.inputs_struct(model), inputs)
            else:
                inputs = images
            with float32_compute(model):  # traced once: the graph stays float32
                outputs = model(inputs, training=False)
            flat = ops.reshape(outputs, (ops.shape(outputs)[0], -1))
            weights_finite = [
                ops.all(ops.isfinite(w.value))
                for w in model.weights
                if keras.backend.is_float_dtype(w.dtype)
            ]
            finite = ops.all(ops.isfinite(flat), axis=-1) & ops.all(
                ops.stack([ops.convert_to_tensor(True), *weights_finite])
            )
            # -1 marks a non-finite output or model (a diverged network): no class to agree on.
            return ops.where(finite, ops.cast(ops.argmax(flat, axis=-1), "int32"), -1)

        # A partial: TensorFlow counts traces per code object, and every model's predictor
        # shares this code; each model's own trace is no retracing.
        _PREDICTORS[model] = compiled_reading(
            functools.partial(predict_top1), model.variables, reduce_retracing=True
        )
    return _PREDICTORS[model]


@full_float32_precision()  # no TensorFloat-32 on GPUs: the same numbers on every device
def shift_consistency_from_predictor(
    predict_top1,
    images,
    max_shift,
    batch_size=64,
    fill_mode="wrap",
    seed=None,
    extras=(),
    pairs_per_image=1,
):
    """`shift_consistency` given `top1_predictor(model)`, checked `images` and the model's other
    inputs `extras` (checked tensors, see `check_probe_inputs`), for reuse."""
    check_non_negative_int("max_shift", max_shift)
    check_positive_int("batch_size", batch_size)
    check_choice("fill_mode", fill_mode, FILL_MODES)
    check_positive_int("pairs_per_image", pairs_per_image)
    num_images = int(images.shape[0])
    rng = np.random.default_rng(resolve_seed(seed))
    offsets = rng.integers(
        -max_shift, max_shift, size=(num_images, pairs_per_image, 2, 2), endpoint=True
    )

    agree, diverged = [], False  # agree: per batch, (images, pairs) booleans
    for start in range(0, num_images, batch_size):
        batch = images[start : start + batch_size]
        batch_extras = [e[start : start + batch_size] for e in extras]
        pairs = []
        for pair in offsets[start : start + batch_size].transpose(1, 0, 2, 3):
            first, second = (
                to_numpy(
                    predict_top1(
                        shift(batch, pair[:, k, 0], pair[:, k, 1], fill_mode=fill_mode),
                        batch_extras,
                    )
                )
                for k in (0, 1)
            )
            diverged = diverged or bool((first < 0).any() or (second < 0).any())
            pairs.append(first == second)
        agree.append(np.stack(pairs, axis=1))
    per_image = np.concatenate(agree).mean(axis=1)
    consistency = math.nan if diverged else float(per_image.mean())
    error = math.nan if diverged else float(per_image.std(ddof=1) / math.sqrt(num_images))
    if diverged:
        warn_non_finite("shift_consistency", ["output"])
    return MeasureResult(
        "shift_consistency",
        {"output": consistency},
        details={"standard_error": {"output": error}},
        metadata={
            "num_images": num_images,
            "pairs_per_image": int(pairs_per_image),
            "max_shift": int(max_shift),
            "fill_mode": fill_mode,
            "seed": seed,
        },
    )
