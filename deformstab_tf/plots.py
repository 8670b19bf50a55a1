"""Layer-wise profile plots of stability measures (matplotlib).

Probe-point axes stay readable from a handful of probe points to 200 (MobileNetV2 has 55,
ResNet50 57): the figures grow wider with the number of probe points (up to a cap), labels are
thinned to what fits without overlapping (every probe point keeps a tick; the axis label says
"every k-th labelled"), and a path prefix shared by all nested probe points
(`"mobilenetv2_1.00_224/"`) is moved into the axis label.
"""

import collections.abc
import math

import numpy as np

from deformstab_tf.measures import plan
from deformstab_tf.measures.results import MeasureResult


def plot_profile(results, ax=None, details=False, title=None):
    """Plots measures across probe points: one line per measure, probe points in forward order.

    A layer that is not itself a probe point but lies inside one, by name (the convolution
    `block1_conv1_conv` of the conv unit `block1_conv1`), is drawn at that probe point, so kernel
    smoothness lines up with the representation measures.

    Args:
        results: a `MeasureResult`; a list of them (each line labelled by its measure); or a
            mapping `label -> MeasureResult or {probe name: value}` (e.g. one entry per epoch or
            per architecture).
        ax: matplotlib `Axes` to draw on; `None` creates a figure with `pyplot`.
        details: also draw the components in each result's `details` (e.g. `D` and `G` of
            relative stability) as dashed lines.
        title: optional axes title.

    Returns:
        The `Axes`.

    Example:

    >>> model = ds.build_vgg([(8,), (16,)], input_shape=(16, 16, 3))
    >>> x = np.random.default_rng(0).random((8, 16, 16, 3), dtype="float32")
    >>> tps = ds.RandomThinPlateSpline(grid_size=3, max_displacement=1.0, seed=0)
    >>> ax = plot_profile([ds.normalized_sensitivity(model, x, tps), ds.kernel_smoothness(model)])
    >>> [t.get_text() for t in ax.get_xticklabels()]
    ['input', 'block1_conv1', 'block1_down', 'block2_conv1', 'block2_down']
    >>> ax.figure.savefig("profile.png")
    """
    series = _series(results, details)
    if ax is None:
        import matplotlib.pyplot as plt

    series = _align_to_probe_points(series)
    names = _merged_order([list(values) for _, values, _ in series])
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(profile_width(len(names)), 4), layout="constrained")
    positions = np.arange(len(names))
    finite = []
    for label, values, dashed in series:
        y = np.array([values.get(name, math.nan) for name in names], dtype=float)
        # Measures on a subset of probe points (e.g. smoothness: conv layers only) skip the rest.
        present = ~np.isnan(y)
        ax.plot(
            positions[present],
            y[present],
            marker="o",
            markersize=4,
            linestyle="--" if dashed else "-",
            label=label,
        )
        finite.extend(y[np.isfinite(y)])
    ax.set_xlabel(probe_ticks(ax, names))
    finite = np.asarray(finite)
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 50:
        ax.set_yscale("log")  # relative stability spans orders of magnitude
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if title:
        ax.set_title(title)
    return ax


