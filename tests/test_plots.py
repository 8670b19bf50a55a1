"""Figures: per-measure panels (initial beside current), bands over seeds."""

import math

import numpy as np
import pytest

from deformstab_tf.measures import MeasureResult
from deformstab_tf.plots import (
    figure_to_array,
    mean_and_band,
    plot_over_epochs,
    plot_profile,
    plot_profile_bands,
    plot_profiles,
    plot_stage_bands,
    profile_image,
)

PROBES = ["input", "block1_conv1", "block1_down"]


def _results(scale):
    sensitivity = MeasureResult("sensitivity", {p: scale * (i + 1) for i, p in enumerate(PROBES)})
    relative = MeasureResult(
        "relative_stability",
        {p: 10.0**-i for i, p in enumerate(PROBES)},
        details={"D": {p: 1e-3 * scale for p in PROBES}, "G": {p: 1e-2 for p in PROBES}},
    )
    smoothness = MeasureResult("smoothness", {"block1_conv1_conv": 1.8 * scale})
    return {"sensitivity": sensitivity, "relative_stability": relative, "smoothness": smoothness}


def test_one_panel_per_measure_initial_beside_current_log_scale_for_rs():
    figure = plot_profiles(_results(0.5), initial=_results(1.0), title="epoch 3")
    axes = figure.axes
    assert [ax.get_title() for ax in axes] == ["sensitivity", "relative stability", "smoothness"]
    assert [ax.get_yscale() for ax in axes] == ["linear", "log", "linear"]
    sensitivity = axes[0]
    lines = {line.get_label(): line for line in sensitivity.get_lines()}
    np.testing.assert_allclose(lines["epoch 3"].get_ydata(), [0.5, 1.0, 1.5])
    np.testing.assert_allclose(lines["initial"].get_ydata(), [1.0, 2.0, 3.0])
    labels = [line.get_label() for line in axes[1].get_lines()]
    assert labels == ["R", "R initial", "D", "D initial", "G", "G initial"]
    assert [t.get_text() for t in sensitivity.get_xticklabels()] == PROBES
    image = profile_image(_results(0.5), initial=_results(1.0))
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 4
    assert image.shape[1] > 2 * image.shape[0]  # three panels side by side


def test_nan_values_are_left_out_not_drawn_as_numbers():
    diverged = _results(1.0)
    diverged["sensitivity"] = MeasureResult("sensitivity", {p: math.nan for p in PROBES})
    ax = plot_profiles(diverged).axes[0]
    assert np.isnan(ax.get_lines()[0].get_ydata()).all()


def test_bands_are_mean_plus_minus_two_sample_sd_over_seeds():
    groups = {
        "max": {"input": [0.1, 0.3, 0.2], "block1_conv1": [0.5, 0.7, 0.9]},
        "avg": {"input": [0.4], "block1_conv1": [0.6]},
    }
    figure = plot_profile_bands(groups, title="S", log=False)
    ax = figure.axes[0]
    means = {line.get_label(): line.get_ydata() for line in ax.get_lines()}
    np.testing.assert_allclose(means["max"], [0.2, 0.7])
    np.testing.assert_allclose(means["avg"], [0.4, 0.6])
    (band,) = ax.collections  # one seed: no band for "avg"
    vertices = band.get_paths()[0].vertices
    upper = 0.7 + 2 * np.std([0.5, 0.7, 0.9], ddof=1)
    assert np.isclose(vertices[:, 1].max(), upper)
    with pytest.raises(ValueError, match="`groups` is empty"):
        plot_profile_bands({})


def test_log_bands_are_geometric():
    figure = plot_profile_bands({"v": {"a": [0.1, 10.0], "b": [1.0, 1.0]}}, log=True)
    ax = figure.axes[0]
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [1.0, 1.0])  # geometric means
    vertices = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert vertices.min() > 0  # a multiplicative band never reaches zero


def test_stage_panels_share_axes_and_keep_each_groups_colour():
    init = {"max": {"input": [0.2, 0.4], "block1_conv1": [0.6, 0.8]}, "avg": {"input": [0.3]}}
    trained = {"avg": {"input": [0.1], "block1_conv1": [0.2]}, "max": {"input": [0.5, 0.7]}}
    figure = plot_stage_bands({"at initialisation": init, "after training": trained, "x": {}})
    left, right = figure.axes[:2]
    assert [left.get_title(), right.get_title()] == ["at initialisation", "after training"]
    assert left.get_shared_y_axes().joined(left, right)
    colours = [
        {line.get_label(): line.get_color() for line in ax.get_lines()} for ax in (left, right)
    ]
    assert colours[0] == colours[1]
    # Probe points line up across panels; a value a group lacks is missing, not zero.
    means = {line.get_label(): line.get_ydata() for line in right.get_lines()}
    np.testing.assert_allclose(means["max"], [0.6, np.nan])
    lower = left.collections[0].get_paths()[0].vertices[:, 1].min()
    assert np.isclose(lower, 0.3 - 2 * np.std([0.2, 0.4], ddof=1))
    with pytest.raises(ValueError, match="`stages` holds no group"):
        plot_stage_bands({"init": {}})


