"""Stability reports of saved models, and reading run directories back (for `measure.py` and
`compare.py`).

- `stability_report(model, images, deformation, measures)`: the measures of one model.
- `magnitude_sweep(model, images, name, magnitudes)`: sensitivity (and R) per probe point as the
  deformation grows.
- `write_report(directory, results, sweep=None)`: JSON, CSV, Markdown and PNG figures.
- `measure_model(model, ...)`: all of `deformstab-measure` from Python: the data, the checks,
  the report and its sweep, and the report's files.
- `read_run(directory)` / `group_runs(runs, by)`: what `train_run` left in run directories.
- `compare_runs(runs, directory, by, measure)`: the papers' figures from several runs.
- `markdown_table(header, rows)`: the Markdown tables of these reports (and of the
  replication's, `benchmarks/replication/report.py`).
"""

import collections
import contextlib
import csv
import dataclasses
import json
import math
import os
import shutil
import tempfile
import warnings
import zipfile

import keras

from deformstab_tf import data, runrecord
from deformstab_tf._validation import (
    check_bool,
    check_choice,
    check_model,
    check_names,
    check_non_negative,
    check_non_negative_int,
    check_output_directory,
    check_positive_int,
    check_seed,
)
from deformstab_tf.deformations.layers import DEFORMATION_LAYERS, deformation_layer
from deformstab_tf.deformations.warp import FILL_MODES
from deformstab_tf.measures import plan
from deformstab_tf.measures._common import check_deformation
from deformstab_tf.measures.features import SELECTIONS, image_input_index
from deformstab_tf.training import (
    DEFAULTS,
    SWITCH_SETTINGS,
    read_config,
    run_dataset_arguments,
)

REPORT_MEASURES = plan.NAMES  # every measure a report takes (the registry's, `measures.plan`)


def stability_report(
    model,
    images,
    deformation,
    measures=("sensitivity", "relative_stability", "smoothness"),
    layers=None,
    batch_size=64,
    seed=0,
    max_shift=4,
    verbose=1,
    fill_mode="wrap",
):
    """The chosen measures of `model` on `images` (a progress bar over the measures).

    A measurement, not a random draw: with the default `seed=0` the same model, images and
    deformation give the same numbers on every call, also when one deformation layer of this
    package is reused (its draws come from `seed`; see `normalized_sensitivity`). `seed=None`
    draws afresh each call.

    Args:
        model: a single-input Keras model, or the path of a saved `.keras` model (loaded).
        images: `(N, H, W, C)` probe images, at least 2 distinct, in the range the model was
            trained on (`[0, 1]` floats for the models this package trains; a warning says so
            when they look like 0..255 pixels).
        deformation: a deformation layer or callable on a batch of images (for sensitivity and
            relative stability), e.g. `deformation_layer("tps", 2.0, seed=0)`.
        measures: any of `REPORT_MEASURES`: a list, or one name.
        layers: probe points (see `normalized_sensitivity`).
        batch_size, seed, max_shift, fill_mode: as in the measures (`max_shift` and
            `fill_mode` of shift consistency and the translation map).
        verbose: 1 shows a `keras.utils.Progbar`.

    Returns:
        `{measure: MeasureResult}`.

    Raises:
        ValueError / TypeError: naming the argument and the value received.

    Example:

    >>> model = deformstab_tf.build_vgg([(8,), (16,)], input_shape=(16, 16, 3))
    >>> x_test = np.random.default_rng(0).random((16, 16, 16, 3), dtype="float32")
    >>> report = stability_report(model, x_test, deformation_layer("tps", 2.0, seed=0), verbose=0)
    >>> {measure: len(result) for measure, result in report.items()}   # probe points / layers
    {'sensitivity': 5, 'relative_stability': 5, 'smoothness': 2}
    """
    model = _load(model)
    measures = _check_measures(measures)
    if plan.needs_deformation(measures):
        check_deformation(deformation)
    check_seed("seed", seed, allow_none=True, limit=2**63)
    probe = plan.prepare(
        model, measures, images, deformation, layers, batch_size=batch_size, seed=seed,
        max_shift=max_shift, fill_mode=fill_mode,
    )  # fmt: skip
    return _run(probe, verbose)


def _load(model):
    """A Keras model, loaded (in Keras's safe mode) when `model` is the path of a saved one."""
    if isinstance(model, (str, os.PathLike)):
        model = load_saved_model(model)
    check_model("model", model)
    return model


