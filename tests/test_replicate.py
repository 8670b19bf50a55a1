"""benchmarks/replicate.py's plumbing on a tiny configuration (the replication itself is long
and runs outside CI): it writes the report, the figures and results.json with the documented
keys, and a rerun skips finished experiments."""

import dataclasses
import functools
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats
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
    # Reproducibility: retrained - committed, against what a new seed would do.
    committed = {"max": {0: {"a": 0.87}, 1: {"a": 0.88}, 2: {"a": 0.86}}}
    again = replicate.reproducibility({"max": {0: {"a": 0.89}}}, committed, ["a"])["a"]
    assert again["differences"] == {"max_s0": pytest.approx(0.02)}
    # Only the committed seeds spread (SD 0.01): a new seed moves 0.02 / sqrt(pi) on average,
    # so a difference of 0.02 is sqrt(pi) times that.
    assert again["ratio_to_new_seed"] == pytest.approx(math.sqrt(math.pi))
    # SD 0.01 of 3 values, chi-square(2) quantiles 0.050636 and 7.377759 (tables).
    committed_sd = again["seed_sd"]["max"]["committed"]
    assert committed_sd["sd"] == pytest.approx(0.01) and committed_sd["n"] == 3
    assert committed_sd["ci"] == pytest.approx(
        [0.01 * math.sqrt(2 / 7.377759), 0.01 * math.sqrt(2 / 0.050636)], rel=1e-5
    )
    assert again["seed_sd"]["max"]["retrained"] is None  # one retrained seed
    # Pooled over machines, each group about its own mean: committed SS 2e-4 (df 2) and
    # retrained 0.89, 0.91 (SS 2e-4, df 1): SD sqrt(4e-4 / 3); a new seed gives 2 SD / sqrt(pi).
    two = replicate.reproducibility(
        {"max": {0: {"a": 0.89}, 1: {"a": 0.91}}}, committed, ["a"]
    )["a"]
    sd = math.sqrt(4e-4 / 3)
    assert two["pooled_seed_sd"]["sd"] == pytest.approx(sd) and two["pooled_seed_sd"]["df"] == 3
    assert two["pooled_seed_sd"]["ci"][0] < sd < two["pooled_seed_sd"]["ci"][1]
    # Monte Carlo: the mean |X - Y| of two normal draws of SD 1.
    draws = np.random.default_rng(0).normal(size=(2, 200_000))
    assert np.abs(draws[0] - draws[1]).mean() == pytest.approx(2 / math.sqrt(math.pi), rel=0.01)
    assert two["new_seed_mean_abs"] == pytest.approx(2 * sd / math.sqrt(math.pi))
    assert two["mean_difference"]["mean"] == pytest.approx((0.02 + 0.03) / 2)
    assert two["ratio_to_new_seed"] == pytest.approx(0.025 / two["new_seed_mean_abs"])
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
    # M1: strided gains (0.9 - 0.7, 0.85 - 0.7) against max's (0.1, 0.1) per seed.
    invariance = {
        "strided": {"noise": [0.7, 0.7], "plain": [0.8, 0.8], "smooth": [0.9, 0.85]},
        "max": {"noise": [0.8, 0.8], "plain": [0.85, 0.85], "smooth": [0.9, 0.9]},
    }
    m1 = replicate.m1_statistics(invariance)
    assert m1["difference"]["per_seed"] == pytest.approx([0.1, 0.05])
    half = 12.706205 * 0.025  # t(1) quantile x standard error of [0.1, 0.05]
    assert m1["difference"]["ci"] == pytest.approx([0.075 - half, 0.075 + half])
    assert m1["holds"] is False  # 2 seeds: the interval reaches below 0
    # M2: per seed, invariance rises and accuracy falls with the window in rank order.
    points = {
        seed: {k: {"invariance": 0.9 + 0.01 * k + e, "test_accuracy": 0.9 - 0.01 * k}
               for k, e in zip((2, 3, 4), (0.0, 0.002, -0.001), strict=True)}
        for seed in (0, 1, 2)
    }  # fmt: skip
    points[2][4]["invariance"] += 0.006  # seed 2's trend steeper: the slopes spread
    m2 = replicate.m2_statistics(points)
    assert m2["invariance"]["rank_corr"] == [1.0, 1.0, 1.0] and m2["holds"] is True
    assert m2["test_accuracy"]["ci"] == [-1.0, -1.0]  # every seed ranks alike: no width
    slopes = [scipy.stats.linregress([2, 3, 4], [points[s][k]["invariance"] for k in (2, 3, 4)])
              .slope for s in (0, 1, 2)]  # fmt: skip
    assert m2["invariance"]["slope"] == pytest.approx(slopes) and slopes[2] > slopes[0]
    half = 4.302653 * scipy.stats.sem(slopes)  # t(2) quantile x standard error
    assert m2["invariance"]["slope_ci"] == pytest.approx(np.mean(slopes) + np.array([-half, half]))
    assert m2["test_accuracy"]["slope"] == pytest.approx([-0.01] * 3)
    # The slopes decide: a trend that rises at one seed and falls at another does not hold.
    points[1] = {k: {**v, "invariance": 1.8 - v["invariance"]} for k, v in points[1].items()}
    assert replicate.m2_statistics(points)["holds"] is False
    # M3: a feature's invariance with minus without it, per seed.
    m3 = replicate.m3_statistics({"blur": ([0.9, 0.8, 0.85], [0.95, 0.86, 0.9])})
    assert m3["changes"]["blur"]["per_seed"] == pytest.approx([0.05, 0.06, 0.05])
    assert m3["changes"]["blur"]["raises"] is True and m3["holds"] is True


