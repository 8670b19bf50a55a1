"""Statistics over training seeds for the paper-scale replication (SPEC: T1 and Z1 decided with
95% intervals over seeds): Student-t intervals, Spearman rank correlations with probe depth,
Welch's two-sample test. Uses scipy (the test extra)."""

import math

import numpy as np
from scipy import stats


def spearman(x, y):
    """Spearman rank correlation of `x` and `y` (NaN when either is constant)."""
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    if np.std(rx) == 0 or np.std(ry) == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def t_quantile(n, confidence=0.95):
    """How many standard errors a two-sided Student-t interval of `n` values reaches either
    side of their mean (4.30 for 3 values at 95%)."""
    return float(stats.t.ppf(0.5 + confidence / 2, n - 1))


def t_interval(values, confidence=0.95):
    """Student-t interval of the mean of `values`; None for fewer than 2 (no spread to go by;
    None rather than NaN keeps results.json strict JSON)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return None
    half = t_quantile(len(values), confidence) * stats.sem(values)
    return [float(values.mean() - half), float(values.mean() + half)]


def depth_rank_correlations(per_probe):
    """Per seed: the Spearman rank correlation of a per-probe quantity with probe depth
    (forward order, the input left out)."""
    names = [name for name in per_probe if name != "input"]
    seeds = min(len(per_probe[name]) for name in names) if names else 0
    depth = np.arange(len(names))
    return [spearman(depth, [per_probe[n][k] for n in names]) for k in range(seeds)]


def t1_statistics(relative):
    """T1 per variant: rank correlations of D and G with depth per seed, their mean and 95% t
    interval; holds when D's interval lies below 0 and G's above 0 (None below 2 seeds)."""
    variants = {}
    for v, stages in relative.items():
        if "trained" not in stages:
            continue
        entry = {}
        for component in ("D", "G"):
            correlations = depth_rank_correlations(stages["trained"][component])
            entry[component] = {
                "rank_corr": correlations,
                "mean": float(np.mean(correlations)),
                "ci": _within_correlation_range(t_interval(correlations)),
            }
        d, g = entry["D"]["ci"], entry["G"]["ci"]
        entry["holds"] = None if d is None or g is None else bool(d[1] < 0 < g[0])
        variants[v] = entry
    decided = [e["holds"] for e in variants.values() if e["holds"] is not None]
    return {
        "method": "Spearman rank correlation with probe depth per seed; 95% Student-t interval "
        "over seeds, clipped to [-1, 1]; holds when D's interval < 0 < G's interval",
        "variants": variants,
        "holds_in": sum(decided),
        "decided": len(decided),
    }


def _within_correlation_range(ci):
    """A t interval of correlations can reach past +-1 (few seeds, means near 1); a
    correlation cannot, so the ends are clipped (the verdict, a sign test, is unchanged)."""
    return None if ci is None else [max(ci[0], -1.0), min(ci[1], 1.0)]


def z1_statistics(shift):
    """Z1: blur - max shift consistency, per seed (seed k of each), its mean with a 95% t
    interval, and the two-sided p-value of Welch's two-sample t-test of blur vs max; holds
    when the interval lies above 0 (interval, p-value and verdict None below 2 seeds of each)."""
    if "max" not in shift or "blur" not in shift:
        return {}
    m, b = np.asarray(shift["max"], float), np.asarray(shift["blur"], float)
    k = min(len(m), len(b))
    differences = (b[:k] - m[:k]).tolist()
    ci = t_interval(differences)
    p_value = (
        float(stats.ttest_ind(b, m, equal_var=False).pvalue) if min(len(m), len(b)) >= 2 else None
    )
    return {
        "method": "difference blur - max per seed (seed k of each network sees the same data "
        "order and augmentations: a paired comparison), 95% Student-t interval; p-value of "
        "Welch's two-sample t-test (two-sided, unpaired)",
        "max": m.tolist(),
        "blur": b.tolist(),
        "difference_per_seed": differences,
        "mean_difference": float(np.mean(differences)) if differences else None,
        "ci": ci,
        "p_value": p_value,
        "holds": None if ci is None else bool(ci[0] > 0),
    }


def z1_measurement_error(estimates):
    """How much of Z1's seed-to-seed spread the measurement itself explains: per seed, the
    standard error of the difference blur - max from the two networks' measurement errors,
    sqrt(se_b^2 + se_m^2), against the standard deviation of the differences over seeds. Both
    networks are measured on the same images and offsets, whose errors correlate positively,
    so this is an upper bound of the difference's measurement error.

    Args:
        estimates: `{"max": [{"value", "standard_error"}, ...], "blur": [...]}`, seed k at k.
    """
    if "max" not in estimates or "blur" not in estimates:
        return {}
    pairs = list(zip(estimates["max"], estimates["blur"], strict=False))  # seed k with seed k
    errors = [math.hypot(m["standard_error"], b["standard_error"]) for m, b in pairs]
    differences = [b["value"] - m["value"] for m, b in pairs]
    spread = float(np.std(differences, ddof=1)) if len(differences) >= 2 else None
    return {
        "difference_standard_error_per_seed": errors,
        "mean_difference_standard_error": float(np.mean(errors)) if errors else None,
        "seed_sd_of_differences": spread,
    }


def log_ratio_profile(after, before):
    """Per probe (input left out) and seed: log(after / before) of a per-probe quantity,
    `{probe: [per seed]}` (both `{probe: [per seed]}`, the same seeds in the same order)."""
    return {
        name: [float(np.log(a / b)) for a, b in zip(after[name], before[name], strict=True)]
        for name in before
        if name != "input" and name in after
    }


def t2_statistics(relative, permuted):
    """T2 per variant: per probe, the log ratio of D after / before permuting the input
    channels of every convolution, per seed, with its 95% t interval; the Spearman correlation
    of that log ratio with depth per seed and its interval; the crossover (the first probe from
    which every interval lies above 0: D rises significantly there and at every later probe).
    Holds when the correlation's interval lies above 0 (the permutation hurts later layers more)
    and the last probe's interval above 0 (later layers lose their stability); None below 2
    seeds.

    Args:
        relative: `{variant: {"D": {probe: [per seed]}}}` of the trained networks.
        permuted: the same of their permuted copies.
    """
    variants = {}
    for v in permuted:
        ratio = log_ratio_profile(permuted[v]["D"], relative[v]["D"])
        names = list(ratio)
        per_probe = {
            name: {"log_ratio": values, "mean": float(np.mean(values)), "ci": t_interval(values)}
            for name, values in ratio.items()
        }
        correlations = depth_rank_correlations({"input": [], **ratio})
        corr_ci = _within_correlation_range(t_interval(correlations))
        above = [per_probe[n]["ci"] is not None and per_probe[n]["ci"][0] > 0 for n in names]
        crossover = next((names[i] for i in range(len(names)) if all(above[i:])), None)
        last = per_probe[names[-1]]["ci"] if names else None
        holds = None if corr_ci is None or last is None else bool(corr_ci[0] > 0 and last[0] > 0)
        variants[v] = {
            "per_probe": per_probe,
            "rank_corr": correlations,
            "rank_corr_mean": float(np.mean(correlations)) if correlations else None,
            "rank_corr_ci": corr_ci,
            "crossover": crossover,
            "holds": holds,
        }
    decided = [e["holds"] for e in variants.values() if e["holds"] is not None]
    return {
        "method": "per probe, log(D permuted / D) per seed with a 95% Student-t interval over "
        "seeds; its Spearman correlation with depth per seed, 95% t interval; crossover = the "
        "first probe from which every interval lies above 0; holds when the correlation's and "
        "the last probe's intervals lie above 0",
        "variants": variants,
        "holds_in": sum(decided),
        "decided": len(decided),
    }


def sd_interval(values, confidence=0.95):
    """The sample SD of `values` and its chi-square interval (normal values; n - 1 degrees of
    freedom); None below 2 values. From 3 values the interval spans a factor of about 12."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n < 2:
        return None
    sd = float(np.std(values, ddof=1))
    return {"sd": sd, "ci": _sd_chi2_interval(sd, n - 1, confidence), "n": n}


