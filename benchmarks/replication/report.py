"""replication.md and its figures, drawn with the package's `plots` (the band panels that
`reports.compare_runs` draws for training runs) and its tables written by
`reports.markdown_table`. Every verdict is read from `findings.evaluate_findings`; the
hand-written records placed in the text (pilots, timings, why a verdict differs) come from
`findings.NOTES` (`notes.json`)."""

import json
import math
import os
import re

import numpy as np
from _stats import t_quantile  # benchmarks/ is on sys.path

from deformstab_tf.reports import markdown_table

from .experiments import BIT_FOR_BIT, write_json, write_text
from .findings import (
    EXTENDED_FINDINGS,
    MOUTON_FINDINGS,
    NOTES,
    WHY_IT_MAY_DIFFER,
    WHY_THE_SCALES_DIFFER,
    count,
    depth_correlations,
    evaluate_findings,
    interval_text,
    trained_smoothness,
    verdict,
)


def draw_figures(results, directory):
    """PNG figures of the report (the package's init-vs-trained band panels, as
    `trainers/compare.py` draws them); returns `{title: file name}`."""
    from deformstab_tf.plots import plot_profile_bands, plot_stage_bands

    figures = {}

    def save(figure, name, title):
        figure.savefig(os.path.join(directory, name), dpi=90)
        figures[title] = name

    def stages(tree, component=None):
        out = {}
        for stage, label in (("init", "at initialisation"), ("trained", "after training")):
            groups = {
                v: (tree[v][stage] if component is None else tree[v][stage][component])
                for v in tree
                if stage in tree[v]
            }
            out[label] = groups
        return out

    # (results key, component, file, figure title, y label, log axis, what it shows)
    bands = [
        ("sensitivity", None, "sensitivity_profiles.png",
         "TPS sensitivity (3x3 grid, C=2), mean +- 2 SD over seeds", "normalised sensitivity",
         False, "Sensitivity per layer"),
        ("smoothness", None, "smoothness_profiles.png", "Kernel TV/L1", "TV / L1", False,
         "Kernel smoothness per layer"),
    ] + [
        ("relative_stability", c, f"relative_stability_{c}.png",
         f"{c} per layer (diffeomorphisms delta=1 px, c=3)", c, True, f"{c} per layer")
        for c in ("D", "G", "R")
    ]  # fmt: skip
    for key, component, name, title, ylabel, log, shows in bands:
        if results[key]:
            save(
                plot_stage_bands(
                    stages(results[key], component), title=title, ylabel=ylabel, log=log
                ),
                name,
                f"{shows}, at initialisation and after training",
            )
    smoothing = results.get("smoothing_intervention", {})
    if smoothing:
        groups = {f"sigma {k}": v["sensitivity"] for k, v in sorted(smoothing.items())}
        if "max" in results["sensitivity"] and "init" in results["sensitivity"]["max"]:
            groups = {"sigma 0": results["sensitivity"]["max"]["init"], **groups}
        save(
            plot_profile_bands(
                groups,
                title="Gaussian-smoothed initial filters (max pooling): sensitivity",
                ylabel="normalised sensitivity",
            ),
            "smoothing_intervention.png",
            "Smoothing intervention at initialisation",
        )
    random = results.get("random_labels", {})
    if random:
        groups = {v: {k: [x] for k, x in r["sensitivity"].items()} for v, r in random.items()}
        initial = {v: {k: [x] for k, x in r["sensitivity_init"].items()} for v, r in random.items()}
        save(
            plot_stage_bands(
                {"at initialisation": initial, "after training on random labels": groups},
                title="Sensitivity with random labels",
                ylabel="normalised sensitivity",
            ),
            "sensitivity_random_labels.png",
            "Sensitivity per layer, random labels",
        )
    synthetic = results.get("synthetic", {})
    if synthetic:
        for measure in ("sensitivity", "smoothness"):
            groups = {f"C={c}": r[measure] for c, r in sorted(synthetic.items(), key=_strength)}
            save(
                plot_profile_bands(
                    groups, title=f"Synthetic task: {measure} per layer", ylabel=measure
                ),
                f"synthetic_{measure}.png",
                f"Synthetic task, {measure}",
            )
    return figures


def report_markdown(results, findings, figures):
    s = results["settings"]
    lines = [
        "# Replication of the papers' findings with deformstab_tf",
        "",
        "Written by `benchmarks/replicate.py` from `docs/replication/results.json` (every number).",
        "",
        "Command:",
        "",
        "```bash",
        s.get("command") or f"python benchmarks/replicate.py --cifar10={s['cifar10']}",
        "```",
        "",
        f"CPU time of the finished experiments: {results['cpu_seconds'] / 3600:.2f} h "
        f"({NOTES['cpu']['machine']}). Finished {len(results['finished'])} of "
        f"{len(results['finished']) + len(results['missing'])} experiments.",
        "",
    ]
    lines += _missing_lines(results["missing"], "**This run is partial**")
    lines += [
        "Settings: CIFAR-10 subset of "
        f"{s['train_size'] or 50000} training images, {s['epochs']} epochs, random flips and "
        "4-pixel translations, SGD momentum 0.9, cosine decay from 0.1, weight decay 5e-4; "
        f"probe: 3x3 TPS grid, C=2, {s['probe_size']} test images; D/G/R: diffeomorphisms "
        f"delta=1 px, c=3, {s['stability_probe_size']} test images, medians; "
        f"{s['init_seeds']} seeds at initialisation; training seeds {s['trained_seeds']}; "
        f"random labels on {s['random_label_size']} images for {s['random_label_epochs']} epochs; "
        f"synthetic task ({s.get('synthetic_prototypes', 'strokes')} prototypes, "
        f"{s.get('synthetic_downsample', 'max')} downsampling) C in {s['synthetic_strengths']} "
        f"for {s['synthetic_epochs']} epochs, {s.get('synthetic_seeds', 1)} seeds each.",
        "",
        "## Findings",
        "",
        "One line per finding with the number that decides it; every number behind it is in "
        "the finding's section below the table.",
        "",
    ]
    lines += markdown_table(
        ["finding", "paper's claim", "measured here", "holds here"],
        [[f["finding"], f["claim"], f["summary"], f["verdict"]] for f in findings],
    )
    differing = [f["finding"] for f in findings if f["holds"] is False]
    if differing:
        lines += [
            "",
            f"Findings that do not hold here: {', '.join(differing)} (why we think so: in their "
            "sections).",
        ]
    for f in findings:
        lines += [
            "",
            f"### {f['finding']}: {f['claim']}",
            "",
            f"Holds here: {f['verdict']}. Measured: {f['measured']}.",
        ]
        if f["holds"] is False and f["finding"] in WHY_IT_MAY_DIFFER:
            lines += ["", f"Why it may not hold here: {WHY_IT_MAY_DIFFER[f['finding']]}"]
    if results["test_accuracy"]:
        lines += ["", "## Test accuracy after training", ""]
        lines += markdown_table(
            ["variant", "seeds", "accuracy"],
            [[v, str(len(acc)), ", ".join(f"{a:.3f}" for a in acc)]
             for v, acc in results["test_accuracy"].items()],
        )  # fmt: skip
    lines += _figure_lines(figures, "## Figures", "", "replication")
    return "\n".join(lines) + "\n"


# Experiments the paper-scale part keeps at their CPU-sized settings (F4b, F5, F6): their
# results are the CPU-sized ones, compared with the paper-scale networks where a finding does.
CPU_SIZED_ONLY = (
    "smoothing_intervention",
    "random_labels",
    "synthetic",
    "synthetic_other_settings",
)
CPU_SIZED_FINDINGS = ("F4b", "F5", "F6")


