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
