"""Layer-wise profile plots of stability measures (matplotlib)."""

import collections.abc
import math

import numpy as np

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

    >>> ax = plot_profile([normalized_sensitivity(model, x, tps), kernel_smoothness(model)])
    >>> ax.figure.savefig("profile.png")
    """
    series = _series(results, details)
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    series = _align_to_probe_points(series)
    names = _merged_order([list(values) for _, values, _ in series])
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
    ax.set_xticks(positions, names, rotation=60, ha="right", fontsize="small")
    ax.set_xlabel("probe point")
    finite = np.asarray(finite)
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 50:
        ax.set_yscale("log")  # relative stability spans orders of magnitude
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if title:
        ax.set_title(title)
    return ax


def profile_image(results, details=False, title=None, dpi=80, initial=None):
    """`plot_profile` rendered off-screen (Agg canvas, no pyplot state) as an RGBA uint8 array
    of shape `(height, width, 4)`, e.g. for `tf.summary.image`.

    `results` may also be a mapping `measure -> MeasureResult`; `initial` (the same form) adds
    the initial profile of each measure beside the current one."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if isinstance(results, collections.abc.Mapping) and not isinstance(results, MeasureResult):
        current = {str(m): dict(r) for m, r in results.items()}
        if initial:
            current.update({f"{m} (initial)": dict(r) for m, r in initial.items()})
        results = current
    figure = Figure(figsize=(7, 4), dpi=dpi, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    plot_profile(results, ax=figure.add_subplot(), details=details, title=title)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


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
