"""Classification metrics with confidence intervals, calibration and decision rules.

Conventions used throughout:
- ``y_true``: int (N,) class indices in [0, K).
- ``proba``: float (N, K) class probabilities, each row in [0, 1] summing to 1
  (a posterior, not logits or log-likelihoods: see ``apply_prior``/``apply_temperature``).
- Binary problems (K == 2) have a *positive* class, by default the last one (index K - 1);
  pass ``positive=`` (an index, or a name from ``class_names``) when it is another one
  (BreastMNIST: class 0 = malignant).
- Every metric returns plain Python floats, so results go straight into JSON.

scikit-learn computes the standard metrics; the calibration error, the bootstrap and the
DeLong test are written here so that their definitions are visible.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import optimize, special, stats
from sklearn import metrics as skm

__all__ = [
    "summary_metrics", "accuracy", "balanced_accuracy", "auc", "brier_score",
    "expected_calibration_error", "reliability_curve",
    "bootstrap_ci", "metrics_with_ci", "paired_bootstrap", "delong_test", "delong_ci",
    "uniform_prior", "empirical_prior", "apply_prior",
    "fit_temperature", "apply_temperature", "mean_ci_over_seeds",
    "youden_threshold", "choose_threshold_on_val", "apply_threshold",
    "sensitivity_specificity", "sensitivity_at_specificity",
]

_SUM_TOL = 1e-3  # tolerance on row sums of proba (float32 softmax sums are ~1e-6 off)


# --------------------------------------------------------------------------- validation
def _check(y_true, proba) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return (y int64 (N,), proba float64 (N, K))."""
    y = np.asarray(y_true)
    p = np.asarray(proba, dtype=np.float64)
    if y.ndim == 2 and y.shape[1] == 1:      # medmnist-style (N, 1) labels
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D class indices (N,); got shape {y.shape}")
    if p.ndim != 2:
        raise ValueError(f"proba must be (N, K) class probabilities; got shape {p.shape}. "
                         "For a binary score s of the positive class pass np.c_[1 - s, s].")
    if len(y) != len(p):
        raise ValueError(f"y_true has {len(y)} entries but proba has {len(p)} rows")
    if len(y) == 0:
        raise ValueError("empty y_true/proba: nothing to evaluate")
    if p.shape[1] < 2:
        raise ValueError(f"proba needs at least 2 classes (columns); got {p.shape[1]}")
    if not np.issubdtype(y.dtype, np.integer):
        if np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise ValueError(f"y_true must hold integer class indices; got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"y_true values must lie in [0, {p.shape[1]}) to index the columns "
                         f"of proba; got range [{y.min()}, {y.max()}]")
    if not np.all(np.isfinite(p)):
        raise ValueError("proba contains NaN or inf")
    sums = p.sum(axis=1)
    if p.min() < -1e-6 or p.max() > 1 + 1e-6 or np.abs(sums - 1).max() > _SUM_TOL:
        raise ValueError(
            f"rows of proba must be probabilities summing to 1 (got values in "
            f"[{p.min():.3g}, {p.max():.3g}], row sums in [{sums.min():.4g}, {sums.max():.4g}]); "
            "pass a posterior, not logits or log-likelihoods: convert with apply_prior() "
            "or apply_temperature()")
    return y, np.clip(p, 0.0, 1.0)


def _positive_index(k: int, positive, class_names) -> int:
    if positive is None:
        return k - 1
    if isinstance(positive, str):
        if class_names is None or positive not in class_names:
            raise ValueError(f"positive={positive!r} is not one of class_names={class_names}")
        return list(class_names).index(positive)
    positive = int(positive)
    if not 0 <= positive < k:
        raise ValueError(f"positive index {positive} out of range for {k} classes")
    return positive


def _require_both(y_bin: np.ndarray, what: str) -> None:
    n_pos = int(y_bin.sum())
    if n_pos == 0 or n_pos == len(y_bin):
        raise ValueError(f"{what} is undefined: y_true holds only one class "
                         f"({n_pos} positive of {len(y_bin)}); evaluate on a split that "
                         "contains both classes (e.g. a stratified split)")