def plot_profiles(current, initial=None, title=None, figure=None):
    """One panel per measure: the per-layer profile now, beside the initial one.

    The papers' init-vs-trained view: each panel draws a measure across probe points, the
    current profile as a solid line and the initial one (if given) dashed and grey. Relative
    stability shows `R` with `D` and `G` (thinner) on a log scale, since they span orders of
    magnitude; sensitivity and smoothness use linear axes. Shift consistency (one number, not a
    profile) is left out unless it holds several points. NaN values (a diverged network) are
    left out of the lines.

    Args:
        current: `{measure: MeasureResult}` (e.g. one `StabilityCallback` measurement).
        initial: the same at initialisation, or None.
        title: the figure title (e.g. `"epoch 3"`); beside an initial profile, also the label
            of the current one (`"current"` without a title).
        figure: a matplotlib `Figure` to draw into; None creates one (without pyplot state).

    Returns:
        The `Figure`.

    Example:

    >>> s_init = ds.MeasureResult("sensitivity", {"input": 0.3, "block1_conv1": 0.5})
    >>> s_trained = ds.MeasureResult("sensitivity", {"input": 0.3, "block1_conv1": 0.2})
    >>> figure = plot_profiles({"sensitivity": s_trained}, initial={"sensitivity": s_init})
    >>> [line.get_label() for line in figure.axes[0].get_lines()]
    ['current', 'initial']
    >>> figure.savefig("profile.png")
    """
    from matplotlib.figure import Figure

    measures = [m for m, r in current.items() if len(r) > 1 or plan.per_layer(m)]
    if not measures:
        raise ValueError("`current` holds no per-layer measure to plot.")
    if figure is None:
        most = max(len(current[m]) for m in measures)
        figure = Figure(
            figsize=(profile_width(most, 4.2, panels=len(measures)) * len(measures), 3.6),
            layout="constrained",
        )
    axes = figure.subplots(1, len(measures), squeeze=False)[0]
    for ax, measure in zip(axes, measures, strict=True):
        result = current[measure]
        start = (initial or {}).get(measure)
        spec = plan.entry(measure)
        headline = None if spec is None else spec.headline
        components = [(None, result)]
        if isinstance(result, MeasureResult):
            components += [
                (c, result.details[c]) for c in plan.components(measure) if c in result.details
            ]
        names = list(result)
        x = np.arange(len(names))
        for component, values in components:
            if component is None and headline is None:
                label = (title or "current") if start is not None else measure
            else:
                label = component or headline
            width = 1.8 if component is None else 1.0
            y = np.array([values.get(n, math.nan) for n in names], dtype=float)
            line = ax.plot(x, y, marker="o", markersize=3, linewidth=width, label=label)[0]
            if start is not None:
                reference = start if component is None else start.details.get(component, {})
                y0 = np.array([reference.get(n, math.nan) for n in names], dtype=float)
                ax.plot(
                    x,
                    y0,
                    linestyle="--",
                    linewidth=width * 0.8,
                    color=line.get_color() if component else "0.55",
                    label=f"{label} initial" if headline is not None else "initial",
                )
        if plan.log_scale(measure):
            ax.set_yscale("log")
        ax.set_ylabel(spec.axis_label if spec else measure, fontsize="small")
        ax.set_title(measure.replace("_", " "), fontsize="medium")
        xlabel = probe_ticks(ax, names, fontsize="x-small")
        if xlabel != "probe point":
            ax.set_xlabel(xlabel, fontsize="small")
        ax.grid(alpha=0.3)
        if len(ax.get_lines()) > 1:
            ax.legend(fontsize="x-small")
    if title:
        figure.suptitle(title, fontsize="medium")
    return figure


# The translation maps' colour scale: 1 - similarity on a log axis, so that 0.9, 0.99 and 0.999
# are as far apart as 0.9 and 0 (a linear scale shows every trained layer as the same colour).
MAP_FLOOR = 1e-4