def paper_markdown(paper, cpu, cpu_findings, figures, intervals=None):
    """The paper-scale section: settings, budget and pilot runs (`NOTES["paper"]`), a
    one-line-per-finding table beside the CPU-sized verdicts, the interval figure
    (`intervals`: the rows `draw_interval_figure` drew), a section per finding with every
    number (T1 and Z1 over seeds), accuracies and figures."""
    s, notes = paper["settings"], NOTES["paper"]
    total = len(paper["finished"]) + len(paper["missing"])
    findings = evaluate_findings(
        {
            **paper,
            **{key: cpu.get(key, {}) for key in CPU_SIZED_ONLY},
            "settings": {**cpu.get("settings", {}), **s},
        }
    )
    minutes = notes["minutes_per_network"]
    lines = [
        "",
        "# Paper scale: converged networks",
        "",
        "Command:",
        "",
        "```bash",
        s["command"],
        "```",
        "",
        f"Settings: all {s['train_size']:,} CIFAR-10 training images, {s['epochs']} epochs, "
        f"batch {s['batch_size']}, {s['recipe']}; {s['seeds']} training seeds per variant; "
        "probes as above (init-stage numbers are the CPU-sized run's initialisations: the same "
        f"networks). Budget: about {minutes} minutes of wall time per network "
        f"{notes['per_network']}, {total} networks, about {total * minutes / 60:.1f} hours; "
        "so far "
        f"{paper['wall_seconds'] / 3600:.2f} h wall, {paper['cpu_seconds'] / 3600:.2f} CPU-h.",
        "",
    ]
    if paper["missing"]:
        lines += [
            f"**partial: {len(paper['finished'])} of {total}** networks finished; rerun the "
            "command to continue. Missing: " + ", ".join(f"`{m}`" for m in paper["missing"]) + ".",
            "",
        ]
    lines += ["How the recipe was chosen (pilot runs):", ""]
    lines += [f"- {pilot}" for pilot in notes["pilots"]] + [""]
    cpu_rows = {f["finding"]: f for f in cpu_findings}
    rows = _paper_rows(findings, cpu_rows)
    shown = {r["finding"]: r["holds"] for r in rows}
    changed = [
        key
        for key, holds in shown.items()
        if holds is not None
        and cpu_rows.get(key, {}).get("holds") is not None
        and holds != cpu_rows[key]["holds"]
    ]
    # A verdict can stay "no" while what it rests on turns around (T1 is decided per variant;
    # Z1's difference can change sign without its interval clearing 0): say so, and why.
    turned = {} if "T1" in changed else _t1_turned(cpu, paper)
    turned |= {} if "Z1" in changed else _z1_turned(cpu, paper["Z1"])
    lines += [
        "## Findings at both scales",
        "",
        "One line per finding with the number that decides it (95% t interval over seeds where "
        "there are 2+); every number behind it, and why verdicts differ, in the finding's "
        "section below the table.",
        "",
    ]
    paper_column = (
        f"paper scale ({s['train_size']:,} images, {count(s['epochs'], 'epoch')}, "
        f"{count(s['seeds'], 'seed')})"
    )
    lines += markdown_table(
        ["finding", "paper's claim", _cpu_column(cpu), "holds", paper_column, "holds"],
        [[r["finding"], r["claim"], r["cpu"]["summary"], verdict(r["cpu"]["holds"]),
          r["summary"], r["verdict"]] for r in rows],
    )  # fmt: skip
    lines += [
        "",
        "Findings whose verdict differs between the scales: "
        + (", ".join(changed) if changed else "none" if not paper["missing"] else "none so far")
        + ". "
        + (
            "Findings whose verdict does not, but whose numbers turned: "
            + "; ".join(f"{key} ({text})" for key, text in turned.items())
            + ". "
            if turned
            else ""
        )
        + f"With {s['seeds']} seeds the t intervals are wide (t(0.975, {s['seeds'] - 1}) = "
        f"{t_quantile(s['seeds']):.2f}): read them as such.",
    ]
    lines += _interval_figure_lines(intervals, "replication/paper/intervals.png")
    for r in rows:
        lines += _paper_finding_lines(r, cpu, paper, changed, turned, shown)
    if paper["test_accuracy"]:
        lines += ["", "## Test accuracy at paper scale", ""]
        lines += markdown_table(
            ["variant", "test accuracy per seed", "mean"],
            [[v, ", ".join(f"{a:.4f}" for a in acc), f"{np.mean(acc):.4f}"]
             for v, acc in paper["test_accuracy"].items()],
        )  # fmt: skip
    lines += _keras_batch_norm_lines(paper)
    lines += _figure_lines(figures, "## Paper-scale figures", " (paper scale)", "replication/paper")
    return "\n".join(lines) + "\n"


def _cpu_column(cpu):
    """The CPU-sized column's heading: its training-set size and epochs."""
    s = cpu.get("settings", {})
    if not s:
        return "CPU-sized"
    return f"CPU-sized ({s.get('train_size') or 50000:,} images, {count(s['epochs'], 'epoch')})"


def _paper_rows(findings, cpu_rows):
    """The paper-scale findings (`evaluate_findings` rows) as the table shows them: those kept
    at their CPU-sized settings say so; `cpu`: the CPU-sized finding beside each."""
    rows = []
    for f in findings:
        key = f["finding"]
        row = {**f, "cpu": cpu_rows.get(key, {"summary": "", "measured": "", "holds": None})}
        if key in CPU_SIZED_FINDINGS and f["holds"] is not None:
            row["measured"] = (
                "CPU-sized settings (as planned)"
                + (", against the paper-scale networks: " if key == "F5" else ": ")
                + f["measured"]
            )
            row["summary"] = (
                f"{f['summary']} (random labels: CPU-sized run)"
                if key == "F5"
                else "the CPU-sized run (as planned)"
            )
        rows.append(row)
    return rows


def _paper_finding_lines(row, cpu, paper, changed, turned, shown):
    """The section of one finding below the paper-scale table: every number at both scales,
    why its verdict changed (or its numbers turned), why it does not hold at paper scale."""
    key, c = row["finding"], row["cpu"]
    lines = ["", f"### {key} at both scales: {row['claim']}", ""]
    if c["measured"]:
        lines.append(f"- CPU-sized (holds: {verdict(c['holds'])}): {c['measured']}.")
    paper_text = row["measured"]
    if key in CPU_SIZED_FINDINGS and row["holds"] is not None and key != "F5":
        paper_text = "CPU-sized settings (as planned): the same run and numbers as above"
    lines.append(f"- Paper scale (holds: {row['verdict']}): {paper_text}.")
    why = _scale_change_text(key, cpu, paper)
    if key in changed and why:
        lines.append(f"- Why the verdict changed: {why}")
    if key in turned:
        lines.append(f"- The verdict stays, but the numbers turned: {turned[key]}. {why or ''}")
    failure = _paper_failure_text(key, shown, paper["T1"], paper["Z1"])
    if failure:
        lines.append(f"- Why it does not hold at paper scale: {failure}")
    if key == "Z1":
        lines += _z1_disagreement_lines(paper["Z1"])
    return [line.rstrip() for line in lines]


def _scale_change_text(key, cpu, paper):
    """The numbers behind a change of `key` between the scales and why we think it changed;
    None where no explanation is written."""
    if key not in WHY_THE_SCALES_DIFFER:
        return None
    evidence = _EVIDENCE[key](cpu, paper) if key in _EVIDENCE else ""
    return f"{evidence}{WHY_THE_SCALES_DIFFER[key]}"