# --------------------------------------------------------------------------- point metrics
def accuracy(y_true, proba) -> float:
    """Fraction of argmax predictions equal to y_true, in [0, 1]."""
    y, p = _check(y_true, proba)
    return float(np.mean(p.argmax(1) == y))


def balanced_accuracy(y_true, proba) -> float:
    """Mean per-class recall of the argmax prediction, in [0, 1] (classes present in y_true)."""
    y, p = _check(y_true, proba)
    return float(skm.balanced_accuracy_score(y, p.argmax(1)))


def _auc_one(y_bin: np.ndarray, score: np.ndarray, what: str) -> float:
    _require_both(y_bin, what)
    return float(skm.roc_auc_score(y_bin, score))


def auc(y_true, proba, positive=None, class_names=None) -> float:
    """ROC AUC in [0, 1]: of the positive class when K == 2, else the macro one-vs-rest mean."""
    y, p = _check(y_true, proba)
    k = p.shape[1]
    if k == 2:
        pos = _positive_index(k, positive, class_names)
        return _auc_one((y == pos).astype(int), p[:, pos], "AUC")
    return float(np.mean([_auc_one((y == c).astype(int), p[:, c], f"AUC of class {c}")
                          for c in range(k)]))


def brier_score(y_true, proba) -> float:
    """Multiclass Brier score: mean over images of sum_k (p_k - 1[y = k])^2, in [0, 2].

    For K == 2 this is twice the usual binary Brier score of the positive class.
    """
    y, p = _check(y_true, proba)
    onehot = np.eye(p.shape[1])[y]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def _bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bins (lo, hi] on [0, 1]; confidence 0 falls in the first bin."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], conf, side="left")


def reliability_curve(y_true, proba, n_bins: int = 15) -> pd.DataFrame:
    """Top-label reliability table for a reliability diagram.

    Bins the confidence max_k p_k into ``n_bins`` equal-width bins (lo, hi] on [0, 1].
    Returns one row per bin with columns ``bin, lower, upper, count, confidence``
    (mean confidence in the bin), ``accuracy`` (fraction of argmax predictions correct) and
    ``gap`` (accuracy - confidence); empty bins have count 0 and NaN means.
    """
    y, p = _check(y_true, proba)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1; got {n_bins}")
    conf = p.max(1)
    correct = (p.argmax(1) == y).astype(float)
    idx = _bin_index(conf, n_bins)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        mean_acc = np.bincount(idx, weights=correct, minlength=n_bins) / count
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return pd.DataFrame({"bin": np.arange(n_bins), "lower": edges[:-1], "upper": edges[1:],
                         "count": count, "confidence": mean_conf, "accuracy": mean_acc,
                         "gap": mean_acc - mean_conf})


def expected_calibration_error(y_true, proba, n_bins: int = 15) -> float:
    """Top-label ECE in [0, 1]: sum over bins of (bin count / N) * |accuracy - confidence|."""
    table = reliability_curve(y_true, proba, n_bins=n_bins)
    used = table[table["count"] > 0]
    return float(np.sum(used["count"] / table["count"].sum() * np.abs(used["gap"])))


# --------------------------------------------------------------------------- binary operating points
def sensitivity_specificity(y_true_bin, y_pred_bin) -> tuple[float, float]:
    """(sensitivity, specificity) of 0/1 predictions against 0/1 truth (1 = positive)."""
    t = np.asarray(y_true_bin).astype(bool)
    q = np.asarray(y_pred_bin).astype(bool)
    _require_both(t, "sensitivity/specificity")
    return float(np.mean(q[t])), float(np.mean(~q[~t]))


def _roc(y_bin, score):
    _require_both(np.asarray(y_bin), "ROC curve")
    fpr, tpr, thr = skm.roc_curve(y_bin, score, drop_intermediate=False)
    return fpr[1:], tpr[1:], thr[1:]  # drop sklearn's (0, 0, inf) starting point