def load_saved_model(
    path,
    trust=False,
    argument="model",
    trust_hint="keras.models.load_model(path, safe_mode=False), then pass the model",
):
    """`keras.models.load_model(path)` with one-line errors that name the file.

    Keras reports a `.keras` file that is not a zip archive as "File not found", a zip archive
    that is not a saved model as a `KeyError`, and a model that holds Python code (a `Lambda`
    layer) with a hint about its own loading function; here each is a `ValueError` naming the
    file (and `argument`), the last with `trust_hint`: how the caller turns safe mode off.

    Args:
        path: a saved model (`.keras`, or a legacy `.h5`).
        trust: load with Keras's safe mode off (`safe_mode=False`): code in the file (a
            `Lambda` layer's function) runs as it loads. Only for files you trust.
        argument: the name of `path` in error messages.
        trust_hint: what the safe-mode error tells the caller to pass to trust the file.

    Returns:
        The model.

    Example:

    >>> _ = open("notes.keras", "w").write("not a model")
    >>> load_saved_model("notes.keras")
    Traceback (most recent call last):
    ValueError: model='notes.keras' is not a `.keras` archive (a zip file that model.save writes).
    """
    check_bool("trust", trust)
    if not os.path.isfile(path):
        raise ValueError(
            f"`{argument}` is not a saved model file; received {argument}={os.fspath(path)!r}, "
            "which is not a file."
        )
    path = os.fspath(path)
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        raise ValueError(
            f"{argument}={path!r} is not a `.keras` archive (a zip file that model.save writes)."
        )
    try:
        return keras.models.load_model(path, safe_mode=not trust)
    except (KeyError, zipfile.BadZipFile) as error:
        detail = error.args[0] if error.args else type(error).__name__
        raise ValueError(
            f"{argument}={path!r} is a zip archive but not a saved Keras model ({detail})."
        ) from None
    except ValueError as error:
        if "safe_mode" not in str(error):
            raise
        reason = " ".join(str(error).split()).split(". ")[0]
        raise ValueError(
            f"Keras's safe mode refuses to load {argument}={path!r}: {reason}. Its code would "
            f"run as the model loads; if you trust the file, pass {trust_hint}."
        ) from None


def _check_measures(measures, choices=None):
    """`measures` (a name or a list) checked against `choices` (default: every measure of the
    registry), duplicates dropped."""
    measures = check_names("measures", measures, allow_empty=False)
    for measure in measures:
        check_choice("measures", measure, tuple(plan.MEASURES) if choices is None else choices)
    return tuple(dict.fromkeys(measures))


def _run(probe, verbose):
    """The plan's measures on a prepared probe, with a progress bar over them."""
    progress = keras.utils.Progbar(len(probe.measures), verbose=verbose, unit_name="measure")
    results = {}
    for index, measure in enumerate(probe.measures):
        results[measure] = probe.measure(measure)
        progress.update(index + 1)
    return results


def magnitude_sweep(
    model,
    images,
    name,
    magnitudes,
    measures=("sensitivity",),
    layers=None,
    batch_size=64,
    seed=0,
    verbose=1,
    **options,
):
    """Sensitivity (and relative stability) per probe point for each deformation magnitude.

    Args:
        model, images, layers, batch_size, seed: as in `stability_report`.
        name: the deformation (`"tps"`, `"affine"`, `"diffeo"`; see `deformation_layer`).
        magnitudes: the strengths to measure (e.g. TPS C in pixels).
        measures: `"sensitivity"` and/or `"relative_stability"`.
        **options: other arguments of the deformation layer (`grid_size`, `cutoff`, ...).

    Returns:
        `{magnitude: {measure: MeasureResult}}`, magnitudes in the given order.

    Example:

    >>> model = ds.build_vgg([[4], [8]], input_shape=(16, 16, 3), num_classes=3)
    >>> images = np.random.default_rng(0).random((8, 16, 16, 3)).astype("float32")
    >>> sweep = magnitude_sweep(model, images, "tps", [0.5, 1, 2], verbose=0, grid_size=3)
    >>> list(sweep), list(sweep[2.0])  # magnitudes, then measures
    ([0.5, 1.0, 2.0], ['sensitivity'])
    """
    measures = _check_measures(measures, plan.deformation_measures())
    check_choice("name", name, tuple(DEFORMATION_LAYERS))
    if not isinstance(magnitudes, (list, tuple)) or not magnitudes:
        raise TypeError(
            f"`magnitudes` must be a non-empty list of numbers; received magnitudes={magnitudes!r}."
        )
    for magnitude in magnitudes:  # each is a valid strength, before anything is measured
        deformation_layer(name, magnitude, seed=seed, **options)
    model = _load(model)
    check_seed("seed", seed, allow_none=True, limit=2**63)
    # One probe for every magnitude: only the deformation changes.
    probe = plan.prepare(model, measures, images, None, layers, batch_size=batch_size, seed=seed)
    progress = keras.utils.Progbar(len(magnitudes), verbose=verbose, unit_name="magnitude")
    sweep = {}
    for index, magnitude in enumerate(magnitudes):
        layer = deformation_layer(name, magnitude, seed=seed, **options)
        sweep[float(magnitude)] = _run(dataclasses.replace(probe, deformation=layer), verbose=0)
        progress.update(index + 1)
    return sweep


