"""replication.md and its figures, drawn with the package's `plots` (the band panels that
`reports.compare_runs` draws for training runs)."""

import json
import math
import os

import numpy as np
from _stats import t_quantile  # benchmarks/ is on sys.path

from .experiments import PAPER_PILOTS, write_json, write_text
from .findings import (
    WHY_IT_MAY_DIFFER,
    WHY_THE_SCALES_DIFFER,
    depth_correlations,
    evaluate_findings,
    trained_smoothness,
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

    if results["sensitivity"]:
        save(
            plot_stage_bands(
                stages(results["sensitivity"]),
                title="TPS sensitivity (3x3 grid, C=2), mean +- 2 SD over seeds",
                ylabel="normalised sensitivity",
            ),
            "sensitivity_profiles.png",
            "Sensitivity per layer, at initialisation and after training",
        )
    if results["smoothness"]:
        save(
            plot_stage_bands(stages(results["smoothness"]), title="Kernel TV/L1", ylabel="TV / L1"),
            "smoothness_profiles.png",
            "Kernel smoothness per layer, at initialisation and after training",
        )
    for component in ("D", "G", "R"):
        if results["relative_stability"]:
            save(
                plot_stage_bands(
                    stages(results["relative_stability"], component),
                    title=f"{component} per layer (diffeomorphisms delta=1 px, c=3)",
                    ylabel=component,
                    log=True,
                ),
                f"relative_stability_{component}.png",
                f"{component} per layer, at initialisation and after training",
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
        f"(2 CPU cores). Finished {len(results['finished'])} of "
        f"{len(results['finished']) + len(results['missing'])} experiments.",
        "",
    ]
    if results["missing"]:
        lines += [
            "**This run is partial**: rerun the command to continue it. Missing: "
            + ", ".join(f"`{m}`" for m in results["missing"])
            + ".",
            "",
        ]
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
        "| finding | paper's claim | measured here | holds here |",
        "|---|---|---|---|",
    ]
    for f in findings:
        verdict = {True: "yes", False: "**no**", None: "n/a"}[f["holds"]]
        lines.append(f"| {f['finding']} | {f['claim']} | {f['measured']} | {verdict} |")
    differing = [f for f in findings if f["holds"] is False]
    if differing:
        lines += ["", "### Findings that do not hold here", ""]
        for f in differing:
            note = WHY_IT_MAY_DIFFER.get(f["finding"], "")
            lines.append(f"- **{f['finding']}**: {note} Measured: {f['measured']}.")
    if results["test_accuracy"]:
        lines += [
            "",
            "## Test accuracy after training",
            "",
            "| variant | seeds | accuracy |",
            "|---|---|---|",
        ]
        for v, acc in results["test_accuracy"].items():
            lines.append(f"| {v} | {len(acc)} | {', '.join(f'{a:.3f}' for a in acc)} |")
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
MINUTES_PER_NETWORK = 22  # 30 epochs of 391 bfloat16 steps, plus the measurements (measured)