def youden_threshold(y_true_bin, score) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1.

    ``y_true_bin``: 0/1 (N,) with 1 = positive; ``score``: (N,) higher = more positive.
    Predict positive when ``score >= threshold``; ties in J go to the highest threshold.
    """
    fpr, tpr, thr = _roc(y_true_bin, score)
    return float(thr[np.argmax(tpr - fpr)])


def sensitivity_at_specificity(y_true_bin, score, specificity: float) -> tuple[float, float]:
    """(highest sensitivity with specificity >= target, its threshold) on the empirical ROC."""
    if not 0 < specificity <= 1:
        raise ValueError(f"specificity must be in (0, 1]; got {specificity}")
    fpr, tpr, thr = _roc(y_true_bin, score)
    ok = fpr <= 1 - specificity + 1e-12
    if not ok.any():   # even the top score has a negative tied to it: flag nothing positive
        return 0.0, float(np.nextafter(np.max(score), np.inf))
    i = np.flatnonzero(ok)[np.argmax(tpr[ok])]
    return float(tpr[i]), float(thr[i])


def choose_threshold_on_val(y_val_bin, score_val, *, rule: str = "youden",
                            target: float | None = None) -> float:
    """Pick a decision threshold on the validation split (never on test).

    rule: "youden" (max sensitivity + specificity), "specificity" (highest sensitivity
    keeping specificity >= target), "sensitivity" (highest specificity keeping
    sensitivity >= target). Predict positive when score >= threshold.
    """
    if rule == "youden":
        return youden_threshold(y_val_bin, score_val)
    if target is None or not 0 < target <= 1:
        raise ValueError(f"rule={rule!r} needs target in (0, 1]; got {target}")
    if rule == "specificity":
        return sensitivity_at_specificity(y_val_bin, score_val, target)[1]
    if rule == "sensitivity":
        fpr, tpr, thr = _roc(y_val_bin, score_val)
        ok = tpr >= target - 1e-12
        i = np.flatnonzero(ok)[np.argmin(fpr[ok])]   # first (highest) threshold reaching it
        return float(thr[i])
    raise ValueError(f"unknown rule {rule!r}; choose 'youden', 'specificity' or 'sensitivity'")


def apply_threshold(score, threshold: float) -> np.ndarray:
    """0/1 int64 (N,) predictions: 1 where score >= threshold."""
    return (np.asarray(score) >= threshold).astype(np.int64)


# --------------------------------------------------------------------------- summary
def summary_metrics(y_true, proba, class_names: Sequence[str] | None = None,
                    positive=None, ece_bins: int = 15, threshold: float | None = None) -> dict:
    """All headline metrics of one classifier on one split, as a JSON-serialisable dict.

    y_true: int (N,) in [0, K); proba: (N, K) rows summing to 1; class_names: K names
    (default "0".."K-1"); positive: the positive class (index or name) when K == 2,
    default the last. Keys: n, accuracy, balanced_accuracy, auc_macro_ovr (for K == 2 the
    AUC of the positive class), auc_per_class, average_precision (macro one-vs-rest; for
    K == 2 that of the positive class), ap_per_class, f1_macro, brier (multiclass form, in
    [0, 2]), ece (top-label, ``ece_bins`` bins). For K == 2 also: positive, auc,
    brier_binary, f1_positive, threshold_youden, sensitivity_youden, specificity_youden,
    sensitivity_at_spec_0.90 and sensitivity_at_spec_0.95 (with their thresholds; these
    operating points are chosen on this same split, so they are optimistic), and, when
    ``threshold`` (chosen on validation with ``choose_threshold_on_val``) is given,
    sensitivity/specificity/accuracy/balanced_accuracy "_at_threshold" of the rule
    "positive when P(positive) >= threshold". Per-class AUC/AP need every class present in y_true (else a ValueError says so).
    """
    y, p = _check(y_true, proba)
    k = p.shape[1]
    names = [str(c) for c in (class_names if class_names is not None else range(k))]
    if len(names) != k:
        raise ValueError(f"{len(names)} class_names for {k} columns of proba")
    pred = p.argmax(1)
    auc_pc, ap_pc = {}, {}
    for c in range(k):
        yc = (y == c).astype(int)
        _require_both(yc, f"AUC of class {names[c]!r}")
        auc_pc[names[c]] = float(skm.roc_auc_score(yc, p[:, c]))
        ap_pc[names[c]] = float(skm.average_precision_score(yc, p[:, c]))
    out = {
        "n": int(len(y)),
        "accuracy": float(np.mean(pred == y)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred)),
        "auc_macro_ovr": float(np.mean(list(auc_pc.values()))),
        "auc_per_class": auc_pc,
        "average_precision": float(np.mean(list(ap_pc.values()))),
        "ap_per_class": ap_pc,
        "f1_macro": float(skm.f1_score(y, pred, average="macro", labels=list(range(k)),
                                       zero_division=0)),
        "brier": brier_score(y, p),
        "ece": expected_calibration_error(y, p, n_bins=ece_bins),
    }
    if k == 2:
        pos = _positive_index(k, positive, names)
        yb, s = (y == pos).astype(int), p[:, pos]
        thr = youden_threshold(yb, s)
        sens, spec = sensitivity_specificity(yb, apply_threshold(s, thr))
        out.update({
            "positive": names[pos],
            "auc": auc_pc[names[pos]],
            "auc_macro_ovr": auc_pc[names[pos]],
            "average_precision": ap_pc[names[pos]],
            "brier_binary": float(np.mean((s - yb) ** 2)),
            "f1_positive": float(skm.f1_score(yb, (pred == pos).astype(int), zero_division=0)),
            "threshold_youden": thr,
            "sensitivity_youden": sens,
            "specificity_youden": spec,
        })
        for target in (0.90, 0.95):
            se, th = sensitivity_at_specificity(yb, s, target)
            out[f"sensitivity_at_spec_{target:.2f}"] = se
            out[f"threshold_at_spec_{target:.2f}"] = th
        if threshold is not None:
            q = apply_threshold(s, threshold)
            se, sp = sensitivity_specificity(yb, q)
            out.update({"threshold": float(threshold), "sensitivity_at_threshold": se,
                        "specificity_at_threshold": sp,
                        "accuracy_at_threshold": float(np.mean(q == yb)),
                        "balanced_accuracy_at_threshold": (se + sp) / 2})
    elif threshold is not None:
        raise ValueError("threshold applies to binary problems (K == 2) only")
    return out


# --------------------------------------------------------------------------- bootstrap
def _resample_index(y: np.ndarray, rng: np.random.Generator, stratified: bool) -> np.ndarray:
    if not stratified:
        return rng.integers(0, len(y), len(y))
    parts = [rng.choice(idx, size=len(idx), replace=True)
             for idx in (np.flatnonzero(y == c) for c in np.unique(y))]
    return np.concatenate(parts)


def bootstrap_ci(y_true, proba, metric_fn: Callable, n_boot: int = 1000,
                 alpha: float = 0.05, seed: int = 0,
                 stratified: bool = True) -> tuple[float, float, float]:
    """Percentile bootstrap interval of ``metric_fn(y_true, proba)`` over test images.

    metric_fn: (y (N,), proba (N, K)) -> float, e.g. ``accuracy`` or ``auc``.
    stratified: resample within each class (keeps class counts, so AUC stays defined).
    Returns (point estimate on the full set, lower, upper) of the (1 - alpha) interval.
    Resamples where metric_fn raises ValueError (e.g. one class only) are skipped.
    """
    y, p = _check(y_true, proba)
    if n_boot < 1 or not 0 < alpha < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < alpha < 1; got {n_boot}, {alpha}")
    point = float(metric_fn(y, p))
    rng = np.random.default_rng(seed)
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


# --------------------------------------------------------------------------- priors and temperature
def uniform_prior(n_classes: int) -> np.ndarray:
    """(K,) equal class probabilities."""
    return np.full(n_classes, 1.0 / n_classes)


def empirical_prior(labels, n_classes: int, smoothing: float = 0.0) -> np.ndarray:
    """(K,) class frequencies of ``labels`` (the training split), plus optional Laplace smoothing."""
    counts = np.bincount(np.asarray(labels).ravel().astype(int), minlength=n_classes)
    if len(counts) > n_classes:
        raise ValueError(f"labels exceed n_classes={n_classes}")
    counts = counts + smoothing
    if np.any(counts == 0):
        raise ValueError(f"class(es) {np.flatnonzero(counts == 0).tolist()} never occur in labels; "
                         "a zero prior forbids them forever: pass smoothing > 0")
    return counts / counts.sum()


def apply_prior(log_lik, prior, temperature: float = 1.0) -> np.ndarray:
    """Bayes posterior p(y | x) from class-conditional log-likelihoods.

    log_lik: (N, K) log p(x | y) in nats (any additive per-image constant cancels);
    prior: (K,) class probabilities (``uniform_prior`` or ``empirical_prior``) or the
    string "uniform"; temperature: T > 0 dividing the log-likelihoods before the prior is
    added (fit it with ``fit_temperature`` on validation). Returns (N, K) float64 rows
    summing to 1: softmax(log_lik / T + log prior).
    """
    ll = np.asarray(log_lik, dtype=np.float64)
    if ll.ndim != 2:
        raise ValueError(f"log_lik must be (N, K); got shape {ll.shape}")
    if isinstance(prior, str):
        if prior != "uniform":
            raise ValueError(f"prior must be 'uniform' or a (K,) array; got {prior!r}")
        prior = uniform_prior(ll.shape[1])
    prior = np.asarray(prior, dtype=np.float64)
    if prior.shape != (ll.shape[1],):
        raise ValueError(f"prior must have shape ({ll.shape[1]},); got {prior.shape}")
    if np.any(prior < 0) or abs(prior.sum() - 1) > 1e-6:
        raise ValueError(f"prior must be non-negative and sum to 1; got {prior}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    with np.errstate(divide="ignore"):
        return special.softmax(ll / temperature + np.log(prior), axis=1)


def apply_temperature(logits, temperature: float) -> np.ndarray:
    """softmax(logits / T): (N, K) float64 rows summing to 1."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"logits must be (N, K); got shape {z.shape}")
    return special.softmax(z / temperature, axis=1)