def plot_translation_maps(results, layers=None, title=None, figure=None):
    """Translation-sensitivity maps side by side: one panel per probe point (and per result).

    Each panel is a map of `translation_sensitivity_map`: the mean cosine similarity of the
    representation to that of the image translated by `(dy, dx)` (rows `dy`, columns `dx`). The
    colour is `1 - similarity` on a log scale from 1 (similarity 0) down to 1e-4 (0.9999), with
    the colour bar labelled in similarity, so 0.9, 0.99 and 0.999 stand apart.

    Args:
        results: a `translation_map` `MeasureResult`, or a mapping `label -> result` (e.g. one
            per network: a row of panels each).
        layers: the probe points drawn (default: all of the first result's).
        title: the figure title.
        figure: a matplotlib `Figure` to draw into; None creates one (without pyplot state).

    Returns:
        The `Figure`.

    Example:

    >>> maps = {"input": [[0.9, 0.99, 0.9], [0.99, 1.0, 0.99], [0.9, 0.99, 0.9]]}
    >>> result = ds.MeasureResult("translation_map", {"input": 0.95},
    ...                           metadata={"max_shift": 1, "maps": maps})
    >>> figure = plot_translation_maps(result)
    >>> [ax.get_title() for ax in figure.axes]
    ['input', '']
    """
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    from deformstab_tf.measures.translation import similarity_map

    rows = results if not isinstance(results, MeasureResult) else {None: results}
    if not rows:
        raise ValueError("`results` holds no translation map to plot.")
    first = next(iter(rows.values()))
    layers = list(first) if layers is None else list(layers)
    if figure is None:
        figure = Figure(
            figsize=(1.9 * len(layers) + 0.9, 1.9 * len(rows) + 0.5), layout="constrained"
        )
    axes = figure.subplots(len(rows), len(layers), squeeze=False)
    norm = LogNorm(vmin=MAP_FLOOR, vmax=1.0)
    image = None
    for row, (label, result) in zip(axes, rows.items(), strict=True):
        shift = int(result.metadata.get("max_shift", 0))
        for ax, layer in zip(row, layers, strict=True):
            dissimilarity = np.clip(1.0 - similarity_map(result, layer), MAP_FLOOR, 1.0)
            image = ax.imshow(
                dissimilarity,
                cmap="magma",
                norm=norm,
                extent=(-shift - 0.5, shift + 0.5, shift + 0.5, -shift - 0.5),
            )
            ax.set_title(layer if label is None else f"{label}: {layer}", fontsize="small")
            ax.tick_params(labelsize="x-small")
        row[0].set_ylabel("dy", fontsize="small")
    for ax in axes[-1]:
        ax.set_xlabel("dx", fontsize="small")
    bar = figure.colorbar(image, ax=axes, shrink=0.8)
    ticks = [1.0, 0.1, 0.01, 0.001, 0.0001]
    bar.set_ticks(ticks, labels=[f"{1 - t:g}" for t in ticks])
    bar.set_label("cosine similarity", fontsize="small")
    if title:
        figure.suptitle(title, fontsize="medium")
    return figure


def plot_profile_bands(groups, title=None, ylabel=None, log=False, ax=None):
    """Per-layer profiles with mean and +-2 SD bands over seeds, one line per group.

    The papers' figure (e.g. one line per downsampling variant). The SD is the sample standard
    deviation over seeds (`ddof=1`); a group with one seed has no band. With `log=True` (for
    ratios such as D, G, R) the mean and SD are those of `log10` of the values: the line is the
    geometric mean and the band multiplicative, so it never crosses zero. NaN values (a
    diverged run) are left out of the mean and SD.

    Args:
        groups: `{label: {probe name: [value per seed]}}`, probe names in forward order.
        title, ylabel: axes labels.
        log: a log y-axis (for D, G, R).
        ax: matplotlib `Axes`; None creates a `Figure` (without pyplot state).

    Returns:
        The `Figure`.

    Raises:
        ValueError: if `groups` is empty.

    Example:

    >>> figure = plot_profile_bands({"max": {"input": [0.3, 0.31], "block1_conv1": [0.5, 0.52]}})
    >>> figure.savefig("bands.png")
    """
    if not groups:
        raise ValueError("`groups` is empty: nothing to plot.")
    if ax is None:
        from matplotlib.figure import Figure

    names = _merged_order([list(profile) for profile in groups.values()])
    if ax is None:
        from matplotlib.figure import Figure

        figure = Figure(figsize=(profile_width(len(names), 7.5), 4), layout="constrained")
        ax = figure.add_subplot()
    _draw_bands(ax, groups, names, np.arange(len(names)), log)
    xlabel = probe_ticks(ax, names)
    if xlabel != "probe point":
        ax.set_xlabel(xlabel)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _label(ax, title, ylabel)
    return ax.figure