def paper_markdown(paper, cpu, cpu_findings, figures):
    """The paper-scale section: settings, budget, findings beside the CPU-sized ones, the T1
    and Z1 statistics, accuracies and figures."""
    s = paper["settings"]
    total = len(paper["finished"]) + len(paper["missing"])
    findings = evaluate_findings(
        {
            **paper,
            **{key: cpu.get(key, {}) for key in CPU_SIZED_ONLY},
            "settings": {**cpu.get("settings", {}), **s},
        }
    )
    t1, z1 = paper["T1"], paper["Z1"]
    verdict = {True: "yes", False: "**no**", None: "n/a"}
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
        f"networks). Budget: about {MINUTES_PER_NETWORK} minutes of wall time per network on "
        "2 cores (bfloat16, 36-57 s per epoch on an idle machine, avg the fastest and blur the "
        "slowest; 66-75 s with Keras's unfused BatchNormalization), "
        f"{total} networks, about {total * MINUTES_PER_NETWORK / 60:.1f} hours; so far "
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
    lines += [f"- {pilot}" for pilot in PAPER_PILOTS] + [""]
    cpu_rows = {f["finding"]: f for f in cpu_findings}
    lines += [
        "| finding | CPU-sized (10,000 images, 12 epochs) | holds | paper scale | holds |",
        "|---|---|---|---|---|",
    ]
    shown = {}
    for f in findings:
        c = cpu_rows.get(f["finding"], {"measured": "", "holds": None})
        measured = f["measured"]
        holds = f["holds"]
        if f["finding"] in CPU_SIZED_FINDINGS and holds is not None:
            measured = (
                "CPU-sized settings (as planned)"
                + (", against the paper-scale networks: " if f["finding"] == "F5" else ": ")
                + measured
            )
        if f["finding"] == "T1" and t1.get("variants"):
            measured = "; ".join(
                f"{v}: D {e['D']['mean']:+.2f}{_interval(e['D']['ci'], 2)}, "
                f"G {e['G']['mean']:+.2f}{_interval(e['G']['ci'], 2)}"
                for v, e in t1["variants"].items()
            )
            measured = (
                f"holds in {t1['holds_in']} of {t1['decided']} variants with 2+ seeds: {measured}"
                if t1["decided"]
                else f"one seed per variant so far, no intervals yet: {measured}"
            )
            holds = None if not t1["decided"] else t1["holds_in"] == t1["decided"]
        if f["finding"] == "Z1" and z1:
            measured = f"blur - max {z1['mean_difference']:+.4f}"
            if z1["ci"]:
                measured += f", 95% CI{_interval(z1['ci'], 4)}, Welch p = {z1['p_value']:.3g}"
            measured += "; " + f["measured"]
            holds = z1["holds"]
        shown[f["finding"]] = holds
        lines.append(
            f"| {f['finding']} | {c['measured']} | {verdict[c['holds']]} | {measured} | "
            f"{verdict[holds]} |"
        )
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
    turned |= {} if "Z1" in changed else _z1_turned(cpu, z1)
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
    lines += _scale_change_lines(changed + list(turned), cpu, paper)
    lines += _paper_failure_lines(shown, t1, z1)
    lines += _z1_disagreement_lines(z1)
    if paper["test_accuracy"]:
        lines += ["", "| variant | test accuracy per seed | mean |", "|---|---|---|"]
        for v, acc in paper["test_accuracy"].items():
            lines.append(f"| {v} | {', '.join(f'{a:.4f}' for a in acc)} | {np.mean(acc):.4f} |")
    lines += _keras_batch_norm_lines(paper)
    lines += _figure_lines(figures, "## Paper-scale figures", " (paper scale)", "replication/paper")
    return "\n".join(lines) + "\n"


def _scale_change_lines(changed, cpu, paper):
    """For each finding whose verdict changed: the numbers behind the change and why we think
    it changed (`WHY_THE_SCALES_DIFFER`)."""
    lines = []
    for key in changed:
        if key not in WHY_THE_SCALES_DIFFER:
            continue
        evidence = _EVIDENCE[key](cpu, paper) if key in _EVIDENCE else ""
        lines.append(f"- **{key}**: {evidence}{WHY_THE_SCALES_DIFFER[key]}")
    return [""] + lines if lines else []


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


