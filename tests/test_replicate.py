"""benchmarks/replicate.py's plumbing on a tiny configuration (the replication itself is long
and runs outside CI): it writes the report, the figures and results.json with the documented
keys, and a rerun skips finished experiments."""

import functools
import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from deformstab_tf.training import cpu_bfloat16_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _stats_module():
    spec = importlib.util.spec_from_file_location(
        "replication_stats", os.path.join(ROOT, "benchmarks", "_stats.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paper_scale_statistics_against_closed_forms(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    replicate = _stats_module()
    # mean 2, sample SD 1, n 3: half-width t(0.975, 2) / sqrt(3), t(0.975, 2) = 4.302653 (tables)
    lo, hi = replicate.t_interval([1.0, 2.0, 3.0])
    assert lo == pytest.approx(2 - 4.302653 / math.sqrt(3), abs=1e-5)
    assert hi == pytest.approx(2 + 4.302653 / math.sqrt(3), abs=1e-5)
    assert replicate.t_interval([1.0]) is None
    # D falls and G rises with depth in every seed: T1 holds (intervals degenerate at -1 / +1).
    names = ["input", "a", "b", "c", "d"]
    falling = {n: [4.0 - i, 4.5 - i, 5.0 - i] for i, n in enumerate(names)}
    rising = {n: [1.0 + i, 2.0 + 2 * i, 0.5 + i] for i, n in enumerate(names)}
    mixed = {n: [1.0 + i, 5.0 - i, 1.0 + i] for i, n in enumerate(names)}
    t1 = replicate.t1_statistics(
        {
            "max": {"trained": {"D": falling, "G": rising}},
            "blur": {"trained": {"D": falling, "G": mixed}},
        }
    )
    assert t1["variants"]["max"]["D"]["rank_corr"] == [-1.0, -1.0, -1.0]
    assert t1["variants"]["max"]["holds"] is True
    # G's correlations +1, -1, +1: mean 1/3, SD 2/sqrt(3): the interval spans 0.
    blur = t1["variants"]["blur"]
    assert blur["G"]["mean"] == pytest.approx(1 / 3)
    assert blur["G"]["ci"][0] < 0 < blur["G"]["ci"][1] and blur["holds"] is False
    # 1/3 -+ 4.302653 * (2/sqrt(3)) / sqrt(3) = -2.54, +3.20: clipped to a correlation's range
    assert blur["G"]["ci"] == [-1.0, 1.0]
    assert (t1["holds_in"], t1["decided"]) == (1, 2)
    # Z1: per-seed differences and Welch's p-value against a numpy re-computation.
    z1 = replicate.z1_statistics({"max": [0.80, 0.82, 0.81], "blur": [0.84, 0.85, 0.86]})
    assert z1["difference_per_seed"] == pytest.approx([0.04, 0.03, 0.05])
    b, m = np.array([0.84, 0.85, 0.86]), np.array([0.80, 0.82, 0.81])
    t = (b.mean() - m.mean()) / math.sqrt(b.var(ddof=1) / 3 + m.var(ddof=1) / 3)
    assert t == pytest.approx(4.898979, rel=1e-5)
    # equal variances, n = 3 each: Welch's df = 4; two-sided p for t = 4.898979 with 4 df
    assert z1["p_value"] == pytest.approx(0.008050, abs=2e-6)
    assert z1["ci"][0] > 0 and z1["holds"] is True
    # paired interval above 0 but Welch's p above 0.05: the report says they disagree
    from replication.report import _z1_disagreement_lines

    assert _z1_disagreement_lines(z1) == []
    apart = replicate.z1_statistics({"max": [0.80, 0.90, 0.85], "blur": [0.81, 0.91, 0.862]})
    assert apart["ci"][0] > 0 and apart["p_value"] > 0.05
    assert "Welch's p = " in _z1_disagreement_lines(apart)[1]


def test_extended_statistics_against_closed_forms():
    replicate = _stats_module()
    # T2: D doubles after the permutation at the deepest probes only, in every seed.
    names = ["input", "a", "b", "c", "d"]
    before = {n: [1.0, 2.0, 4.0] for n in names}
    factors = {"input": 1.0, "a": 1.0, "b": 1.02, "c": 2.0, "d": 4.0}
    jitter = [1.0, 1.05, 0.97]
    after = {n: [v * factors[n] * j for v, j in zip(before[n], jitter, strict=True)]
             for n in names}  # fmt: skip
    t2 = replicate.t2_statistics({"max": {"D": before}}, {"max": {"D": after}})
    entry = t2["variants"]["max"]
    assert list(entry["per_probe"]) == ["a", "b", "c", "d"]  # the input left out
    assert entry["per_probe"]["d"]["log_ratio"] == pytest.approx(np.log(4 * np.array(jitter)))
    assert entry["per_probe"]["d"]["mean"] == pytest.approx(np.log(4) + np.log(jitter).mean())
    assert entry["rank_corr"] == pytest.approx([1.0, 1.0, 1.0])
    assert entry["crossover"] == "c" and entry["holds"] is True

    # Z1's measurement error: sqrt(se_b^2 + se_m^2) per seed, beside the seeds' spread.
    def estimates(*pairs):
        return [{"value": v, "standard_error": e} for v, e in pairs]

    error = replicate.z1_measurement_error(
        {
            "max": estimates((0.90, 0.003), (0.91, 0.004)),
            "blur": estimates((0.92, 0.004), (0.92, 0.003)),
        }
    )
    assert error["difference_standard_error_per_seed"] == pytest.approx([0.005, 0.005])
    assert error["seed_sd_of_differences"] == pytest.approx(np.std([0.02, 0.01], ddof=1))
    # Reproducibility: retrained - committed, against the committed seeds' SD.
    committed = {"max": {0: {"a": 0.87}, 1: {"a": 0.88}, 2: {"a": 0.86}}}
    again = replicate.reproducibility({"max": {0: {"a": 0.89}}}, committed, ["a"])["a"]
    assert again["differences"] == {"max_s0": pytest.approx(0.02)}
    assert again["committed_seed_sd"]["max"] == pytest.approx(0.01)
    assert again["ratio"] == pytest.approx(2.0)
    # P1: error = 0.3 R^0.4 exactly, D unrelated: slope 0.4, prefactor 0.3; Spearman by hand.
    r = np.array([0.01, 0.05, 0.1, 0.3, 0.6, 1.0])
    d = np.array([0.5, 0.1, 0.9, 0.3, 0.2, 0.4])
    points = [{"error": 0.3 * x**0.4, "R": x, "D": y} for x, y in zip(r, d, strict=True)]
    p1 = replicate.p1_statistics(points)
    assert p1["slope"] == pytest.approx(0.4) and p1["prefactor"] == pytest.approx(0.3)
    assert p1["slope_ci"] == pytest.approx([0.4, 0.4], abs=1e-9)  # an exact fit
    assert p1["spearman_R"] == pytest.approx(1.0)
    # ranks of D: 5 1 6 3 2 4 against 1..6: 1 - 6 * sum d^2 / (n (n^2 - 1)) = 1 - 6*40/210
    assert p1["spearman_D"] == pytest.approx(1 - 6 * 40 / 210)
    z, half = np.arctanh(1 - 6 * 40 / 210), 1.959964 * math.sqrt(1.06 / 3)
    assert p1["spearman_D_ci"] == pytest.approx([np.tanh(z - half), np.tanh(z + half)], abs=1e-5)
    assert p1["holds"] is True
    assert replicate.p1_statistics(points[:2])["holds"] is None


def test_keras_batch_norm_networks_sit_beside_the_same_variant_and_seed(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    from replication.report import _keras_batch_norm_lines

    paper = {
        # strided_s1 finished, strided_s0 not yet; strided_relu must not be read as strided
        "finished": ["paper/strided_relu_s0", "paper/strided_s1"],
        "test_accuracy": {"strided": [0.81], "strided_relu": [0.82]},
        "shift_consistency": {"strided": [0.91], "strided_relu": [0.92]},
        "keras_batch_norm": {
            "strided_s0": {"test_accuracy": 0.70, "shift_consistency": 0.80},
            "strided_s1": {"test_accuracy": 0.71, "shift_consistency": 0.81},
            "strided_relu_s0": {"test_accuracy": 0.72, "shift_consistency": 0.82},
        },
    }
    rows = [line for line in _keras_batch_norm_lines(paper) if line.startswith("| strided")]
    assert rows == [
        "| strided_s0 | 0.7000 | not yet | 0.800 | not yet |",
        "| strided_s1 | 0.7100 | 0.8100 | 0.810 | 0.910 |",
        "| strided_relu_s0 | 0.7200 | 0.8200 | 0.820 | 0.920 |",
    ]
    assert _keras_batch_norm_lines({"keras_batch_norm": {}}) == []


def test_a_changed_verdict_shows_the_numbers_behind_it_t1_and_z1(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    from replication.report import _scale_change_lines, _t1_turned_variants, _z1_turned

    names = ["input", "a", "b", "c"]
    falling = {n: [3.0 - i] for i, n in enumerate(names)}
    rising = {n: [1.0 + i] for i, n in enumerate(names)}
    # G at "a", "b", "c": 3, 1, 2 -> ranks 2, 0, 1 against depth 0, 1, 2: Spearman -0.5
    bumpy = {"input": [0.0], "a": [3.0], "b": [1.0], "c": [2.0]}
    cpu = {
        "relative_stability": {
            "max": {"trained": {"D": falling, "G": rising}},  # T1 held: not listed
            "strided": {"trained": {"D": falling, "G": bumpy}},
            "strided_relu": {"trained": {"D": falling, "G": bumpy}},
        },
        "smoothness": {"strided": {"trained": {"conv1": [1.6], "conv2": [1.5]}}},
        "test_accuracy": {"max": [0.7], "strided": [0.58, 0.60]},
    }
    paper = {
        "T1": {
            "variants": {v: {"D": {"mean": -0.9}, "G": {"mean": 0.8}} for v in cpu["test_accuracy"]}
            # failed at both scales (G falls on average): not a change to explain
            | {"strided_relu": {"D": {"mean": -0.9}, "G": {"mean": -0.1}}}
        },
        "smoothness": {"strided": {"trained": {"conv1": [1.2, 1.3], "conv2": [1.1, 1.0]}}},
        "test_accuracy": {"max": [0.87], "strided": [0.86, 0.88]},
    }
    assert _t1_turned_variants(cpu, paper) == ["strided"]
    lines = _scale_change_lines(["T1"], cpu, paper)
    assert lines[1].startswith(
        "- **T1**: CPU-sized -> paper scale, strided: rank corr. with depth D -1.00 -> -0.90, "
        "G -0.50 -> +0.80; trained filters' TV/L1 1.550 -> 1.150; test accuracy 0.590 -> 0.870. "
        "Tomasini et al."
    )
    assert _scale_change_lines(["F2"], cpu, paper) == []  # no explanation written for F2
    cpu["shift_consistency"] = {"max": [0.78, 0.84], "blur": [0.80]}
    cpu["test_accuracy"]["blur"] = [0.70]
    paper["shift_consistency"] = {"max": [0.89, 0.90, 0.91], "blur": [0.91, 0.92, 0.90]}
    paper["test_accuracy"]["blur"] = [0.88]
    paper["Z1"] = {"mean_difference": 0.01}
    # blur trailed max at the CPU-sized scale; leading in every seed is a turn, in some is not
    assert _z1_turned(cpu, {"difference_per_seed": [0.01, 0.02, 0.005]}) == {
        "Z1": "blur, behind max before, is now ahead of it in every seed"
    }
    assert _z1_turned(cpu, {"difference_per_seed": [0.01, -0.002, 0.02]}) == {}
    (line,) = _scale_change_lines(["Z1"], cpu, paper)[1:]
    # SDs: 0.06 / sqrt(2) = 0.042 over two seeds, 0.01 over three
    assert line.startswith(
        "- **Z1**: CPU-sized -> paper scale, blur - max -0.0100 -> +0.0100; max: seed SD of "
        "shift consistency 0.042 -> 0.010, test accuracy 0.700 -> 0.870; blur: seed SD of shift "
        "consistency n/a (1 seed) -> 0.010, test accuracy 0.700 -> 0.880. Zhang's"
    )


def test_a_finding_that_fails_at_paper_scale_says_which_seeds_decide_it(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    from _stats import t1_statistics, z1_statistics
    from replication.report import _paper_failure_lines

    names = ["input", "a", "b", "c", "d"]

    def profile(*per_seed):  # per seed, the values at a..d
        return {"input": [0.0] * len(per_seed)} | {
            n: [seed[i] for seed in per_seed] for i, n in enumerate(names[1:])
        }

    falling = profile([4, 3, 2, 1], [4, 3, 2, 1], [4, 3, 2, 1])
    # G per seed: rank corr. +1.0, +0.2 (sum of squared rank differences 8) and +0.8 (2): all
    # rising, mean 0.667, SD 0.4163, t(0.975, 2) 4.303 -> 0.667 -+ 1.034: [-0.37, +1.00] clipped
    wide = profile([1, 2, 3, 4], [3, 2, 1, 4], [1, 2, 4, 3])
    # a seed against the trend: G falls (-1.0) in seed 2
    against = profile([1, 2, 3, 4], [1, 2, 3, 4], [4, 3, 2, 1])
    t1 = t1_statistics(
        {
            "max": {"trained": {"D": falling, "G": profile(*[[1, 2, 3, 4]] * 3)}},
            "blur": {"trained": {"D": falling, "G": wide}},
            "strided": {"trained": {"D": falling, "G": against}},
        }
    )
    assert [e["holds"] for e in t1["variants"].values()] == [True, False, False]
    lines = _paper_failure_lines({"T1": False, "Z1": True, "F2": True}, t1, {})
    assert lines[:3] == ["", "Findings that do not hold at paper scale, and why we think so:", ""]
    (line,) = lines[3:]
    assert line.startswith(
        "- **T1**: blur (s0 D -1.00 G +1.00, s1 D -1.00 G +0.20, s2 D -1.00 G +0.80): every seed "
        "has D falling and G rising, but the intervals D [-1.00, -1.00], G [-0.37, +1.00] are "
        "not both clear of 0 (with 3 seeds a 95% t interval reaches 4.3 standard errors either "
        "side of the mean); strided (s0 D -1.00 G +1.00, s1 D -1.00 G +1.00, s2 D -1.00 "
        "G -1.00): seed s2 against the trend. Over all 9 trained networks, 8 have D falling"
    )
    assert "only the strength of the trend varies" in line and "weaker than the seed-to" in line
    # Z1: every seed positive, interval reaching 0 -> the width; mixed signs -> the noise
    z1 = z1_statistics({"max": [0.90, 0.91, 0.89], "blur": [0.901, 0.96, 0.895]})
    (line,) = _paper_failure_lines({"Z1": False}, t1, z1)[3:]
    assert line.startswith(
        "- **Z1**: blur - max per seed +0.001, +0.050, +0.005: positive in 3 of 3"
    )
    assert "reaches 0" in line
    z1 = z1_statistics({"max": [0.90, 0.91, 0.89], "blur": [0.89, 0.96, 0.895]})
    (line,) = _paper_failure_lines({"Z1": False}, t1, z1)[3:]
    assert "positive in 2 of 3 seeds; the seeds disagree" in line
    assert _paper_failure_lines({"T1": True, "Z1": None}, t1, z1) == []


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

    # Paper scale beside it: results.json keeps the CPU-sized keys and gains "paper".
    paper_args = [*args, "--scale=paper", "--paper_seeds=2", "--paper_epochs=1",
                  "--paper_train_size=24"]  # fmt: skip
    third = subprocess.run(paper_args, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert third.returncode == 0, third.stderr[-3000:]
    with open(docs / "replication" / "results.json") as file:
        both = json.load(file)
    assert {k: v for k, v in both.items() if k != "paper"} == results
    paper = both["paper"]
    assert paper["missing"] == [] and len(paper["finished"]) == 4
    assert paper["settings"]["train_size"] == 24
    for key in ("sensitivity", "smoothness", "relative_stability", "shift_consistency"):
        assert set(paper[key]) == {"max", "blur"}, key
    assert all(len(a) == 2 for a in paper["test_accuracy"].values())
    assert len(paper["T1"]["variants"]["max"]["D"]["ci"]) == 2
    assert set(paper["Z1"]) >= {"ci", "p_value", "difference_per_seed"}
    report = (docs / "replication.md").read_text()
    assert "# Paper scale: converged networks" in report
    assert "| finding | CPU-sized (10,000 images, 12 epochs) | holds | paper scale |" in report
    assert "replication/paper/sensitivity_profiles.png" in report
    assert len(os.listdir(docs / "replication" / "experiments" / "paper")) == 4
    fourth = subprocess.run(paper_args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "4 of 4 experiments finished earlier" in fourth.stdout

    # The extended studies: retrained networks, trained then measured by separate runs.
    extended_args = [*args, "--scale=extended", "--z1_seeds=2", "--t2_seeds=1",
                     "--t3_seeds=1", "--paper_epochs=1", "--paper_train_size=24",
                     "--p1_architectures=lenet,fully_connected", "--p1_sizes=24",
                     "--p1_steps=5"]  # fmt: skip
    run = functools.partial(subprocess.run, cwd=ROOT, capture_output=True, text=True, timeout=600)
    trained = run([*extended_args, "--train_next"])
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "trained retrained/max_s0" in trained.stdout
    assert not (docs / "replication" / "experiments" / "retrained").exists()  # measured later
    measured = run([*extended_args, "--measure_trained"])
    assert measured.returncode == 0, measured.stderr[-3000:]
    assert os.listdir(docs / "replication" / "experiments" / "retrained") == ["max_s0.json"]
    rest = run(extended_args)
    assert rest.returncode == 0, rest.stderr[-3000:]
    with open(docs / "replication" / "results.json") as file:
        everything = json.load(file)
    assert everything["paper"] == both["paper"]  # the paper-scale results stay as they were
    extended = everything["extended"]
    assert extended["missing"] == []
    noisy = ["max_noise0.05_s0", "max_noise0.15_s0", "strided_noise0.05_s0",
             "strided_noise0.15_s0"]  # fmt: skip
    p1 = ["fully_connected_n24_s0", "lenet_n24_s0"]
    assert sorted(extended["networks"]) == sorted(
        ["blur_s0", "blur_s1", "max_s0", "max_s1", "strided_s0", *noisy, *p1]
    )
    network = extended["networks"]["max_s0"]
    assert network["cpu_bfloat16"] == cpu_bfloat16_path() or network["cpu_bfloat16"] is None
    with open(docs / "replication" / "experiments" / "retrained" / "max_s0.json") as file:
        record = json.load(file)
    test_set = record["shift_consistency_test_set"]
    assert test_set["num_images"] == 36 and test_set["pairs_per_image"] == 5
    assert 0 <= test_set["value"] <= 1 and 0 <= test_set["standard_error"] <= 0.5 / np.sqrt(35)
    # T2: the permuted copy is measured at the same probes; the logits are kept apart.
    assert list(record["channel_permutation"]["relative_stability"]["D"]) == probes
    assert list(record["relative_stability"]["D"]) == probes
    assert record["output_stability"]["layer"] == "logits"
    z1 = extended["Z1"]
    assert z1["seeds"] == [0, 1] and len(z1["test_set"]["ci"]) == 2
    blur_minus_max = [
        extended["networks"][f"blur_s{k}"]["shift_consistency_test_set"]
        - extended["networks"][f"max_s{k}"]["shift_consistency_test_set"]
        for k in (0, 1)
    ]
    np.testing.assert_allclose(z1["test_set"]["difference_per_seed"], blur_minus_max)
    assert set(extended["T2"]["variants"]) == {"max", "blur", "strided"}
    assert extended["T2"]["variants"]["strided"]["holds"] is None  # one seed: no interval
    # T3: T1's test per noisy condition; the noise went into training only.
    assert set(extended["T3"]["variants"]) == {n[: -len("_s0")] for n in noisy}
    with open(docs / "replication" / "experiments" / "noisy" / "max_noise0.15_s0.json") as file:
        assert json.load(file)["noise"] == 0.15
    config = json.loads(
        (tmp_path / "runs" / "noisy" / "max_noise0.15_s0" / "config.json").read_text()
    )
    assert config["config"]["augment"] == ["standard", "noise:0.15"]
    # P1: a point per network (the retrained max_s0 as the VGG on all images), the fit of
    # log error on log R against the numbers it is made of.
    points = extended["P1"]["points"]
    assert sorted(p["name"] for p in points) == [
        "cifar_vgg_n50000 (retrained/max_s0)", "fully_connected_n24", "lenet_n24",
    ]  # fmt: skip
    with open(docs / "replication" / "experiments" / "p1" / "lenet_n24.json") as file:
        lenet = json.load(file)
    (lenet_point,) = [p for p in points if p["name"] == "lenet_n24"]
    assert lenet_point["error"] == pytest.approx(1 - lenet["test_accuracy"])
    assert lenet_point["R"] == lenet["output_stability"]["R"]
    assert lenet["output_stability"]["layer"] == "logits"
    slope = np.polyfit(np.log([p["R"] for p in points]), np.log([p["error"] for p in points]), 1)
    assert extended["P1"]["slope"] == pytest.approx(slope[0])
    assert extended["P1"]["holds"] is None  # 3 networks: no interval of a correlation
    lenet_config = json.loads((tmp_path / "runs" / "p1" / "lenet_n24" / "config.json").read_text())
    assert lenet_config["config"]["epochs"] == 5 and lenet_config["config"]["train_size"] == 24
    assert (docs / "replication" / "extended" / "p1_error_vs_R.png").exists()
    # The retrained networks beside the committed ones of the same variant and seed.
    accuracy = extended["reproducibility"]["test_accuracy"]["differences"]
    assert sorted(accuracy) == ["blur_s0", "blur_s1", "max_s0", "max_s1"]
    report = (docs / "replication.md").read_text()
    assert "# Paper scale: converged networks" in report
    assert "# Extended studies at paper scale" in report and "| Z1 blur raises" in report
    # Rewriting the paper-scale report keeps the extended section below it.
    assert run([*paper_args, "--report_only"]).returncode == 0
    rewritten = (docs / "replication.md").read_text()
    assert rewritten.count("# Extended studies at paper scale") == 1
