"""The findings of SPEC decided from the gathered results, as tables: per finding its key, the
paper's claim and how it is decided (`Finding`). `evaluate_findings` evaluates a table, the one
place where verdicts are made; the report reads every verdict from its rows.

- `FINDINGS`: F1-F6, T1 and Z1, at the CPU-sized and the paper scale (T1 and Z1 over seeds
  where the results hold their statistics, `_stats.t1_statistics` / `z1_statistics`).
- `EXTENDED_FINDINGS`: the extended studies: Z1 on the whole test set, T2, P1 and T3.

The prose that records history (why a verdict may differ, pilot runs, machines and timings) is
data: `notes.json` beside this module (`NOTES`)."""

import dataclasses
import json
import math
import os
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from _stats import spearman  # benchmarks/ is on sys.path

POOLING, NO_POOLING = ("max", "avg", "blur"), ("subsample", "strided", "strided_relu")


# The hand-written records of the replication (`notes.json`; its "about" says what each holds).
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "notes.json")) as _file:
    NOTES = json.load(_file)
WHY_IT_MAY_DIFFER = NOTES["why_it_may_differ"]
WHY_THE_SCALES_DIFFER = NOTES["why_the_scales_differ"]


class Decision(NamedTuple):
    """What a finding's `decide` returns.

    Attributes:
        holds: True, False, or None (undecided: too few seeds or networks).
        summary: the deciding number in one short line (the findings table's).
        measured: every number the verdict rests on (the finding's section); None where the
            report's section of the finding lists them itself (the extended studies).
    """

    holds: bool
    summary: str
    measured: str = None


@dataclasses.dataclass(frozen=True)
class Finding:
    """One row of a findings table.

    Attributes:
        key: the finding's name in SPEC (`"F1"`, ...).
        claim: what the paper claims.
        decide: how it is decided: `decide(results)` -> `Decision`, or None while the results
            do not measure it.
        undecided: why a verdict of None is n/a, shown beside it ("": a plain n/a).
    """

    key: str
    claim: str
    decide: Callable
    undecided: str = ""


# -- how each finding is decided ---------------------------------------------------------------


def _f1(results):
    """Pooling vs no pooling: the mean of the variants' mean sensitivity at init."""
    init = _stage_means(results["sensitivity"], "init")
    pool = [init[v] for v in POOLING if v in init]
    nopool = [init[v] for v in NO_POOLING if v in init]
    if not (pool and nopool):
        return None
    return Decision(
        bool(np.mean(pool) < np.mean(nopool)),
        f"mean S at init: pooling {np.mean(pool):.3f}, no pooling {np.mean(nopool):.3f}",
        f"mean S at init: pooling {np.mean(pool):.3f} ({_listing(init, POOLING)}); "
        f"no pooling {np.mean(nopool):.3f} ({_listing(init, NO_POOLING)})",
    )


def _f2(results):
    """Every pooling variant's mean sensitivity rises from its init to after training."""
    sens = results["sensitivity"]
    trained, before = _stage_means(sens, "trained"), _stage_means(sens, "init_of_trained")
    changes = {v: trained[v] - before[v] for v in trained if v in before and v in POOLING}
    if not changes:
        return None
    return Decision(
        all(c > 0 for c in changes.values()),
        _count_summary(
            "S rises in", "pooling variants", {v: c > 0 for v, c in changes.items()},
            changes, lambda v: f"{v} {before[v]:.3f} -> {trained[v]:.3f}",
        ),
        ", ".join(f"{v}: {before[v]:.3f} -> {trained[v]:.3f}" for v in changes),
    )  # fmt: skip


def _f3(results):
    """The SD of the sensitivity profiles across variants falls from init to trained."""
    sens = results["sensitivity"]
    both = [v for v in sens if "init" in sens[v] and "trained" in sens[v]]
    if len(both) < 2:
        return None
    s_init = _spread([sens[v]["init"] for v in both])
    s_trained = _spread([sens[v]["trained"] for v in both])
    return Decision(
        bool(s_trained < s_init),
        f"SD of S across variants: init {s_init:.3f} -> trained {s_trained:.3f}",
        f"SD across variants (mean over layers): init {s_init:.3f}, trained {s_trained:.3f}",
    )