def _t1_turned_variants(cpu, paper):
    """The variants T1 failed in at the CPU-sized scale whose paper-scale seeds, on average,
    have D falling and G rising with depth."""
    before = depth_correlations(cpu.get("relative_stability", {}))
    after = paper.get("T1", {}).get("variants", {})
    return [
        v
        for v, c in before.items()
        if not c["D"] < 0 < c["G"]
        and v in after
        and after[v]["D"]["mean"] < 0 < after[v]["G"]["mean"]
    ]


def _t1_turned(cpu, paper):
    """`{"T1": text}` when T1 now shows in variants it failed in at the CPU-sized scale."""
    variants = _t1_turned_variants(cpu, paper)
    if not variants:
        return {}
    return {"T1": f"its trend now shows in {', '.join(variants)}, where it failed before"}


def _z1_turned(cpu, z1):
    """`{"Z1": text}` when blur trailed max on average at the CPU-sized scale and leads it in
    every seed at paper scale."""
    shift = cpu.get("shift_consistency", {})
    per_seed = (z1 or {}).get("difference_per_seed") or []
    if "max" not in shift or "blur" not in shift or not per_seed:
        return {}
    if np.mean(shift["blur"]) - np.mean(shift["max"]) > 0 or min(per_seed) <= 0:
        return {}
    return {"Z1": "blur, behind max before, is now ahead of it in every seed"}


def _t1_evidence(cpu, paper):
    """The variants T1 failed in at the CPU-sized scale and shows in at paper scale, at both
    scales: rank correlations with depth (paper scale: mean over seeds), trained filters'
    TV/L1, test accuracy."""
    before = depth_correlations(cpu.get("relative_stability", {}))
    after = paper.get("T1", {}).get("variants", {})
    failed = _t1_turned_variants(cpu, paper)
    texts = [
        f"{v}: rank corr. with depth D {before[v]['D']:+.2f} -> {after[v]['D']['mean']:+.2f}, "
        f"G {before[v]['G']:+.2f} -> {after[v]['G']['mean']:+.2f}; trained filters' TV/L1 "
        f"{trained_smoothness(cpu, v):.3f} -> {trained_smoothness(paper, v):.3f}; test accuracy "
        f"{np.mean(cpu['test_accuracy'][v]):.3f} -> {np.mean(paper['test_accuracy'][v]):.3f}"
        for v in failed
    ]
    return ("CPU-sized -> paper scale, " + "; ".join(texts) + ". ") if texts else ""


def _z1_evidence(cpu, paper):
    """Blur - max shift consistency at both scales, the seed-to-seed SD of each variant's
    shift consistency (where there are 2+ seeds), and test accuracy."""
    before, after = cpu.get("shift_consistency", {}), paper.get("shift_consistency", {})
    if not all(v in d for d in (before, after) for v in ("max", "blur")):
        return ""

    def sd(values):
        return f"{np.std(values, ddof=1):.3f}" if len(values) >= 2 else "n/a (1 seed)"

    z1 = paper.get("Z1", {})
    per_seed = z1.get("difference_per_seed") or []
    texts = [
        f"blur - max {np.mean(before['blur']) - np.mean(before['max']):+.4f} -> "
        f"{z1.get('mean_difference', np.mean(after['blur']) - np.mean(after['max'])):+.4f}"
        + (f" (per seed {', '.join(f'{d:+.3f}' for d in per_seed)})" if per_seed else "")
    ]
    texts += [
        f"{v}: seed SD of shift consistency {sd(before[v])} -> {sd(after[v])}, test accuracy "
        f"{np.mean(cpu['test_accuracy'][v]):.3f} -> {np.mean(paper['test_accuracy'][v]):.3f}"
        for v in ("max", "blur")
    ]
    return "CPU-sized -> paper scale, " + "; ".join(texts) + ". "


_EVIDENCE = {"T1": _t1_evidence, "Z1": _z1_evidence}


def _paper_failure_text(key, shown, t1, z1):
    """Why `key` does not hold at paper scale (None where it does, or nothing is written)."""
    if shown.get(key) is not False:
        return None
    if key == "T1":
        return _t1_failure(t1)
    if key == "Z1" and z1.get("difference_per_seed"):
        per_seed = z1["difference_per_seed"]
        positive = sum(d > 0 for d in per_seed)
        return (
            f"blur - max per seed {', '.join(f'{d:+.3f}' for d in per_seed)}: "
            f"positive in {positive} of {len(per_seed)} seeds"
            + (
                "; every seed points Zhang's way, but over this few seeds the t interval "
                f"{interval_text(z1['ci'], 4)[1:]} reaches 0."
                if positive == len(per_seed)
                else "; the seeds disagree on the direction, so the effect is not larger "
                "than the seed noise here."
            )
        )
    if key in ("F2", "F3", "F4"):
        return WHY_IT_MAY_DIFFER[key]
    return None


def _t1_failure(t1):
    """Per variant where T1's intervals do not decide it: each seed's rank correlations, and
    whether every seed has D falling and G rising (then only the 3-seed interval is too wide)
    or some seed goes the other way."""
    texts, reasons = [], set()
    for v, e in t1["variants"].items():
        if e["holds"] is not False:
            continue
        seeds = list(zip(e["D"]["rank_corr"], e["G"]["rank_corr"], strict=True))
        against = [k for k, (d, g) in enumerate(seeds) if not d < 0 < g]
        per_seed = ", ".join(f"s{k} D {d:+.2f} G {g:+.2f}" for k, (d, g) in enumerate(seeds))
        if against:
            reasons.add("against")
            texts.append(
                f"{v} ({per_seed}): seed{'s' if len(against) > 1 else ''} "
                f"{', '.join(f's{k}' for k in against)} against the trend"
            )
        else:
            reasons.add("width")
            texts.append(
                f"{v} ({per_seed}): every seed has D falling and G rising, but the intervals "
                f"D{interval_text(e['D']['ci'])}, G{interval_text(e['G']['ci'])} are not both "
                f"clear of 0 (with {len(seeds)} seeds a 95% t interval reaches "
                f"{t_quantile(len(seeds)):.1f} standard errors either side of the mean)"
            )
    every = [
        d < 0 < g
        for e in t1["variants"].values()
        for d, g in zip(e["D"]["rank_corr"], e["G"]["rank_corr"], strict=True)
    ]
    text = "; ".join(texts) + (
        f". Over all {len(every)} trained networks, {sum(every)} have D falling and G rising "
        "with depth."
    )
    if "width" in reasons:
        text += (
            " Where every seed agrees, the direction is settled and only the strength of the "
            "trend varies from seed to seed; over so few seeds a spread of a few tenths of a "
            "rank correlation is enough for the interval to reach 0."
        )
    if "against" in reasons:
        text += (
            " Where a seed goes against the trend, the trend in that variant is weaker than "
            "the seed-to-seed variation of a converged network's profile."
        )
    return text


def _z1_disagreement_lines(z1):
    """A sentence when Z1's paired interval and its unpaired test point different ways."""
    if not z1 or z1["ci"] is None or (z1["ci"][0] > 0) == (z1["p_value"] < 0.05):
        return []
    return [
        "",
        f"Z1's two statistics disagree: the per-seed interval {interval_text(z1['ci'], 4)[1:]} "
        f"{'lies above 0' if z1['ci'][0] > 0 else 'reaches 0'}, Welch's p = "
        f"{z1['p_value']:.3g}. Seed k of blur and of max see the same data order and "
        "augmentations, so the per-seed difference is paired and removes that part of the "
        "seed noise; Welch's test ignores the pairing and sees the whole seed-to-seed spread. "
        "The verdict follows the interval (as planned); read it as no stronger than this.",
    ]


