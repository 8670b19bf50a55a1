"""The measurement plan: every measure of the package in one registry, run on a probe prepared
once.

`MEASURES` maps a measure's name to its `Measure` entry: what it needs (a deformation, probe
images, the model's features at its probe points, a top-1 predictor), what it returns (a value
per probe point or layer, or one number; the components of its value; a log axis) and how it
runs on a prepared probe. Everything that takes or shows measurements reads the entry, never the
name: `StabilityCallback` (validation, logs keys, TensorBoard charts and profile image),
`reports.stability_report` / `magnitude_sweep` / `write_report` / `compare_runs`, `train_run`'s
`measures` setting and its HParams metrics, the profile plots, and the replication's runner.

Measuring is two steps: `prepare` checks the probe images once, builds what the chosen
measures need (the one feature extractor, the predictor) and, for a measurement repeated across
epochs, deforms the probe set once (`deform_once`); `run` then takes each measure of the plan on
that probe (the callback runs it after every epoch; `measure` does both for one-off use).

Adding a measure is one entry here plus its function and its tests. Its function takes a
prepared `Probe` and returns a `MeasureResult`; the entry says what the function needs, and the
callback, the reports and `train_run` then take it like the others. For example, a measure of
the mean activation norm per probe point:

    def activation_norm_from_probe(probe):  # in its own module, with its tests
        ...  # probe.features, probe.images, probe.batch_size, probe.seed
        return MeasureResult("activation_norm", {name: value, ...})

    MEASURES["activation_norm"] = Measure(   # here, in the registry below
        "activation_norm",
        activation_norm_from_probe,
        "mean L2 norm of the representation per probe point",
        needs_features=True,
        axis_label="mean |r|",
    )

Example:

>>> model = ds.build_vgg([(8,), (16,)], input_shape=(16, 16, 3))
>>> images = np.random.default_rng(0).random((8, 16, 16, 3), dtype="float32")
>>> probe = prepare(model, ["sensitivity", "smoothness"], images,
...                 ds.deformation_layer("tps", 1.0, seed=0), seed=0)
>>> results = run(probe)   # prepared once; run it again after training to compare
>>> {name: len(result) for name, result in results.items()}
{'sensitivity': 5, 'smoothness': 2}
>>> [name for name, entry in MEASURES.items() if entry.needs_deformation]
['sensitivity', 'relative_stability']
"""

import dataclasses
from collections.abc import Callable

import keras

from deformstab_tf._validation import check_choice, check_names
from deformstab_tf.measures._common import call_perturbation, derive_seed, resolve_seed
from deformstab_tf.measures.consistency import shift_consistency_from_predictor, top1_predictor
from deformstab_tf.measures.features import (
    DEFAULT_CACHE,
    OUTPUT,
    ProbeFeatures,
    check_probe_images,
)
from deformstab_tf.measures.relative_stability import relative_stability_from_probe
from deformstab_tf.measures.sensitivity import normalized_sensitivity_from_probe
from deformstab_tf.measures.smoothness import kernel_smoothness
from deformstab_tf.measures.translation import translation_map_from_probe


@dataclasses.dataclass(frozen=True)
class Measure:
    """One measure of the registry.

    Attributes:
        name: the measure's name (its key in `MEASURES`, in results and in logs).
        function: `function(probe) -> MeasureResult` on a prepared `Probe`.
        description: one line, for listings.
        needs_deformation: it compares the probe images with deformed copies (the plan needs a
            deformation; `magnitude_sweep` can sweep its magnitude).
        needs_images: it reads probe images (checked once by `prepare`).
        needs_features: it reads the model's representations at its probe points (the one
            `ProbeFeatures` extractor, built once by `prepare`).
        needs_predictor: it reads the model's top-1 predictions (`top1_predictor`).
        runs_model: it runs the model's forward pass, always in float32 (`float32_compute`),
            whatever precision trained it; False for a measure of the weights alone.
        per_layer: a value per probe point or layer (a profile); False for one number, under
            the key `"output"` (logged as `stability/<name>`, drawn in no profile).
        headline: the name of the component the values are, when they have components (R of
            relative stability's D / G), else None.
        components: the entries of `details` that make up the value (relative stability's D and
            G), logged, charted and drawn beside it.
        table_details: whether a report table shows every entry of `details` as a column (not
            for sensitivity, whose details are its numerator and denominator).
        log_scale: ratios drawn on a log axis (and banded multiplicatively over runs).
        axis_label: the quantity on a figure's y-axis.
        figure: `figure(result, title) -> matplotlib Figure`, a figure of the measure's own
            beyond the profile (the translation maps), written by the reports as
            `<name>.png` and by `StabilityCallback` as a TensorBoard image; None for none.
    """

    name: str
    function: Callable
    description: str
    needs_deformation: bool = False
    needs_images: bool = True
    needs_features: bool = False
    needs_predictor: bool = False
    runs_model: bool = True
    per_layer: bool = True
    headline: str = None
    components: tuple = ()
    table_details: bool = True
    log_scale: bool = False
    axis_label: str = ""
    figure: Callable = None


