"""Translation-sensitivity maps (Myburgh, Mouton & Davel, 2021) and the local homogeneity of
images (Mouton, Myburgh & Davel, 2021)."""

import math

import keras
import numpy as np

from deformstab_tf._validation import (
    check_choice,
    check_non_negative,
    check_non_negative_int,
    check_positive_int,
)
from deformstab_tf.deformations.warp import FILL_MODES, shift
from deformstab_tf.measures._common import warn_non_finite
from deformstab_tf.measures.features import DEFAULT_CACHE, INPUT, ProbeFeatures
from deformstab_tf.measures.results import MeasureResult


def translation_sensitivity_map(
    model,
    images,
    max_shift=4,
    layers=None,
    batch_size=64,
    fill_mode="wrap",
    feature_cache_bytes=DEFAULT_CACHE,
    extra_inputs=None,
):
    """Cosine similarity of each probe point's representation to that of translated images.

    For probe point `l` with flattened representation `r_l` and every whole-pixel offset
    `(dy, dx)` in `[-max_shift, max_shift]^2` (content moves down by `dy`, right by `dx`; what
    enters at the border is set by `fill_mode`, as in `shift_consistency`):

        M_l[dy, dx] = mean_x cos(r_l(x), r_l(shift(x, dy, dx))),

    the mean over probe images: Myburgh et al.'s translation-sensitivity map, which Mouton et
    al. use to compare architectures (1 everywhere: perfectly invariant). A probe point's value
    is the mean of its map over all `(2 max_shift + 1)^2` offsets (`(0, 0)`, always 1 for a
    live representation, included); `details["distance_k"]` is the mean over the offsets at
    distance `k = max(|dy|, |dx|)`, the ring `k` of the map, for `k = 1..max_shift`. Zero
    representations (dead units) follow the measures' rule: `cos(0, 0) = 1`, `cos(0, r) = 0`.
    The model runs with `training=False`, in float32, deterministically (nothing is drawn).

    Cost: `(2 max_shift + 1)^2` forward passes per batch of probe images (81 with the default
    4), on the one feature extractor the other measures use. Memory: one batch of translated
    images at a time.

    Args:
        model: a Keras model (functional or `Sequential`; subclassed models at `"input"` and
            `"output"` only); see `normalized_sensitivity`.
        images: `(N, H, W, C)` probe images, at least 2 distinct, matching the model's input.
        max_shift: the largest offset per axis, a non-negative integer (0: the map is `[[1]]`).
        layers: probe points; see `normalized_sensitivity` (`"input"` gives the images' own
            map: how similar each image is to its translations, see `local_homogeneity`).
        batch_size: images per forward pass.
        fill_mode: `"wrap"` (circular shift, the default), `"constant"` (zeros), `"nearest"` or
            `"reflect"`.
        feature_cache_bytes: see `normalized_sensitivity` (the results do not depend on it).
        extra_inputs: a model's other inputs, held fixed; see `normalized_sensitivity`.

    Returns:
        A `MeasureResult` mapping probe name -> mean similarity over the map, in forward order;
        `details["distance_k"]` the mean over ring `k`; `metadata["maps"]` each probe point's
        map as nested lists (rows `dy`, columns `dx`, both from `-max_shift` to `max_shift`;
        `similarity_map(result, name)` gives it as an array). A probe point computed from
        non-finite representations or weights (a diverged network) is NaN, with a warning.

    Example:

    >>> model = deformstab_tf.build_vgg([(8,), (16,)], input_shape=(16, 16, 3))
    >>> images = np.random.default_rng(0).random((8, 16, 16, 3), dtype="float32")
    >>> result = translation_sensitivity_map(model, images, max_shift=2)
    >>> list(result)
    ['input', 'block1_conv1', 'block1_down', 'block2_conv1', 'block2_down']
    >>> similarity_map(result, "block2_down").shape    # dy, dx from -2 to 2
    (5, 5)
    >>> float(similarity_map(result, "input")[2, 2])   # no shift: identical
    1.0
    """
    probe = ProbeFeatures.for_model(model, layers)
    return translation_map_from_probe(
        probe, images, max_shift, batch_size, fill_mode, feature_cache_bytes, extra_inputs
    )