def _f4(results):
    """Every variant's trained TV/L1 lies below its init (1.87 without one)."""
    tv = _stage_means(results["smoothness"], "trained")
    tv0 = _stage_means(results["smoothness"], "init")
    if not tv:
        return None
    return Decision(
        all(value < tv0.get(v, 1.87) for v, value in tv.items()),
        _count_summary(
            "TV/L1 falls in", "variants", {v: x < tv0.get(v, 1.87) for v, x in tv.items()},
            {v: tv0.get(v, 1.87) - x for v, x in tv.items()},
            lambda v: f"{v} {tv0.get(v, math.nan):.3f} -> {tv[v]:.3f}",
        ),
        "TV/L1 init -> trained: "
        + ", ".join(f"{v} {tv0.get(v, math.nan):.3f} -> {tv[v]:.3f}" for v in tv),
    )  # fmt: skip


def _f4b(results):
    """The mean sensitivity falls at every step of sigma (max pooling at init as sigma 0)."""
    smoothing = results.get("smoothing_intervention", {})
    if not smoothing:
        return None
    pairs = sorted((float(k), _profile_mean(v["sensitivity"])) for k, v in smoothing.items())
    base = _stage_means(results["sensitivity"], "init").get("max")
    text = ", ".join(f"sigma {k:g}: S {m:.3f}" for k, m in pairs)
    falls = all(b[1] <= a[1] + 1e-9 for a, b in zip(pairs, pairs[1:], strict=False)) and (
        base is None or pairs[0][1] < base
    )
    first = (0.0, base) if base is not None else pairs[0]
    return Decision(
        falls,
        f"S {first[1]:.3f} at sigma {first[0]:g} -> {pairs[-1][1]:.3f} at sigma "
        f"{pairs[-1][0]:g}, {'falling' if falls else 'not falling'} at every step",
        (f"sigma 0: S {base:.3f}, " if base is not None else "") + text,
    )


def _f5(results):
    """The SD of the profiles across variants: random labels above true labels."""
    random, sens = results.get("random_labels", {}), results["sensitivity"]
    if len(random) < 2:
        return None
    learned = {v: (r["train_accuracy"][0], r["train_accuracy"][-1]) for v, r in random.items()}
    s_random = _spread([{k: [x] for k, x in r["sensitivity"].items()} for r in random.values()])
    s_true = _spread([sens[v]["trained"] for v in sens if "trained" in sens[v]])
    return Decision(
        bool(s_random > s_true) if not math.isnan(s_true) else None,
        f"SD of S across variants: random labels {s_random:.3f}, true {s_true:.3f}",
        f"SD across variants: random labels {s_random:.3f} vs true labels {s_true:.3f}; "
        "train accuracy first -> last epoch: "
        + ", ".join(f"{v} {a:.2f} -> {b:.2f}" for v, (a, b) in learned.items()),
    )


def _f6(results):
    """TV/L1 and S both fall with C (`_synthetic_trend`)."""
    synthetic = results.get("synthetic", {})
    if len(synthetic) < 2:
        return None
    settings = results["settings"]
    summary, holds, (r_tv, r_s) = _synthetic_trend(synthetic)
    others = "; ".join(
        f"also tried {name}: {_synthetic_trend(runs)[0]}"
        for name, runs in results.get("synthetic_other_settings", {}).items()
        if len(runs) >= 2
    )
    return Decision(
        holds,
        f"rank corr. with C: TV/L1 {r_tv:+.2f}, S {r_s:+.2f} "
        f"({settings['synthetic_prototypes']}/{settings['synthetic_downsample']})",
        f"{settings['synthetic_prototypes']} prototypes, {settings['synthetic_downsample']}, "
        f"mean of {settings['synthetic_seeds']} seeds: {summary}"
        + (f"; {others}" if others else ""),
    )


def _t1(results):
    """D's rank correlation with depth below 0 and G's above, in every variant: over seeds
    (95% t intervals) where the results hold `T1` (paper scale), else of the seed-mean
    profiles."""
    t1 = results.get("T1", {})
    if t1.get("variants"):
        measured = "; ".join(
            f"{v}: D {e['D']['mean']:+.2f}{interval_text(e['D']['ci'])}, "
            f"G {e['G']['mean']:+.2f}{interval_text(e['G']['ci'])}"
            for v, e in t1["variants"].items()
        )
        return Decision(
            _holds_everywhere(t1),
            t1_summary(_t1_entries(t1)),
            f"holds in {t1['holds_in']} of {t1['decided']} variants with 2+ seeds: {measured}"
            if t1["decided"]
            else f"one seed per variant so far, no intervals yet: {measured}",
        )
    correlations = depth_correlations(results["relative_stability"])
    if not correlations:
        return None
    texts = [
        f"{v}: rank corr. with depth D {c['D']:+.2f}, G {c['G']:+.2f}"
        for v, c in correlations.items()
    ]
    holds = [c["D"] < 0 < c["G"] for c in correlations.values()]
    return Decision(
        all(holds),
        t1_summary(
            {
                v: {"D": (c["D"], None), "G": (c["G"], None), "holds": c["D"] < 0 < c["G"]}
                for v, c in correlations.items()
            }
        ),
        f"holds in {sum(holds)} of {len(holds)} variants: " + "; ".join(texts),
    )


