"""Stability reports of saved models, and reading run directories back (for `measure.py` and
`compare.py`).

- `stability_report(model, images, deformation, measures)`: the measures of one model.
- `magnitude_sweep(model, images, name, magnitudes)`: sensitivity (and R) per probe point as the
  deformation grows.
- `write_report(directory, results, sweep=None)`: JSON, CSV, Markdown and PNG figures.
- `read_run(directory)` / `group_runs(runs, by)`: what `train_run` left in run directories.
- `compare_runs(runs, directory, by, measure)`: the papers' figures from several runs.
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

import keras

from deformstab_tf import runrecord
from deformstab_tf._validation import (
    check_choice,
    check_model,
    check_names,
    check_output_directory,
    check_seed,
)
from deformstab_tf.deformations.layers import DEFORMATION_LAYERS, deformation_layer
from deformstab_tf.measures import plan
from deformstab_tf.measures._common import check_deformation
from deformstab_tf.training import read_config

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
        batch_size, seed, max_shift: as in the measures.
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
        max_shift=max_shift,
    )  # fmt: skip
    return _run(probe, verbose)


def _load(model):
    """A Keras model, loaded when `model` is the path of a saved one."""
    if isinstance(model, (str, os.PathLike)):
        if not os.path.isfile(model):
            raise ValueError(f"`model` is not a saved model file; received model={model!r}.")
        model = keras.models.load_model(model)
    check_model("model", model)
    return model


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
    lines += ["", "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    for row in rows:
        lines.append("| " + " | ".join(_cell(v) for v in row.values()) + " |")
    means = ", ".join(f"{m} {r.mean():.4g}" for m, r in results.items())
    lines += ["", f"Means over probe points: {means}.", ""]
    if sweep:
        lines += ["## Magnitude sweep (mean over probe points)", ""]
        measures = list(next(iter(sweep.values())))
        lines += ["| magnitude | " + " | ".join(measures) + " |", "|---|" + "---|" * len(measures)]
        for magnitude, by_measure in sweep.items():
            cells = " | ".join(_cell(by_measure[m].mean()) for m in measures)
            lines.append(f"| {magnitude:g} | {cells} |")
        lines.append("")
    for caption, name in figures:
        lines += [f"![{caption}]({name})", ""]
    return "\n".join(lines)


def _cell(value):
    if isinstance(value, str):
        return value
    return "NaN" if math.isnan(value) else f"{value:.4g}"


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

    Args:
        runs: `Run`s (`read_run`).
        directory: the output directory (created if missing).
        by: the setting in the runs' `config.json` that groups them (one line per value).
        measure: the representation measure of the profiles, one of `REPORT_MEASURES`.

    Returns:
        The summary (a dict, as in `summary.json`).

    Raises:
        ValueError: if `runs` is empty, `by` is not a setting of every run, `measure` is unknown
            or no run measured it.

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
    lines = [
        f"# {measure} by {summary['by']}",
        "",
        f"| {summary['by']} | runs | epochs | test accuracy | mean {measure} at init "
        "| after training |",
        "|---|---|---|---|---|---|",
    ]
    for label, entry in summary["groups"].items():
        cells = [
            ", ".join("-" if v is None else _cell(v) for v in entry[key])
            for key in ("epochs", "test_accuracy", "mean_init", "mean_final")
        ]
        lines.append(f"| {label} | {len(entry['runs'])} | " + " | ".join(cells) + " |")
    lines += ["", f"Bands: {summary['band']}.", ""]
    lines += [f"![{name}]({name})" for name in summary["figures"]]
    return "\n".join(lines) + "\n"