def test_over_epochs_uses_a_numeric_epoch_axis():
    figure = plot_over_epochs({"max": {0: [0.3, 0.5], 10: [0.2]}, "avg": {"5": [0.1]}})
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    np.testing.assert_allclose(lines["max"].get_xdata(), [0, 5, 10])
    np.testing.assert_allclose(lines["max"].get_ydata(), [0.4, np.nan, 0.2])
    with pytest.raises(ValueError, match="no epoch"):
        plot_over_epochs({"max": {}})


def test_the_callbacks_former_call_form_still_draws_one_axes():
    results = list(_results(1.0).values())
    image = profile_image(results, title="epoch 1")  # a list of results: one axes
    assert image.shape[-1] == 4 and image.dtype == np.uint8
    ax = plot_profile(results, details=True)
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels[:3] == ["sensitivity", "relative_stability", "relative_stability D"]
    assert ax.get_yscale() == "log"  # R spans three orders of magnitude


def test_mean_and_band_leave_out_nan_runs_and_are_geometric_on_log_axes():
    values = [0.2, math.nan, 0.5, 0.35]
    finite = np.array([0.2, 0.5, 0.35])
    sd = np.std(finite, ddof=1)
    np.testing.assert_allclose(mean_and_band(values), [0.35, 0.35 - 2 * sd, 0.35 + 2 * sd])
    logs = np.log10([0.01, 1.0])
    expected = 10 ** (logs.mean() + np.array([0, -2, 2]) * np.std(logs, ddof=1))
    np.testing.assert_allclose(mean_and_band([0.01, 1.0], log=True), expected)
    assert mean_and_band([0.3]) == (0.3, 0.3, 0.3)
    assert all(math.isnan(v) for v in mean_and_band([math.nan, math.nan]))


@pytest.mark.parametrize("count", [55, 120, 200])
def test_profile_axes_stay_readable_for_many_probe_points(count):
    # MobileNetV2 has 55 probe points, nested in its backbone: "mobilenetv2_1.00_224/...".
    names = ["input"] + [f"mobilenetv2_1.00_224/block_{i}_expand_relu" for i in range(count - 1)]
    values = dict(zip(names, np.linspace(0.1, 1.0, count), strict=True))
    results = {
        "sensitivity": MeasureResult("sensitivity", values),
        "relative_stability": MeasureResult(
            "relative_stability", values, details={"D": values, "G": values}
        ),
    }
    bands = {"max": {name: [v, v + 0.1] for name, v in values.items()}}
    figures = [
        plot_profiles(results, initial=results, title="epoch 3"),
        plot_profile(results["sensitivity"]).figure,
        plot_profile_bands(bands),
        plot_stage_bands({"at initialisation": bands, "after training": bands}),
    ]
    for figure in figures:
        assert figure.get_figwidth() <= 16.0
        dpi = 80
        profile_image_array = figure_to_array(figure, dpi)  # lays out and draws
        assert profile_image_array.shape[1] <= 16 * dpi
        for ax in figure.axes:
            shown = ax.get_xticks()
            labels = [t for t in ax.get_xticklabels() if t.get_text()]
            assert labels, ax.get_title()
            # every probe point keeps a tick; the labels are the names without the prefix
            ticks = set(np.round(shown).astype(int)) | set(
                np.round(ax.get_xticks(minor=True)).astype(int)
            )
            assert ticks == set(range(count))
            for tick, label in zip(shown, ax.get_xticklabels(), strict=True):
                assert names[int(round(tick))].endswith(label.get_text())
            assert "in mobilenetv2_1.00_224" in ax.get_xlabel()
            # Rotated labels do not overlap: neighbouring (parallel) labels lie further apart,
            # across their direction, than the text is high.
            x = ax.transData.transform(np.stack([shown, np.zeros_like(shown)], axis=1))[:, 0]
            rotation = labels[0].get_rotation()
            height = labels[0].get_size() * dpi / 72.0
            across = np.diff(x).min() * math.sin(math.radians(rotation))
            assert across >= 1.15 * height, (count, ax.get_title(), across, height)
            assert len(labels) >= 15  # still many landmarks


def test_probe_ticks_label_every_point_when_they_fit():
    from matplotlib.figure import Figure

    from deformstab_tf.plots import probe_ticks

    ax = Figure(figsize=(7, 4)).add_subplot()
    assert probe_ticks(ax, PROBES) == "probe point"
    assert [t.get_text() for t in ax.get_xticklabels()] == PROBES
    assert len(ax.get_xticks(minor=True)) == 0