def plot_stage_bands(stages, title=None, ylabel=None, log=False):
    """Per-layer profiles with +-2 SD bands, one panel per stage (init vs trained).

    The papers' init-vs-trained figure: the panels share the probe-point axis and the y-axis,
    and each group (e.g. downsampling variant) keeps its colour in every panel. Bands as in
    `plot_profile_bands` (sample SD, `ddof=1`; multiplicative with `log=True`).

    Args:
        stages: `{stage label: {group: {probe name: [value per seed]}}}`, e.g.
            `{"at initialisation": ..., "after training": ...}`; empty stages are skipped.
        title: the figure title.
        ylabel: the y-axis label.
        log: a log y-axis (for D, G, R).

    Returns:
        The `Figure`.

    Raises:
        ValueError: if every stage is empty.

    Example:

    >>> figure = plot_stage_bands({"at initialisation": {"max": {"input": [0.3, 0.31]}},
    ...                            "after training": {"max": {"input": [0.2, 0.25]}}})
    >>> [ax.get_title() for ax in figure.axes]
    ['at initialisation', 'after training']
    """
    from matplotlib.figure import Figure

    stages = {stage: groups for stage, groups in stages.items() if groups}
    if not stages:
        raise ValueError("`stages` holds no group: nothing to plot.")
    names = _merged_order([list(p) for groups in stages.values() for p in groups.values()])
    labels = list(dict.fromkeys(label for groups in stages.values() for label in groups))
    colors = {label: f"C{index % 10}" for index, label in enumerate(labels)}
    panel = profile_width(len(names), 4.6, panels=len(stages), margin=1.2)
    figure = Figure(figsize=(1.2 + panel * len(stages), 4), layout="constrained")
    axes = figure.subplots(1, len(stages), sharey=True, squeeze=False)[0]
    x = np.arange(len(names))
    for ax, (stage, groups) in zip(axes, stages.items(), strict=True):
        _draw_bands(ax, groups, names, x, log, colors)
        xlabel = probe_ticks(ax, names)
        if xlabel != "probe point":
            ax.set_xlabel(xlabel, fontsize="small")
        ax.set_title(stage, fontsize="medium")
    _label(axes[0], None, ylabel)
    handles = {line.get_label(): line for ax in axes for line in ax.get_lines() if line.get_label()}
    axes[-1].legend(handles.values(), handles.keys(), fontsize="small", loc="upper left",
                    bbox_to_anchor=(1.01, 1.0))  # fmt: skip
    if title:
        figure.suptitle(title, fontsize="medium")
    return figure


def plot_over_epochs(groups, title=None, ylabel=None, log=False, ax=None):
    """A measure over training epochs with +-2 SD bands over seeds, one line per group.

    Args:
        groups: `{label: {epoch: [value per seed]}}`, epochs as numbers of completed epochs
            (0 = at initialisation).
        title, ylabel: axes labels.
        log: a log y-axis.
        ax: matplotlib `Axes`; None creates a `Figure`.

    Returns:
        The `Figure`.

    Raises:
        ValueError: if `groups` holds no epoch.

    Example:

    >>> figure = plot_over_epochs({"max": {0: [0.3, 0.32], 5: [0.2, 0.22]}}, ylabel="sensitivity")
    >>> figure.axes[0].get_lines()[0].get_ydata()
    array([0.31, 0.21])
    """
    epochs = sorted({int(e) for series in groups.values() for e in series})
    if not epochs:
        raise ValueError("`groups` holds no epoch: nothing to plot.")
    if ax is None:
        from matplotlib.figure import Figure

        figure = Figure(figsize=(6.5, 3.8), layout="constrained")
        ax = figure.add_subplot()
    series = {label: {int(e): v for e, v in values.items()} for label, values in groups.items()}
    _draw_bands(ax, series, epochs, np.asarray(epochs), log)
    ax.set_xlabel("epochs trained (0 = initialisation)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _label(ax, title, ylabel)
    return ax.figure


def mean_and_band(values, log=False):
    """The centre line and the +-2 SD band that the band figures draw, for one point.

    Args:
        values: the values over seeds (runs); NaN values (a diverged run) are left out.
        log: for ratios (D, G, R): mean and SD of `log10` of the values, mapped back, i.e. the
            geometric mean and a multiplicative band; values <= 0 are left out.

    Returns:
        `(mean, low, high)`: `mean -+ 2 SD`, the sample SD (`ddof=1`); with fewer than two
        finite values the band is the mean itself; all NaN without finite values.

    Example:

    >>> [round(v, 4) for v in mean_and_band([0.1, 0.3])]   # 0.2 -+ 2 * 0.1414
    [0.2, -0.0828, 0.4828]
    """
    values = np.asarray(values, dtype=float).ravel()
    if log:
        values = np.log10(np.where(values > 0, values, np.nan))
    finite = values[np.isfinite(values)]
    if not finite.size:
        return math.nan, math.nan, math.nan
    mean = float(finite.mean())
    sd = float(finite.std(ddof=1)) if finite.size > 1 else 0.0
    band = (mean, mean - 2 * sd, mean + 2 * sd)
    return tuple(10**v for v in band) if log else band


def _draw_bands(ax, groups, keys, x, log, colors=None):
    """Draws, per group, the mean over seeds at `keys` (positions `x`) and a +-2 SD band."""
    for label, profile in groups.items():
        values = [profile.get(k, [math.nan]) for k in keys]
        mean, low, high = np.array([mean_and_band(v, log) for v in values]).T
        color = (colors or {}).get(label)
        line = ax.plot(x, mean, marker="o", markersize=3, label=str(label), color=color)[0]
        if max(len(v) for v in values) > 1:
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.18, linewidth=0)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)