@dataclasses.dataclass(frozen=True)
class Probe:
    """A model and its probe images prepared for the measures of a plan (`prepare`).

    Attributes:
        model: the measured model.
        measures: the names of the plan's measures, in order.
        images: the checked probe images (a float tensor), or None when no measure reads them.
        deformation: the deformation (for measures that deform the images themselves).
        deformed: the probe images deformed once (`prepare(..., deform_once=True)`), reused by
            every measurement, or None.
        features: the model's `ProbeFeatures` at the chosen probe points, or None.
        predictor: the model's `top1_predictor`, or None.
        batch_size, seed: as in the measures.
        reduction: relative stability's `"median"` or `"mean"`.
        max_shift, pairs_per_image, fill_mode: shift consistency's (`max_shift` and
            `fill_mode` also the translation map's).
        feature_cache_bytes: see `normalized_sensitivity`.
    """

    model: object
    measures: tuple
    images: object = None
    deformation: object = None
    deformed: object = None
    features: object = None
    predictor: object = None
    batch_size: int = 64
    seed: object = None
    reduction: str = "median"
    max_shift: int = 4
    pairs_per_image: int = 1
    feature_cache_bytes: int = DEFAULT_CACHE
    fill_mode: str = "wrap"

    def measure(self, name):
        """The measure `name` of this probe (a `MeasureResult`)."""
        return MEASURES[name].function(self)


def _sensitivity(probe):
    return normalized_sensitivity_from_probe(
        probe.features,
        probe.images,
        probe.deformation,
        probe.batch_size,
        seed=probe.seed,
        deformed=probe.deformed,
        feature_cache_bytes=probe.feature_cache_bytes,
    )


def _relative_stability(probe):
    return relative_stability_from_probe(
        probe.features,
        probe.images,
        probe.deformation,
        probe.batch_size,
        probe.reduction,
        seed=probe.seed,
        deformed=probe.deformed,
        feature_cache_bytes=probe.feature_cache_bytes,
    )


def _shift_consistency(probe):
    return shift_consistency_from_predictor(
        probe.predictor,
        probe.images,
        probe.max_shift,
        probe.batch_size,
        probe.fill_mode,
        seed=probe.seed,
        pairs_per_image=probe.pairs_per_image,
    )


def _translation_map(probe):
    return translation_map_from_probe(
        probe.features,
        probe.images,
        probe.max_shift,
        probe.batch_size,
        probe.fill_mode,
        probe.feature_cache_bytes,
    )


def _translation_map_figure(result, title=None):
    from deformstab_tf.plots import plot_translation_maps  # plots reads this registry

    return plot_translation_maps(result, title=title)


def _smoothness(probe):
    return kernel_smoothness(probe.model)


# The registry, in the order measures are listed and taken.
MEASURES = {
    entry.name: entry
    for entry in (
        Measure(
            "sensitivity",
            _sensitivity,
            "normalised deformation sensitivity per probe point (Ruderman et al. 2018)",
            needs_deformation=True,
            needs_features=True,
            table_details=False,
            axis_label="normalised sensitivity S",
        ),
        Measure(
            "relative_stability",
            _relative_stability,
            "R = D / G, deformation vs noise per probe point (Petrini et al. 2021)",
            needs_deformation=True,
            needs_features=True,
            headline="R",
            components=("D", "G"),
            log_scale=True,
            axis_label="R = D / G; D, G (log)",
        ),
        Measure(
            "shift_consistency",
            _shift_consistency,
            "agreement of the top-1 class under two random shifts (Zhang 2019)",
            needs_predictor=True,
            per_layer=False,
            axis_label="top-1 agreement",
        ),
        Measure(
            "translation_map",
            _translation_map,
            "cosine similarity to translated copies over a grid of offsets, per probe point "
            "(Myburgh et al. 2021)",
            needs_features=True,
            axis_label="similarity to translations",
            figure=_translation_map_figure,
        ),
        Measure(
            "smoothness",
            _smoothness,
            "kernel total variation over L1 norm per conv layer (Ruderman et al. 2018)",
            needs_images=False,
            runs_model=False,
            axis_label="kernel TV / L1",
        ),
    )
}

NAMES = tuple(MEASURES)  # every measure's name, in registry order


def entry(name):
    """The registry entry of a measure name, or None for a name the registry does not know
    (plots and tables also draw results under names of a user's own)."""
    return MEASURES.get(name)


def per_layer(name):
    """Whether results of `name` are a profile over probe points (unknown names: yes)."""
    spec = MEASURES.get(name)
    return spec is None or spec.per_layer


def components(name):
    """The `details` entries that make up the value of `name` (`("D", "G")`, or `()`)."""
    spec = MEASURES.get(name)
    return () if spec is None else spec.components


def log_scale(name):
    """Whether `name` is drawn on a log axis."""
    spec = MEASURES.get(name)
    return spec is not None and spec.log_scale