def write_report(directory, results, sweep=None, title="Stability report", context=None):
    """Writes `report.json`, `report.csv`, `report.md` and PNG figures into `directory`.

    Written into a temporary directory first and moved into place, so an interrupted call
    leaves nothing half-written.

    Args:
        directory: the output directory (created if missing; files of the same names in it
            are replaced).
        results: `{measure: MeasureResult}`.
        sweep: optional `magnitude_sweep` output.
        title: the Markdown title.
        context: optional `{key: value}` listed in the report (model, data, deformation...).

    Returns:
        The paths written.
    """
    from deformstab_tf.plots import plot_profile_bands, plot_profiles

    directory = check_output_directory("directory", directory)
    if not isinstance(results, dict) or not results:
        raise ValueError(
            f"`results` must be a non-empty dict {{measure: MeasureResult}}; received {results!r}."
        )
    if not any(len(result) for result in results.values()):
        raise ValueError(
            f"`results` hold no values: nothing to report (received {results!r}; e.g. "
            "smoothness of a model without convolutions)."
        )
    with _staged(directory) as staging:
        document = {
            "context": dict(context or {}),
            "results": {m: r.to_dict() for m, r in results.items()},
        }
        if sweep:
            document["sweep"] = {
                str(k): {m: r.to_dict() for m, r in v.items()} for k, v in sweep.items()
            }
        with open(os.path.join(staging, "report.json"), "w") as file:
            json.dump(document, file, indent=1, allow_nan=True)
        rows = _table_rows(results)
        with open(os.path.join(staging, "report.csv"), "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        figures = []
        profiles = {m: r for m, r in results.items() if plan.per_layer(m)}
        if profiles:
            plot_profiles(profiles, title=title).savefig(
                os.path.join(staging, "profile.png"), dpi=90
            )
            figures.append(("Per-layer profile", "profile.png"))
        for measure, result in results.items():
            spec = plan.entry(measure)
            if spec is not None and spec.figure is not None and len(result):
                name = f"{measure}.png"
                spec.figure(result, title).savefig(os.path.join(staging, name), dpi=90)
                figures.append((spec.description[:1].upper() + spec.description[1:], name))
        if sweep:
            for measure in next(iter(sweep.values())):
                groups = {
                    f"magnitude {magnitude:g}": {p: [v] for p, v in by_measure[measure].items()}
                    for magnitude, by_measure in sweep.items()
                }
                name = f"sweep_{measure}.png"
                plot_profile_bands(
                    groups,
                    title=f"{measure} per magnitude",
                    ylabel=measure,
                    log=plan.log_scale(measure),
                ).savefig(os.path.join(staging, name), dpi=90)
                figures.append((f"{measure} as the magnitude grows", name))
        with open(os.path.join(staging, "report.md"), "w") as file:
            file.write(_markdown(title, context, results, rows, sweep, figures))
    return sorted(os.path.join(directory, name) for name in os.listdir(directory))


@contextlib.contextmanager
def _staged(directory):
    """Yields a temporary directory beside `directory` whose files are moved into `directory`
    on success and deleted on any error, so nothing is left half-written."""
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".staging_", dir=parent)
    try:
        yield staging
        if os.path.isdir(directory):
            for name in os.listdir(staging):
                os.replace(os.path.join(staging, name), os.path.join(directory, name))
            os.rmdir(staging)
        else:
            os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _table_rows(results):
    """One row per probe point (or layer), a column per measure and component."""
    rows = collections.OrderedDict()
    for measure, result in results.items():
        columns = [(measure, result)] + [
            (f"{measure}/{c}", values) for c, values in result.details.items()
        ]
        spec = plan.entry(measure)
        if spec is not None and not spec.table_details:
            columns = columns[:1]  # e.g. sensitivity's details: its numerator and denominator
        for column, values in columns:
            for name, value in values.items():
                rows.setdefault(name, {"probe": name})[column] = value
    columns = (key for row in rows.values() for key in row if key != "probe")
    fields = ["probe", *dict.fromkeys(columns)]
    return [{field: row.get(field, "") for field in fields} for row in rows.values()]


def _markdown(title, context, results, rows, sweep, figures):
    lines = [f"# {title}", ""]
    for key, value in (context or {}).items():
        lines.append(f"- {key}: `{value}`")
    lines += ["", *markdown_table(list(rows[0]), [list(row.values()) for row in rows])]
    means = ", ".join(f"{m} {r.mean():.4g}" for m, r in results.items())
    lines += ["", f"Means over probe points: {means}.", ""]
    if sweep:
        lines += ["## Magnitude sweep (mean over probe points)", ""]
        measures = list(next(iter(sweep.values())))
        lines += markdown_table(
            ["magnitude", *measures],
            [[f"{k:g}", *(row[m].mean() for m in measures)] for k, row in sweep.items()],
        )
        lines.append("")
    for caption, name in figures:
        lines += [f"![{caption}]({name})", ""]
    return "\n".join(lines)