def _z1(results):
    """Blur's shift consistency above max's: the paired difference's 95% t interval above 0
    where the results hold `Z1` (paper scale), else the means."""
    shift = results["shift_consistency"]
    if "max" not in shift or "blur" not in shift:
        return None
    m, b = float(np.mean(shift["max"])), float(np.mean(shift["blur"]))
    measured = (
        f"max {m:.3f} (seeds: {', '.join(f'{x:.3f}' for x in shift['max'])}), "
        f"blur {b:.3f} (seeds: {', '.join(f'{x:.3f}' for x in shift['blur'])})"
    )
    z1 = results.get("Z1")
    if not z1:
        return Decision(
            b > m,
            f"blur - max {b - m:+.3f} (means: blur {count(len(shift['blur']), 'seed')}, max "
            f"{count(len(shift['max']), 'seed')})",
            measured,
        )
    over_seeds = f"blur - max {z1['mean_difference']:+.4f}"
    if z1["ci"]:
        over_seeds += f", 95% CI{interval_text(z1['ci'], 4)}, Welch p = {z1['p_value']:.3g}"
    return Decision(
        z1["holds"],
        f"blur - max {z1['mean_difference']:+.3f}{interval_text(z1['ci'], 3)}, "
        f"{count(len(z1['difference_per_seed']), 'paired seed')}",
        f"{over_seeds}; {measured}",
    )


def _z1_test_set(x):
    """Z1 on the whole test set: the paired difference's 95% t interval above 0."""
    z1 = x.get("Z1", {})
    zt = z1.get("test_set", {})
    if zt.get("mean_difference") is None:
        return None
    return Decision(
        zt["holds"],
        f"blur - max {zt['mean_difference']:+.4f}{interval_text(zt['ci'], 4)}, "
        f"{count(len(z1['seeds']), 'paired seed')}",
    )


def _t2(x):
    """In every variant with 2+ seeds, the log ratio's rank correlation with depth and its
    value at the last probe have intervals above 0 (`_stats.t2_statistics`)."""
    t2 = x.get("T2", {})
    if not t2.get("variants"):
        return None
    return Decision(_holds_everywhere(t2), _t2_summary(t2))


def _p1(x):
    """The Spearman correlation of test error with R has its Fisher-z interval above 0
    (`_stats.p1_statistics`)."""
    p1 = x.get("P1", {})
    if p1.get("slope") is None:
        return None
    return Decision(
        p1["holds"],
        f"Spearman(error, R) {p1['spearman_R']:+.2f}{interval_text(p1['spearman_R_ci'])}; "
        f"slope {p1['slope']:.2f}{interval_text(p1['slope_ci'])} (paper 0.5), "
        f"{p1['networks']} networks",
    )


def _t3(x):
    """T1's test in every noisy training condition with 2+ seeds."""
    t3 = x.get("T3", {})
    if not t3.get("variants"):
        return None
    return Decision(_holds_everywhere(t3), t1_summary(_t1_entries(t3), "conditions"))


def _m1(x):
    """The strided network's gain in invariance from the noisy to the smoothed data, minus max
    pooling's: its 95% t interval over seeds above 0 (`_stats.m1_statistics`)."""
    m1 = x.get("M1", {})
    if not m1.get("difference"):
        return None
    d = m1["difference"]
    return Decision(
        m1["holds"],
        f"strided - max gain {d['mean']:+.4f}{interval_text(d['ci'], 4)}"
        f"{_against_zero(d['ci'])}, {count(len(m1['seeds']), 'seed')}",
    )


def _against_zero(ci):
    """Where an interval that should lie above 0 falls short: ` (reaches 0)` when it spans 0
    (not shown: a few seeds can do that alone), ` (below 0)` when it lies wholly below (fails);
    nothing when it lies above 0 or there is none.

    Example:

    >>> _against_zero([-0.1, 0.2]), _against_zero([-0.3, -0.1]), _against_zero([0.1, 0.2])
    (' (reaches 0)', ' (below 0)', '')
    """
    if ci is None or ci[0] > 0:
        return ""
    return " (below 0)" if ci[1] < 0 else " (reaches 0)"