def deformation_measures():
    """The names of the measures that need a deformation (what a magnitude sweep measures)."""
    return tuple(name for name, spec in MEASURES.items() if spec.needs_deformation)


def needs_images(measures):
    """Whether any of `measures` (names) reads probe images."""
    return any(MEASURES[name].needs_images for name in measures)


def needs_deformation(measures):
    """The names among `measures` that need a deformation."""
    return [name for name in measures if MEASURES[name].needs_deformation]


def check_measures(measures, argument="measures"):
    """`measures` (a name or a list) as a tuple of registry names, duplicates dropped.

    Raises:
        ValueError / TypeError: naming `argument` for an empty selection or an unknown name.
    """
    measures = check_names(argument, measures, allow_empty=False)
    for name in measures:
        check_choice(argument, name, tuple(MEASURES))
    return tuple(dict.fromkeys(measures))


def prepare(
    model,
    measures,
    images=None,
    deformation=None,
    layers=None,
    *,
    batch_size=64,
    seed=None,
    deform_once=False,
    reduction="median",
    max_shift=4,
    pairs_per_image=1,
    feature_cache_bytes=DEFAULT_CACHE,
    fill_mode="wrap",
    images_argument="images",
):
    """Prepares `model` and its probe images for the measures of a plan, once.

    Checks the probe images against the model (when a measure reads them), builds the one
    feature extractor at the probe points `layers` and the top-1 predictor (when a measure
    needs them), and with `deform_once` deforms the probe images once, batch by batch, with
    seeds derived from `seed` (so every later measurement sees the same deformed images: what
    `StabilityCallback` compares across epochs). Without it, each measure deforms the images
    itself when it runs, with the draws `seed` gives it (`normalized_sensitivity`).

    Args:
        model: a Keras model.
        measures: names of `MEASURES`, in the order they are taken (checked by the caller).
        images: `(N, H, W, C)` probe images (unused by measures of the weights alone).
        deformation: a deformation layer or callable (for the measures that need one).
        layers: probe points; see `normalized_sensitivity`.
        batch_size, seed, reduction, max_shift, pairs_per_image, feature_cache_bytes,
            fill_mode: the measures' own arguments, kept in the `Probe`.
        deform_once: deform the probe images now, once (`Probe.deformed`).
        images_argument: the name of `images` in error messages.

    Returns:
        A `Probe`.
    """
    specs = [MEASURES[name] for name in measures]
    checked = None
    if any(spec.needs_images for spec in specs):
        try:
            checked = check_probe_images(model, images)
        except ValueError as error:
            if images_argument == "images":
                raise
            raise ValueError(str(error).replace("`images`", f"`{images_argument}`")) from None
    features = None
    if any(spec.needs_features for spec in specs):
        features = ProbeFeatures.for_model(model, layers)
    deformed = None
    if deform_once and any(spec.needs_deformation for spec in specs):
        deformed = deform_images(deformation, checked, batch_size, resolve_seed(seed))
    predictor = None
    if any(spec.needs_predictor for spec in specs):
        predictor = top1_predictor(model)
    return Probe(
        model,
        tuple(measures),
        checked,
        deformation,
        deformed,
        features,
        predictor,
        batch_size,
        seed,
        reduction,
        max_shift,
        pairs_per_image,
        feature_cache_bytes,
        fill_mode,
    )


def deform_images(deformation, images, batch_size, seed):
    """`images` deformed once, batch by batch, batch `i` with the seed `derive_seed(seed, i)`
    (a callable that accepts `seed=`; a Keras layer draws from its own generator).

    Raises:
        ValueError: when the deformation changes the images' shape.
    """
    deformed = keras.ops.concatenate(
        [
            keras.ops.cast(
                keras.ops.convert_to_tensor(
                    call_perturbation(
                        deformation,
                        images[start : start + batch_size],
                        seed=derive_seed(seed, index),
                    )
                ),
                images.dtype,
            )
            for index, start in enumerate(range(0, images.shape[0], batch_size))
        ],
        axis=0,
    )
    if tuple(deformed.shape) != tuple(images.shape):
        raise ValueError(
            f"`deformation` returned shape {tuple(deformed.shape)} for probe images "
            f"of shape {tuple(images.shape)}."
        )
    return deformed


def run(probe):
    """`{measure: MeasureResult}`: every measure of the plan, in order, on the prepared probe."""
    return {name: probe.measure(name) for name in probe.measures}


def measure(model, measures, images=None, deformation=None, layers=None, **options):
    """`prepare` and `run` in one call: the chosen measures of `model` (for one-off use).

    Args:
        model, images, deformation, layers, **options: as in `prepare`.
        measures: a name of `MEASURES` or a list of them.

    Returns:
        `{measure: MeasureResult}`.
    """
    measures = check_measures(measures)
    return run(prepare(model, measures, images, deformation, layers, **options))


def scalar(result):
    """The one number of a result of a measure that is not per layer (`per_layer=False`)."""
    return result[OUTPUT]
