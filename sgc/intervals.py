"""Uncertainty of a metric: bootstrap intervals over test images, DeLong for AUCs, t-intervals over seeds.

Conventions as in :mod:`sgc.metrics`: ``y_true`` int (N,) in [0, K), ``proba`` (N, K) rows summing
to 1; every function returns plain floats / dicts, ready for JSON. Intervals are two-sided at
level 1 - ``alpha``.

Which library does what:
- the plain image-level percentile bootstrap (``bootstrap_ci(..., stratified=False)``) is
  ``scipy.stats.bootstrap``;
- the class-stratified bootstrap (the default: resampling within each class keeps both classes
  in every resample, so AUC stays defined on small, imbalanced test sets), the shared resamples
  of ``metrics_with_ci`` and the paired bootstrap of two classifiers with its p-value are written
  here: ``scipy.stats.bootstrap`` has no strata and resamples each call independently;
- DeLong's test and interval are written here: no kept library (scipy, scikit-learn,
  statsmodels) provides them.
"""
from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
from scipy import stats

from .metrics import _check, _require_both, accuracy, auc, balanced_accuracy

__all__ = ["bootstrap_ci", "metrics_with_ci", "paired_bootstrap", "delong_test", "delong_ci",
           "mean_ci_over_seeds"]


# --------------------------------------------------------------------------- bootstrap
def _resample_index(y: np.ndarray, rng: np.random.Generator, stratified: bool) -> np.ndarray:
    if not stratified:
        return rng.integers(0, len(y), len(y))
    parts = [rng.choice(idx, size=len(idx), replace=True)
             for idx in (np.flatnonzero(y == c) for c in np.unique(y))]
    return np.concatenate(parts)


def _scipy_percentile(y, p, metric_fn, n_boot, alpha, rng) -> tuple[float, float]:
    """(lower, upper) of the percentile bootstrap over images, by ``scipy.stats.bootstrap``."""
    def statistic(index):
        try:
            return float(metric_fn(y[index], p[index]))
        except ValueError:  # e.g. AUC of a resample holding one class
            return np.nan

    with warnings.catch_warnings():  # a constant or failed statistic: scipy warns, we decide below
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap((np.arange(len(y)),), statistic, n_resamples=n_boot, vectorized=False,
                              confidence_level=1 - alpha, method="percentile", rng=rng)
    failed = int(np.isnan(res.bootstrap_distribution).sum())
    if failed:
        raise ValueError(f"metric_fn failed on {failed} of {n_boot} resamples (e.g. a resample with one "
                         "class only); use stratified=True or a larger test set")
    lo, hi = res.confidence_interval
    return float(lo), float(hi)


def bootstrap_ci(y_true, proba, metric_fn: Callable, n_boot: int = 1000,
                 alpha: float = 0.05, seed: int = 0,
                 stratified: bool = True) -> tuple[float, float, float]:
    """Percentile bootstrap interval of ``metric_fn(y_true, proba)`` over test images.

    metric_fn: (y (N,), proba (N, K)) -> float, e.g. ``accuracy`` or ``auc``.
    stratified: resample within each class (keeps class counts, so AUC stays defined);
    False resamples images freely with ``scipy.stats.bootstrap`` (percentile method).
    Returns (point estimate on the full set, lower, upper) of the (1 - alpha) interval.
    Stratified resamples where metric_fn raises ValueError are skipped (an error if more than
    half fail); without strata, a resample where it fails (e.g. one class only) is an error.
    """
    y, p = _check(y_true, proba)
    if n_boot < 1 or not 0 < alpha < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < alpha < 1; got {n_boot}, {alpha}")
    point = float(metric_fn(y, p))
    rng = np.random.default_rng(seed)
    if not stratified:
        return (point, *_scipy_percentile(y, p, metric_fn, n_boot, alpha, rng))
    vals = []
    for _ in range(n_boot):
        i = _resample_index(y, rng, stratified)
        try:
            vals.append(float(metric_fn(y[i], p[i])))
        except ValueError:
            continue
    if len(vals) < n_boot / 2:
        raise ValueError(f"metric_fn failed on {n_boot - len(vals)} of {n_boot} resamples; "
                         "use stratified=True or a larger test set")
    lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
    return point, float(lo), float(hi)