def _paper_failure_lines(shown, t1, z1):
    """For each finding that does not hold at paper scale: the per-seed numbers that decide it,
    and whether the seeds disagree on the direction or only the interval is too wide to tell."""
    lines = []
    if shown.get("T1") is False:
        lines.append(f"- **T1**: {_t1_failure(t1)}")
    if shown.get("Z1") is False and z1.get("difference_per_seed"):
        per_seed = z1["difference_per_seed"]
        positive = sum(d > 0 for d in per_seed)
        lines.append(
            f"- **Z1**: blur - max per seed {', '.join(f'{d:+.3f}' for d in per_seed)}: "
            f"positive in {positive} of {len(per_seed)} seeds"
            + (
                "; every seed points Zhang's way, but over this few seeds the t interval "
                f"{_interval(z1['ci'], 4)[1:]} reaches 0."
                if positive == len(per_seed)
                else "; the seeds disagree on the direction, so the effect is not larger "
                "than the seed noise here."
            )
        )
    for key in ("F2", "F3", "F4"):
        if shown.get(key) is False:
            lines.append(f"- **{key}**: {WHY_IT_MAY_DIFFER[key]}")
    if not lines:
        return []
    return ["", "Findings that do not hold at paper scale, and why we think so:", ""] + lines


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
                f"D{_interval(e['D']['ci'], 2)}, G{_interval(e['G']['ci'], 2)} are not both "
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
        f"Z1's two statistics disagree: the per-seed interval {_interval(z1['ci'], 4)[1:]} "
        f"{'lies above 0' if z1['ci'][0] > 0 else 'reaches 0'}, Welch's p = "
        f"{z1['p_value']:.3g}. Seed k of blur and of max see the same data order and "
        "augmentations, so the per-seed difference is paired and removes that part of the "
        "seed noise; Welch's test ignores the pairing and sees the whole seed-to-seed spread. "
        "The verdict follows the interval (as planned); read it as no stronger than this.",
    ]


def _interval(ci, digits):
    """` [lo, hi]` with signs; nothing for one seed (no spread, so no interval)."""
    return "" if ci is None else f" [{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def _keras_batch_norm_lines(paper):
    """The networks first trained with Keras's unfused BatchNormalization beside the same
    variant and seed with the fused layer: their difference is what rounding alone makes."""
    earlier = paper.get("keras_batch_norm", {})
    if not earlier:
        return []
    lines = [
        "",
        "The first networks were trained with Keras's own BatchNormalization (unfused ops), "
        "before the builders' layer ran TensorFlow's fused kernel, which made a training step "
        "2x faster; every network above was trained again with the fused layer. The same "
        "computation in another order: the two columns differ by rounding, grown over 30 "
        "epochs into a different network (their numbers: "
        "docs/replication/experiments/paper_keras_bn/). The CPU-sized networks above were "
        "trained with Keras's layer too: a rerun of that part differs from them the same way.",
        "",
        "| network | test accuracy, Keras's BN | fused | shift consistency, Keras's BN | fused |",
        "|---|---|---|---|---|",
    ]
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
        lines.append(
            f"| {name} | {r['test_accuracy']:.4f} | {fused_acc} | "
            f"{r['shift_consistency']:.3f} | {fused_shift} |"
        )
    return lines


def _figure_lines(figures, heading, suffix, directory):
    """Markdown for `{title: file name}` figures under `heading`, each titled `title + suffix`."""
    if not figures:
        return []
    lines = ["", heading, ""]
    for title, name in figures.items():
        lines += [f"### {title}{suffix}", "", f"![{title}]({directory}/{name})", ""]
    return lines


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
    lines, cpu_findings = [], []
    if cpu.get("settings"):
        cpu_findings = evaluate_findings(cpu)
        lines.append(report_markdown(cpu, cpu_findings, draw_figures(cpu, directory)))
    lines.append(paper_markdown(paper, cpu, cpu_findings, paper_figures))
    write_text(os.path.join(docs_dir, "replication.md"), "\n".join(lines))
    if extended is not None:  # the extended studies' section stays below
        write_extended_report(docs_dir, extended)


def _read_results(docs_dir):
    path = os.path.join(docs_dir, "replication", "results.json")
    if not os.path.exists(path):
        return {}
    with open(path) as file:
        return json.load(file)


# -- the extended studies (Z1 decided, T2, T3, P1) --------------------------------------------

EXTENDED_MARKER = "<!-- extended studies: written by replicate.py --scale=extended -->"


def write_extended_report(docs_dir, extended):
    """results.json gains (or replaces) `"extended"`; replication.md keeps what is above the
    extended section's marker and gets the section anew."""
    directory = os.path.join(docs_dir, "replication", "extended")
    os.makedirs(directory, exist_ok=True)
    figures = {}
    if draw_p1_figure(extended["P1"], os.path.join(directory, "p1_error_vs_R.png")):
        figures["p1"] = "replication/extended/p1_error_vs_R.png"
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