def _keras_batch_norm_lines(paper):
    """The networks first trained with Keras's unfused BatchNormalization beside the same
    variant and seed with the fused layer: their difference is what rounding alone makes (the
    record of why: `NOTES["paper"]["keras_batch_norm"]`)."""
    earlier = paper.get("keras_batch_norm", {})
    if not earlier:
        return []
    rows = []
    for name, r in earlier.items():
        variant, seed = name.rsplit("_s", 1)
        accuracies = paper["test_accuracy"].get(variant, [])
        shifts = paper["shift_consistency"].get(variant, [])
        # Per-variant lists follow the finished networks of that variant, in seed order.
        done = [
            n.rsplit("_s", 1)[1]
            for n in paper["finished"]
            if n.rsplit("_s", 1)[0] == f"paper/{variant}"
        ]
        index = done.index(seed) if seed in done else None
        fused_acc = "not yet" if index is None else f"{accuracies[index]:.4f}"
        fused_shift = "not yet" if index is None else f"{shifts[index]:.3f}"
        rows.append(
            [name, f"{r['test_accuracy']:.4f}", fused_acc, f"{r['shift_consistency']:.3f}",
             fused_shift]
        )  # fmt: skip
    header = ["network", "test accuracy, Keras's BN", "fused", "shift consistency, Keras's BN",
              "fused"]  # fmt: skip
    return ["", NOTES["paper"]["keras_batch_norm"], "", *markdown_table(header, rows)]


def _figure_lines(figures, heading, suffix, directory):
    """Markdown for `{title: file name}` figures under `heading`, each titled `title + suffix`."""
    if not figures:
        return []
    lines = ["", heading, ""]
    for title, name in figures.items():
        lines += [f"### {title}{suffix}", "", f"![{title}]({directory}/{name})", ""]
    return lines


# -- the interval figure: findings decided over seeds, each estimate against 0 ----------------


def interval_rows(groups):
    """The rows of an interval figure, each `{"group", "label", "estimate", "ci",
    "clear_of_zero"}` (`clear_of_zero`: True when the interval excludes 0, False when it
    reaches 0, None without an interval); rows without a finite estimate are left out.

    Args:
        groups: `{group title: [(label, estimate, [lo, hi] or None), ...]}`, a group per
            finding (or per component of one), in the order to draw them.
    """
    rows = []
    for group, members in groups.items():
        for label, estimate, ci in members:
            if estimate is None or not np.isfinite(estimate):
                continue
            ci = None if ci is None else [float(ci[0]), float(ci[1])]
            rows.append(
                {"group": group, "label": label, "estimate": float(estimate), "ci": ci,
                 "clear_of_zero": None if ci is None else bool(ci[0] > 0 or ci[1] < 0)}
            )  # fmt: skip
    return rows


_INTERVAL_COLOURS = {True: "tab:blue", False: "tab:red", None: "grey"}
_INTERVAL_KINDS = {True: "interval clear of 0", False: "interval reaching 0",
                   None: "one seed: no interval"}  # fmt: skip


def draw_interval_figure(groups, path, title=None):
    """Each row's estimate with its 95% interval as a horizontal bar against a vertical line at
    0, a panel per group (each with its own x scale), the numbers on the right; blue where the
    interval excludes 0, red where it reaches 0, a grey point where there is no interval.
    Writes `path` (PNG) when there is a row; returns `interval_rows(groups)`."""
    rows = interval_rows(groups)
    if not rows:
        return rows
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    names = list(dict.fromkeys(r["group"] for r in rows))
    members = {g: [r for r in rows if r["group"] == g] for g in names}
    heights = [len(members[g]) + 1.6 for g in names]
    figure = Figure(figsize=(7.5, 0.8 + 0.28 * sum(heights)), layout="constrained")
    axes = figure.subplots(len(names), 1, squeeze=False, height_ratios=heights)[:, 0]
    for axis, group in zip(axes, names, strict=True):
        entries = members[group]
        digits = _interval_digits(entries)
        y = np.arange(len(entries))[::-1]
        for at, r in zip(y, entries, strict=True):
            colour = _INTERVAL_COLOURS[r["clear_of_zero"]]
            if r["ci"] is not None:
                axis.plot(r["ci"], [at, at], color=colour, lw=4, solid_capstyle="butt")
            axis.plot(r["estimate"], at, "o", color=colour, ms=6, mec="black", mew=0.6)
        axis.axvline(0, color="black", lw=0.9)
        ends = [0.0] + [x for r in entries for x in (r["ci"] or [r["estimate"]])]
        pad = 0.08 * ((max(ends) - min(ends)) or 1.0)
        axis.set_xlim(min(ends) - pad, max(ends) + pad)
        axis.set_ylim(-0.7, len(entries) - 0.3)
        axis.set_yticks(y, [r["label"] for r in entries], fontsize=8)
        axis.tick_params(axis="x", labelsize=8)
        axis.grid(axis="x", alpha=0.3)
        axis.set_title(group, fontsize=9, loc="left")
        numbers = axis.twinx()
        numbers.set_ylim(axis.get_ylim())
        numbers.set_yticks(y, [_estimate_text(r, digits) for r in entries], fontsize=7)
        numbers.tick_params(axis="y", length=0)
    kinds = [k for k in (True, False, None) if any(r["clear_of_zero"] is k for r in rows)]
    handles = [
        Line2D([], [], color=_INTERVAL_COLOURS[k], marker="o", mec="black", lw=0 if k is None
               else 4, label=_INTERVAL_KINDS[k])
        for k in kinds
    ]  # fmt: skip
    figure.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.savefig(path, dpi=100)
    return rows


def _interval_digits(rows):
    """Decimals for a group's numbers: 4 for small differences (Z1's), 2 for correlations."""
    return 4 if max(abs(x) for r in rows for x in [r["estimate"], *(r["ci"] or [])]) < 0.1 else 2


def _estimate_text(row, digits):
    return f"{row['estimate']:+.{digits}f}{interval_text(row['ci'], digits)}"


def _interval_figure_lines(rows, link):
    """The interval figure and, per group, in words: which intervals exclude 0, which reach
    it (with the numbers) and which rows have no interval."""
    if not rows:
        return []
    lines = [
        "",
        f"![Estimates with 95% intervals over seeds, against 0]({link})",
        "",
        "The findings decided over seeds at a glance: each estimate with its 95% t interval "
        "over seeds against 0 (the criterion is in each panel's title).",
        "",
    ]
    for group in dict.fromkeys(r["group"] for r in rows):
        entries = [r for r in rows if r["group"] == group]
        parts = []
        for kind, one, more in (
            (True, "the interval excludes 0", "intervals exclude 0"),
            (False, "the interval reaches 0", "intervals reach 0"),
            (None, "no interval (1 seed)", "no interval (1 seed)"),
        ):
            chosen = [r for r in entries if r["clear_of_zero"] is kind]
            if not chosen:
                continue
            digits = _interval_digits(entries)
            listed = ", ".join(
                r["label"] if kind else f"{r['label']} {_estimate_text(r, digits)}" for r in chosen
            )
            parts.append(f"{one if len(chosen) == 1 else more}: {listed}")
        lines.append(f"- {group}: " + "; ".join(parts) + ".")
    return lines


def paper_interval_groups(paper):
    """The interval figure's rows at paper scale: T1's D and G rank correlations with depth
    per variant, Z1's paired difference."""
    variants, z1 = paper.get("T1", {}).get("variants", {}), paper.get("Z1") or {}
    groups = _depth_groups("T1", "", variants)
    if z1.get("mean_difference") is not None:
        groups["Z1: shift consistency, blur - max, paired over seeds (holds: > 0)"] = [
            ("blur - max", z1["mean_difference"], z1["ci"])
        ]
    return groups