def markdown_table(header, rows):
    """A Markdown table, as lines: the reports' one table writer.

    Args:
        header: the column names.
        rows: per row, its cells: a string as it is, a number to 4 significant digits (`NaN`
            for NaN).

    Returns:
        The lines: the header, its rule and a line per row.

    Example:

    >>> for line in markdown_table(["probe", "sensitivity"], [["conv1", 0.123456], ["x", "-"]]):
    ...     print(line)
    | probe | sensitivity |
    |---|---|
    | conv1 | 0.1235 |
    | x | - |
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]


def _cell(value):
    if isinstance(value, str):
        return value
    return "NaN" if math.isnan(value) else f"{value:.4g}"


# -- measuring a saved model -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelReport:
    """What `measure_model` measured and wrote.

    Attributes:
        results: `{measure: MeasureResult}` (`stability_report`).
        sweep: `{magnitude: {measure: MeasureResult}}` (`magnitude_sweep`), or None without one.
        images: the probe images measured, `(N, H, W, C)` float32 (resized, if they were).
        context: what the report lists: the model, the data, the deformation, the seed.
        files: the paths written (`write_report`), or `[]` without an output directory.
    """

    results: dict
    sweep: dict
    images: object
    context: dict
    files: list


@dataclasses.dataclass(frozen=True)
class _Names:
    """How `measure_model`'s errors name its arguments: as Python arguments (`magnitude`) or,
    with the prefix `"--"`, as the flags of `deformstab-measure` (`--magnitude`)."""

    prefix: str = ""

    def __call__(self, argument):
        """The name in `received name=value` and in the `_validation` checks."""
        return self.prefix + argument

    def mention(self, argument):
        """The name in a sentence: `` `magnitude` `` or `--magnitude`."""
        return self(argument) if self.prefix else f"`{argument}`"

    def setting(self, argument, value):
        """How a user passes `value`: `image_size=(24, 32)` or `--image_size=24,32`."""
        if not self.prefix:
            return f"{argument}={value!r}"
        if value is True:
            return self(argument)
        if isinstance(value, (tuple, list)):
            value = ",".join(str(v) for v in value)
        return f"{self(argument)}={value}"


def report_name(model):
    """The name a report of `model` takes: a saved model's file name without its extension
    (for `<run>/model.keras`, the run directory's name), or a `keras.Model`'s name.

    Example:

    >>> report_name("runs/cifar_vgg_max_s0/model.keras"), report_name("mobilenet_v2.keras")
    ('cifar_vgg_max_s0', 'mobilenet_v2')
    """
    if isinstance(model, keras.Model):
        return model.name
    path = os.fspath(model)
    name = os.path.splitext(os.path.basename(path))[0]
    if name == os.path.splitext(runrecord.MODEL_FILE)[0]:
        name = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return name


def measure_model(
    model,
    *,
    dataset=None,
    data_dir=None,
    download=True,
    split="test",
    num_images=128,
    deformation="tps",
    magnitude=2.0,
    grid_size=3,
    cutoff=3,
    measures=("sensitivity", "relative_stability", "smoothness"),
    sweep=(),
    layers=None,
    image_size=None,
    resize_method="bilinear",
    batch_size=64,
    seed=0,
    max_shift=4,
    fill_mode="wrap",
    transform=None,
    output_dir=None,
    trust_model=False,
    verbose=1,
    argument_prefix="",
):
    """A stability report of a saved model on a data source: `deformstab-measure` in Python.

    Chooses the probe images (the model's own run's data by default), checks every setting
    against the model and the data, resizes the images if asked, takes the measures
    (`stability_report`) and the sweep (`magnitude_sweep`), and with `output_dir` writes the
    report (`write_report`: report.json, .csv, .md and PNG figures). Every setting is checked
    before the slow part and before anything is written: the output directory, the deformation
    at each magnitude, the measures, the data source, the model and its image size, the number
    of probe images; a model without what a measure of its weights measures (no convolution
    for `smoothness`) is an error too, not an empty table.

    Args:
        model: a saved model (`.keras`), or a `keras.Model`.
        dataset: `"synthetic"`, a TFDS name or `"folder:PATH"`. Default: the data of the
            model's run (for `<run>/model.keras` beside its `config.json`: the run's synthetic
            settings and seed), else `"synthetic"`.
        data_dir: TFDS data directory.
        download: TFDS: download and prepare a dataset missing from `data_dir`.
        split: `"test"` or `"train"`: where the probe images come from.
        num_images: probe images (at least 2).
        deformation: `"tps"`, `"affine"` or `"diffeo"` (`deformation_layer`).
        magnitude: TPS max displacement in pixels, rotation in degrees, or diffeo delta.
        grid_size: TPS control grid size.
        cutoff: the diffeomorphism's cut-off c.
        measures: any of `REPORT_MEASURES` (a list, or one name).
        sweep: magnitudes of a sweep of the deformation measures among `measures` (sensitivity,
            relative stability); empty for none.
        layers: probe points: layer names, or one named selection (`"units"`, the default,
            `"activations"`, `"blocks"`, `"all"`); see `normalized_sensitivity`.
        image_size: resize the probe images to `N` (N x N) or `(H, W)` pixels before deforming
            them, for a model whose input size differs from the data (the magnitude is then in
            resized pixels); None: no resizing.
        resize_method: a `tf.image.resize` method (`data.RESIZE_METHODS`).
        batch_size: images per forward pass.
        seed: seed of the deformations and noise.
        max_shift: largest shift in pixels per axis of shift consistency and the translation
            map (a map of `(2 max_shift + 1)^2` offsets).
        fill_mode: what their shifts bring in at the border: `"wrap"`, `"constant"`,
            `"nearest"` or `"reflect"`.
        transform: specs of a derived data set the probe images come from
            (`data.transform_images`, e.g. `["noise:0.1"]`); None: the run's own when the
            data are the model's run's, else none.
        output_dir: where the report's files go (created; files of the same names replaced);
            None writes nothing.
        trust_model: load `model` with Keras's safe mode off: a model holding Python code (a
            `Lambda` layer), which runs as it loads, is refused without it. Only for files you
            trust.
        verbose: 1 shows progress bars.
        argument_prefix: how errors name the arguments: `""` (`magnitude=-1`), or `"--"` for
            the flags of a command line (`--magnitude=-1`, as `deformstab-measure` passes).

    Returns:
        A `ModelReport`: the results, the sweep, the probe images, the context, the files.

    Raises:
        ValueError / TypeError: naming the argument and the value received (or the file).

    Example:

    >>> model = ds.build_vgg([(4,), (8,)], input_shape=(32, 32, 3), num_classes=3)
    >>> report = measure_model(model, num_images=8, measures="sensitivity", sweep=[1, 2],
    ...                        output_dir="reports/mine", verbose=0)
    >>> list(report.results), list(report.sweep), [os.path.basename(f) for f in report.files]
    (['sensitivity'], [1.0, 2.0], ['profile.png', 'report.csv', 'report.json', 'report.md', \
'sweep_sensitivity.png'])
    >>> measure_model(model, magnitude=-1)
    Traceback (most recent call last):
    ValueError: `magnitude` must be a finite number >= 0; received magnitude=-1.
    """
    check_choice("argument_prefix", argument_prefix, ("", "--"))
    names = _Names(argument_prefix)
    measures, sweep = _check_report_measures(measures, sweep, names)
    requested_size, image_size = image_size, _check_image_size(image_size, names)
    path = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
    if path is None:
        check_model(names("model"), model)
    elif not os.path.isfile(path):
        load_saved_model(path, argument=names("model"))  # the error naming the path
    if output_dir is not None:
        output_dir = check_output_directory(names("output_dir"), output_dir)
    check_choice(names("deformation"), deformation, tuple(sorted(DEFORMATION_LAYERS)))
    check_seed(names("seed"), seed)
    check_non_negative(names("magnitude"), magnitude)
    for value in sweep:
        check_non_negative(names("sweep"), value)
    options = {"grid_size": grid_size} if deformation == "tps" else {}
    if deformation == "diffeo":
        options["cutoff"] = cutoff
    layer = deformation_layer(deformation, magnitude, seed=seed, **options)
    for value in sweep:  # each a valid strength of the deformation
        deformation_layer(deformation, value, seed=seed, **options)
    layers = _check_layers(layers, names)
    check_choice(names("split"), split, ("test", "train"))
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 2:
        raise ValueError(
            f"{names.mention('num_images')} must be an integer >= 2 (probe images); received "
            f"{names('num_images')}={num_images!r}."
        )
    check_positive_int(names("batch_size"), batch_size)
    check_non_negative_int(names("max_shift"), max_shift)
    check_choice(names("fill_mode"), fill_mode, FILL_MODES)
    check_choice(names("resize_method"), resize_method, data.RESIZE_METHODS)
    check_bool(names("download"), download)
    check_bool(names("trust_model"), trust_model)
    if transform is not None:
        try:
            data.parse_transforms(transform)
        except (TypeError, ValueError) as error:
            raise type(error)(
                str(error).replace("`transform`", names.mention("transform"))
            ) from None

    # The model, then its data: a file that is no model is known before any download.
    run_config = None
    if path is not None:
        hint = names.setting("trust_model", True)
        model = load_saved_model(path, trust_model, names("model"), trust_hint=hint)
        run_config = read_config(os.path.dirname(os.path.abspath(path)))
    label = repr(path or model.name)
    if dataset is None and run_config is not None:
        # The model's own run: its data, synthetic settings and seed (prototypes, splits).
        source = run_dataset_arguments(run_config)
        if data_dir is not None:
            source["data_dir"] = data_dir
    else:
        source = {"source": "synthetic" if dataset is None else dataset, "data_dir": data_dir}
    if transform is not None:
        source["transform"] = transform
    try:
        train, test, info = data.load_dataset(
            batch_size=max(batch_size, 256), download=download, **source
        )
    except ValueError as error:  # the argument is `dataset`, load_dataset's `source`
        message = str(error).replace("`source`", names.mention("dataset"))
        raise ValueError(message.replace("source=", names("dataset") + "=")) from None
    split_size = info.test_size if split == "test" else info.train_size
    if num_images > split_size:
        raise ValueError(
            f"{names('num_images')}={num_images} exceeds the {split_size} images of the {split} "
            f"split of {info.name!r}."
        )
    layer.check_image_size(*(image_size or info.image_shape[:2]))
    _check_model_input(model, tuple(info.image_shape), source["source"], image_size,
                       requested_size, resize_method, names)  # fmt: skip
    _check_weight_measures(model, measures, label, names)

    # The slow part.
    images = data.take_images(test if split == "test" else train, num_images)
    resized = ""
    if image_size is not None and tuple(images.shape[1:3]) != image_size:
        resized = (
            f", resized from {images.shape[1]}x{images.shape[2]} to {image_size[0]}x"
            f"{image_size[1]} ({resize_method}) before deforming"
        )
        images = data.resize_images(images, image_size, resize_method).numpy()
    results = stability_report(model, images, layer, measures, layers, batch_size, seed,
                               max_shift, verbose, fill_mode)  # fmt: skip
    swept = None
    if sweep:
        swept = magnitude_sweep(
            model, images, deformation, sweep, plan.needs_deformation(measures), layers,
            batch_size, seed, verbose=verbose, **options,
        )  # fmt: skip
    context = {
        "model": path or f"{model.name} (a keras.Model)",
        "data": f"{source['source']} ({split} split, {len(images)} images, "
        f"seed {source.get('seed', 0)}{resized})"
        + (f", transform {list(source['transform'])}" if source.get("transform") else ""),
        "deformation": f"{deformation}, magnitude {magnitude:g}, {options}",
        "seed": seed,
    }
    files = []
    if output_dir is not None:
        title = f"Stability of {report_name(path or model)}"
        files = write_report(output_dir, results, swept, title=title, context=context)
    return ModelReport(results, swept, images, context, files)


def _check_report_measures(measures, sweep, names):
    """`(measures, sweep)` checked: registry names, and a list of magnitudes of a sweep of the
    deformation measures among them."""
    if not check_names(names("measures"), measures):
        raise ValueError(f"{names.mention('measures')} is empty: name at least one measure.")
    measures = plan.check_measures(measures, names("measures"))
    if not isinstance(sweep, (list, tuple)):
        raise TypeError(
            f"{names.mention('sweep')} must be a list of magnitudes; received "
            f"{names('sweep')}={sweep!r}."
        )
    if sweep and not plan.needs_deformation(measures):
        swept = " and ".join(repr(m) for m in plan.deformation_measures())
        raise ValueError(
            f"{names.mention('sweep')} measures {swept}; {names.mention('measures')} has "
            f"neither (received {names('measures')}={list(measures)!r})."
        )
    return measures, list(sweep)


def _check_image_size(image_size, names):
    """`image_size` as `(height, width)`, or None."""
    if image_size is None:
        return None
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)
    ):
        raise ValueError(
            f"{names.mention('image_size')} must be a positive integer N (N x N) or a pair "
            f"(H, W); received {names('image_size')}={image_size!r}."
        )
    return tuple(size)


def _check_layers(layers, names):
    """`layers` as `normalize_sensitivity` takes them: None, a named selection or names."""
    if layers is None or isinstance(layers, str):
        return layers
    layers = check_names(names("layers"), layers)
    if len(layers) == 1 and layers[0] in SELECTIONS:
        return layers[0]  # a named selection, not a layer name
    if set(layers) & set(SELECTIONS):
        raise ValueError(
            f"{names.mention('layers')} takes layer names or one named selection alone; "
            f"received {names('layers')}={','.join(layers)!r}."
        )
    return list(layers) or None


def _check_model_input(model, data_shape, source, image_size, requested, resize_method, names):
    """Raises a ValueError naming `image_size` or `dataset`, whichever gives the probe images a
    shape the model's image input does not take."""
    inputs = getattr(model, "inputs", None)
    if not inputs:
        return  # a model without a graph: `stability_report` checks the images
    expected = tuple(inputs[image_input_index(model)].shape[1:])
    shape = data_shape if image_size is None else (*image_size, *data_shape[2:])
    if len(expected) == len(shape) and all(
        e is None or e == r for e, r in zip(expected, shape, strict=True)
    ):
        return
    fixed = len(expected) == len(shape) and None not in expected[:2]
    size = expected[0] if fixed and expected[0] == expected[1] else expected[:2]
    if image_size is not None and fixed and expected[2:] == shape[2:]:
        # The resizing is what is wrong (the channels agree).
        if expected == data_shape:
            fix = f"leave {names.mention('image_size')} out: the data's images are {data_shape}"
        else:
            fix = f"pass {names.setting('image_size', size)} instead"
        raise ValueError(
            f"The model expects images of shape {expected}; "
            f"{names.setting('image_size', requested)} resizes the probe images to {shape}; "
            f"{fix}."
        )
    hint = ""
    if fixed and expected[2:] == shape[2:]:
        hint = f"; pass {names.setting('image_size', size)} to resize them ({resize_method})"
    raise ValueError(
        f"The model expects images of shape {expected}; {names('dataset')}={source!r} gives "
        f"{shape}{hint}."
    )