def test_mouton_summaries_tell_an_interval_reaching_0_from_one_below_it(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    from _stats import m1_statistics, m3_statistics
    from replication.findings import MOUTON_FINDINGS, evaluate_findings

    m1 = m1_statistics({"strided": {"noise": [0.7, 0.7], "smooth": [0.9, 0.85]},
                        "max": {"noise": [0.8, 0.8], "smooth": [0.9, 0.9]}})  # fmt: skip
    m3 = m3_statistics({"blur": ([0.9, 0.8, 0.85], [0.95, 0.86, 0.9]),
                        "gap": ([0.9, 0.9, 0.9], [0.8, 0.81, 0.79]),
                        "translate": ([0.9, 0.9, 0.9], [0.91, 0.88, 0.9])})  # fmt: skip
    rows = evaluate_findings({"M1": {**m1, "seeds": [0, 1]}, "M3": {"invariance": m3}},
                             MOUTON_FINDINGS)  # fmt: skip
    summary = {row["finding"]: (row["summary"], row["verdict"]) for row in rows}
    # gains 0.1 and 0.05: mean 0.075, t(1) interval 0.075 -+ 12.706205 * 0.025 reaches 0
    assert summary["M1"] == ("strided - max gain +0.0750 [-0.2427, +0.3927] (reaches 0), 2 seeds",
                             "**no**")  # fmt: skip
    assert summary["M3"][0] == (
        "blur +0.0533 [+0.0390, +0.0677]; gap -0.1000 [-0.1248, -0.0752] (below 0); "
        "translate -0.0033 [-0.0413, +0.0346] (reaches 0)"
    )


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
    from replication.report import _scale_change_text, _t1_turned_variants, _z1_turned

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
    assert _scale_change_text("T1", cpu, paper).startswith(
        "CPU-sized -> paper scale, strided: rank corr. with depth D -1.00 -> -0.90, "
        "G -0.50 -> +0.80; trained filters' TV/L1 1.550 -> 1.150; test accuracy 0.590 -> 0.870. "
        "Tomasini et al."
    )
    assert _scale_change_text("F2", cpu, paper) is None  # no explanation written for F2
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
    # SDs: 0.06 / sqrt(2) = 0.042 over two seeds, 0.01 over three
    assert _scale_change_text("Z1", cpu, paper).startswith(
        "CPU-sized -> paper scale, blur - max -0.0100 -> +0.0100; max: seed SD of "
        "shift consistency 0.042 -> 0.010, test accuracy 0.700 -> 0.870; blur: seed SD of shift "
        "consistency n/a (1 seed) -> 0.010, test accuracy 0.700 -> 0.880. Zhang's"
    )


def test_a_finding_that_fails_at_paper_scale_says_which_seeds_decide_it(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    from _stats import t1_statistics, z1_statistics
    from replication.report import _paper_failure_text

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
    shown = {"T1": False, "Z1": True, "F2": True}
    assert _paper_failure_text("Z1", shown, t1, {}) is None  # Z1 and F2 hold: nothing to say
    assert _paper_failure_text("F2", shown, t1, {}) is None
    line = _paper_failure_text("T1", shown, t1, {})
    assert line.startswith(
        "blur (s0 D -1.00 G +1.00, s1 D -1.00 G +0.20, s2 D -1.00 G +0.80): every seed "
        "has D falling and G rising, but the intervals D [-1.00, -1.00], G [-0.37, +1.00] are "
        "not both clear of 0 (with 3 seeds a 95% t interval reaches 4.3 standard errors either "
        "side of the mean); strided (s0 D -1.00 G +1.00, s1 D -1.00 G +1.00, s2 D -1.00 "
        "G -1.00): seed s2 against the trend. Over all 9 trained networks, 8 have D falling"
    )
    assert "only the strength of the trend varies" in line and "weaker than the seed-to" in line
    # Z1: every seed positive, interval reaching 0 -> the width; mixed signs -> the noise
    z1 = z1_statistics({"max": [0.90, 0.91, 0.89], "blur": [0.901, 0.96, 0.895]})
    line = _paper_failure_text("Z1", {"Z1": False}, t1, z1)
    assert line.startswith("blur - max per seed +0.001, +0.050, +0.005: positive in 3 of 3")
    assert "reaches 0" in line
    z1 = z1_statistics({"max": [0.90, 0.91, 0.89], "blur": [0.89, 0.96, 0.895]})
    line = _paper_failure_text("Z1", {"Z1": False}, t1, z1)
    assert "positive in 2 of 3 seeds; the seeds disagree" in line
    assert _paper_failure_text("T1", {"T1": True, "Z1": None}, t1, z1) is None
    assert _paper_failure_text("Z1", {"T1": True, "Z1": None}, t1, z1) is None


def _committed_results():
    """The committed CPU-sized results and the paper-scale ones (`"paper"`)."""
    with open(os.path.join(ROOT, "docs", "replication", "results.json")) as file:
        results = json.load(file)
    results.pop("extended", None)
    return results, results.pop("paper")


def _table_rows(text, header):
    """The rows of the markdown table under `header` (the header and its rule left out)."""
    lines = text.split("\n")
    start = lines.index(header) + 2
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def _section(text, heading):
    """What lies under the heading that starts with `heading`, up to the next heading."""
    rest = text[text.index(heading) :]
    end = rest.find("\n#", 1)
    return rest if end < 0 else rest[:end]


def test_findings_tables_have_a_short_line_per_finding_and_sections_keep_every_number(
    monkeypatch,
):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    from replication.findings import (
        FINDINGS,
        WHY_IT_MAY_DIFFER,
        WHY_THE_SCALES_DIFFER,
        evaluate_findings,
    )
    from replication.report import (
        interval_rows,
        paper_interval_groups,
        paper_markdown,
        report_markdown,
    )

    cpu, paper = _committed_results()
    cpu_findings = evaluate_findings(cpu)
    # The CPU-sized report: a short line per finding, its numbers in the finding's section.
    text = report_markdown(cpu, cpu_findings, {})
    rows = _table_rows(text, "| finding | paper's claim | measured here | holds here |")
    assert [row.split(" | ")[0] for row in rows] == [f"| {key}" for key in FINDINGS]
    assert max(len(row) for row in rows) <= 200
    for f, row in zip(cpu_findings, rows, strict=True):
        assert (
            row
            == f"| {f['finding']} | {f['claim']} | {f['summary']} | "
            + {True: "yes |", False: "**no** |", None: "n/a |"}[f["holds"]]
        )
        section = _section(text, f"### {f['finding']}: {f['claim']}")
        assert f"Measured: {f['measured']}." in section  # every number, complete
        if f["holds"] is False:
            assert WHY_IT_MAY_DIFFER[f["finding"]] in section
    (t1,) = [f for f in cpu_findings if f["finding"] == "T1"]
    assert "strided: rank corr. with depth D -0.92, G -0.62" in t1["measured"]
    assert "rank corr. with depth" not in rows[list(FINDINGS).index("T1")]  # left the table

    # The paper-scale section: both scales in a line per finding, 250 characters at most.
    intervals = interval_rows(paper_interval_groups(paper))
    text = paper_markdown(paper, cpu, cpu_findings, {}, intervals)
    s = paper["settings"]
    header = (
        "| finding | paper's claim | CPU-sized (10,000 images, 12 epochs) | holds | paper scale "
        f"({s['train_size']:,} images, {s['epochs']} epochs, {s['seeds']} seeds) | holds |"
    )
    rows = _table_rows(text, header)
    assert [row.split(" | ")[0] for row in rows] == [f"| {key}" for key in FINDINGS]
    assert max(len(row) for row in rows) <= 250
    t1_row, z1_row = rows[list(FINDINGS).index("T1")], rows[list(FINDINGS).index("Z1")]
    z1 = paper["Z1"]
    lo, hi = z1["ci"]
    assert (
        f"| blur - max {z1['mean_difference']:+.3f} [{lo:+.3f}, {hi:+.3f}], "
        f"{len(z1['difference_per_seed'])} paired seeds | " in z1_row
    )
    assert z1_row.endswith("| **no** |" if z1["holds"] is False else "| yes |")
    assert f"of {paper['T1']['decided']} variants" in t1_row
    # What left the table is in the finding's section: every variant's intervals (T1), the
    # per-seed differences and Welch's p (Z1), the CPU-sized numbers, the explanations.
    for f in cpu_findings:
        section = _section(text, f"### {f['finding']} at both scales: ")
        assert "- CPU-sized (holds: " in section and f["measured"] in section
    section = _section(text, "### T1 at both scales: ")
    for v, e in paper["T1"]["variants"].items():
        (d_lo, d_hi), (g_lo, g_hi) = e["D"]["ci"], e["G"]["ci"]
        assert (
            f"{v}: D {e['D']['mean']:+.2f} [{d_lo:+.2f}, {d_hi:+.2f}], "
            f"G {e['G']['mean']:+.2f} [{g_lo:+.2f}, {g_hi:+.2f}]" in section
        )
    assert "- Why the verdict changed: CPU-sized -> paper scale, strided: " in section
    assert WHY_THE_SCALES_DIFFER["T1"] in section
    section = _section(text, "### Z1 at both scales: ")
    assert f"Welch p = {z1['p_value']:.3g}" in section
    assert (
        "- Why it does not hold at paper scale: blur - max per seed "
        + ", ".join(f"{d:+.3f}" for d in z1["difference_per_seed"])
        in section
    )
    assert WHY_THE_SCALES_DIFFER["Z1"] in section  # its numbers turned
    # The interval figure, its rows in words: an interval reaching 0 with its numbers.
    assert "![Estimates with 95% intervals over seeds, against 0](replication/paper/" in text
    assert (
        "- Z1: shift consistency, blur - max, paired over seeds (holds: > 0): the interval "
        f"reaches 0: blur - max {z1['mean_difference']:+.4f} [{lo:+.4f}, {hi:+.4f}]." in text
    )
    assert "- T1: D's rank corr. with depth (holds: < 0): intervals exclude 0: max, " in text


def test_one_line_summaries_name_the_deciding_number(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    from replication.findings import t1_summary

    def entry(d, d_ci, g, g_ci, holds):
        return {"D": (d, d_ci), "G": (g, g_ci), "holds": holds}

    # Holds everywhere: the component whose interval end lies nearest 0 decides.
    variants = {
        "max": entry(-0.7, [-0.9, -0.5], 0.8, [0.6, 1.0], True),
        "strided_relu": entry(-0.85, [-0.95, -0.74], 0.47, [0.31, 0.64], True),
        "blur": entry(-0.5, [-0.6, -0.4], 0.9, [0.8, 1.0], True),
    }
    assert t1_summary(variants) == (
        "3 of 3 variants; closest to 0: strided_relu G +0.47 [+0.31, +0.64]"
    )
    # Not shown somewhere: the variant and the component whose interval reaches 0; one-seed
    # ones apart.
    variants["avg"] = entry(-0.6, [-0.9, 0.1], 0.5, [0.2, 0.8], False)
    variants["strided"] = entry(-0.9, None, 0.3, None, None)
    assert t1_summary(variants) == (
        "3 of 4 variants (1 more with 1 seed); interval reaches 0 in avg (D -0.60 [-0.90, +0.10])"
    )
    # Fails (a whole interval on the wrong side of 0) is told apart from not shown.
    variants["noisy"] = entry(-0.7, [-0.8, 0.05], -0.9, [-1.0, -0.6], False)
    assert t1_summary(variants) == (
        "3 of 5 variants (1 more with 1 seed); fails in noisy (G -0.90 [-1.00, -0.60]); "
        "interval reaches 0 in avg (D -0.60 [-0.90, +0.10])"
    )
    # Without intervals (the CPU-sized scale): the values decide.
    assert (
        t1_summary(
            {"a": entry(-0.9, None, 0.5, None, True), "b": entry(-0.9, None, -0.6, None, False)}
        )
        == "1 of 2 variants; fails in b (G -0.60)"
    )
    assert t1_summary({"a": entry(-0.9, None, 0.5, None, None)}, "conditions") == (
        "1 condition, 1 seed each: no intervals yet"
    )


def test_interval_figure_draws_the_rows_it_is_given(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    from replication.report import _interval_figure_lines, draw_interval_figure

    groups = {
        "T1: D": [
            ("max", -0.5, [-0.8, -0.2]),  # excludes 0 (below)
            ("blur", -0.1, [-0.4, 0.2]),  # reaches 0
            ("avg", -0.3, None),  # one seed: a point
            ("broken", math.nan, None),  # no estimate: left out
        ],
        "Z1": [("blur - max", 0.012, [0.004, 0.020])],  # excludes 0 (above)
    }
    path = tmp_path / "intervals.png"
    rows = draw_interval_figure(groups, path, title="test")
    assert [(r["group"], r["label"], r["estimate"], r["ci"], r["clear_of_zero"]) for r in rows] == [
        ("T1: D", "max", -0.5, [-0.8, -0.2], True),
        ("T1: D", "blur", -0.1, [-0.4, 0.2], False),
        ("T1: D", "avg", -0.3, None, None),
        ("Z1", "blur - max", 0.012, [0.004, 0.02], True),
    ]  # fmt: skip
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = _interval_figure_lines(rows, "replication/paper/intervals.png")
    assert (
        "![Estimates with 95% intervals over seeds, against 0]"
        + ("(replication/paper/intervals.png)")
        in lines
    )
    assert (
        "- T1: D: the interval excludes 0: max; the interval reaches 0: blur -0.10 "
        "[-0.40, +0.20]; no interval (1 seed): avg -0.30." in lines
    )
    assert "- Z1: the interval excludes 0: blur - max." in lines
    assert draw_interval_figure({"none": []}, tmp_path / "none.png") == []
    assert not (tmp_path / "none.png").exists() and _interval_figure_lines([], "x.png") == []


def test_extended_section_has_a_line_per_finding_and_its_interval_figure(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    from _stats import t1_statistics, t2_statistics, z1_statistics
    from replication.report import extended_interval_groups, extended_markdown, interval_rows

    names = ["input", "a", "b", "c"]
    falling = {n: [3.0 - i, 3.5 - i, 4.0 - i] for i, n in enumerate(names)}
    rising = {n: [1.0 + i, 1.5 + i, 2.0 + i] for i, n in enumerate(names)}
    against = {n: [1.0 + i, 2.0 + i, 9.0 - i] for i, n in enumerate(names)}  # seed 2: G falls
    before = {n: [1.0, 2.0, 4.0] for n in names}
    doubling = {n: [v * 2.0**i * j for v, j in zip(before[n], [1.0, 1.1, 0.9], strict=True)]
                for i, n in enumerate(names)}  # fmt: skip
    t2 = t2_statistics(
        {"max": {"D": before}, "strided": {"D": {n: [1.0] for n in names}}},
        {"max": {"D": doubling}, "strided": {"D": {n: [2.0**i] for i, n in enumerate(names)}}},
    )
    t3 = t1_statistics(
        {
            "max_noise0.1": {"trained": {"D": falling, "G": rising}},
            "strided_noise0.1": {"trained": {"D": falling, "G": against}},
        }
    )
    z1 = z1_statistics({"max": [0.80, 0.82, 0.81], "blur": [0.84, 0.85, 0.86]})
    x = {
        "finished": ["retrained/max_s0"], "missing": [], "wall_seconds": 3600.0,
        "cpu_bfloat16": {"used": "avx512_bf16", "excluded": []}, "settings": {"command": "c"},
        "networks": {}, "reproducibility": {}, "P1": {"points": [], "holds": None},
        "Z1": {"seeds": [0, 1, 2], "test_set": z1, "first_1000": {}}, "T2": t2, "T3": t3,
        "figures": {"intervals": "replication/extended/intervals.png"},
    }  # fmt: skip
    text = extended_markdown(x)
    rows = _table_rows(
        text, "| finding | claim | deciding number (95% interval over seeds) | holds |"
    )
    assert rows == [
        # differences 0.04, 0.03, 0.05: 0.04 -+ 4.302653 * 0.01 / sqrt(3)
        "| Z1 | Anti-aliased (blur) downsampling raises shift consistency, on the whole test "
        "set | blur - max +0.0400 [+0.0152, +0.0648], 3 paired seeds | yes |",
        "| T2 | Permuting input channels raises D in later layers, not early ones | "
        "1 of 1 variants (1 more with 1 seed); closest to 0: max rank corr. +1.00 "
        "[+1.00, +1.00] | yes |",
        # G's rank correlations +1, +1, -1: mean 1/3, interval clipped to [-1, 1]
        "| T3 | After training with noise too, D falls with depth while G rises | 1 of 2 "
        "conditions; interval reaches 0 in strided_noise0.1 (G +0.33 [-1.00, +1.00]) | **no** |",
    ]
    # The numbers that left the table: per variant in T2's section, per condition in T3's.
    assert "- **max**: rank corr. of the log ratio with depth +1.00 [+1.00, +1.00] (per seed " in (
        _section(text, "## T2: ")
    )
    assert "- **strided_noise0.1**: rank corr. with depth D -1.00 [-1.00, -1.00], G +0.33 " in (
        _section(text, "## T3: ")
    )
    rows = interval_rows(extended_interval_groups(x))
    assert [(r["label"], r["clear_of_zero"]) for r in rows] == [
        ("blur - max", True), ("max", True), ("strided", None), ("max (c)", True),
        ("strided (c)", None), ("max_noise0.1", True), ("strided_noise0.1", True),
        ("max_noise0.1", True), ("strided_noise0.1", False),
    ]  # fmt: skip
    assert (
        "![Estimates with 95% intervals over seeds, against 0]"
        + ("(replication/extended/intervals.png)")
        in text
    )
    assert "the interval reaches 0: strided_noise0.1 +0.33 [-1.00, +1.00]" in text
    # An extended object written before P1 existed (no "P1" key) still renders, P1 left out.
    earlier = extended_markdown({k: v for k, v in x.items() if k != "P1"})
    assert "| T3 | After training with noise too" in earlier and "| P1 |" not in earlier


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
    assert (
        "| finding | paper's claim | CPU-sized (24 images, 1 epoch) | holds | paper scale "
        "(24 images, 1 epoch, 2 seeds) | holds |" in report
    )
    assert (docs / "replication" / "paper" / "intervals.png").exists()
    assert "](replication/paper/intervals.png)" in report
    assert "replication/paper/sensitivity_profiles.png" in report
    assert len(os.listdir(docs / "replication" / "experiments" / "paper")) == 4
    fourth = subprocess.run(paper_args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "4 of 4 experiments finished earlier" in fourth.stdout

    # The extended studies: retrained networks, trained then measured by separate runs.
    extended_args = [*args, "--scale=extended", "--z1_seeds=2", "--t2_seeds=1",
                     "--t3_seeds=1", "--paper_epochs=1", "--paper_train_size=24",
                     "--p1_architectures=lenet,fully_connected", "--p1_sizes=24",
                     "--p1_steps=5", "--mouton_seeds=1"]  # fmt: skip
    run = functools.partial(subprocess.run, cwd=ROOT, capture_output=True, text=True, timeout=600)
    trained = run([*extended_args, "--train_next"])
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "trained retrained/max_s0" in trained.stdout
    assert not (docs / "replication" / "experiments" / "retrained").exists()  # measured later
    measured = run([*extended_args, "--measure_trained"])
    assert measured.returncode == 0, measured.stderr[-3000:]
    assert os.listdir(docs / "replication" / "experiments" / "retrained") == ["max_s0.json"]
    with open(docs / "replication" / "results.json") as file:
        partial = json.load(file)["extended"]
    assert partial["finished"] == ["retrained/max_s0"]
    assert "retrained/blur_s0" in partial["missing"]
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
    assert record["trained_separately"] is True and record["train_wall_seconds"] > 0
    with open(docs / "replication" / "experiments" / "retrained" / "blur_s0.json") as file:
        assert json.load(file)["trained_separately"] is False  # trained and measured in one run
    test_set = record["shift_consistency_test_set"]
    assert test_set["num_images"] == 36 and test_set["pairs_per_image"] == 5
    assert 0 <= test_set["value"] <= 1 and 0 <= test_set["standard_error"] <= 0.5 / np.sqrt(35)
    # T2: the permuted copy is measured at the same probes; the logits are kept apart.
    assert list(record["channel_permutation"]["relative_stability"]["D"]) == probes
    permutation = record["channel_permutation"]
    assert permutation["recalibration_images"] == 2000  # all 48 training images were used
    assert list(permutation["stale_statistics"]["relative_stability"]["D"]) == probes
    assert permutation["stale_statistics"] != {k: permutation[k] for k in ("relative_stability",)}
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

    def retrained(name):
        path = docs / "replication" / "experiments" / "retrained" / f"{name}.json"
        return json.loads(path.read_text())

    stale = extended["T2_stale_statistics"]["variants"]["max"]["per_probe"]["block2_down"]
    records = [retrained(f"max_s{k}") for k in (0, 1)]
    stale_d = [
        r["channel_permutation"]["stale_statistics"]["relative_stability"]["D"]["block2_down"]
        for r in records
    ]
    d = [r["relative_stability"]["D"]["block2_down"] for r in records]
    np.testing.assert_allclose(stale["log_ratio"], np.log(np.array(stale_d) / d))
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
    assert "# Extended studies:" in report
    assert (
        "| Z1 | Anti-aliased (blur) downsampling raises shift consistency, on the whole test set "
        "| blur - max " in report
    )
    assert (docs / "replication" / "extended" / "intervals.png").exists()
    assert "](replication/extended/intervals.png)" in report.split("# Extended studies")[1]
    # Mouton et al.'s study: the maps of every network on its own data, M2's window 2 is the
    # paper recipe's max network trained again (deterministic: the retrained max_s0, bit for
    # bit, on this machine), M1's data sets derived from the folder.
    mouton = extended["mouton_networks"]
    assert sorted(mouton) == sorted(
        [f"m1_{v}_{level}_s0" for v in ("max", "strided") for level in ("noise", "plain", "smooth")]
        + [f"m3_{change}_s0" for change in ("flatten", "blur", "translate")]
        + [f"m2_k{k}_s0" for k in (2, 3, 4, 5)]
    )
    k2 = json.loads((docs / "replication" / "experiments" / "mouton" / "m2_k2_s0.json").read_text())
    assert (tmp_path / "runs" / "mouton" / "m2_k2_s0" / "model.keras").exists()
    assert k2["test_accuracy"] == record["test_accuracy"]
    assert k2["output_stability"] == record["output_stability"]
    maps = k2["translation_map"]
    assert list(maps["maps"]) == ["input", "block2_down", "logits"]
    assert np.asarray(maps["maps"]["logits"]).shape == (9, 9)
    assert maps["maps"]["logits"][4][4] == pytest.approx(1.0)  # no shift
    assert mouton["m2_k2_s0"]["invariance"] == maps["mean"]["logits"]
    # and it repeats the paper-scale max_s0 (the same command, this machine) to the last bit
    same = extended["bit_for_bit"]["networks"]["mouton/m2_k2_s0"]
    assert (same["committed"], same["different"]) == ("paper/max_s0", [])
    assert extended["bit_for_bit"]["committed_cpu_bfloat16"] == k2["cpu_bfloat16"]
    noisy_m1 = json.loads((tmp_path / "runs" / "mouton" / "m1_strided_noise_s0" / "config.json")
                          .read_text())  # fmt: skip
    assert noisy_m1["config"]["transform"] == ["noise:0.1"]
    assert noisy_m1["config"]["augment"] == ["flip"]
    flat = json.loads((tmp_path / "runs" / "mouton" / "m3_flatten_s0" / "config.json")
                      .read_text())["config"]  # fmt: skip
    assert (flat["head"], flat["learning_rate"]) == ("flatten", 0.02)  # its own learning rate
    k5 = json.loads((tmp_path / "runs" / "mouton" / "m2_k5_s0" / "config.json").read_text())
    assert k5["config"]["pool_size"] == 5
    assert extended["M2"]["points"]["0"]["5"]["invariance"] == mouton["m2_k5_s0"]["invariance"]
    assert extended["M1"]["holds"] is None and extended["M3"]["seeds"] == [0]  # one seed
    m3 = extended["M3"]["invariance"]["changes"]
    assert m3["gap"]["per_seed"] == [
        pytest.approx(
            mouton["m1_max_plain_s0"]["invariance"] - mouton["m3_flatten_s0"]["invariance"]
        )
    ]
    assert "## Mouton et al.: stride, pooling window" in report
    assert "| M2 | Larger pooling windows at stride 2" in report
    assert (docs / "replication" / "extended" / "mouton_maps.png").exists()
    assert (docs / "replication" / "extended" / "m2_tradeoff.png").exists()
    # Rewriting the paper-scale report keeps the extended section below it.
    assert run([*paper_args, "--report_only"]).returncode == 0
    rewritten = (docs / "replication.md").read_text()
    assert rewritten.count("# Extended studies:") == 1


def test_training_minutes_count_paper_scale_networks_only(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    from replication.report import _training_minutes

    avx, amx = {"cpu_bfloat16": "avx512_bf16"}, {"cpu_bfloat16": "amx_bf16"}
    networks = {
        "max_s0": {"train_minutes": 40.0, **avx},
        "max_noise0.05_s1": {"train_minutes": 30.0, **avx},  # T3: paper scale
        "lenet_n1000_s0": {"train_minutes": 5.0, **amx},  # P1: a smaller set
        "blur_s0": avx,  # measured before the minutes were recorded
        "m1_max_plain_s0": {"train_minutes": 2.0, **amx},  # M1 and M3: CPU-sized
        "m3_flatten_s1": {"train_minutes": 2.0, **amx},
        "m2_k2_s0": {"train_minutes": 45.2, **amx},  # M2: paper scale
    }
    assert _training_minutes(networks).startswith(
        "Training took 45 min on amx_bf16 (1 network) and 30-40 min on avx512_bf16 "
        "(2 networks) per paper-scale network here ("
    )
    assert _training_minutes({}) == ""


def test_t3_seeds_per_noise_level_add_rows_seed_major(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    from replication.experiments import Settings, extended_plan

    def recipe(v, seed):
        return {"downsample": v, "seed": seed, "augment": ["standard"], "epochs": 30}

    def noisy_rows(t3_seeds):
        s = Settings({"z1_seeds": 1, "t2_seeds": 1, "t3_seeds": t3_seeds, "p1_architectures": [],
                      "p1_sizes": [], "p1_steps": 10, "batch_size": 8})  # fmt: skip
        rows = extended_plan(s, recipe, ())
        return [e.name[len("noisy/"):] for e in rows if e.kind == "noisy"]

    # one count serves both levels; two counts give a third seed at the mild level only
    assert noisy_rows(["1"]) == ["max_noise0.05_s0", "strided_noise0.05_s0",
                                 "max_noise0.15_s0", "strided_noise0.15_s0"]  # fmt: skip
    assert noisy_rows(["2", "1"])[4:] == ["max_noise0.05_s1", "strided_noise0.05_s1"]
    with pytest.raises(ValueError, match=r"^t3_seeds must be one count or one per noise level"):
        noisy_rows(["1", "2", "3"])


def test_each_study_compares_the_networks_of_one_cpu_bfloat16_path(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    from replication.experiments import Settings, gather_extended, mouton_plan

    s = Settings({"mouton_seeds": 2, "docs_dir": str(tmp_path), "z1_seeds": 0, "t2_seeds": 0,
                  "command": "c"})  # fmt: skip
    rows = mouton_plan(s, lambda v, seed: {"downsample": v}, lambda v, seed: {"downsample": v})

    def result(e, path, invariance):
        maps = {"mean": {"logits": invariance}, "output_layer": "logits", "maps": {},
                "max_shift": 1}  # fmt: skip
        return {**e.fields, "cpu_bfloat16": path, "test_accuracy": 0.5,
                "translation_map": maps, "shift_consistency_test_set": {"value": 0.9}}  # fmt: skip

    # M1 and M3 trained on one machine (AMX), but for one network; M2's window 2 on another
    finished = [
        (e, result(e, "avx512_bf16" if e.name in ("mouton/m1_max_noise_s1", "mouton/m2_k2_s0")
                   else "amx_bf16", 0.9 + i / 1000))
        for i, e in enumerate(rows) if not e.name.startswith("mouton/m2_k3")
    ]  # fmt: skip
    x = gather_extended(s, rows, finished)
    assert x["cpu_bfloat16"]["used"] == {"M1, M3": "amx_bf16", "M2": "amx_bf16"}
    assert x["cpu_bfloat16"]["excluded"] == ["m1_max_noise_s1", "m2_k2_s0"]
    assert "m1_max_noise_s1" not in x["mouton_networks"]
    assert x["M1"]["seeds"] == [0]  # seed 1 lacks a network of its path
    assert x["M3"]["seeds"] == [0, 1]  # M3 compares m1_max_plain with its changes
    # M2 is decided over the windows of one path: window 2 of seed 0 is left out
    assert sorted(x["M2"]["points"]["0"]) == ["4", "5"]
    assert sorted(x["M2"]["points"]["1"]) == ["2", "4", "5"]
    assert set(x["finished"]) | set(x["missing"]) == {e.name for e in rows}


def test_p1_takes_its_vgg_on_all_images_from_the_max_network_of_its_own_path(
    monkeypatch, tmp_path
):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    from replication.experiments import Experiment, Settings, gather_extended, mouton_plan

    s = Settings({"mouton_seeds": 1, "docs_dir": str(tmp_path), "z1_seeds": 1, "t2_seeds": 0,
                  "command": "c"})  # fmt: skip
    def recipe(v, seed):
        return {"downsample": v, "seed": seed}

    (k2,) = [e for e in mouton_plan(s, recipe, recipe) if e.name == "mouton/m2_k2_s0"]
    assert k2.network is None  # M2 trains its own window-2 networks
    assert {"relative_stability", "output"} <= set(k2.measure)  # P1's numbers of a VGG

    def result(e, path, error, r_logits):
        last = {"D": 0.5, "G": 1.0, "R": 0.5}
        stability = {c: {"block1": 1.0, "block2": v} for c, v in last.items()}
        return {**e.fields, "cpu_bfloat16": path, "test_accuracy": 1 - error,
                "relative_stability": stability,
                "output_stability": {"R": r_logits, "D": 0.1, "G": 0.1 / r_logits},
                "translation_map": {"mean": {"logits": 0.9}, "output_layer": "logits",
                                    "maps": {}, "max_shift": 1},
                "shift_consistency_test_set": {"value": 0.9, "standard_error": 0.01}}  # fmt: skip

    retrained = Experiment("retrained/max_s0", {"variant": "max", "seed": 0}, {})
    lenet = Experiment("p1/lenet_n1000", {"architecture": "lenet", "train_size": 1000, "seed": 0})
    finished = [
        (retrained, result(retrained, "avx512_bf16", 0.12, 0.28)),
        (lenet, result(lenet, "amx_bf16", 0.59, 3.4)),
        (k2, result(k2, "amx_bf16", 0.13, 0.3)),
    ]
    points = gather_extended(s, [e for e, _ in finished], finished)["P1"]["points"]
    assert [(p["name"], p["R"]) for p in points] == [
        ("lenet_n1000", 3.4), ("cifar_vgg_n50000 (mouton/m2_k2_s0)", 0.3)
    ]
    # on the retrained network's path, that network serves (it comes first)
    finished[1] = (lenet, result(lenet, "avx512_bf16", 0.59, 3.4))
    points = gather_extended(s, [e for e, _ in finished], finished)["P1"]["points"]
    assert [p["name"] for p in points][1] == "cifar_vgg_n50000 (retrained/max_s0)"


def test_bit_for_bit_finds_the_path_whose_networks_repeat_the_committed_ones(
    monkeypatch, tmp_path
):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    from replication.experiments import Experiment, Settings, bit_for_bit
    from replication.report import _bit_for_bit_lines

    paper = tmp_path / "replication" / "experiments" / "paper"
    paper.mkdir(parents=True)
    committed = {"test_accuracy": 0.87, "train_accuracy": [0.4, 0.6], "smoothness_init": {"a": 2.0},
                 "relative_stability": {"R": {"a": 0.5}}}  # fmt: skip
    for seed in (0, 1):
        (paper / f"max_s{seed}.json").write_text(
            json.dumps({"variant": "max", "seed": seed, **committed})
        )
    s = Settings({"docs_dir": str(tmp_path)})

    def row(name, path, **changes):
        fields = {"variant": "max", "seed": 0}
        if name.startswith("mouton"):
            fields = {"study": "M2", "variant": "max", "pool_size": 2, "seed": 0}
        e = Experiment(name, fields, {})
        return e, {**fields, **committed, "cpu_bfloat16": path, **changes}

    finished = [
        row("retrained/max_s0", "avx512_bf16", test_accuracy=0.8701,
            relative_stability={"R": {"a": 0.51}}),
        row("mouton/m2_k2_s0", "amx_bf16"),
        (Experiment("mouton/m2_k3_s0", {}, {}), {"study": "M2", "pool_size": 3, "seed": 0}),
        (Experiment("retrained/blur_s0", {}, {}), {"variant": "blur", "seed": 0}),  # no twin
    ]  # fmt: skip
    check = bit_for_bit(finished, s)
    assert check["networks"] == {
        "retrained/max_s0": {
            "committed": "paper/max_s0", "cpu_bfloat16": "avx512_bf16",
            "identical": ["train_accuracy", "smoothness_init"],
            "different": ["test_accuracy", "relative_stability"],
        },
        "mouton/m2_k2_s0": {
            "committed": "paper/max_s0", "cpu_bfloat16": "amx_bf16",
            "identical": ["test_accuracy", "train_accuracy", "smoothness_init",
                          "relative_stability"],
            "different": [],
        },
    }  # fmt: skip
    assert check["committed_cpu_bfloat16"] == "amx_bf16"
    (text,) = [line for line in _bit_for_bit_lines(check) if line]
    assert "on amx_bf16, mouton/m2_k2_s0 (the command of paper/max_s0) repeats" in text
    assert "on avx512_bf16, retrained/max_s0 differs from it in test accuracy, D, G" in text
    assert text.endswith("So the committed networks were trained on amx_bf16, and the "
                         "differences below are those of the other path.")  # fmt: skip
    # a network of seed 1 on a third path that also repeats its own: no one path is known
    finished.append(row("retrained/max_s1", "other_path", seed=1))
    assert bit_for_bit(finished, s)["committed_cpu_bfloat16"] is None


def _without_timing(value):
    """`value` without the keys that record wall or CPU time (they differ between runs)."""
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items()
                if not any(t in k for t in ("seconds", "minutes", "cpu_time"))}  # fmt: skip
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def test_two_shards_one_after_the_other_equal_one_unsharded_run(tmp_path):
    _tree(tmp_path / "tree")
    common = [
        sys.executable, "benchmarks/replicate.py", f"--cifar10={tmp_path / 'tree'}",
        "--variants=max", "--init_seeds=2", "--trained_seeds=*:1", "--train_size=24",
        "--epochs=1", "--random_label_size=24", "--random_label_epochs=1",
        "--synthetic_strengths=1", "--synthetic_seeds=1", "--synthetic_epochs=1",
        "--synthetic_samples=32", "--synthetic_image_size=16", "--probe_size=8",
        "--stability_probe_size=8", "--shift_images=8", "--sigmas=1", "--batch_size=16",
        "--model=vgg", "--blocks=4;8",
    ]  # fmt: skip
    run = functools.partial(subprocess.run, cwd=ROOT, capture_output=True, text=True, timeout=900)

    def where(name):
        return [f"--output_dir={tmp_path / name / 'runs'}", f"--docs_dir={tmp_path / name}"]

    whole = run([*common, *where("whole")])
    assert whole.returncode == 0, whole.stderr[-3000:]
    first = run([*common, *where("sharded"), "--shard=1/2"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert "shard 1/2 done" in first.stdout
    assert not (tmp_path / "sharded" / "replication.md").exists()  # shards write no report
    second = run([*common, *where("sharded"), "--shard=2/2"])
    assert second.returncode == 0, second.stderr[-3000:]
    report = run([*common, *where("sharded"), "--report_only"])
    assert report.returncode == 0, report.stderr[-3000:]

    def rows(name):
        root = tmp_path / name / "runs"
        return {str(p.relative_to(root)): _without_timing(json.loads(p.read_text()))
                for p in root.rglob("result.json")}  # fmt: skip

    assert rows("sharded") == rows("whole") and len(rows("whole")) >= 5
    results = {name: _without_timing(json.loads(
        (tmp_path / name / "replication" / "results.json").read_text())) for name in
        ("whole", "sharded")}  # fmt: skip
    for name in results:  # where each was written, and the command that wrote it
        for key in ("output_dir", "docs_dir", "command"):
            results[name]["settings"].pop(key, None)
    assert results["sharded"] == results["whole"]
    bad = run([*common, *where("bad"), "--shard=3/2"])
    assert bad.returncode != 0 and "--shard must be K/N with 1 <= K <= N" in bad.stderr
    # --rows: the rows of the patterns (those at init here), numbers as in the whole run
    chosen = run([*common, *where("rows"), "--rows=init/*,nothing*", "--shard=1/1"])
    assert chosen.returncode == 0, chosen.stderr[-3000:]
    init = {name: row for name, row in rows("whole").items() if name.startswith("init/")}
    assert rows("rows") == init and len(init) >= 2
    none = run([*common, *where("bad"), "--rows=nothing*"])
    assert none.returncode != 0 and "--rows matches no row of the plan: 'nothing*'" in none.stderr


FIXTURE = os.path.join(ROOT, "tests", "fixtures", "replication")


def _report_from_fixture(tmp_path):
    """replication.md as `replicate.py --report_only` draws it, at paper scale and then for the
    extended studies, from the fixture: CPU-sized results.json (max, blur, strided) and
    committed experiment JSONs (paper scale, Keras's BatchNormalization, retrained), the paths
    of this run replaced by `<tmp>`."""
    docs = tmp_path / "docs"
    shutil.copytree(os.path.join(FIXTURE, "docs"), docs)
    for split in ("train", "test"):
        (tmp_path / "cifar10" / split).mkdir(parents=True)  # no images: nothing is trained
    common = [
        sys.executable, "benchmarks/replicate.py", f"--cifar10={tmp_path / 'cifar10'}",
        f"--output_dir={tmp_path / 'runs'}", f"--docs_dir={docs}", "--variants=max,blur,strided",
        "--report_only",
    ]  # fmt: skip
    for scale in (
        ["--scale=paper", "--paper_seeds=2"],
        ["--scale=extended", "--z1_seeds=2", "--t2_seeds=1", "--t3_seeds=1",
         "--p1_architectures=lenet", "--p1_sizes=1000"],
    ):  # fmt: skip
        run = subprocess.run(
            [*common, *scale], cwd=ROOT, capture_output=True, text=True, timeout=600
        )
        assert run.returncode == 0, run.stderr[-3000:]
    assert not (tmp_path / "runs").exists()  # drawn from the committed JSONs alone
    return (docs / "replication.md").read_text().replace(str(tmp_path), "<tmp>")


def test_report_regenerates_identically_from_committed_experiments(tmp_path):
    # The expected report was drawn by the report code before it went through
    # `reports.markdown_table`, the findings tables and notes.json: the refactor kept every
    # byte. A change meant to alter the report replaces it (the file this test drew is in
    # pytest's temporary directory, `<tmp>/docs/replication.md`).
    text = _report_from_fixture(tmp_path)
    with open(os.path.join(FIXTURE, "replication.md")) as file:
        expected = file.read()
    assert text == expected, f"see {tmp_path / 'docs' / 'replication.md'}"


def test_a_finding_is_one_row_of_its_table_and_every_report_reads_its_verdict(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    from replication import findings
    from replication.report import extended_markdown, paper_markdown, report_markdown

    cpu, paper = _committed_results()
    # A row changed (its claim and how it is decided) and a row added: one entry each.
    monkeypatch.setitem(
        findings.FINDINGS, "F1", dataclasses.replace(
            findings.FINDINGS["F1"], claim="The test's claim",
            decide=lambda results: findings.Decision(False, "the test's number", "all of them"),
        ),
    )  # fmt: skip
    monkeypatch.setitem(
        findings.FINDINGS, "X1", findings.Finding(
            "X1", "A finding of the test", lambda results: findings.Decision(True, "x", "xs")
        ),
    )  # fmt: skip
    cpu_findings = findings.evaluate_findings(cpu)
    assert [f["finding"] for f in cpu_findings][-1] == "X1"
    text = report_markdown(cpu, cpu_findings, {})
    assert "| F1 | The test's claim | the test's number | **no** |" in text
    assert "| X1 | A finding of the test | x | yes |" in text
    assert "Holds here: **no**. Measured: all of them." in text
    text = paper_markdown(paper, cpu, cpu_findings, {}, [])
    row = "| F1 | The test's claim | the test's number | **no** | the test's number | **no** |"
    assert row in text
    assert "| X1 | A finding of the test | x | yes | x | yes |" in text
    # The extended studies' table: a finding not measured yet has no row; an undecided one
    # says why it is n/a.
    with open(os.path.join(ROOT, "docs", "replication", "results.json")) as file:
        extended = json.load(file)["extended"]
    monkeypatch.setitem(
        findings.EXTENDED_FINDINGS, "X2", findings.Finding(
            "X2", "Another finding", lambda x: findings.Decision(None, "y"), "no seeds of it"
        ),
    )  # fmt: skip
    monkeypatch.setitem(
        findings.EXTENDED_FINDINGS, "X3", findings.Finding("X3", "Unmeasured", lambda x: None)
    )
    text = extended_markdown(extended)
    assert "| X2 | Another finding | y | n/a (no seeds of it) |" in text
    assert "| X3 |" not in text