def _m2(x):
    """Per seed, the slope of invariance on the pooling window above 0 and of test accuracy
    below 0, each interval over seeds; the rank correlations beside (`_stats.m2_statistics`)."""
    m2 = x.get("M2", {})
    if not m2.get("invariance", {}).get("slope"):
        return None
    up, down = m2["invariance"], m2["test_accuracy"]
    return Decision(
        m2["holds"],
        f"slope per pixel of window: invariance {up['slope_mean']:+.4f}"
        f"{interval_text(up['slope_ci'], 4)}, test accuracy {down['slope_mean']:+.4f}"
        f"{interval_text(down['slope_ci'], 4)}; rank corr. {up['mean']:+.2f}"
        f"{interval_text(up['ci'])} and {down['mean']:+.2f}{interval_text(down['ci'])}, "
        f"{count(len(up['slope']), 'seed')}",
    )


def _m3(x):
    """Every feature (global average pooling vs flatten, blur, translation augmentation) raises
    invariance: each paired interval over seeds above 0 (`_stats.m3_statistics`)."""
    m3 = x.get("M3", {}).get("invariance", {})
    if not m3.get("changes"):
        return None
    return Decision(
        m3["holds"],
        "; ".join(
            f"{feature} {e['mean']:+.4f}{interval_text(e['ci'], 4)}{_against_zero(e['ci'])}"
            for feature, e in m3["changes"].items()
        ),
    )


# -- the tables ----------------------------------------------------------------------------------


def _table(*findings):
    return {finding.key: finding for finding in findings}


FINDINGS = _table(
    Finding("F1", "At init, pooling nets are less sensitive than nets without pooling", _f1),
    Finding("F2", "Pooling nets' sensitivity increases during training", _f2),
    Finding("F3", "After training, all variants converge to similar profiles", _f3),
    Finding("F4", "Filters get smoother during training (TV/L1 below ~1.87), every variant", _f4),
    Finding("F4b", "Smoother initial filters (Gaussian sigma) -> lower sensitivity", _f4b),
    Finding("F5", "With random labels, variants converge to very different profiles", _f5),
    Finding("F6", "Synthetic task: larger C -> smoother filters and lower sensitivity", _f6),
    Finding("T1", "After training, D falls with depth while G rises", _t1),
    Finding("Z1", "Anti-aliased (blur) downsampling raises shift consistency", _z1),
)
_SEEDS = "fewer than 2 seeds"
EXTENDED_FINDINGS = _table(
    Finding("Z1", FINDINGS["Z1"].claim + ", on the whole test set", _z1_test_set, _SEEDS),
    Finding("T2", "Permuting input channels raises D in later layers, not early ones", _t2, _SEEDS),
    Finding("P1", "R at the output predicts test error across architectures and sizes", _p1,
            "fewer than 4 networks"),
    Finding("T3", "After training with noise too, D falls with depth while G rises", _t3, _SEEDS),
)  # fmt: skip


# Mouton et al.'s stride study (issue 28): invariance is the translation map's mean at the logits.
MOUTON_FINDINGS = _table(
    Finding("M1", "Stride gains more invariance than max pooling as data grow locally "
            "homogeneous", _m1, _SEEDS),
    Finding("M2", "Larger pooling windows at stride 2: more invariance, lower test accuracy",
            _m2, _SEEDS),
    Finding("M3", "Global average pooling (vs flatten), anti-aliasing and translation "
            "augmentation each raise invariance", _m3, _SEEDS),
)  # fmt: skip


def evaluate_findings(results, table=FINDINGS, unmeasured=True):
    """Evaluates a findings table: one row per finding, in the table's order.

    Args:
        results: the gathered results (results.json's layout; its `"paper"` object with the
            CPU-sized experiments it does not repeat; its `"extended"` object).
        table: `FINDINGS` or `EXTENDED_FINDINGS`.
        unmeasured: whether a finding the results do not measure yet has a row ("not measured
            yet", verdict n/a) or none.

    Returns:
        `[{"finding", "claim", "measured", "holds", "summary", "verdict"}]`: the claim, every
        number here (`measured`, complete), the deciding number in one short line (`summary`),
        whether it holds here (True, False, None) and that in words (`verdict`).

    Example:

    >>> rows = evaluate_findings(results)  # doctest: +SKIP
    >>> [(r["finding"], r["verdict"]) for r in rows][:2]  # doctest: +SKIP
    [('F1', 'yes'), ('F2', '**no**')]
    """
    rows = []
    for finding in table.values():
        decision = finding.decide(results)
        if decision is None:
            if not unmeasured:
                continue
            decision = Decision(
                None, "not measured yet", "not measured yet (experiments missing from this run)"
            )
        rows.append(
            {"finding": finding.key, "claim": finding.claim, "measured": decision.measured,
             "holds": decision.holds, "summary": decision.summary,
             "verdict": verdict(decision.holds, finding.undecided)}
        )  # fmt: skip
    return rows