def extended_markdown(x):
    """The extended studies' section: one line per finding, then a section per finding."""
    total = len(x["finished"]) + len(x["missing"])
    z1, t2 = x["Z1"], x["T2"]
    lines = [
        "# Extended studies at paper scale: Z1 decided, T2, T3 (and, to come, P1)",
        "",
        f"Networks retrained with the paper-scale recipe on one kind of CPU (bfloat16 path "
        f"`{x['cpu_bfloat16']['used']}`): finished {len(x['finished'])} of {total} "
        f"({x['wall_seconds'] / 3600:.2f} h wall).",
        "",
    ]
    if x["missing"]:
        lines += [
            "**Partial**: rerun the command to continue it. Missing: "
            + ", ".join(f"`{m}`" for m in x["missing"])
            + ".",
            "",
        ]
    if x["cpu_bfloat16"]["excluded"]:
        lines += [
            "Excluded from the comparisons (trained on another bfloat16 path): "
            + ", ".join(x["cpu_bfloat16"]["excluded"])
            + ".",
            "",
        ]
    lines += ["```bash", x["settings"]["command"], "```", ""]
    lines += ["| finding | deciding number (95% interval over seeds) | holds |", "|---|---|---|"]
    zt = z1["test_set"]
    if zt.get("mean_difference") is not None:
        lines.append(
            f"| Z1 blur raises shift consistency | blur - max {zt['mean_difference']:+.4f} "
            f"{_interval(zt['ci'], 4)}, {len(z1['seeds'])} paired seeds | {_verdict(zt['holds'])} |"
        )
    for v, e in t2["variants"].items():
        mean = e["rank_corr_mean"]
        lines.append(
            f"| T2 ({v}) permuting channels hurts later layers more | rank corr. of log(D "
            f"permuted / D) with depth {mean:+.2f} {_interval(e['rank_corr_ci'], 2)} | "
            f"{_verdict(e['holds'])} |"
        )
    p1 = x["P1"]
    if p1.get("slope") is not None:
        lines.append(
            f"| P1 R at the output predicts test error across architectures and sizes | "
            f"Spearman(error, R) {p1['spearman_R']:+.2f}{_interval(p1['spearman_R_ci'], 2)}; "
            f"slope of log error on log R {p1['slope']:.2f}{_interval(p1['slope_ci'], 2)} "
            f"(paper 0.5), {p1['networks']} networks | {_verdict(p1['holds'])} |"
        )
    for group, e in x["T3"]["variants"].items():
        lines.append(
            f"| T3 ({group}) D falls, G rises with depth after noisy training | rank corr. with "
            f"depth D {e['D']['mean']:+.2f}{_interval(e['D']['ci'], 2)}, G "
            f"{e['G']['mean']:+.2f}{_interval(e['G']['ci'], 2)} | {_verdict(e['holds'])} |"
        )
    lines += ["", "## Networks", "", "| network | test accuracy | shift consistency, 1,000 "
              "images x 1 pair | all 10,000 x 5 pairs (SE) | R last probe | R logits |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for name, n in x["networks"].items():
        full = (
            f"{n['shift_consistency_test_set']:.4f} ({n['shift_consistency_test_set_se']:.4f})"
            if "shift_consistency_test_set" in n
            else "-"
        )
        consistency = f"{n['shift_consistency']:.3f}" if "shift_consistency" in n else "-"
        lines.append(
            f"| {name} | {n['test_accuracy']:.4f} | {consistency} | {full} "
            f"| {n.get('R_last', math.nan):.3f} | {n.get('R_output', math.nan):.3f} |"
        )
    lines += _p1_lines(p1, x.get("figures", {}))
    lines += _z1_extended_lines(z1)
    lines += _t2_lines(t2)
    lines += _reproducibility_lines(x["reproducibility"])
    return "\n".join(lines) + "\n"


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
        "| network | test error | R logits | D logits | G logits | R last probe |",
        "|---|---|---|---|---|---|",
    ]
    for point in sorted(p1["points"], key=lambda q: q["R"]):
        lines.append(
            f"| {point['name']} | {point['error']:.3f} | {point['R']:.3g} | {point['D']:.3g} | "
            f"{point['G']:.3g} | {point['R_last']:.3g} |"
        )
    if p1.get("slope") is not None:
        d = p1["spearman_D"]
        lines += [
            "",
            f"Fit over {p1['networks']} networks: error = {p1['prefactor']:.2f} R^"
            f"{p1['slope']:.2f} (slope 95% interval {_interval(p1['slope_ci'], 2).strip()}, "
            f"R^2 = {p1['r_squared']:.2f}); the paper: error = 0.2 R^0.5. Spearman correlation of "
            f"the error with R {p1['spearman_R']:+.2f}{_interval(p1['spearman_R_ci'], 2)}, "
            f"with D {d:+.2f}{_interval(p1['spearman_D_ci'], 2)}.",
        ]
    if "p1" in figures:
        lines += ["", f"![P1: test error against R]({figures['p1']})"]
    return lines


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