def extended_interval_groups(x):
    """The interval figure's rows of the extended studies: Z1 on the whole test set, T2's rank
    correlation and last-probe log ratio per variant, T3's D and G per condition."""
    groups = {}
    x = _with_studies(x)
    zt = x["Z1"]["test_set"]
    if zt.get("mean_difference") is not None:
        groups["Z1: shift consistency, blur - max, whole test set (holds: > 0)"] = [
            ("blur - max", zt["mean_difference"], zt["ci"])
        ]
    t2 = x["T2"]["variants"]
    if t2:
        groups["T2: rank corr. of log(D permuted / D) with depth (holds: > 0)"] = [
            (v, e["rank_corr_mean"], e["rank_corr_ci"]) for v, e in t2.items()
        ]
        last = {v: list(e["per_probe"].items())[-1] for v, e in t2.items() if e["per_probe"]}
        groups["T2: log(D permuted / D) at the last probe (holds: > 0)"] = [
            (f"{v} ({name})", p["mean"], p["ci"]) for v, (name, p) in last.items()
        ]
    groups |= _depth_groups("T3", ", noisy training", x["T3"]["variants"])
    return groups


def _depth_groups(key, condition, variants):
    """T1-style rows: D's and G's rank correlation with depth per variant (or condition)."""
    if not variants:
        return {}
    return {
        f"{key}: {c}'s rank corr. with depth{condition} (holds: {sign} 0)": [
            (v, e[c]["mean"], e[c]["ci"]) for v, e in variants.items()
        ]
        for c, sign in (("D", "<"), ("G", ">"))
    }


def _strength(item):
    return float(item[0])


def write_report(docs_dir, results):
    """The CPU-sized report: results.json, its figures and replication.md (replaced whole)."""
    directory = os.path.join(docs_dir, "replication")
    os.makedirs(directory, exist_ok=True)
    write_json(os.path.join(directory, "results.json"), results)
    figures = draw_figures(results, directory)
    findings = evaluate_findings(results)
    write_text(
        os.path.join(docs_dir, "replication.md"), report_markdown(results, findings, figures)
    )


def read_cpu_results(docs_dir):
    """The CPU-sized results.json without its `"paper"` object ({} before the first run)."""
    path = os.path.join(docs_dir, "replication", "results.json")
    if not os.path.exists(path):
        return {}
    with open(path) as file:
        cpu = json.load(file)
    cpu.pop("paper", None)
    cpu.pop("extended", None)
    return cpu


def write_paper_report(docs_dir, cpu, paper):
    """results.json: the CPU-sized keys as they are plus `"paper"`; replication.md: the
    CPU-sized report with the paper-scale section beside it."""
    directory = os.path.join(docs_dir, "replication")
    os.makedirs(directory, exist_ok=True)
    extended = _read_results(docs_dir).get("extended")
    write_json(os.path.join(directory, "results.json"), {**cpu, "paper": paper})
    paper_dir = os.path.join(directory, "paper")
    os.makedirs(paper_dir, exist_ok=True)
    paper_figures = draw_figures(paper, paper_dir)
    intervals = draw_interval_figure(
        paper_interval_groups(paper),
        os.path.join(paper_dir, "intervals.png"),
        title="Paper scale: findings decided over seeds (95% t intervals)",
    )
    lines, cpu_findings = [], []
    if cpu.get("settings"):
        cpu_findings = evaluate_findings(cpu)
        lines.append(report_markdown(cpu, cpu_findings, draw_figures(cpu, directory)))
    lines.append(paper_markdown(paper, cpu, cpu_findings, paper_figures, intervals))
    write_text(os.path.join(docs_dir, "replication.md"), "\n".join(lines))
    if extended is not None:  # the extended studies' section stays below
        write_extended_report(docs_dir, extended)


def _read_results(docs_dir):
    path = os.path.join(docs_dir, "replication", "results.json")
    if not os.path.exists(path):
        return {}
    with open(path) as file:
        return json.load(file)


# -- the extended studies (Z1 decided, T2, T3, P1, M1-M3) -------------------------------------

EXTENDED_MARKER = "<!-- extended studies: written by replicate.py --scale=extended -->"


def write_extended_report(docs_dir, extended):
    """results.json gains (or replaces) `"extended"`; replication.md keeps what is above the
    extended section's marker and gets the section anew."""
    directory = os.path.join(docs_dir, "replication", "extended")
    os.makedirs(directory, exist_ok=True)
    figures = {}
    if draw_p1_figure(extended.get("P1", {}), os.path.join(directory, "p1_error_vs_R.png")):
        figures["p1"] = "replication/extended/p1_error_vs_R.png"
    for name, draw in (("mouton_maps", draw_mouton_maps), ("m2_tradeoff", draw_m2_tradeoff)):
        if draw(extended, os.path.join(directory, f"{name}.png")):
            figures[name] = f"replication/extended/{name}.png"
    if draw_interval_figure(
        extended_interval_groups(extended),
        os.path.join(directory, "intervals.png"),
        title="Extended studies: findings decided over seeds (95% t intervals)",
    ):
        figures["intervals"] = "replication/extended/intervals.png"
    extended = {**extended, "figures": figures}
    results = _read_results(docs_dir)
    write_json(
        os.path.join(docs_dir, "replication", "results.json"), {**results, "extended": extended}
    )
    report = os.path.join(docs_dir, "replication.md")
    text = ""
    if os.path.exists(report):
        with open(report) as file:
            text = file.read()
    text = text.split(EXTENDED_MARKER)[0].rstrip("\n")
    write_text(report, f"{text}\n\n{EXTENDED_MARKER}\n{extended_markdown(extended)}")


def _training_minutes(networks):
    """How long training took per paper-scale network (their `train_minutes`; not P1's smaller
    sets, nor M1's and M3's CPU-sized networks), on each CPU bfloat16 path, or ''."""
    minutes = {}
    for name, n in networks.items():
        if n.get("train_minutes") and not re.search(r"(_n\d+_s\d+|^m[13]_.*)$", name):
            minutes.setdefault(n.get("cpu_bfloat16") or "an unrecorded path", []).append(
                n["train_minutes"]
            )
    if not minutes:
        return ""
    spans = [
        (f"{min(m):.0f}" if round(min(m)) == round(max(m)) else f"{min(m):.0f}-{max(m):.0f}")
        + f" min on {path} ({len(m)} network{'s' if len(m) > 1 else ''})"
        for path, m in sorted(minutes.items())
    ]
    return (
        f"Training took {' and '.join(spans)} per paper-scale network here "
        f"({NOTES['extended']['committed_training']}). "
    )


def _missing_lines(missing, lead):
    """`lead`: rerun ... Missing: `a`, `b`. (nothing when none is missing)."""
    if not missing:
        return []
    listed = ", ".join(f"`{m}`" for m in missing)
    return [f"{lead}: rerun the command to continue it. Missing: {listed}.", ""]