def verdict(holds, undecided=""):
    """`holds` in words: yes, **no**, or n/a (with why, when `undecided` says)."""
    if holds is None:
        return f"n/a ({undecided})" if undecided else "n/a"
    return "yes" if holds else "**no**"


def _holds_everywhere(statistics):
    """A finding decided per variant (`t1_statistics`, `t2_statistics`) holds when it holds in
    every decided variant; None when none is decided."""
    if not statistics["decided"]:
        return None
    return statistics["holds_in"] == statistics["decided"]


# -- what the decisions share ------------------------------------------------------------------


def _stage_means(tree, stage):
    """`{variant: mean profile}` of the variants measured at `stage` ("init", "trained", ...)."""
    return {v: _profile_mean(tree[v][stage]) for v in tree if stage in tree[v]}


def _profile_mean(per_probe):
    """Mean over probe points (excluding the input) of the per-seed mean."""
    values = [np.nanmean(v) for name, v in per_probe.items() if name != "input"]
    return float(np.mean(values)) if values else math.nan


def _spread(profiles):
    """Mean over probe points of the SD across variants of the per-variant mean profile."""
    names = set.intersection(*(set(p) for p in profiles)) - {"input"} if profiles else set()
    if len(profiles) < 2 or not names:
        return math.nan
    return float(np.mean([np.std([np.nanmean(p[n]) for p in profiles]) for n in names]))


def _synthetic_trend(synthetic):
    """`(text, holds, (r_tv, r_s))`: TV/L1 and S per C and their rank correlations with C; F6
    holds when both fall with C (rank correlation <= -0.8: at most one adjacent swap among 4
    values)."""
    ordered = sorted(synthetic.values(), key=lambda r: r["strength"])
    strengths = [r["strength"] for r in ordered]
    tvs = [_profile_mean(r["smoothness"]) for r in ordered]
    ss = [_profile_mean(r["sensitivity"]) for r in ordered]
    r_tv, r_s = spearman(strengths, tvs), spearman(strengths, ss)
    text = ", ".join(
        f"C={r['strength']:g}: TV/L1 {t:.3f}, S {x:.3f}, acc {np.mean(r['test_accuracy']):.2f}"
        for r, t, x in zip(ordered, tvs, ss, strict=True)
    )
    text += f" (rank corr. with C: TV/L1 {r_tv:+.2f}, S {r_s:+.2f})"
    return text, bool(r_tv <= -0.8 and r_s <= -0.8), (r_tv, r_s)


def _count_summary(verb, kind, passed, margin, describe):
    """ "<verb> k of n <kind>; least: <the one closest to failing>" when every one passes, else
    "...; not in: <those that fail>" (`passed`, `margin`: per name; `describe(name)`: its
    numbers)."""
    failing = [v for v, ok in passed.items() if not ok]
    text = f"{verb} {len(passed) - len(failing)} of {len(passed)} {kind}"
    if failing:
        return text + "; not in " + ", ".join(describe(v) for v in failing)
    return text + "; least: " + describe(min(margin, key=margin.get))


def _decided_count(variants, unit):
    """`(decided, failing, "k of n <unit> (m more with 1 seed)")` of per-variant verdicts
    (`{name: {"holds": True, False or None}}`)."""
    decided = {v: e for v, e in variants.items() if e["holds"] is not None}
    failing = [v for v, e in decided.items() if not e["holds"]]
    text = f"{len(decided) - len(failing)} of {len(decided)} {unit}"
    if len(decided) < len(variants):
        text += f" ({len(variants) - len(decided)} more with 1 seed)"
    return decided, failing, text