def translation_map_from_probe(
    probe,
    images,
    max_shift=4,
    batch_size=64,
    fill_mode="wrap",
    feature_cache_bytes=DEFAULT_CACHE,
    extra_inputs=None,
):
    """`translation_sensitivity_map` on a prebuilt `ProbeFeatures` (reuses its traced
    functions)."""
    check_non_negative_int("max_shift", max_shift)
    max_shift = int(max_shift)
    check_positive_int("batch_size", batch_size)
    check_choice("fill_mode", fill_mode, FILL_MODES)
    check_non_negative("feature_cache_bytes", feature_cache_bytes)
    images, extras = probe.check_inputs(images, extra_inputs)
    offsets = [
        (dy, dx)
        for dy in range(-max_shift, max_shift + 1)
        for dx in range(-max_shift, max_shift + 1)
    ]
    similarities, forward_passes = _similarities(
        probe, images, offsets, batch_size, fill_mode, feature_cache_bytes, extras
    )
    size = 2 * max_shift + 1
    rings = np.maximum(*np.abs(np.mgrid[-max_shift : max_shift + 1, -max_shift : max_shift + 1]))
    values, maps = {}, {}
    details = {f"distance_{k}": {} for k in range(1, max_shift + 1)}
    for name, per_image in zip(probe.names, similarities, strict=True):
        similarity = per_image.mean(axis=1).reshape(size, size)  # NaN where diverged
        maps[name] = similarity.tolist()
        values[name] = float(similarity.mean())
        for k in range(1, max_shift + 1):
            details[f"distance_{k}"][name] = float(similarity[rings == k].mean())
    diverged = [
        name for name, s in zip(probe.names, similarities, strict=True) if np.isnan(s).any()
    ]
    if diverged:
        warn_non_finite("translation_map", diverged)
    return MeasureResult(
        "translation_map",
        values,
        details=details,
        metadata={
            "num_images": int(images.shape[0]),
            "max_shift": max_shift,
            "fill_mode": fill_mode,
            "batch_size": batch_size,
            "forward_passes": forward_passes,
            "maps": maps,
        },
    )


def similarity_map(result, name):
    """The translation-sensitivity map of probe point `name` in a `translation_map` result:
    a float64 array `(2 s + 1, 2 s + 1)`, rows `dy` and columns `dx` from `-s` to `s`.

    Raises:
        ValueError: for a result of another measure, or a probe point it does not hold.
    """
    maps = result.metadata.get("maps") if isinstance(result, MeasureResult) else None
    if maps is None:
        raise ValueError(
            "`result` must be a translation_map result (translation_sensitivity_map); "
            f"received {result!r}."
        )
    if name not in maps:
        raise ValueError(f"`name` must be one of {list(maps)}; received name={name!r}.")
    return np.asarray(maps[name], dtype=np.float64)