def extended_markdown(x):
    """The extended studies' section: one line per finding (`EXTENDED_FINDINGS`), then a
    section per finding; machines and plans from `NOTES["extended"]`."""
    x, notes = _with_studies(x), NOTES["extended"]
    total = len(x["finished"]) + len(x["missing"])
    lines = [
        "# Extended studies: Z1 decided, T2, T3, P1 and Mouton et al.'s M1-M3",
        "",
        f"Networks retrained with the paper-scale recipe {_cpu_paths_text(x['cpu_bfloat16'])}"
        f": finished {len(x['finished'])} of {total} "
        f"({x['wall_seconds'] / 3600:.2f} h wall"
        + (
            f", {x['wall_seconds'] / 60 / len(x['finished']):.0f} min per network, training and "
            f"measuring, {notes['machine']}"
            if x["finished"]
            else ""
        )
        + "). "
        + _training_minutes({**x["networks"], **x.get("mouton_networks", {})})
        + f"Planned for the {total} networks: {notes['plan']}.",
        "",
    ]
    lines += _missing_lines(x["missing"], "**Partial**")
    if x["cpu_bfloat16"]["excluded"]:
        lines += [
            "Excluded from the comparisons (trained on another bfloat16 path): "
            + ", ".join(x["cpu_bfloat16"]["excluded"])
            + ".",
            "",
        ]
    lines += ["```bash", x["settings"]["command"], "```", ""]
    lines += [
        "One line per finding with the number that decides it; every number behind it in the "
        "finding's section below.",
        "",
    ]
    lines += markdown_table(
        ["finding", "claim", "deciding number (95% interval over seeds)", "holds"],
        [[f["finding"], f["claim"], f["summary"], f["verdict"]]
         for f in evaluate_findings(x, EXTENDED_FINDINGS, unmeasured=False)],
    )  # fmt: skip
    if "intervals" in x.get("figures", {}):
        lines += _interval_figure_lines(
            interval_rows(extended_interval_groups(x)), x["figures"]["intervals"]
        )
    rows = []
    for name, n in x["networks"].items():
        full = (
            f"{n['shift_consistency_test_set']:.4f} ({n['shift_consistency_test_set_se']:.4f})"
            if "shift_consistency_test_set" in n
            else "-"
        )
        consistency = f"{n['shift_consistency']:.3f}" if "shift_consistency" in n else "-"
        rows.append(
            [name, f"{n['test_accuracy']:.4f}", consistency, full,
             f"{n.get('R_last', math.nan):.3f}", f"{n.get('R_output', math.nan):.3f}"]
        )  # fmt: skip
    lines += ["", "## Networks", ""]
    lines += markdown_table(
        ["network", "test accuracy", "shift consistency, 1,000 images x 1 pair",
         "all 10,000 x 5 pairs (SE)", "R last probe", "R logits"],
        rows,
    )  # fmt: skip
    lines += _p1_lines(x["P1"], x.get("figures", {}))
    lines += _z1_extended_lines(x["Z1"])
    lines += _t2_lines(x["T2"], x.get("T2_stale_statistics"))
    lines += _t3_lines(x["T3"])
    lines += _mouton_lines(x)
    lines += _reproducibility_lines(x["reproducibility"], x.get("bit_for_bit"))
    return "\n".join(lines) + "\n"


def _cpu_paths_text(cpu):
    """Which CPU bfloat16 path each study's networks were trained on, in words.

    Example:

    >>> _cpu_paths_text({"used": {"Z1, T2": "avx512_bf16", "M1": "amx_bf16"}})
    'on one kind of CPU per study (bfloat16 path `avx512_bf16` for Z1, T2; `amx_bf16` for M1)'
    >>> _cpu_paths_text({"used": {"T3": "avx512_bf16", "P1": "avx512_bf16"}})
    'on one kind of CPU (bfloat16 path `avx512_bf16`)'
    """
    used = cpu["used"]
    if isinstance(used, str) or used is None:  # a results.json of one path for all studies
        used = {"all": used}
    studies = {}
    for study, path in used.items():
        studies.setdefault(path, []).append(study)
    if len(studies) <= 1:
        return f"on one kind of CPU (bfloat16 path `{next(iter(studies), None)}`)"
    parts = [f"`{path}` for {', '.join(names)}" for path, names in studies.items()]
    return f"on one kind of CPU per study (bfloat16 path {'; '.join(parts)})"


def _with_studies(x):
    """`x` with an empty entry for each study it does not have yet (an extended object written
    before that study existed, e.g. without P1, still renders)."""
    empty = {
        "Z1": {"seeds": [], "test_set": {}, "first_1000": {}},
        "T2": {"variants": {}, "holds_in": 0, "decided": 0},
        "T3": {"variants": {}, "holds_in": 0, "decided": 0},
        "P1": {"points": [], "holds": None},
        "reproducibility": {},
    }
    return {**empty, **x}


def _p1_lines(p1, figures):
    if not p1.get("points"):
        return []
    lines = [
        "",
        "## P1: relative stability and test error across architectures",
        "",
        "D, G and R at the logits (diffeomorphisms delta = 1 px, c = 3, 500 test images, noise "
        "of the same norm), test error on all 10,000 test images; one seed per architecture and "
        "size.",
        "",
    ]
    lines += markdown_table(
        ["network", "test error", "R logits", "D logits", "G logits", "R last probe"],
        [[q["name"], f"{q['error']:.3f}", *(f"{q[c]:.3g}" for c in ("R", "D", "G", "R_last"))]
         for q in sorted(p1["points"], key=lambda q: q["R"])],
    )  # fmt: skip
    if p1.get("slope") is not None:
        d = p1["spearman_D"]
        lines += [
            "",
            f"Fit over {p1['networks']} networks: error = {p1['prefactor']:.2f} R^"
            f"{p1['slope']:.2f} (slope 95% interval {interval_text(p1['slope_ci']).strip()}, "
            f"R^2 = {p1['r_squared']:.2f}); the paper: error = 0.2 R^0.5. Spearman correlation of "
            f"the error with R {p1['spearman_R']:+.2f}{interval_text(p1['spearman_R_ci'])}, "
            f"with D {d:+.2f}{interval_text(p1['spearman_D_ci'])}.",
        ]
    if "p1" in figures:
        lines += ["", f"![P1: test error against R]({figures['p1']})"]
    return lines + _why_lines("P1")


def draw_p1_figure(p1, path):
    """Test error against R at the logits, log-log: a colour per architecture, a marker per
    training-set size, the paper's error = 0.2 sqrt(R)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = p1.get("points", [])
    if not points:
        return False
    architectures = sorted({q["architecture"] for q in points})
    sizes = sorted({q["train_size"] for q in points})
    markers = dict(zip(sizes, "osD^v<>", strict=False))
    colours = dict(zip(architectures, plt.cm.tab10.colors, strict=False))
    figure, axis = plt.subplots(figsize=(6, 4.5))
    for q in points:
        axis.scatter(q["R"], q["error"], color=colours[q["architecture"]],
                     marker=markers[q["train_size"]], s=45)  # fmt: skip
    r = np.geomspace(min(q["R"] for q in points) / 2, max(q["R"] for q in points) * 2, 50)
    axis.plot(r, 0.2 * np.sqrt(r), "k--", lw=1, label="paper: 0.2 sqrt(R)")
    if p1.get("slope") is not None:
        axis.plot(r, p1["prefactor"] * r ** p1["slope"], "k:", lw=1, label="fit here")
    for name, colour in colours.items():
        axis.scatter([], [], color=colour, label=name)
    for size, marker in markers.items():
        axis.scatter([], [], color="grey", marker=marker, label=f"{size:,} images")
    axis.set(xscale="log", yscale="log", xlabel="R = D / G at the logits", ylabel="test error")
    axis.legend(fontsize=7, loc="best")
    axis.set_title("P1: relative stability and test error (CIFAR-10)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


# The networks whose maps the Mouton section shows side by side (those finished).
MAP_NETWORKS = ("m1_max_noise_s0", "m1_max_smooth_s0", "m1_strided_noise_s0",
                "m1_strided_smooth_s0", "m2_k2_s0", "m2_k5_s0")  # fmt: skip


def draw_mouton_maps(x, path):
    """Translation maps (input, a middle layer, the logits) of a few Mouton networks, a row
    each, on the package's colour scale (`plots.plot_translation_maps`)."""
    from deformstab_tf.measures import MeasureResult
    from deformstab_tf.plots import plot_translation_maps

    networks = x.get("mouton_networks", {})
    shown = {name: networks[name] for name in MAP_NETWORKS if name in networks}
    if not shown:
        return False
    results = {
        name: MeasureResult(
            "translation_map",
            {layer: n["map_mean"].get(layer, math.nan) for layer in n["maps"]},
            metadata={"max_shift": n["max_shift"], "maps": n["maps"]},
        )
        for name, n in shown.items()
    }
    figure = plot_translation_maps(results, title="Translation maps (cosine similarity)")
    figure.savefig(path, dpi=90)
    return True