def _label(ax, title, ylabel):
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)


def figure_to_array(figure, dpi=80):
    """A matplotlib `Figure` rendered off-screen as an RGBA uint8 array `(H, W, 4)`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    figure.set_dpi(dpi)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


def profile_image(results, details=False, title=None, dpi=80, initial=None):
    """A profile figure rendered off-screen as an RGBA uint8 array `(H, W, 4)`, e.g. for
    `tf.summary.image`.

    `results` as a mapping `measure -> MeasureResult` draws `plot_profiles(results, initial)`
    (one panel per measure, initial beside current: what `StabilityCallback` logs); any other
    form of `results` draws `plot_profile(results, details=details)` on one axes.
    """
    from matplotlib.figure import Figure

    if (
        isinstance(results, collections.abc.Mapping)
        and all(isinstance(r, MeasureResult) for r in results.values())
        and not isinstance(results, MeasureResult)
    ):
        return figure_to_array(plot_profiles(results, initial, title=title), dpi)
    series = _align_to_probe_points(_series(results, details))
    names = _merged_order([list(values) for _, values, _ in series])
    figure = Figure(figsize=(profile_width(len(names)), 4), layout="constrained")
    plot_profile(results, ax=figure.add_subplot(), details=details, title=title)
    return figure_to_array(figure, dpi)


# Figures up to this many probe points keep their classic size and label every point.
ALL_LABELS = 30
LABEL_ROTATION = 60  # degrees


def profile_width(num_points, base=7.0, panels=None, margin=0.0):
    """The width in inches of a profile figure for `num_points` probe points, or with `panels`
    of one of its panels: `base` up to `ALL_LABELS` points, then growing with the count, the
    figure (with `margin` inches besides the panels) up to 16 in and a panel up to 8 in."""
    if num_points <= ALL_LABELS:
        return base
    if panels:
        cap = min(8.0, (16.0 - margin) / panels)
        return float(max(base, min(cap, 2.0 + 0.06 * num_points)))
    return float(min(16.0, max(base, 3.0 + 0.12 * num_points)))


def probe_ticks(ax, names, fontsize=None):
    """Ticks and labels of a probe-point axis (positions `0..len(names)-1`) that do not overlap.

    Every probe point gets a tick; labels are thinned to every k-th point when more would not
    fit side by side at the axes' width (rotated labels need about 1.4 font heights of spacing
    across their direction). A path prefix that all nested probe names share is left out of
    the labels and named in the returned axis label.

    Args:
        ax: the matplotlib `Axes`.
        names: probe names in forward order.
        fontsize: label size; default `"small"`, `"x-small"` beyond `ALL_LABELS` points.

    Returns:
        The x-axis label: `"probe point"`, with the shared prefix and the thinning if any
        (e.g. `"probe point in mobilenetv2_1.00_224 (every 3rd of 55 labelled)"`).

    Example:

    >>> from matplotlib.figure import Figure
    >>> ax = Figure(figsize=(7, 4)).add_subplot()
    >>> names = ["input"] + [f"net/block_{i}_relu" for i in range(120)]
    >>> probe_ticks(ax, names)
    'probe point in net (every 5th of 121 labelled)'
    """
    from matplotlib.font_manager import FontProperties

    labels, prefix = _short_labels(names)
    count = len(names)
    fontsize = fontsize or ("small" if count <= ALL_LABELS else "x-small")
    size = FontProperties(size=fontsize).get_size_in_points() / 72.0  # inches
    pitch = 1.4 * size / math.sin(math.radians(LABEL_ROTATION))
    # Before layout the axes have their grid cell; layout (legend, y label) takes some more.
    width = 0.8 * ax.get_position().width * ax.figure.get_figwidth()
    step = max(1, math.ceil(count / max(1, int(width / pitch))))
    positions = np.arange(count)
    shown = positions[::step]
    ax.set_xticks(
        shown,
        [labels[i] for i in shown],
        rotation=LABEL_ROTATION,
        ha="right",
        rotation_mode="anchor",
        fontsize=fontsize,
    )
    if step > 1:
        ax.set_xticks(positions, minor=True)
    ax.set_xlim(-0.5, count - 0.5)
    label = "probe point" + (f" in {prefix}" if prefix else "")
    if step > 1:
        label += f" (every {_ordinal(step)} of {count} labelled)"
    return label


def _ordinal(n):
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _short_labels(names):
    """Labels without the path prefix every nested name shares (`"net/"`), and that prefix."""
    nested = [name for name in names if "/" in name]
    prefix = nested[0].split("/")[0] if nested else ""
    if (
        len(nested) < 2
        or len(nested) < len(names) - 1  # besides "input", every name must be nested
        or any(not name.startswith(prefix + "/") for name in nested)
    ):
        return list(names), ""
    return [name[len(prefix) + 1 :] if "/" in name else name for name in names], prefix


def _series(results, details):
    """`[(label, {probe: value}, dashed)]` from the accepted forms of `results`."""
    if isinstance(results, MeasureResult):
        items = [(results.measure, results)]
    elif isinstance(results, collections.abc.Mapping):
        if all(isinstance(v, collections.abc.Mapping) for v in results.values()):
            items = [(str(label), values) for label, values in results.items()]
        else:
            items = [("value", results)]
    else:
        items = [(r.measure, r) for r in results]
    series = []
    for label, values in items:
        series.append((label, dict(values), False))
        if details and isinstance(values, MeasureResult):
            for component, component_values in values.details.items():
                series.append((f"{label} {component}", component_values, True))
    if not series:
        raise ValueError("`results` holds nothing to plot.")
    return series


def _align_to_probe_points(series):
    """Renames layers inside a probe point (`<probe>_<suffix>`) to the probe point's name."""
    aligned = []
    for index, (label, values, dashed) in enumerate(series):
        probes = {name for i, (_, v, _) in enumerate(series) if i != index for name in v}
        renamed = {}
        for name, value in values.items():
            owners = [p for p in probes if name not in probes and name.startswith(p + "_")]
            renamed[max(owners, key=len) if owners else name] = value
        if len(renamed) < len(values):  # two layers of one unit: keep the names apart
            renamed = dict(values)
        aligned.append((label, renamed, dashed))
    return aligned


def _merged_order(orders):
    """Merges name sequences into one order: each sequence's names stay in its order, names
    missing from the longest sequence are inserted after their predecessor."""
    merged = list(max(orders, key=len))
    for order in orders:
        previous = None
        for name in order:
            if name not in merged:
                at = 0 if previous is None else merged.index(previous) + 1
                merged.insert(at, name)
            previous = name
    return merged
