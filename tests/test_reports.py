"""trainers/measure.py and trainers/compare.py over deformstab_tf.reports."""

import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from absl import flags

from deformstab_tf import data, reports
from deformstab_tf.deformations.layers import deformation_layer
from deformstab_tf.measures import normalized_sensitivity
from deformstab_tf.training import train_run
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


def test_measure_report_matches_the_measure_functions(tiny_runs, tmp_path, monkeypatch):
    model_path = str(tiny_runs / "max_0" / "model.keras")
    out = tmp_path / "report"
    # The synthetic source's options come from the model's run: 3 classes of 16x16 images.
    monkeypatch.setattr(data, "load_dataset", _synthetic_loader(data.load_dataset), raising=True)
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
    with open(out / "report.csv") as file:
        rows = list(csv.DictReader(file))
    assert [row["probe"] for row in rows[:3]] == ["input", "block1_conv1", "block1_down"]
    assert float(rows[1]["sensitivity"]) == pytest.approx(got["block1_conv1"])
    assert "| block1_conv1 |" in (out / "report.md").read_text()


def _synthetic_loader(original):
    def load(source, **kwargs):
        if source == "synthetic":
            kwargs["synthetic_options"] = SYNTHETIC
        return original(source, **kwargs)

    return load


def test_measure_bad_flags_name_the_flag_and_write_nothing(tiny_runs, tmp_path):
    out = tmp_path / "report"
    model_path = str(tiny_runs / "max_0" / "model.keras")
    cases = [
        ([f"--model={tmp_path}/missing.keras"], "is not a file"),
        ([f"--model={model_path}", "--deformation=twirl"], "--deformation='twirl'"),
        ([f"--model={model_path}", "--measures=curvature"], "'curvature'"),
        ([f"--model={model_path}", "--dataset=folder:/nonexistent"], "/nonexistent"),
        # the synthetic default is 32x32; the model takes 16x16 images
        ([f"--model={model_path}"], "expects images of shape (16, 16, 3)"),
    ]
    for argv, message in cases:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            _measure([*argv, f"--output_dir={out}"])
        assert not out.exists()


def test_read_and_group_runs(tiny_runs):
    runs = [reports.read_run(tiny_runs / name) for name in sorted(os.listdir(tiny_runs))]
    groups = reports.group_runs(runs, "downsample")
    assert {k: len(v) for k, v in groups.items()} == {"avg": 1, "max": 2}
    profile = reports.profile_groups(groups, "sensitivity", "final")
    assert len(profile["max"]["block1_conv1"]) == 2
    assert runs[0].at("init") == runs[0].history[0]["results"]
    with pytest.raises(ValueError, match="not a run directory"):
        reports.read_run(tiny_runs.parent)
    with pytest.raises(ValueError, match="`by`='depth'"):
        reports.group_runs(runs, "depth")


def _compare(args):
    return subprocess.run(
        [sys.executable, "-m", "trainers.compare", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_compare_draws_the_figures_and_rejects_bad_flags(tiny_runs, tmp_path):
    out = tmp_path / "figures"
    result = _compare([f"--runs={tiny_runs}/*", f"--output_dir={out}"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(os.listdir(out)) == [
        "sensitivity_final.png", "sensitivity_init.png", "sensitivity_over_epochs.png",
        "smoothness_final.png", "smoothness_init.png", "summary.json", "summary.md",
    ]  # fmt: skip
    with open(out / "summary.json") as file:
        summary = json.load(file)
    runs = {g: [reports.read_run(d) for d in e["runs"]] for g, e in summary["groups"].items()}
    expected = [r.at("final")["sensitivity"].mean() for r in runs["max"]]
    np.testing.assert_allclose(summary["groups"]["max"]["mean_final"], expected)
    for args, message in [
        ([f"--runs={tmp_path}/nothing*"], "matches no run directory"),
        ([f"--runs={tmp_path}"], "not a run directory"),
        ([f"--runs={tiny_runs}/*", "--by=depth"], "`by`='depth'"),
    ]:
        bad = tmp_path / "bad"
        result = _compare([*args, f"--output_dir={bad}"])
        assert result.returncode == 1
        lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and message in lines[0], result.stderr[-1500:]
        assert not bad.exists()
