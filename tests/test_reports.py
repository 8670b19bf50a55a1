"""trainers/measure.py and trainers/compare.py over deformstab_tf.reports."""

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import zipfile
from unittest import mock

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from deformstab_tf import data, reports
from deformstab_tf.deformations.layers import deformation_layer
from deformstab_tf.measures import MeasureResult, normalized_sensitivity
from deformstab_tf.training import train_run
from tests.cli_cases import run_cases
from tests.references import TINY_RUN
from trainers import measure

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = TINY_RUN
SYNTHETIC = {"num_classes": 3, "image_size": 16}


def _measure(argv):
    """Runs trainers/measure.py's main in this process with fresh flags."""
    flags.FLAGS.unparse_flags()
    remaining = flags.FLAGS(["measure", *argv])
    measure.main(remaining)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for downsample, seed in [("max", 0), ("max", 1), ("avg", 0)]:
        train_run(str(root / f"{downsample}_{seed}"), verbose=0, downsample=downsample, seed=seed,
                  **TINY)  # fmt: skip
    return root


def test_measure_report_matches_the_measure_functions(tiny_runs, tmp_path):
    model_path = str(tiny_runs / "max_0" / "model.keras")
    out = tmp_path / "report"
    # Without --dataset, the data is the model's run's: 3 synthetic classes of 16x16 images.
    _measure([f"--model={model_path}", "--num_images=12", "--sweep=0,2", f"--output_dir={out}",
              "--measures=sensitivity,relative_stability,smoothness"])  # fmt: skip
    assert sorted(os.listdir(out)) == [
        "profile.png", "report.csv", "report.json", "report.md",
        "sweep_relative_stability.png", "sweep_sensitivity.png",
    ]  # fmt: skip
    with open(out / "report.json") as file:
        document = json.load(file)
    model = keras.models.load_model(model_path)
    _, test, _ = data.synthetic(**SYNTHETIC, batch_size=256)
    images = data.take_images(test, 12)
    expected = normalized_sensitivity(
        model, images, deformation_layer("tps", 2.0, seed=0, grid_size=3), seed=0
    )
    got = document["results"]["sensitivity"]["values"]
    np.testing.assert_allclose(list(got.values()), list(expected.values()), rtol=1e-6)
    # Zero magnitude: the deformation is the identity, so every probe point has S = 0.
    assert all(v == 0 for v in document["sweep"]["0.0"]["sensitivity"]["values"].values())
    assert all(v > 0.01 for v in document["sweep"]["2.0"]["sensitivity"]["values"].values())
    with open(out / "report.csv") as file:
        rows = list(csv.DictReader(file))
    assert [row["probe"] for row in rows[:3]] == ["input", "block1_conv1", "block1_down"]
    assert float(rows[1]["sensitivity"]) == pytest.approx(got["block1_conv1"])
    assert "| block1_conv1 |" in (out / "report.md").read_text()


def test_measure_a_users_own_model_at_its_unit_outputs(tmp_path, capsys):
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    model.save(tmp_path / "mine.keras")
    out = tmp_path / "mine"
    code, lines = _run_script(
        measure,
        [f"--model={tmp_path}/mine.keras", "--measures=sensitivity", "--num_images=6",
         f"--output_dir={out}", "--seed=3"],
        capsys,
    )  # fmt: skip
    assert code is None or code == 0, lines
    with open(out / "report.json") as file:
        got = json.load(file)["results"]["sensitivity"]["values"]
    _, test, _ = data.load_dataset("synthetic", batch_size=256)
    images = data.take_images(test, 6)
    expected = normalized_sensitivity(model, images, deformation_layer("tps", 2.0, seed=3), seed=3)
    assert list(got) == list(expected)
    # probed at the unit's output, after BN and ReLU, not at the raw convolution
    np.testing.assert_allclose(list(got.values()), list(expected.values()), rtol=1e-6)
    assert list(got)[:3] == ["input", "stem_relu", "pool"] and "stem" not in got
    # --layers takes a named selection as well as layer names
    code, lines = _run_script(
        measure,
        [f"--model={tmp_path}/mine.keras", "--measures=sensitivity", "--num_images=6",
         f"--output_dir={out}", "--layers=activations"],
        capsys,
    )  # fmt: skip
    with open(out / "report.json") as file:
        got = json.load(file)["results"]["sensitivity"]["values"]
    expected = normalized_sensitivity(model, images, lambda x: x, layers="activations")
    assert code in (None, 0) and list(got) == list(expected) and "pool" not in got