def _sd_chi2_interval(sd, df, confidence=0.95):
    """Chi-square interval of an SD estimated with `df` degrees of freedom (normal values)."""
    tail = (1 - confidence) / 2
    return [
        float(sd * math.sqrt(df / stats.chi2.ppf(1 - tail, df))),
        float(sd * math.sqrt(df / stats.chi2.ppf(tail, df))),
    ]


def reproducibility(retrained, committed, keys):
    """How far retrained networks land from their committed numbers, against how far a new
    training seed moves them.

    Args:
        retrained, committed: `{variant: {seed: {key: value}}}`.
        keys: the scalar quantities compared.

    Returns:
        `{key: {"differences": {"<variant>_s<seed>": retrained - committed}, "mean_abs",
        "seed_sd": {variant: {"committed"|"retrained": sd_interval}},
        "pooled_seed_sd": the seed SD pooled over every variant and machine (each group about
        its own mean) with its chi-square interval, "new_seed_mean_abs": the mean |difference|
        two networks differing only in seed would show (2 SD / sqrt(pi), normal values),
        "ratio_to_new_seed", "mean_difference": {"mean", "ci"} (t interval)}}`.
    """
    out = {}
    for key in keys:
        differences = {}
        for v, seeds in retrained.items():
            for seed, record in seeds.items():
                if seed in committed.get(v, {}) and key in record:
                    differences[f"{v}_s{seed}"] = record[key] - committed[v][seed][key]
        mean_abs = float(np.mean(np.abs(list(differences.values())))) if differences else None
        # The seed-to-seed SD of each variant on both machines, with its chi-square interval:
        # an SD from 3 seeds is itself uncertain by a large factor.
        seed_sd = {
            v: {
                "committed": sd_interval(
                    [r[key] for r in committed.get(v, {}).values() if key in r]
                ),
                "retrained": sd_interval([r[key] for r in seeds.values() if key in r]),
            }
            for v, seeds in retrained.items()
        }
        # Whether the other machine acts as a new seed: pool the seed spread of both machines
        # (each group about its own mean, so a shift between machines does not count as spread);
        # |X - Y| of two independent normal draws of SD s has mean 2 s / sqrt(pi).
        groups = [
            [r[key] for r in g.values() if key in r]
            for v, seeds in retrained.items()
            for g in (committed.get(v, {}), seeds)
        ]
        groups = [np.asarray(g, dtype=float) for g in groups if len(g) >= 2]
        pooled = new_seed = None
        if groups:
            df = sum(len(g) - 1 for g in groups)
            sd = math.sqrt(sum(((g - g.mean()) ** 2).sum() for g in groups) / df)
            pooled = {"sd": sd, "ci": _sd_chi2_interval(sd, df), "df": df}
            new_seed = 2 * sd / math.sqrt(math.pi)
        values = list(differences.values())
        out[key] = {
            "differences": differences,
            "mean_abs": mean_abs,
            "seed_sd": seed_sd,
            "pooled_seed_sd": pooled,
            "new_seed_mean_abs": new_seed,
            "ratio_to_new_seed": (
                mean_abs / new_seed if mean_abs is not None and new_seed else None
            ),
            "mean_difference": (
                {"mean": float(np.mean(values)), "ci": t_interval(values)} if values else None
            ),
        }
    return out