def metrics_with_ci(y_true, proba, *, positive=None, class_names=None, n_boot: int = 1000,
                    alpha: float = 0.05, seed: int = 0, stratified: bool = True) -> dict:
    """Accuracy, balanced accuracy and AUC with percentile bootstrap intervals, JSON-ready.

    All three share the same resampled test sets. Returns
    {name: {"value", "lo", "hi"}} for name in accuracy, balanced_accuracy, auc (the
    positive-class AUC for K == 2, macro one-vs-rest otherwise), plus "n_boot".
    """
    y, p = _check(y_true, proba)
    fns = {"accuracy": accuracy, "balanced_accuracy": balanced_accuracy,
           "auc": lambda yy, pp: auc(yy, pp, positive=positive, class_names=class_names)}
    rng = np.random.default_rng(seed)
    draws = {k: [] for k in fns}
    for _ in range(n_boot):
        i = _resample_index(y, rng, stratified)
        try:
            vals = {k: float(f(y[i], p[i])) for k, f in fns.items()}
        except ValueError:
            continue
        for k, v in vals.items():
            draws[k].append(v)
    if len(draws["auc"]) < n_boot / 2:
        raise ValueError("AUC failed on most resamples; use stratified=True or a larger test set")
    out = {}
    for k, f in fns.items():
        lo, hi = np.quantile(draws[k], [alpha / 2, 1 - alpha / 2])
        out[k] = {"value": float(f(y, p)), "lo": float(lo), "hi": float(hi)}
    out["n_boot"] = len(draws["auc"])
    return out


def paired_bootstrap(y_true, proba_a, proba_b, metric_fn: Callable, n_boot: int = 1000,
                     alpha: float = 0.05, seed: int = 0, stratified: bool = True) -> dict:
    """Paired bootstrap of metric(a) - metric(b) on the same test images.

    Both classifiers are scored on the same resampled images each round. Returns
    {metric_a, metric_b, diff, lo, hi, p_value, n_boot}: the percentile (1 - alpha)
    interval of the difference and a two-sided p-value for "no difference" from the
    bootstrap distribution shifted to zero: (1 + #{|d* - d| >= |d|}) / (1 + n_boot).
    """
    y, pa = _check(y_true, proba_a)
    _, pb = _check(y_true, proba_b)
    if pa.shape != pb.shape:
        raise ValueError(f"proba_a {pa.shape} and proba_b {pb.shape} differ in shape")
    ma, mb = float(metric_fn(y, pa)), float(metric_fn(y, pb))
    d = ma - mb
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        i = _resample_index(y, rng, stratified)
        try:
            diffs.append(float(metric_fn(y[i], pa[i])) - float(metric_fn(y[i], pb[i])))
        except ValueError:
            continue
    if len(diffs) < n_boot / 2:
        raise ValueError(f"metric_fn failed on {n_boot - len(diffs)} of {n_boot} resamples; "
                         "use stratified=True or a larger test set")
    diffs = np.asarray(diffs)
    lo, hi = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    p_value = (1 + np.sum(np.abs(diffs - d) >= abs(d) - 1e-12)) / (1 + len(diffs))
    return {"metric_a": ma, "metric_b": mb, "diff": d, "lo": float(lo), "hi": float(hi),
            "p_value": float(min(1.0, p_value)), "n_boot": int(len(diffs))}