def test_measure_resizes_the_data_to_the_models_input_size(tmp_path, capsys):
    # A model for 24x24 images (as a 224-px Keras Applications model) on 32x32 synthetic data.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((24, 24, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    keras.Model(inputs, outputs).save(tmp_path / "m24.keras")
    out = tmp_path / "report"
    argv = [f"--model={tmp_path}/m24.keras", "--measures=sensitivity", "--num_images=6",
            f"--output_dir={out}", "--dataset=synthetic"]  # fmt: skip
    code, lines = _run_script(measure, argv, capsys)
    assert code == 1 and "pass --image_size=24 to resize them (bilinear)" in lines[0]
    code, lines = _run_script(measure, [*argv, "--image_size=24", "--resize_method=area"], capsys)
    assert code in (None, 0), lines
    with open(out / "report.json") as file:
        document = json.load(file)
    assert "resized from 32x32 to 24x24 (area)" in document["context"]["data"]
    assert "resized from 32x32 to 24x24 (area)" in (out / "report.md").read_text()
    _, test, _ = data.load_dataset("synthetic", batch_size=256)
    images = tf.image.resize(data.take_images(test, 6), (24, 24), method="area").numpy()
    model = keras.models.load_model(tmp_path / "m24.keras")
    expected = normalized_sensitivity(model, images, deformation_layer("tps", 2.0, seed=0), seed=0)
    got = document["results"]["sensitivity"]["values"]
    np.testing.assert_allclose(list(got.values()), list(expected.values()), rtol=1e-5)


def _run_script(module, argv, capsys):
    """`module.run()` (the console script) in this process: (exit code, stderr lines)."""
    flags.FLAGS.unparse_flags()
    capsys.readouterr()
    with mock.patch.object(sys, "argv", [module.__name__, *argv]):
        with pytest.raises(SystemExit) as exit_info:
            module.run()
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()


def test_measure_bad_flags_exit_with_one_line_and_write_nothing(
    tiny_runs, tmp_path, tmp_path_factory, capsys
):
    out = tmp_path / "report"
    model_path = str(tiny_runs / "max_0" / "model.keras")
    (tmp_path / "unreadable").mkdir(mode=0)
    cases = [
        ([f"--model={tmp_path}/missing.keras"], "is not a file"),
        ([f"--model={model_path}", "--deformation=twirl"], "--deformation='twirl'"),
        ([f"--model={model_path}", "--measures=curvature"], "'curvature'"),
        ([f"--model={model_path}", "--dataset=no_such_dataset"], "'no_such_dataset'"),
        ([f"--model={model_path}", "--dataset=folder:/nonexistent"], "/nonexistent"),
        # offline: a TFDS dataset that is not prepared is not downloaded
        ([f"--model={model_path}", "--dataset=cifar10", f"--data_dir={tmp_path}/unreadable",
          "--nodownload"], "download=False (--nodownload)"),
        ([f"--model={model_path}", f"--dataset=folder:{tmp_path}/unreadable"], "unreadable"),
        ([f"--model={model_path}", "--magnitude=-1"], "-1"),
        ([f"--model={model_path}", "--sweep=1,-2"], "-2"),
        ([f"--model={model_path}", "--sweep=1,big"], "--sweep must be numbers"),
        # conflicting flags: a sweep of measures that are not measured
        ([f"--model={model_path}", "--sweep=1", "--measures=smoothness"], "--sweep measures"),
        ([f"--model={model_path}", "--split=validation"], "--split=validation"),
        ([], "--model"),
        # the synthetic default is 32x32; the model takes 16x16 images
        ([f"--model={model_path}", "--dataset=synthetic"],
         "expects images of shape (16, 16, 3); --dataset='synthetic' gives (32, 32, 3); pass "
         "--image_size=16 to resize them (bilinear)"),
        ([f"--model={model_path}", "--image_size=0"], "--image_size must be N or H,W"),
        ([f"--model={model_path}", "--image_size=16,16,3"], "--image_size must be N or H,W"),
        # flags named, not the internal arguments they become (`count`, `max_displacement`)
        ([f"--model={model_path}", "--num_images=0"], "--num_images=0"),
        ([f"--model={model_path}", "--num_images=5000"],
         "--num_images=5000 exceeds the 1000 images of the test split of 'synthetic'"),
        ([f"--model={model_path}", "--split=train", "--num_images=97"],
         "--num_images=97 exceeds the 96 images of the train split"),
        ([f"--model={model_path}", "--magnitude=-1"], "--magnitude=-1.0"),
        ([f"--model={model_path}", "--sweep=1,nan"], "--sweep=nan"),
        ([f"--model={model_path}", "--grid_size=17"], "at most the image size 16"),
        ([f"--model={model_path}", "--deformation=diffeo", "--cutoff=1"], "cutoff=1"),
        ([f"--model={model_path}", "--measures="], "--measures is empty"),
        ([f"--model={model_path}", "--batch_size=0"], "--batch_size=0"),
        ([f"--model={model_path}", "--seed=-1"], "--seed=-1"),
        ([f"--model={model_path}", "--dataset=no_such"], "--dataset='no_such'"),
        ([f"--model={model_path}", "--layers=units,all"], "one named selection alone"),
    ]  # fmt: skip
    for argv, message in cases:
        code, lines = _run_script(measure, [*argv, f"--output_dir={out}"], capsys)
        assert code == 1, argv
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (
            argv,
            lines,
        )
        assert not out.exists(), argv
    assert os.listdir(tmp_path) == ["unreadable"]  # no staging directory left either
    # An --output_dir that cannot be written is reported first, naming the flag (not a staging
    # directory after the whole measurement).
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (elsewhere / "a_file").write_text("")
    for directory, message in [
        (elsewhere / "a_file", "`--output_dir` is an existing file"),
        (elsewhere / "a_file" / "report", "`--output_dir` cannot be created"),
        ("/proc/deformstab_report", "`--output_dir` is not writable"),
    ]:
        code, lines = _run_script(
            measure, [f"--model={model_path}", f"--output_dir={directory}"], capsys
        )
        assert code == 1 and len(lines) == 1 and message in lines[0], lines
    assert os.listdir(elsewhere) == ["a_file"]