def _nll(z: np.ndarray, y: np.ndarray, t: float, log_prior) -> float:
    zt = z / t + log_prior
    return float(np.mean(special.logsumexp(zt, axis=1) - zt[np.arange(len(y)), y]))


def fit_temperature(logits_val, y_val, *, prior=None,
                    bounds: tuple[float, float] = (1e-3, 1e5)) -> float:
    """Temperature T > 0 minimising the validation negative log-likelihood.

    logits_val: (N, K) logits of a network, or log p(x | y) in nats of a generative
    classifier (whose differences of tens to hundreds of nats usually need T >> 1);
    y_val: int (N,). prior: optional (K,) class probabilities or "uniform"; when given the
    model is softmax(logits / T + log prior), exactly what ``apply_prior(log_lik, prior, T)``
    computes, else softmax(logits / T) as in ``apply_temperature``. A log-spaced grid over
    ``bounds`` followed by bounded Brent refinement; returns a float.
    """
    z = np.asarray(logits_val, dtype=np.float64)
    y = np.asarray(y_val).ravel().astype(np.int64)
    if z.ndim != 2 or len(z) != len(y):
        raise ValueError(f"logits_val must be (N, K) with N = len(y_val); got {z.shape}, {len(y)}")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"y_val must lie in [0, {z.shape[1]})")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits_val contains NaN or inf")
    log_prior = 0.0
    if prior is not None:
        # reuse apply_prior's validation: the posterior at T = 1 of zero log-likelihoods
        log_prior = np.log(apply_prior(np.zeros((1, z.shape[1])), prior)[0])
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    grid = np.linspace(lo, hi, 241)
    losses = [_nll(z, y, np.exp(g), log_prior) for g in grid]
    i = int(np.argmin(losses))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    res = optimize.minimize_scalar(lambda g: _nll(z, y, np.exp(g), log_prior), bounds=(a, b),
                                   method="bounded", options={"xatol": 1e-6})
    g = res.x if res.fun <= losses[i] else grid[i]
    return float(np.exp(g))


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