def fisher_interval(r, n, confidence=0.95):
    """Interval of a Spearman correlation `r` of `n` pairs by Fisher's z, with Fieller, Hartley
    and Pearson's (1957) variance 1.06 / (n - 3); None below 4 pairs."""
    if n < 4 or not np.isfinite(r):
        return None
    z, half = np.arctanh(np.clip(r, -0.999999, 0.999999)), stats.norm.ppf(0.5 + confidence / 2)
    half *= math.sqrt(1.06 / (n - 3))
    return [float(np.tanh(z - half)), float(np.tanh(z + half))]


def p1_statistics(points):
    """P1 (Petrini et al. 2021): does R at the output predict test error across networks?

    Fits log(error) = a + b log(R) by least squares (b's 95% t interval, n - 2 degrees of
    freedom) beside the paper's error = 0.2 sqrt(R) (b = 0.5, exp(a) = 0.2), and gives the
    Spearman correlation of the error with R and with D, each with a Fisher-z interval. Holds
    when the correlation with R has its interval above 0 (None below 4 networks).

    Args:
        points: `[{"error", "R", "D", ...}]`, one per network.
    """
    usable = [p for p in points if p["error"] > 0 and p["R"] > 0 and p["D"] > 0]
    n = len(usable)
    out = {
        "method": "least squares of log error on log R, 95% t interval of the slope; Spearman "
        "correlations with Fisher-z intervals (variance 1.06 / (n - 3)); holds when the "
        "correlation of error with R lies above 0",
        "networks": n,
        "paper": {"slope": 0.5, "prefactor": 0.2},
    }
    if n < 3:
        return {**out, "holds": None}
    error = np.array([p["error"] for p in usable])
    r, d = np.array([p["R"] for p in usable]), np.array([p["D"] for p in usable])
    fit = stats.linregress(np.log(r), np.log(error))
    half = t_quantile(n - 1) * fit.stderr  # n - 2 degrees of freedom
    rho_r, rho_d = spearman(error, r), spearman(error, d)
    ci_r, ci_d = fisher_interval(rho_r, n), fisher_interval(rho_d, n)
    return {
        **out,
        "slope": float(fit.slope),
        "slope_ci": [float(fit.slope - half), float(fit.slope + half)],
        "prefactor": float(np.exp(fit.intercept)),
        "r_squared": float(fit.rvalue**2),
        "spearman_R": rho_r,
        "spearman_R_ci": ci_r,
        "spearman_D": rho_d,
        "spearman_D_ci": ci_d,
        "holds": None if ci_r is None else bool(ci_r[0] > 0),
    }