def _check_weight_measures(model, measures, label, names):
    """Raises a ValueError when a measure of the weights alone (`smoothness`: no model run,
    no images) finds nothing to measure in the model, before the slow part."""
    weight_measures = [m for m in measures if not plan.MEASURES[m].runs_model]
    for measure, result in plan.measure(model, weight_measures).items() if weight_measures else ():
        if len(result):
            continue
        skipped = result.metadata.get("skipped") or {}
        note = "; ".join(f"{name}: {reason}" for name, reason in skipped.items())
        raise ValueError(
            f"{names.mention('measures')} names {measure!r}, but the model {label} has nothing "
            f"it measures: {measure} is {plan.MEASURES[measure].description}, and it has no such "
            f"layer{f' ({note})' if note else ''}; leave {measure!r} out."
        )


# -- run directories --------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """What a training run directory holds (see `deformstab_tf.training`).

    Attributes:
        directory: the run directory.
        config: the settings (`config.json`).
        history: the stability measurements, `[{"epoch", "step", "results": {measure:
            MeasureResult}}]` (`stability/measurements.json`).
        summary: `summary.json` (None while the run is unfinished).
        metrics: `metrics.csv` by column, one float per finished epoch (`{"accuracy": [...],
            "val_accuracy": [...], ...}`; NaN where a cell is empty or `NA`: an epoch without
            validation, see `validate_every`).
    """

    directory: str
    config: dict
    history: list
    summary: dict = None
    metrics: dict = dataclasses.field(default_factory=dict)

    def at(self, which):
        """`{measure: MeasureResult}` at `"init"` (epoch 0) or `"final"` (the last record)."""
        check_choice("which", which, ("init", "final"))
        record = self.history[0] if which == "init" else self.history[-1]
        if which == "init" and record["epoch"] != 0:
            raise ValueError(f"{self.directory!r} has no measurement at initialisation.")
        return record["results"]


def read_run(directory):
    """Reads a run directory written by `train_run` (its files: `deformstab_tf.runrecord`).

    Raises:
        ValueError: naming the directory if it is not a run directory or holds no stability
            measurements.
    """
    directory = os.fspath(directory)
    if not os.path.isfile(os.path.join(directory, runrecord.CONFIG_FILE)):
        raise ValueError(f"{directory!r} is not a run directory (no config.json).")
    config = read_config(directory)
    path = runrecord.measurements_path(directory)
    if not os.path.isfile(path):
        raise ValueError(f"Run {directory!r} holds no stability measurements ({path}).")
    _, history = runrecord.read_stability(directory)
    if not history:
        raise ValueError(f"Run {directory!r} holds no stability measurements yet.")
    summary = runrecord.read_summary(directory)
    return Run(directory, config, history, summary, runrecord.read_metrics(directory))


def group_runs(runs, by="downsample"):
    """`{value of config[by]: [runs]}`, in first-seen order (e.g. one group per variant)."""
    groups = {}
    for run in runs:
        if by not in run.config:
            raise ValueError(f"`by`={by!r} is not a setting of run {run.directory!r}.")
        groups.setdefault(str(run.config[by]), []).append(run)
    return groups


def profile_groups(groups, measure, which, component=None):
    """`{group: {probe: [value per run]}}` for `plot_profile_bands`.

    Args:
        groups: `group_runs` output.
        measure: a measure of the runs' records (`"sensitivity"`, ...).
        which: `"init"` or `"final"` (see `Run.at`); runs without a measurement at
            initialisation are left out of `"init"`.
        component: a key of the measure's `details` (`"D"`, `"G"`) instead of its values.
    """
    out = {}
    for label, runs in groups.items():
        profile = {}
        for run in runs:
            if which == "init" and run.history[0]["epoch"] != 0:
                continue
            results = run.at(which)
            if measure not in results:
                continue
            values = results[measure] if component is None else results[measure].details[component]
            for name, value in values.items():
                profile.setdefault(name, []).append(value)
        if profile:
            out[label] = profile
    return out


def epoch_groups(groups, measure):
    """`{group: {epoch: [mean over probe points, per run]}}` for `plot_over_epochs`."""
    out = {}
    for label, runs in groups.items():
        series = {}
        for run in runs:
            for record in run.history:
                if measure in record["results"]:
                    value = record["results"][measure].mean()
                    series.setdefault(record["epoch"], []).append(value)
        out[label] = dict(sorted(series.items()))
    return out


# What makes a run's architecture: runs of one group of `compare_runs` must agree in these.
ARCHITECTURE_SETTINGS = ("model", "blocks", *SWITCH_SETTINGS)
# Settings in which seeds of one group may differ: the seed, how a run executes, and which
# measures it took and when (not what it trains, nor how a measure measures).
SEED_SETTINGS = (
    "seed", "data_dir", "strategy", "mixed_precision", "deterministic", "jit_compile",
    "measures", "measure_every", "validate_every",
)  # fmt: skip


class ComparisonWarning(UserWarning):
    """Runs averaged as seeds of one group differ in a setting that is neither their
    architecture (an error) nor one seeds may differ in (`SEED_SETTINGS`)."""


def check_comparable(groups, by):
    """Checks that the runs of each group are seeds of one experiment, as `compare_runs`
    averages them.

    Every run must be finished (its last measurement is then "after training"), and the runs of
    a group must share an architecture (`ARCHITECTURE_SETTINGS`, `by` aside). A run that differs
    from the rest of its group in another setting (`epochs`, `learning_rate`, `dataset`, ...;
    not in `SEED_SETTINGS`) is a `ComparisonWarning`.

    Args:
        groups: `group_runs` output.
        by: the setting that grouped them.

    Returns:
        The warnings' messages (also issued with `warnings.warn`).

    Raises:
        ValueError: naming an unfinished run, or a run whose architecture differs from the
            rest of its group (and the setting).
    """
    for runs in groups.values():
        for run in runs:
            if run.summary is None:
                raise ValueError(
                    f"Run {run.directory!r} is unfinished (no summary.json; last measured after "
                    f"epoch {run.history[-1]['epoch']} of {run.config.get('epochs', '?')}): its "
                    "last measurement is not after training. Finish it (rerun its train "
                    "command: it resumes) or leave it out of the runs compared."
                )
    messages = []
    for label, runs in groups.items():
        settings = dict.fromkeys(key for run in runs for key in run.config)
        for setting in settings:
            if setting == by or setting in SEED_SETTINGS:
                continue
            odd = _odd_run(runs, setting)
            if odd is None:
                continue
            run, value, reference, example = odd
            where = (
                f"run {run.directory!r} has {setting}={value!r}, the other runs of {by}={label!r} "
                f"{reference!r} (e.g. {example.directory!r})"
            )
            if setting in ARCHITECTURE_SETTINGS:
                raise ValueError(
                    f"Not seeds of one model: {where}. compare_runs averages the runs of a "
                    f"group as seeds; group them by a setting that tells them apart (`by`) or "
                    "leave one out."
                )
            messages.append(f"Averaged as seeds of one setting: {where}.")
    for message in messages:
        warnings.warn(message, ComparisonWarning, stacklevel=3)
    return messages


def _odd_run(runs, setting):
    """`(run, its value, the group's usual value, a run with it)` for the first run whose
    `setting` differs from the most common value of its group, or None when all agree."""
    values = [run.config.get(setting, DEFAULTS.get(setting)) for run in runs]
    keys = [json.dumps(v, sort_keys=True, default=repr) for v in values]
    usual = collections.Counter(keys).most_common(1)[0][0]
    if all(key == usual for key in keys):
        return None
    example = keys.index(usual)
    index = next(i for i, key in enumerate(keys) if key != usual)
    return runs[index], values[index], values[example], runs[example]


def compare_runs(runs, directory, by="downsample", measure="sensitivity"):
    """Draws the papers' figures from training runs and writes a summary, into `directory`.

    Figures (PNG): `<measure>_profiles.png`, the per-layer profile at initialisation beside the
    one after training (the last record), one line per group with mean +- 2 SD over its runs
    (sample SD, `ddof=1`; a group of one run has no band; for relative stability the geometric
    mean and a multiplicative band, and the `D` / `G` components as `relative_stability_D/G_`
    figures); `smoothness_profiles.png` (kernel TV/L1 per conv layer, when measured);
    `<measure>_over_epochs.png` (the mean over probe points across the recorded epochs).
    `summary.json` and `summary.md` list the groups, their runs, test accuracies and means, and
    `summary.json` the plotted profiles (`profiles[init|final][group][probe]` = mean, low, high).
    Everything is written into a temporary directory and moved into place at the end.

    The runs of a group are averaged as seeds of one experiment, so they are checked first
    (`check_comparable`): an unfinished run, or a run whose architecture (`model`, `blocks`,
    the downsampling switches) differs from the rest of its group, is an error naming it; one
    that differs in another setting (`epochs`, `learning_rate`, ...) a `ComparisonWarning`,
    also listed under `warnings` in the summary.

    Args:
        runs: `Run`s (`read_run`).
        directory: the output directory (created if missing).
        by: the setting in the runs' `config.json` that groups them (one line per value).
        measure: the representation measure of the profiles, one of `REPORT_MEASURES`.

    Returns:
        The summary (a dict, as in `summary.json`).

    Raises:
        ValueError: if `runs` is empty, `by` is not a setting of every run, `measure` is unknown
            or no run measured it, a run is unfinished, or the runs of a group differ in their
            architecture.

    Example:

    >>> # (skipped in the doctest run: it needs finished runs, see `training.train_run`)
    >>> import glob
    >>> runs = [read_run(d) for d in glob.glob("runs/*")]  # doctest: +SKIP
    >>> summary = compare_runs(runs, "figures", by="downsample")  # doctest: +SKIP
    """
    from deformstab_tf.plots import mean_and_band, plot_over_epochs, plot_stage_bands

    check_choice("measure", measure, tuple(plan.MEASURES))
    directory = check_output_directory("directory", directory)
    if not runs:
        raise ValueError("`runs` is empty: nothing to compare.")
    groups = group_runs(runs, by)
    if not any(measure in record["results"] for run in runs for record in run.history):
        raise ValueError(f"No run measured `measure`={measure!r}.")
    notes = check_comparable(groups, by)
    log = plan.log_scale(measure)
    stages = {"init": "at initialisation", "final": "after training"}
    figures = {}
    components = [None, *plan.components(measure)]
    for component in components:
        profiles = {
            label: profile_groups(groups, measure, which, component)
            for which, label in stages.items()
        }
        if any(profiles.values()):
            quantity = measure if component is None else f"{measure} {component}"
            name = f"{quantity.replace(' ', '_')}_profiles.png"
            figures[name] = plot_stage_bands(
                profiles,
                title=f"{quantity} per layer by {by} (mean +- 2 SD over runs)",
                ylabel=quantity,
                log=log,
            )
    smoothness = {label: profile_groups(groups, "smoothness", w) for w, label in stages.items()}
    if measure != "smoothness" and any(smoothness.values()):
        figures["smoothness_profiles.png"] = plot_stage_bands(
            smoothness, title=f"kernel smoothness per conv layer by {by}", ylabel="TV / L1"
        )
    figures[f"{measure}_over_epochs.png"] = plot_over_epochs(
        epoch_groups(groups, measure),
        title=f"mean {measure} over probe points, by {by}",
        ylabel=measure,
        log=log,
    )
    summary = {
        "by": by,
        "measure": measure,
        "band": "mean +- 2 SD over the runs of a group (sample SD, ddof=1)"
        + ("; geometric mean and multiplicative band" if log else ""),
        "groups": {label: _group_summary(group, measure) for label, group in groups.items()},
        # What the profile figures draw: {stage: {group: {probe: [mean, low, high]}}}.
        "profiles": {
            which: {
                label: {p: list(mean_and_band(v, log)) for p, v in profile.items()}
                for label, profile in profile_groups(groups, measure, which).items()
            }
            for which in stages
        },
        "figures": sorted(figures),
        "warnings": notes,
    }
    with _staged(directory) as staging:
        for name, figure in figures.items():
            figure.savefig(os.path.join(staging, name), dpi=90)
        with open(os.path.join(staging, "summary.json"), "w") as file:
            json.dump(summary, file, indent=1, allow_nan=True)
        with open(os.path.join(staging, "summary.md"), "w") as file:
            file.write(_comparison_markdown(summary))
    return summary


def _group_summary(runs, measure):
    def mean(run, which):
        if which == "init" and run.history[0]["epoch"] != 0:
            return None
        results = run.at(which)
        return results[measure].mean() if measure in results else None

    return {
        "runs": [run.directory for run in runs],
        "epochs": [run.history[-1]["epoch"] for run in runs],
        "test_accuracy": [(run.summary or {}).get("test_accuracy") for run in runs],
        "mean_init": [mean(run, "init") for run in runs],
        "mean_final": [mean(run, "final") for run in runs],
    }


def _comparison_markdown(summary):
    measure = summary["measure"]
    header = [summary["by"], "runs", "epochs", "test accuracy", f"mean {measure} at init",
              "after training"]  # fmt: skip
    rows = [
        [label, str(len(entry["runs"]))]
        + [
            ", ".join("-" if v is None else _cell(v) for v in entry[key])
            for key in ("epochs", "test_accuracy", "mean_init", "mean_final")
        ]
        for label, entry in summary["groups"].items()
    ]
    lines = [f"# {measure} by {summary['by']}", "", *markdown_table(header, rows)]
    lines += ["", f"Bands: {summary['band']}.", ""]
    lines += [f"Warning: {note}\n" for note in summary.get("warnings", ())]
    lines += [f"![{name}]({name})" for name in summary["figures"]]
    return "\n".join(lines) + "\n"