def draw_m2_tradeoff(x, path):
    """M2's trade-off: invariance at the logits against test accuracy, a point per network,
    coloured by the pooling window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    points = x.get("M2", {}).get("points", {})
    if not points:
        return False
    windows = sorted({int(k) for seed in points.values() for k in seed})
    colours = dict(zip(windows, plt.cm.viridis(np.linspace(0, 0.9, len(windows))), strict=True))
    figure, axis = plt.subplots(figsize=(5.5, 4))
    for seed in points.values():
        for k, p in seed.items():
            axis.scatter(p["test_accuracy"], 1 - p["invariance"], color=colours[int(k)], s=40)
    for k, colour in colours.items():
        axis.scatter([], [], color=colour, label=f"max pool {k}x{k}, stride 2")
    axis.set(yscale="log", xlabel="test accuracy",
             ylabel="1 - translation similarity at the logits (log)")  # fmt: skip
    # Plain numbers at 1, 1.5, 2, 3, 5, 7 x 10^k, no minor labels: a narrow range stays legible.
    axis.yaxis.set_major_locator(ticker.LogLocator(subs=(1, 1.5, 2, 3, 5, 7)))
    axis.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    axis.yaxis.set_minor_formatter(ticker.NullFormatter())
    axis.legend(fontsize=7)
    axis.set_title("M2: invariance against generalisation")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def _mouton_lines(x):
    networks = x.get("mouton_networks", {})
    if not networks:
        return []
    figures = x.get("figures", {})
    lines = [
        "",
        "## Mouton et al.: stride, pooling window, head, anti-aliasing, augmentation",
        "",
        "Invariance is Myburgh et al.'s translation map at the logits: the mean cosine "
        "similarity of the logits of a test image and of the image shifted by (dy, dx), over "
        "all 81 offsets in [-4, 4]^2 (wrap-around shifts, 500 test images of the network's own "
        "data). M2 at paper scale (max pooling windows 2-5 at stride 2; window 2 is the "
        "paper recipe's max network, trained for M2 on its own CPU path); M1 and M3 at the "
        "CPU-sized scale (10,000 images, 12 epochs, flips only): they compare invariance "
        "within a seed, not accuracy. M1's data sets: CIFAR-10 with fixed Gaussian pixel "
        "noise of SD 0.1, as it is, and shrunk by 2 and enlarged "
        "back (local homogeneity 0.940, 0.976, 0.993). Budget: "
        + NOTES["extended"]["mouton_budget"]
        + ".",
        "",
    ]
    lines += markdown_table(
        ["finding", "claim", "measured (95% interval over seeds)", "holds"],
        [[f["finding"], f["claim"], f["summary"], f["verdict"]]
         for f in evaluate_findings(x, MOUTON_FINDINGS)],
    )  # fmt: skip
    lines += [""]
    lines += markdown_table(
        ["network", "test accuracy", "invariance (logits)", "shift consistency",
         "CPU bfloat16 path"],
        [[name, f"{n['test_accuracy']:.4f}", f"{n['invariance']:.5f}",
          f"{n['shift_consistency']:.4f}", f"`{n.get('cpu_bfloat16')}`"]
         for name, n in networks.items()],
    )  # fmt: skip
    for key, caption in (("mouton_maps", "Translation maps"), ("m2_tradeoff", "M2 trade-off")):
        if key in figures:
            lines += ["", f"![{caption}]({figures[key]})"]
    for key in ("M1", "M2", "M3"):
        lines += _why_lines(key)
    return lines


def _z1_extended_lines(z1):
    zt, first = z1["test_set"], z1["first_1000"]
    if zt.get("mean_difference") is None:
        return []
    lines = [
        "",
        "## Z1: blur vs max on the whole test set",
        "",
        "Per seed (blur - max, all 10,000 test images, 5 shift pairs each): "
        + ", ".join(f"{d:+.4f}" for d in zt["difference_per_seed"])
        + f"; mean {zt['mean_difference']:+.4f}, 95% t interval{interval_text(zt['ci'], 4)}, "
        f"Welch's p = {_p(zt['p_value'])}.",
        "",
    ]
    if zt.get("mean_difference_standard_error") is not None:
        se, sd = zt["mean_difference_standard_error"], zt.get("seed_sd_of_differences")
        if se == 0:  # each network agreed on every shift pair, or on none
            error = "is 0 (each network agreed on every pair, or on none): it adds nothing"
        else:
            error = (
                f"is at most {se:.4f} (mean over seeds; an upper bound: both networks see the "
                "same images and offsets, which makes the difference's error smaller), "
            )
            if abs(zt["mean_difference"]) >= 3 * se:
                error += (
                    f"{abs(zt['mean_difference']) / se:.1f} times below the difference itself: "
                    "each seed's difference stands clear of 0 by its own measurement (on 1,000 "
                    "images with one pair each, the error of one network alone was about 0.0095, "
                    "as large as the effect), so the measurement no longer limits the verdict"
                )
            else:
                error += "not far below the difference itself: the measurement still limits it"
        lines += [
            f"The measurement's own standard error of one seed's difference {error}"
            + (
                f". The seeds' differences scatter with an SD of {sd:.4f}"
                + (", inside that bound (the bound is loose)" if sd < se else "")
                if sd
                else ""
            )
            + ".",
            "",
        ]
    if first.get("mean_difference") is not None:
        lines += [
            f"The same networks measured as before (1,000 images, one pair each): "
            f"{first['mean_difference']:+.4f}{interval_text(first['ci'], 4)}.",
        ]
    return lines + _why_lines("Z1")


def _t2_lines(t2, stale=None):
    if not t2["variants"]:
        return []
    lines = [
        "",
        "## T2: spatial vs channel pooling",
        "",
        "Every convolution's input channels permuted, independently per filter (seeded with the "
        "training seed; each 2-D spatial filter kept, `deformstab_tf.permute_input_channels`), "
        "then the BatchNormalization statistics re-estimated for the new pre-activations on "
        "2,000 training images (`recalibrate_batch_norm`); D per probe before and after, as "
        "log(D permuted / D) with its 95% t interval over seeds. > 0: the permutation makes the "
        "layer less stable (it relied on channel pooling).",
        "",
    ]
    for v, e in t2["variants"].items():
        rank = (
            ""
            if e["rank_corr_mean"] is None
            else f"rank corr. of the log ratio with depth {e['rank_corr_mean']:+.2f}"
            f"{interval_text(e['rank_corr_ci'])} (per seed "
            f"{', '.join(f'{r:+.2f}' for r in e['rank_corr'])}), holds: "
            f"{verdict(e['holds'], EXTENDED_FINDINGS['T2'].undecided)}; "
        )
        lines.append(
            f"- **{v}**: {rank}"
            + (
                f"crossover at `{e['crossover']}`; "
                if e["crossover"]
                else "no crossover; "
                if e["holds"] is not None
                else "no crossover to tell (1 seed); "
            )
            + ", ".join(
                f"{name} {p['mean']:+.2f}{interval_text(p['ci'])}"
                for name, p in e["per_probe"].items()
            )
        )
    shown = {v: e for v, e in (stale or {}).get("variants", {}).items() if e["per_probe"]}
    if shown:
        lines += [
            "",
            "Without re-estimating the statistics, the permuted network normalises its new "
            "pre-activations with the old means and variances and is broken rather than "
            "permuted; its D falls instead: mean log ratio at the last probe "
            + ", ".join(
                f"{v} {list(e['per_probe'].values())[-1]['mean']:+.2f}" for v, e in shown.items()
            )
            + ". That is why T2 is measured on recalibrated networks.",
        ]
    return lines + _why_lines("T2")


def _t3_lines(t3):
    if not t3["variants"]:
        return []
    lines = [
        "",
        "## T3: D and G with depth after training with noise",
        "",
        "T1's test on networks trained with Gaussian noise added to the inputs (the noise in "
        "training only; measured as above): the Spearman rank correlation of D and of G with "
        "probe depth per seed, its mean and 95% t interval over seeds; holds when D's interval "
        "lies below 0 and G's above.",
        "",
    ]
    for group, e in t3["variants"].items():
        lines.append(
            f"- **{group}**: rank corr. with depth D {e['D']['mean']:+.2f}"
            f"{interval_text(e['D']['ci'])}, G {e['G']['mean']:+.2f}{interval_text(e['G']['ci'])}; "
            "per seed "
            + ", ".join(
                f"s{k} D {d:+.2f} G {g:+.2f}"
                for k, (d, g) in enumerate(zip(e["D"]["rank_corr"], e["G"]["rank_corr"],
                                               strict=True))
            )
            + f"; holds: {verdict(e['holds'], EXTENDED_FINDINGS['T3'].undecided)}"
        )  # fmt: skip
    return lines + _why_lines("T3")


def _bit_for_bit_lines(check):
    """Which networks trained again by a committed command repeat it to the last bit, by CPU
    bfloat16 path, and what that says about the committed networks' path."""
    if not check or not check["networks"]:
        return []
    groups = {}  # (path, repeats every key) -> [(name, entry)]
    for name, entry in check["networks"].items():
        key = (entry["cpu_bfloat16"] or "an unrecorded path", not entry["different"])
        groups.setdefault(key, []).append((name, entry))
    parts = []
    for (path, same), members in sorted(groups.items(), key=lambda g: not g[0][1]):
        names = ", ".join(
            name
            if name.split("/")[-1] == entry["committed"].split("/")[-1]
            else f"{name} (the command of {entry['committed']})"
            for name, entry in members
        )
        if same:
            keys = [k for k in BIT_FOR_BIT if k in members[0][1]["identical"]]
            parts.append(
                f"on {path}, {names} repeat{'s' if len(members) == 1 else ''} the committed "
                f"network to the last bit ({', '.join(BIT_FOR_BIT[k] for k in keys)})"
            )
        else:
            different = {k for _, e in members for k in e["different"]}
            equal = set.intersection(*(set(e["identical"]) for _, e in members))
            parts.append(
                f"on {path}, {names} "
                + ("differs from it in " if len(members) == 1 else "differ from theirs in ")
                + ", ".join(BIT_FOR_BIT[k] for k in BIT_FOR_BIT if k in different)
                + (
                    f" and equal {'it' if len(members) == 1 else 'them'} only in "
                    + ", ".join(BIT_FOR_BIT[k] for k in BIT_FOR_BIT if k in equal)
                    if equal
                    else ""
                )
            )
    path = check["committed_cpu_bfloat16"]
    return [
        "Trained again by the committed command (each network beside the committed one of the "
        "same variant and seed): "
        + "; ".join(parts)
        + ". "
        + (
            f"So the committed networks were trained on {path}, and the differences below are "
            "those of the other path."
            if path
            else "No network here repeats its committed one to the last bit, so none was "
            "trained on the committed networks' CPU bfloat16 path."
        ),
        "",
    ]