def paired_differences(before, after):
    """`after - before` per seed (seed k of each), their mean and 95% t interval (None below
    2 seeds)."""
    differences = [float(b - a) for a, b in zip(before, after, strict=False)]
    return {
        "per_seed": differences,
        "mean": float(np.mean(differences)) if differences else None,
        "ci": t_interval(differences),
    }


def m1_statistics(invariance):
    """M1: per seed, how much more the strided network's invariance grows from the least to the
    most homogeneous data set than the max-pooled one's: `(strided[smooth] - strided[noise]) -
    (max[smooth] - max[noise])`; holds when its 95% t interval lies above 0.

    Args:
        invariance: `{variant: {level: [value per seed]}}` for variants `max`, `strided` and
            levels `noise`, `plain`, `smooth`.
    """
    try:
        gains = {
            v: [
                b - a
                for a, b in zip(*(invariance[v][k] for k in ("noise", "smooth")), strict=False)
            ]
            for v in ("max", "strided")
        }
    except KeyError:
        return {}
    difference = paired_differences(gains["max"], gains["strided"])
    return {
        "method": "per seed: strided's gain in invariance from the noisy to the smoothed data "
        "minus max pooling's; 95% Student-t interval over seeds; holds when it lies above 0",
        "invariance": invariance,
        "gain": gains,
        "difference": difference,
        "holds": None if difference["ci"] is None else bool(difference["ci"][0] > 0),
    }


def m2_statistics(points):
    """M2: per seed, the least-squares slope of invariance and of test accuracy on the pooling
    window, and their Spearman rank correlations with it; holds when the 95% t interval over
    seeds of invariance's slope lies above 0 and accuracy's below 0 (the trade-off).

    The slopes decide: with four windows a rank correlation takes few values (steps of 0.2), so
    seeds that rank the windows alike give an interval of zero width, which says the seeds agree
    but not by how much the trend could vary; the rank correlations say how monotone it is.

    Args:
        points: `{seed: {window: {"invariance": float, "test_accuracy": float}}}`.
    """
    seeds = [seed for seed, windows in sorted(points.items()) if len(windows) >= 3]
    entry = {}
    for key in ("invariance", "test_accuracy"):
        windows = [sorted(points[s]) for s in seeds]
        values = [[points[s][k][key] for k in w] for s, w in zip(seeds, windows, strict=True)]
        correlations = [spearman(w, v) for w, v in zip(windows, values, strict=True)]
        slopes = [float(np.polyfit(w, v, 1)[0]) for w, v in zip(windows, values, strict=True)]
        entry[key] = {
            "slope": slopes,
            "slope_mean": float(np.mean(slopes)) if slopes else None,
            "slope_ci": t_interval(slopes),
            "rank_corr": correlations,
            "mean": float(np.mean(correlations)) if correlations else None,
            "ci": _within_correlation_range(t_interval(correlations)),
        }
    up, down = entry["invariance"]["slope_ci"], entry["test_accuracy"]["slope_ci"]
    return {
        "method": "per seed, the least-squares slope on the pooling window (per pixel of "
        "window) and the Spearman rank correlation with it; 95% Student-t intervals over seeds "
        "(correlations clipped to [-1, 1]); holds when invariance's slope interval > 0 > test "
        "accuracy's",
        "points": {str(s): {str(k): v for k, v in w.items()} for s, w in sorted(points.items())},
        **entry,
        "holds": None if up is None or down is None else bool(down[1] < 0 < up[0]),
    }


def m3_statistics(pairs):
    """M3: per feature, the invariance of the network with it minus the network without it,
    per seed, with a 95% t interval; a feature raises invariance when the interval lies above
    0; holds when every feature does.

    Args:
        pairs: `{feature: (values without, values with)}`, each `[value per seed]`.
    """
    entries = {
        feature: paired_differences(without, with_) for feature, (without, with_) in pairs.items()
    }
    for entry in entries.values():
        entry["raises"] = None if entry["ci"] is None else bool(entry["ci"][0] > 0)
    decided = [e["raises"] for e in entries.values() if e["raises"] is not None]
    return {
        "method": "per seed: the invariance of the network with the feature minus without it "
        "(seed k of each: the same data order); 95% Student-t interval over seeds",
        "changes": entries,
        "holds": None if len(decided) < len(entries) or not entries else all(decided),
    }
