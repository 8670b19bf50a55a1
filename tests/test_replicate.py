"""benchmarks/replicate.py's plumbing on a tiny configuration (the replication itself is long
and runs outside CI): it writes the report, the figures and results.json with the documented
keys, and a rerun skips finished experiments."""

import json
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tree(root):
    rng = np.random.default_rng(0)
    for split, count in (("train", 16), ("test", 12)):
        for label in range(3):
            directory = os.path.join(root, split, f"class{label}")
            os.makedirs(directory)
            for i in range(count):
                image = np.clip(rng.normal(60 * label + 40, 30, (16, 16, 3)), 0, 255)
                png = tf.io.encode_png(image.astype(np.uint8)).numpy()
                with open(os.path.join(directory, f"{i}.png"), "wb") as file:
                    file.write(png)


def test_replicate_writes_report_and_results_then_skips_finished(tmp_path):
    _tree(tmp_path / "tree")
    args = [
        sys.executable, "benchmarks/replicate.py", f"--cifar10={tmp_path / 'tree'}",
        f"--output_dir={tmp_path / 'runs'}", f"--docs_dir={tmp_path / 'docs'}",
        "--variants=max,blur", "--init_seeds=2", "--trained_seeds=*:1", "--train_size=24",
        "--epochs=1", "--random_label_size=24", "--random_label_epochs=2",
        "--synthetic_strengths=1,2", "--synthetic_epochs=1", "--synthetic_samples=32",
        "--synthetic_image_size=16", "--probe_size=8", "--stability_probe_size=8",
        "--shift_images=8", "--sigmas=1", "--batch_size=16", "--model=vgg", "--blocks=4;8",
    ]  # fmt: skip
    first = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    docs = tmp_path / "docs"
    report = (docs / "replication.md").read_text()
    assert "| finding | paper's claim | measured here | holds here |" in report
    for finding in ("F1", "F2", "F3", "F4", "F4b", "F5", "F6", "T1", "Z1"):
        assert f"| {finding} |" in report, finding
    # F1 compares pooling with non-pooling variants: not measurable with max and blur only.
    assert (
        "| F1 | At init, pooling nets are less sensitive than nets without pooling | not " in report
    )
    with open(docs / "replication" / "results.json") as file:
        results = json.load(file)
    assert results["missing"] == []
    probes = ["input", "block1_conv1", "block1_down", "block2_conv1", "block2_down"]
    for variant in ("max", "blur"):
        assert list(results["sensitivity"][variant]["init"]) == probes
        assert len(results["sensitivity"][variant]["init"]["block1_conv1"]) == 2  # seeds
        assert len(results["sensitivity"][variant]["trained"]["block1_conv1"]) == 1
        assert set(results["relative_stability"][variant]["trained"]) == {"D", "G", "R"}
        assert list(results["smoothness"][variant]["init"]) == [
            "block1_conv1_conv", "block2_conv1_conv",
        ]  # fmt: skip
        assert len(results["test_accuracy"][variant]) == 1
        assert 0 <= results["shift_consistency"][variant][0] <= 1
    assert set(results["synthetic"]) == {"1", "2"}
    # two seeds per strength (the default), per-layer lists over seeds
    assert len(results["synthetic"]["1"]["test_accuracy"]) == 2
    assert all(len(v) == 2 for v in results["synthetic"]["2"]["smoothness"].values())
    assert results["synthetic_other_settings"] == {}
    assert results["settings"]["train_size"] == 24 and results["cpu_seconds"] > 0
    figures = sorted(os.listdir(docs / "replication"))
    assert "sensitivity_profiles.png" in figures and "relative_stability_R.png" in figures
    for name in figures:
        if name.endswith(".png"):
            assert f"replication/{name}" in report

    results_file = tmp_path / "runs" / "init" / "max_s0" / "result.json"
    before = results_file.stat().st_mtime_ns
    # A synthetic run of another setting, as an earlier version wrote it (no prototypes or
    # downsample recorded: strokes with max pooling), is reported beside the current setting.
    synthetic = tmp_path / "runs" / "synthetic"
    for c in ("1", "2"):
        record = json.loads((synthetic / f"texture_subsample_C{c}_s0" / "result.json").read_text())
        del record["prototypes"], record["downsample"]
        (synthetic / f"C{c}_s0").mkdir()
        (synthetic / f"C{c}_s0" / "result.json").write_text(json.dumps(record))
    second = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "14 of 14 experiments finished earlier" in second.stdout
    assert results_file.stat().st_mtime_ns == before
    with open(docs / "replication" / "results.json") as file:
        results = json.load(file)
    assert set(results["synthetic_other_settings"]) == {"strokes/max"}
    assert "also tried strokes/max: C=1: TV/L1" in (docs / "replication.md").read_text()