def local_homogeneity(images, distance=1, batch_size=256, fill_mode="reflect"):
    """How similar neighbouring pixels of images are: their mean cosine similarity to their own
    translations by `distance` pixels.

    Mouton, Myburgh & Davel (2021) call the similarity of neighbouring pixels *local
    homogeneity* and read it from the images' own translation-sensitivity maps (the map of the
    input); they define no single number. This is that number: the input's map averaged over
    the `8 distance` offsets at distance `distance` (`max(|dy|, |dx|) = distance`), i.e.

        h = mean_x mean_{max(|dy|,|dx|) = distance} cos(x, shift(x, dy, dx)),

    with images flattened over height, width and channels, as they enter a network (so it is
    the similarity a network's first layer sees; images in `[0, 1]` share a positive mean, and
    `h` of white noise in `[0, 1]` is about 0.75, not 0). 1: every image is constant. It is the
    `"distance_<distance>"` entry of `translation_sensitivity_map` at `"input"`. The default
    fill mode `"reflect"` brings in no pixels from the far side of an image (`"wrap"` would
    compare pixels that are not neighbours).

    Args:
        images: `(N, H, W, C)` images, `N >= 2` (floats, or integers converted to float32).
        distance: the offset in pixels, a positive integer smaller than the images.
        batch_size: images per batch.
        fill_mode: as in `translation_sensitivity_map`.

    Returns:
        A `MeasureResult` `{"input": h}`, with its standard error over images in
        `details["standard_error"]` and the number of images in `metadata`.

    Example:

    >>> rng = np.random.default_rng(0)
    >>> noise = rng.random((16, 32, 32, 3), dtype="float32")
    >>> smooth = np.repeat(np.repeat(noise[:, ::4, ::4], 4, axis=1), 4, axis=2)  # 4 px blocks
    >>> round(local_homogeneity(noise)["input"], 2), round(local_homogeneity(smooth)["input"], 2)
    (0.75, 0.92)
    """
    if isinstance(distance, bool) or not isinstance(distance, (int, np.integer)) or distance < 1:
        raise ValueError(
            f"`distance` must be a positive integer (pixels); received distance={distance!r}."
        )
    check_positive_int("batch_size", batch_size)
    check_choice("fill_mode", fill_mode, FILL_MODES)
    shape = tuple(getattr(images, "shape", ()))
    if len(shape) != 4 or shape[0] < 2:
        raise ValueError(
            f"`images` must be a batch (N, H, W, C) of N >= 2 images; received shape {shape}."
        )
    if distance >= min(shape[1:3]):
        raise ValueError(
            f"`distance` must be smaller than the images ({shape[1]}x{shape[2]}); received "
            f"distance={distance}."
        )
    offsets = [
        (dy, dx)
        for dy in range(-distance, distance + 1)
        for dx in range(-distance, distance + 1)
        if max(abs(dy), abs(dx)) == distance
    ]
    # The images' own representation: the "input" probe point of a model that is its input.
    pixels = keras.Input(shape[1:], dtype="float32")
    model = keras.Model(pixels, pixels, name="images")  # held: the probe refers to it weakly
    probe = ProbeFeatures.for_model(model, [INPUT])
    images = keras.ops.cast(keras.ops.convert_to_tensor(images), "float32")
    (similarities,), _ = _similarities(probe, images, offsets, batch_size, fill_mode, 0, [])
    per_image = similarities.mean(axis=0)
    return MeasureResult(
        "local_homogeneity",
        {INPUT: float(per_image.mean())},
        details={
            "standard_error": {INPUT: float(per_image.std(ddof=1) / math.sqrt(len(per_image)))}
        },
        metadata={"num_images": len(per_image), "distance": int(distance), "fill_mode": fill_mode},
    )


def _similarities(probe, images, offsets, batch_size, fill_mode, feature_cache_bytes, extras):
    """Per probe point, the cosine similarity `(len(offsets), N)` of each image's representation
    to that of its translation by each offset (NaN throughout at a diverged probe point), and
    the number of forward passes."""
    distances, forward_passes = probe.distances(
        images,
        lambda batch, batch_index, start: _Translations(batch, offsets, fill_mode),
        batch_size,
        "cosine",
        feature_cache_bytes,
        extras,
    )
    similarities = [
        1.0 - d.paired if d.finite else np.full(d.paired.shape, math.nan) for d in distances
    ]
    return similarities, forward_passes


class _Translations:
    """The translated copies of a batch, one per offset, made as they are read (a sequence
    with a length: `ProbeFeatures.distances` holds one translated batch at a time)."""

    def __init__(self, batch, offsets, fill_mode):
        self._batch, self._offsets, self._fill_mode = batch, offsets, fill_mode

    def __len__(self):
        return len(self._offsets)

    def __iter__(self):
        count = int(self._batch.shape[0])
        for dy, dx in self._offsets:
            yield shift(
                self._batch,
                np.full(count, dy, np.int32),
                np.full(count, dx, np.int32),
                fill_mode=self._fill_mode,
            )