def t1_summary(variants, unit="variants"):
    """T1's (and T3's) deciding number in one line.

    Args:
        variants: `{name: {"D": (rank corr. with depth, its interval or None), "G": (...),
            "holds": True, False or None (undecided: fewer than 2 seeds)}}`.
        unit: what the names are ("variants", "conditions").

    Where the trend holds in every decided variant: the one closest to failing (the component
    whose interval end, or value without an interval, lies nearest 0); else the variants where
    it fails (a component's whole interval, or its value, on the wrong side of 0), apart from
    those where it is only not shown (an interval reaches 0: too few seeds can do that alone).
    """

    # The end of a component's interval nearest to failing (or, `nearest=False`, furthest).
    def end(entry, component, nearest=True):
        value, ci = entry[component]
        if ci is None:
            return value
        return ci[1] if (component == "D") == nearest else ci[0]

    def wrong_side(entry, component, nearest=True):
        return (end(entry, component, nearest) >= 0) == (component == "D")

    def number(entry, component):
        value, ci = entry[component]
        return f"{component} {value:+.2f}" + interval_text(ci)

    decided, failing, text = _decided_count(variants, unit)
    if variants and not decided:
        return f"{count(len(variants), unit[:-1])}, 1 seed each: no intervals yet"
    if failing:
        fails, unshown = {}, {}
        for v in failing:
            components = [c for c in "DG" if wrong_side(decided[v], c, nearest=False)]
            if components:
                fails[v] = components
            else:
                unshown[v] = [c for c in "DG" if wrong_side(decided[v], c)] or ["D", "G"]
        for label, against in (("fails in", fails), ("interval reaches 0 in", unshown)):
            if against:
                text += f"; {label} " + ", ".join(
                    f"{v} ({', '.join(number(decided[v], c) for c in cs)})"
                    for v, cs in against.items()
                )
        return text
    if not decided:
        return text
    margins = {(v, c): abs(end(e, c)) for v, e in decided.items() for c in "DG"}
    v, c = min(margins, key=margins.get)
    return text + f"; closest to 0: {v} {number(decided[v], c)}"


def _t1_entries(t1):
    """`t1_statistics` variants as `t1_summary` takes them."""
    return {
        v: {"D": (e["D"]["mean"], e["D"]["ci"]), "G": (e["G"]["mean"], e["G"]["ci"]),
            "holds": e["holds"]}
        for v, e in t1["variants"].items()
    }  # fmt: skip


def _t2_summary(t2):
    """T2 in one line: in how many variants it holds; where it fails, the interval that does
    not clear 0; else the variant whose rank correlation comes closest to 0."""
    variants = t2["variants"]
    decided, failing, text = _decided_count(variants, "variants")
    if not decided:
        return f"{count(len(variants), 'variant')}, 1 seed each: no intervals yet"

    def correlation(e):
        return f"rank corr. {e['rank_corr_mean']:+.2f}{interval_text(e['rank_corr_ci'])}"

    if failing:
        parts = []
        for v in failing:
            e = decided[v]
            name, last = list(e["per_probe"].items())[-1]
            if e["rank_corr_ci"][0] > 0:  # the correlation holds: the last probe does not
                parts.append(f"{v} (at {name} {last['mean']:+.2f}{interval_text(last['ci'])})")
            else:
                parts.append(f"{v} ({correlation(e)})")
        return text + "; fails in " + ", ".join(parts)
    v = min(decided, key=lambda name: decided[name]["rank_corr_ci"][0])
    return text + f"; closest to 0: {v} {correlation(decided[v])}"


def interval_text(ci, digits=2):
    """` [lo, hi]` with signs; nothing without an interval (one seed: no spread)."""
    return "" if ci is None else f" [{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def count(n, noun):
    """`n` `noun`s: "1 seed", "3 seeds", "50,000 images"."""
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def depth_correlations(relative):
    """Per trained variant: the Spearman rank correlation with probe depth (input left out) of
    its seed-mean D and G profiles, `{variant: {"D": r, "G": r}}`."""
    out = {}
    for v, stages in relative.items():
        if "trained" not in stages:
            continue
        out[v] = {}
        for component in ("D", "G"):
            means = {k: np.nanmean(x) for k, x in stages["trained"][component].items()}
            names = [k for k in means if k != "input"]
            out[v][component] = spearman(np.arange(len(names)), [means[k] for k in names])
    return out


def trained_smoothness(results, variant):
    """Mean TV/L1 over the layers of `variant`'s trained filters (NaN if not trained)."""
    stages = results.get("smoothness", {}).get(variant, {})
    return _profile_mean(stages["trained"]) if "trained" in stages else math.nan


def _listing(values, keys):
    return ", ".join(f"{k} {values[k]:.3f}" for k in keys if k in values)