def test_a_diverged_result_is_reported_as_nan_not_as_a_number(tmp_path):
    diverged = MeasureResult("sensitivity", {"input": 0.3, "block1_conv1": math.nan})
    paths = reports.write_report(tmp_path / "r", {"sensitivity": diverged}, title="diverged")
    assert [os.path.basename(p) for p in paths] == [
        "profile.png", "report.csv", "report.json", "report.md"
    ]  # fmt: skip
    assert "| block1_conv1 | NaN |" in (tmp_path / "r" / "report.md").read_text()
    with open(tmp_path / "r" / "report.csv") as file:
        assert math.isnan(float(list(csv.DictReader(file))[1]["sensitivity"]))


def test_read_and_group_runs(tiny_runs):
    runs = [reports.read_run(tiny_runs / name) for name in sorted(os.listdir(tiny_runs))]
    groups = reports.group_runs(runs, "downsample")
    assert {k: len(v) for k, v in groups.items()} == {"avg": 1, "max": 2}
    profile = reports.profile_groups(groups, "sensitivity", "final")
    assert len(profile["max"]["block1_conv1"]) == 2
    assert runs[0].at("init") == runs[0].history[0]["results"]
    with open(tiny_runs / sorted(os.listdir(tiny_runs))[0] / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    assert runs[0].metrics["accuracy"] == [float(row["accuracy"]) for row in rows]
    assert (
        runs[0].metrics["epoch"]
        == list(range(len(rows)))
        == [r["epoch"] - 1 for r in runs[0].history[1:]]
    )
    with pytest.raises(ValueError, match="not a run directory"):
        reports.read_run(tiny_runs.parent)
    with pytest.raises(ValueError, match="`by`='depth'"):
        reports.group_runs(runs, "depth")


def test_compare_runs_draws_bands_of_two_sample_sds(tiny_runs, tmp_path):
    runs = [reports.read_run(tiny_runs / name) for name in sorted(os.listdir(tiny_runs))]
    out = tmp_path / "figures"
    summary = reports.compare_runs(runs, out, by="downsample", measure="sensitivity")
    assert sorted(os.listdir(out)) == [
        "sensitivity_over_epochs.png", "sensitivity_profiles.png", "smoothness_profiles.png",
        "summary.json", "summary.md",
    ]  # fmt: skip
    assert os.listdir(tmp_path) == ["figures"]  # the staging directory is gone
    groups = reports.group_runs(runs)
    for which in ("init", "final"):
        values = [r.at(which)["sensitivity"]["block1_conv1"] for r in groups["max"]]
        mean, low, high = summary["profiles"][which]["max"]["block1_conv1"]
        assert mean == pytest.approx(np.mean(values))
        assert high - mean == pytest.approx(2 * np.std(values, ddof=1))
        assert mean - low == pytest.approx(2 * np.std(values, ddof=1))
        # one run: the band is the value itself
        (avg,) = [r.at(which)["sensitivity"]["block1_conv1"] for r in groups["avg"]]
        assert summary["profiles"][which]["avg"]["block1_conv1"] == pytest.approx([avg] * 3)
    entry = summary["groups"]["max"]
    assert entry["mean_final"] == pytest.approx([r.at("final")["sensitivity"].mean()
                                                 for r in groups["max"]])  # fmt: skip
    assert entry["epochs"] == [2, 2]
    with open(out / "summary.json") as file:
        assert json.load(file)["groups"] == json.loads(json.dumps(summary["groups"]))
    assert "| max | 2 | 2, 2 |" in (out / "summary.md").read_text()
    for bad, message in [
        ({"by": "depth"}, "`by`='depth'"),
        ({"measure": "curvature"}, "measure='curvature'"),
        ({"measure": "relative_stability"}, "No run measured"),  # the tiny runs did not
    ]:
        with pytest.raises(ValueError, match=message):
            reports.compare_runs(runs, tmp_path / "bad", **bad)
        assert not (tmp_path / "bad").exists()


def _compare(args):
    return subprocess.run(
        [sys.executable, "-m", "trainers.compare", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_compare_script_writes_figures_and_rejects_bad_flags(tiny_runs, tmp_path):
    out = tmp_path / "figures"
    result = _compare([f"--runs={tiny_runs}/max_*,{tiny_runs}/avg_0", f"--output_dir={out}"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| max | 2 |" in result.stdout
    assert len([n for n in os.listdir(out) if n.endswith(".png")]) == 3
    no_measurements = tmp_path / "unmeasured"
    no_measurements.mkdir()
    (no_measurements / "config.json").write_text('{"config": {"downsample": "max"}}')
    # Run directories damaged in the ways a copy or a hand edit can damage them.
    damaged = {}
    for name, path, edit in [
        ("no_config_key", "config.json", lambda d: {"version": d["version"]}),
        ("not_json", "config.json", None),
        ("no_results", "stability/measurements.json",
         lambda d: {**d, "history": [{"epoch": r["epoch"]} for r in d["history"]]}),
        ("no_history", "stability/measurements.json", lambda d: {"seed": 0}),
    ]:  # fmt: skip
        damaged[name] = tmp_path / name
        shutil.copytree(tiny_runs / "max_0", damaged[name])
        if edit is None:
            (damaged[name] / path).write_text("{not json")
        else:
            with open(damaged[name] / path) as file:
                document = json.load(file)
            with open(damaged[name] / path, "w") as file:
                json.dump(edit(document), file)
    (tmp_path / "a_file").write_text("")
    bad = tmp_path / "bad"
    cases = [
        ([], "--runs is required"),
        ([f"--runs={tmp_path}/nothing*"], "matches no run directory"),
        ([f"--runs={tmp_path}/figures"], "not a run directory"),
        ([f"--runs={tiny_runs}/max_0,{no_measurements}"], "holds no stability measurements"),
        ([f"--runs={damaged['no_config_key']}"], "config.json' is not a run's configuration"),
        ([f"--runs={damaged['not_json']}"], "not_json/config.json' is not valid JSON"),
        ([f"--runs={damaged['no_results']}"], "measurements.json' holds a malformed measurement"),
        ([f"--runs={damaged['no_history']}"], "holds no \"history\" list"),
        ([f"--runs={tiny_runs}/max_0", "--measure=curvature"], "measure='curvature'"),
        ([f"--runs={tiny_runs}/max_0", f"--output_dir={tmp_path}/a_file"],
         "`--output_dir` is an existing file"),
        ([f"--runs={tiny_runs}/max_0", "--output_dir=/proc/deformstab_figures"],
         "`--output_dir` is not writable"),
    ]  # fmt: skip
    results = run_cases("trainers.compare", [[f"--output_dir={bad}", *a] for a, _ in cases])
    for (args, message), (code, lines) in zip(cases, results, strict=True):
        assert code == 1, (args, lines)
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (
            args,
            lines,
        )
        assert not bad.exists()
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]  # no staging


def test_stability_report_arguments(tiny_runs):
    model_path = str(tiny_runs / "max_0" / "model.keras")
    model = keras.models.load_model(model_path)
    _, test, _ = data.synthetic(**SYNTHETIC, batch_size=256)
    images = data.take_images(test, 8)
    tps = deformation_layer("tps", 2.0, seed=0)
    # A measurement: the same numbers from a reused layer, a fresh one, and the model's path,
    # with one measure named by a string; equal to the measure function with the same seed.
    first = reports.stability_report(model, images, tps, ["sensitivity"], verbose=0)
    again = reports.stability_report(model_path, images, tps, "sensitivity", verbose=0)
    expected = normalized_sensitivity(model, images, deformation_layer("tps", 2.0), seed=0)
    assert first == again and list(first) == ["sensitivity"]
    np.testing.assert_allclose(
        list(first["sensitivity"].values()), list(expected.values()), rtol=1e-6
    )
    for kwargs, error, message in [
        ({"deformation": "tps"}, TypeError, r"`deformation`.*'tps'.*deformation_layer\('tps'"),
        ({"deformation": 42}, TypeError, "deformation=42"),
        ({"measures": []}, ValueError, "`measures` must name at least one"),
        ({"measures": 42}, TypeError, "measures=42"),
        ({"measures": "curvature"}, ValueError, "measures='curvature'"),
        ({"model": "no/such/model.keras"}, ValueError, "`model` is not a saved model file"),
        ({"model": 42}, TypeError, "`model` must be a keras.Model"),
        ({"seed": -1}, ValueError, "seed=-1"),
    ]:
        arguments = {"model": model, "images": images, "deformation": tps, **kwargs}
        with pytest.raises(error, match=message):
            reports.stability_report(**arguments, verbose=0)
    # smoothness alone needs no deformation
    assert list(reports.stability_report(model, images, None, "smoothness", verbose=0)) == [
        "smoothness"
    ]
    with pytest.raises(TypeError, match="`magnitudes` must be a non-empty list.*'1,2'"):
        reports.magnitude_sweep(model, images, "tps", "1,2", verbose=0)


def test_one_line_errors_drop_colour_codes_and_kerass_call_wrapper():
    from trainers._cli import one_line

    wrapped = (
        "Exception encountered when calling RandomThinPlateSpline.call().\n\n"
        "\x1b[1m`grid_size` must be at most the image size 2\x1b[0m\n\n"
        "Arguments received by RandomThinPlateSpline.call():\n  • data=tf.Tensor(shape=(1, 2))"
    )
    expected = "RandomThinPlateSpline: `grid_size` must be at most the image size 2"
    assert one_line(wrapped) == expected
    assert one_line("two\nlines \x1b[31mred\x1b[0m") == "two lines red"


def test_measure_model_is_the_measure_script_in_python(tiny_runs, tmp_path):
    model_path = str(tiny_runs / "max_0" / "model.keras")
    out = tmp_path / "report"
    measures = ["sensitivity", "relative_stability", "smoothness"]
    report = reports.measure_model(
        model_path, num_images=12, measures=measures, sweep=[0, 2], output_dir=out, verbose=0
    )
    written = [
        "profile.png", "report.csv", "report.json", "report.md",
        "sweep_relative_stability.png", "sweep_sensitivity.png",
    ]  # fmt: skip
    assert [os.path.basename(path) for path in report.files] == written
    assert sorted(os.listdir(out)) == written
    # The data of the model's run (3 synthetic classes of 16x16 images), and the numbers of
    # stability_report and magnitude_sweep on those images.
    _, test, _ = data.synthetic(**SYNTHETIC, batch_size=256)
    images = data.take_images(test, 12)
    np.testing.assert_array_equal(report.images, images)
    model = keras.models.load_model(model_path)
    tps = deformation_layer("tps", 2.0, seed=0, grid_size=3)
    expected = reports.stability_report(model, images, tps, measures, verbose=0)
    assert list(report.results) == measures
    for name in measures:
        assert list(report.results[name]) == list(expected[name])
        np.testing.assert_allclose(
            list(report.results[name].values()), list(expected[name].values()), rtol=1e-6
        )
    swept = reports.magnitude_sweep(
        model, images, "tps", [0, 2], measures[:2], verbose=0, grid_size=3
    )
    assert list(report.sweep) == [0.0, 2.0]
    for magnitude, results in swept.items():
        for name, result in results.items():
            np.testing.assert_allclose(
                list(report.sweep[magnitude][name].values()), list(result.values()), rtol=1e-6
            )
    with open(out / "report.json") as file:
        document = json.load(file)
    assert document["context"] == json.loads(json.dumps(report.context))
    assert document["results"]["sensitivity"]["values"] == pytest.approx(
        dict(report.results["sensitivity"])
    )
    assert "# Stability of max_0" in (out / "report.md").read_text()
    # A keras.Model, resized images, no output directory: nothing written.
    again = reports.measure_model(
        model, dataset="synthetic", num_images=6, measures="sensitivity", image_size=16,
        verbose=0,
    )  # fmt: skip
    assert again.files == [] and again.images.shape == (6, 16, 16, 3)
    assert "resized from 32x32 to 16x16 (bilinear)" in again.context["data"]
    assert os.listdir(tmp_path) == ["report"]


def test_measure_model_errors_name_its_arguments_and_write_nothing(tiny_runs, tmp_path):
    model_path = str(tiny_runs / "max_0" / "model.keras")
    out = tmp_path / "report"
    (tmp_path / "a_file").write_text("")
    cases = [
        ({"magnitude": -1}, ValueError, "received magnitude=-1."),
        ({"sweep": [1, -2]}, ValueError, "received sweep=-2."),
        ({"sweep": "1,2"}, TypeError, "`sweep` must be a list of magnitudes"),
        ({"measures": []}, ValueError, "`measures` is empty"),
        ({"measures": "curvature"}, ValueError, "received measures='curvature'"),
        ({"sweep": [1], "measures": "smoothness"}, ValueError, "`sweep` measures 'sensitivity'"),
        ({"deformation": "twirl"}, ValueError, "received deformation='twirl'"),
        ({"split": "validation"}, ValueError, "received split='validation'"),
        ({"num_images": 1}, ValueError, "`num_images` must be an integer >= 2"),
        ({"num_images": 5000}, ValueError, "num_images=5000 exceeds the 1000 images"),
        ({"batch_size": 0}, ValueError, "received batch_size=0"),
        ({"seed": -1}, ValueError, "received seed=-1"),
        ({"layers": ["units", "all"]}, ValueError, "`layers` takes layer names or one named"),
        ({"image_size": (16,)}, ValueError, "`image_size` must be a positive integer N"),
        ({"resize_method": "cubic"}, ValueError, "received resize_method='cubic'"),
        ({"trust_model": "yes"}, TypeError, "received trust_model='yes'"),
        ({"dataset": "no_such"}, ValueError, "`dataset`='no_such'"),
        ({"dataset": "synthetic"}, ValueError,
         "dataset='synthetic' gives (32, 32, 3); pass image_size=16 to resize them (bilinear)"),
        ({"image_size": 24}, ValueError,
         "image_size=24 resizes the probe images to (24, 24, 3); leave `image_size` out"),
        ({"output_dir": tmp_path / "a_file"}, ValueError, "`output_dir` is an existing file"),
        ({"argument_prefix": "-"}, ValueError, "received argument_prefix='-'"),
        ({"model": str(tmp_path / "missing.keras")}, ValueError,
         "`model` is not a saved model file"),
        ({"model": 42}, TypeError, "`model` must be a keras.Model"),
    ]  # fmt: skip
    for kwargs, error, message in cases:
        arguments = {"model": model_path, "output_dir": out, "verbose": 0, **kwargs}
        with pytest.raises(error, match=re.escape(message)):
            reports.measure_model(arguments.pop("model"), **arguments)
        assert not out.exists(), kwargs
    assert sorted(os.listdir(tmp_path)) == ["a_file"]


def _odd_models(directory):
    """Saved models that are hard to measure, and files that are no model."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Lambda(lambda t: 2.0 * t, name="double")(inputs)
    x = keras.layers.Conv2D(4, 3, name="conv")(x)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    keras.Model(inputs, outputs).save(directory / "lambda.keras")
    inputs = keras.Input((16, 16, 3))
    outputs = keras.layers.Dense(2, name="dense")(keras.layers.Flatten()(inputs))
    keras.Model(inputs, outputs).save(directory / "dense.keras")
    inputs = keras.Input((24, 24, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    keras.Model(inputs, outputs).save(directory / "m24.keras")
    (directory / "text.keras").write_text("not a model")
    with zipfile.ZipFile(directory / "zip.keras", "w") as archive:
        archive.writestr("notes.txt", "not a model either")


def test_measure_says_what_is_wrong_with_the_model(tmp_path, capsys):
    _odd_models(tmp_path)
    out = tmp_path / "report"
    common = ["--num_images=6", "--dataset=synthetic", f"--output_dir={out}"]
    cases = [
        # a .keras file that is no zip (Keras: "File not found"), a zip that is no model (a
        # KeyError traceback): the file named
        ([f"--model={tmp_path}/text.keras"],
         f"--model='{tmp_path}/text.keras' is not a `.keras` archive"),
        ([f"--model={tmp_path}/zip.keras"],
         f"--model='{tmp_path}/zip.keras' is a zip archive but not a saved Keras model "
         "(There is no item named 'config.json' in the archive)"),
        # Keras's safe mode: the file and the flag that trusts it
        ([f"--model={tmp_path}/lambda.keras"],
         f"safe mode refuses to load --model='{tmp_path}/lambda.keras': Requested the "
         "deserialization of a `Lambda` layer"),
        ([f"--model={tmp_path}/lambda.keras"], "if you trust the file, pass --trust_model."),
        # smoothness of a model without convolutions, before measuring (was an IndexError)
        ([f"--model={tmp_path}/dense.keras", "--measures=smoothness", "--image_size=16"],
         f"--measures names 'smoothness', but the model '{tmp_path}/dense.keras' has nothing it "
         "measures"),
        # a wrong --image_size is blamed, not --dataset
        ([f"--model={tmp_path}/m24.keras", "--image_size=64"],
         "expects images of shape (24, 24, 3); --image_size=64 resizes the probe images to "
         "(64, 64, 3); pass --image_size=24 instead"),
        ([f"--model={tmp_path}/m24.keras", "--image_size=32"], "pass --image_size=24 instead"),
        ([f"--model={tmp_path}/m24.keras", "--image_size=24,20"], "pass --image_size=24 instead"),
        ([f"--model={tmp_path}/lambda.keras", "--trust_model", "--image_size=32"],
         "--image_size=32 resizes the probe images to (32, 32, 3); pass --image_size=16 instead"),
    ]  # fmt: skip
    for argv, message in cases:
        code, lines = _run_script(measure, [*argv, *common], capsys)
        assert code == 1 and len(lines) == 1 and message in lines[0], (argv, lines)
        assert not out.exists(), argv
    # --trust_model loads the model that holds a Lambda layer
    argv = [f"--model={tmp_path}/lambda.keras", "--trust_model", "--image_size=16",
            "--measures=sensitivity,smoothness", *common]  # fmt: skip
    code, lines = _run_script(measure, argv, capsys)
    assert code in (None, 0), lines
    with open(out / "report.json") as file:
        assert list(json.load(file)["results"]["smoothness"]["values"]) == ["conv"]
    # In Python: the same errors, naming the argument (and trust_model=True)
    for kwargs, message in [
        ({"model": tmp_path / "text.keras"}, "model='"),
        ({"model": tmp_path / "lambda.keras"}, "if you trust the file, pass trust_model=True."),
        ({"model": tmp_path / "dense.keras", "measures": ["sensitivity", "smoothness"],
          "image_size": 16}, "`measures` names 'smoothness'"),
        ({"model": tmp_path / "m24.keras", "image_size": (24, 20)},
         "image_size=(24, 20) resizes the probe images to (24, 20, 3); pass image_size=24"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=re.escape(message)):
            reports.measure_model(**kwargs, dataset="synthetic", num_images=6, verbose=0)
    report = reports.measure_model(
        tmp_path / "lambda.keras", trust_model=True, image_size=16, num_images=6,
        measures="sensitivity", verbose=0,
    )  # fmt: skip
    assert list(report.results["sensitivity"])[:2] == ["input", "conv"]
    # stability_report on a path: the way forward is to load it with safe_mode=False
    images = np.zeros((4, 16, 16, 3), "float32")
    with pytest.raises(ValueError, match=re.escape("load_model(path, safe_mode=False)")):
        reports.stability_report(str(tmp_path / "lambda.keras"), images, None, "smoothness")
    # write_report: results without a value are an error, not an IndexError
    empty = reports.stability_report(
        keras.models.load_model(tmp_path / "dense.keras"), images, None, "smoothness", verbose=0
    )
    assert len(empty["smoothness"]) == 0
    with pytest.raises(ValueError, match="`results` hold no values"):
        reports.write_report(tmp_path / "empty", empty)
    assert not (tmp_path / "empty").exists()


def _copy_run(source, target, config=None, unfinished_after=None):
    """A copy of a run directory, its settings edited, or stopped after an epoch (no summary,
    its later records and metrics gone), as `train_run` leaves a run it was killed in."""
    shutil.copytree(source, target)
    if config:
        with open(target / "config.json") as file:
            document = json.load(file)
        document["config"].update(config)
        (target / "config.json").write_text(json.dumps(document))
    if unfinished_after is not None:
        os.remove(target / "summary.json")
        os.remove(target / "model.keras")
        path = target / "stability" / "measurements.json"
        document = json.loads(path.read_text())
        document["history"] = [r for r in document["history"] if r["epoch"] <= unfinished_after]
        path.write_text(json.dumps(document))
        with open(target / "metrics.csv") as file:
            rows = file.read().splitlines()
        (target / "metrics.csv").write_text("\n".join(rows[: 1 + unfinished_after]) + "\n")
    return target


def test_compare_refuses_runs_that_are_not_seeds_of_one_model(tiny_runs, tmp_path):
    wider = _copy_run(tiny_runs / "max_1", tmp_path / "max_wider", {"blocks": [[8], [16]]})
    resnet = _copy_run(tiny_runs / "max_1", tmp_path / "max_resnet", {"model": "resnet18"})
    stopped = _copy_run(tiny_runs / "max_1", tmp_path / "max_stopped", unfinished_after=1)
    slower = _copy_run(tiny_runs / "max_1", tmp_path / "max_slower", {"learning_rate": 0.01})
    same = [reports.read_run(tiny_runs / name) for name in ("max_0", "max_1", "avg_0")]
    for odd, message in [
        (wider, f"run '{wider}' has blocks=[[8], [16]], the other runs of downsample='max' "
                "[[4], [8]]"),
        (resnet, f"run '{resnet}' has model='resnet18', the other runs of downsample='max' "
                 "'vgg'"),
        (stopped, f"Run '{stopped}' is unfinished (no summary.json; last measured after epoch "
                  "1 of 2)"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=re.escape(message)):
            reports.compare_runs([*same, reports.read_run(odd)], tmp_path / "figures")
        assert not (tmp_path / "figures").exists()
    # another architecture in a group of its own is a comparison, not an error
    summary = reports.compare_runs(
        [*same[:2], reports.read_run(resnet)], tmp_path / "by_model", by="model"
    )
    assert list(summary["groups"]) == ["vgg", "resnet18"] and summary["warnings"] == []
    # another training setting: averaged, with a warning naming the run
    with pytest.warns(reports.ComparisonWarning, match=re.escape(f"'{slower}' has learning_r")):
        summary = reports.compare_runs([*same, reports.read_run(slower)], tmp_path / "slower")
    assert len(summary["warnings"]) == 1 and "learning_rate=0.01" in summary["warnings"][0]
    markdown = (tmp_path / "slower" / "summary.md").read_text()
    assert "Warning: Averaged as seeds of one setting" in markdown
    # the script: one line naming the run; the warning in the summary it prints
    cases = [
        [f"--runs={tiny_runs}/max_*,{wider}", f"--output_dir={tmp_path}/cli_wider"],
        [f"--runs={tiny_runs}/max_*,{stopped}", f"--output_dir={tmp_path}/cli_stopped"],
        [f"--runs={tiny_runs}/max_*,{slower}", f"--output_dir={tmp_path}/cli_slower"],
    ]
    (wider_code, wider_lines), (stopped_code, stopped_lines), (slower_code, _) = run_cases(
        "trainers.compare", cases
    )
    assert wider_code == 1 and len(wider_lines) == 1 and f"'{wider}' has blocks" in wider_lines[0]
    assert stopped_code == 1 and len(stopped_lines) == 1 and "is unfinished" in stopped_lines[0]
    assert slower_code == 0 and "learning_rate=0.01" in (
        tmp_path / "cli_slower" / "summary.md"
    ).read_text()
    assert not (tmp_path / "cli_wider").exists() and not (tmp_path / "cli_stopped").exists()