def _verdict(holds):
    return {True: "yes", False: "**no**", None: "n/a (fewer than 2 seeds)"}[holds]


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
        + f"; mean {zt['mean_difference']:+.4f}, 95% t interval {_interval(zt['ci'], 4)}, "
        f"Welch's p = {_p(zt['p_value'])}.",
        "",
    ]
    if zt.get("mean_difference_standard_error") is not None:
        sd = zt.get("seed_sd_of_differences")
        lines += [
            f"The measurement's own standard error of a difference is at most "
            f"{zt['mean_difference_standard_error']:.4f} (mean over seeds; an upper bound, "
            "both networks see the same images and offsets)"
            + (f", against a seed-to-seed SD of the differences of {sd:.4f}" if sd else "")
            + ": the measurement no longer limits the verdict; the seeds do.",
            "",
        ]
    if first.get("mean_difference") is not None:
        lines += [
            f"The same networks measured as before (1,000 images, one pair each): "
            f"{first['mean_difference']:+.4f} {_interval(first['ci'], 4)}.",
            "",
        ]
    return lines


def _t2_lines(t2):
    if not t2["variants"]:
        return []
    lines = [
        "",
        "## T2: spatial vs channel pooling",
        "",
        "Every convolution's input channels permuted, independently per filter (seeded with the "
        "training seed; each 2-D spatial filter kept, `deformstab_tf.permute_input_channels`); "
        "D per probe before and after, as log(D permuted / D) with its 95% t interval over "
        "seeds. > 0: the permutation makes the layer less stable (it relied on channel pooling).",
        "",
    ]
    for v, e in t2["variants"].items():
        lines.append(
            f"- **{v}**: crossover at `{e['crossover']}`; "
            + ", ".join(
                f"{name} {p['mean']:+.2f} {_interval(p['ci'], 2)}"
                for name, p in e["per_probe"].items()
            )
        )
    return lines


def _reproducibility_lines(reproducibility):
    r = reproducibility
    if not any(entry["differences"] for entry in r.values()):
        return []
    lines = [
        "",
        "## Reproducibility across machines",
        "",
        "Retrained network - committed network of the same variant and seed (the committed ones "
        "were trained on another CPU bfloat16 path), against the committed seed-to-seed SD:",
        "",
        "| quantity | differences | mean abs | committed seed SD | ratio |",
        "|---|---|---|---|---|",
    ]
    for key, entry in r.items():
        if not entry["differences"]:
            continue
        spread = entry["committed_seed_sd"]
        sd = np.mean(list(spread.values())) if spread else math.nan
        ratio = entry["ratio"] if entry["ratio"] is not None else math.nan
        lines.append(
            f"| {key} | "
            + ", ".join(f"{n} {d:+.4f}" for n, d in entry["differences"].items())
            + f" | {entry['mean_abs']:.4f} | {sd:.4f} | {ratio:.1f} |"
        )
    return lines


def _p(value):
    return "n/a" if value is None else f"{value:.3g}"