def _reproducibility_lines(reproducibility, bit_for_bit=None):
    r = reproducibility
    if not any(entry["differences"] for entry in r.values()):
        return []
    lines = [
        "",
        "## Reproducibility across machines",
        "",
        *_bit_for_bit_lines(bit_for_bit),
        "Retrained network - committed network of the same variant and seed; the mean "
        "difference with its 95% t interval, and the mean |difference| against what two "
        "networks differing only in seed would show (2 SD / sqrt(pi), the seed SD pooled over "
        "both machines and all variants, each machine's seeds about their own mean):",
        "",
    ]
    rows = []
    for key, entry in r.items():
        if not entry["differences"]:
            continue
        differences = ", ".join(f"{n} {d:+.4f}" for n, d in entry["differences"].items())
        mean = entry.get("mean_difference") or {}
        new_seed, ratio = entry.get("new_seed_mean_abs"), entry.get("ratio_to_new_seed")
        rows.append([
            key, differences,
            f"{mean['mean']:+.4f}{interval_text(mean['ci'], 4)}" if mean else "n/a",
            f"{entry['mean_abs']:.4f}",
            "n/a" if new_seed is None else f"{new_seed:.4f}",
            "n/a" if ratio is None else f"{ratio:.1f}",
        ])  # fmt: skip
    lines += markdown_table(
        ["quantity", "differences", "mean difference", "mean abs", "a new seed", "ratio"], rows
    )
    accuracy = r.get("test_accuracy", {})
    spreads = []
    for v, sds in accuracy.get("seed_sd", {}).items():
        for which in ("committed", "retrained"):
            e = sds.get(which)
            if e is not None:
                spreads.append(
                    f"{v} {which} {e['sd']:.4f} [{e['ci'][0]:.4f}, {e['ci'][1]:.4f}] "
                    f"({e['n']} seeds)"
                )
    pooled, ratio = accuracy.get("pooled_seed_sd"), accuracy.get("ratio_to_new_seed")
    if spreads and pooled and ratio is not None:
        ci = accuracy["mean_difference"]["ci"]
        shifted = ci is not None and (ci[0] > 0 or ci[1] < 0)
        like_a_seed = 0.5 <= ratio <= 2 and not shifted
        lines += [
            "",
            "How small the seed-to-seed spread is: the SD of test accuracy over seeds with its "
            "95% chi-square interval, " + "; ".join(spreads) + f"; pooled "
            f"{pooled['sd']:.4f} [{pooled['ci'][0]:.4f}, {pooled['ci'][1]:.4f}] "
            f"({pooled['df']} degrees of freedom). A retrained network lands "
            f"{accuracy['mean_abs']:.4f} from its committed test accuracy on average, "
            f"{ratio:.1f} times what a new seed gives, "
            + ("in a consistent direction" if shifted else "in no consistent direction")
            + ": "
            + (
                "on this evidence the other CPU's bfloat16 path acts like a new seed, no more."
                if like_a_seed
                else "the other CPU's bfloat16 path shifts the networks one way."
                if shifted
                else "the other CPU's bfloat16 path moves a network "
                + ("further than" if ratio > 2 else "less far than")
                + " a new seed does."
            ),
        ]
        if like_a_seed and NOTES["extended"].get("seed_spread"):
            lines += ["", NOTES["extended"]["seed_spread"]]
    return lines


def _p(value):
    return "n/a" if value is None else f"{value:.3g}"


def _why_lines(key):
    """Why we think a finding of the extended studies holds or fails, as written down in
    `NOTES["extended"]["why"]` once its numbers were in (nothing while there is no note)."""
    why = NOTES["extended"].get("why", {}).get(key)
    return ["", f"**Why we think so.** {why}"] if why else []