# --------------------------------------------------------------------------- DeLong
# Written here: no kept library (scipy, scikit-learn, statsmodels) provides DeLong's test. Fast
# form with midranks (Sun & Xu 2014); pinned by hand-computed variances in tests/test_metrics.py.
def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of the rows of x (k, n), ties sharing their average rank."""
    out = np.empty(x.shape, dtype=np.float64)
    for r, row in enumerate(x):
        order = np.argsort(row, kind="mergesort")
        xs = row[order]
        new = np.r_[True, xs[1:] != xs[:-1]]
        starts = np.flatnonzero(new)
        ends = np.r_[starts[1:], len(xs)]
        mid = (starts + ends - 1) / 2.0 + 1.0
        out[r, order] = mid[np.cumsum(new) - 1]
    return out


def _delong(y_bin: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs (k,) and their DeLong covariance (k, k) for scores (k, N) (Sun & Xu 2014)."""
    pos, neg = scores[:, y_bin == 1], scores[:, y_bin == 0]
    m, n = pos.shape[1], neg.shape[1]
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs >= 2 positives and >= 2 negatives; got {m} and {n}")
    tx, ty = _midranks(pos), _midranks(neg)
    tz = _midranks(np.concatenate([pos, neg], axis=1))
    aucs = (tz[:, :m].sum(1) / m - (m + 1) / 2.0) / n
    v10 = (tz[:, :m] - tx) / n          # per positive: fraction of negatives ranked below
    v01 = 1.0 - (tz[:, m:] - ty) / m    # per negative: fraction of positives ranked above
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def _binary_scores(y_true, scores, positive):
    y = np.asarray(y_true).ravel()
    labels = np.unique(y)
    if len(labels) > 2:
        raise ValueError(f"DeLong is for binary labels; y_true has {len(labels)} values")
    yb = (y == positive).astype(int)
    _require_both(yb, "AUC")
    s = np.asarray(scores, dtype=np.float64)
    if s.shape[-1] != len(y):
        raise ValueError(f"scores have {s.shape[-1]} entries for {len(y)} labels")
    return yb, s


def delong_test(y_true, score_a, score_b, positive=1) -> dict:
    """DeLong test of AUC(a) == AUC(b) for two scores of the same binary test set.

    y_true: (N,) binary labels; score_a, score_b: (N,) higher = more ``positive``.
    Returns {auc_a, auc_b, var_a, var_b, cov, z, p_value} (two-sided, normal approximation).
    Identical scores give z = 0 and p = 1.
    """
    yb, sa = _binary_scores(y_true, score_a, positive)
    _, sb = _binary_scores(y_true, score_b, positive)
    aucs, cov = _delong(yb, np.stack([sa, sb]))
    var_diff = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diff = aucs[0] - aucs[1]
    if var_diff <= 1e-15:
        z, p = 0.0, 1.0 if abs(diff) < 1e-12 else 0.0
    else:
        z = diff / np.sqrt(var_diff)
        p = 2 * stats.norm.sf(abs(z))
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "var_a": float(cov[0, 0]),
            "var_b": float(cov[1, 1]), "cov": float(cov[0, 1]), "z": float(z),
            "p_value": float(p)}


def delong_ci(y_true, score, positive=1, alpha: float = 0.05) -> tuple[float, float, float]:
    """(AUC, lower, upper): normal-approximation interval from the DeLong variance, in [0, 1]."""
    yb, s = _binary_scores(y_true, score, positive)
    aucs, cov = _delong(yb, s[None])
    half = stats.norm.ppf(1 - alpha / 2) * np.sqrt(cov[0, 0])
    a = float(aucs[0])
    return a, float(max(0.0, a - half)), float(min(1.0, a + half))



# --------------------------------------------------------------------------- over seeds
def mean_ci_over_seeds(values, alpha: float = 0.05, bounds: tuple | None = None) -> tuple[float, float, float]:
    """(mean, lower, upper): Student-t interval of a metric over independent seeds.

    values: (S,) one number per seed (e.g. test AUC of three training runs). With S = 1 the
    interval is (mean, mean). This interval reflects training randomness only; combine it
    with ``bootstrap_ci`` for test-set sampling error. ``bounds`` (lo, hi): the metric's range,
    to which the interval is clipped (with 3 seeds t = 4.3 easily carries an accuracy past 1).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if len(v) == 0:
        raise ValueError("no values")
    m = float(v.mean())
    if len(v) == 1:
        return m, m, m
    half = stats.t.ppf(1 - alpha / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    lo, hi = m - half, m + half
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return m, float(lo), float(hi)
