"""What measures: classification metrics of one classifier on one split.

Conventions used throughout (shared by :mod:`sgc.intervals` and :mod:`sgc.decision`):
- ``y_true``: int (N,) class indices in [0, K).
- ``proba``: float (N, K) class probabilities, each row in [0, 1] summing to 1
  (a posterior, not logits or log-likelihoods: see ``sgc.decision.apply_prior``).
- Binary problems (K == 2) have a *positive* class, by default the last one (index K - 1);
  pass ``positive=`` (an index, or a name from ``class_names``) when it is another one
  (BreastMNIST: class 0 = malignant).
- Every metric returns plain Python floats, so results go straight into JSON.

scikit-learn computes the metrics, the Brier score (``brier_score_loss``) and the reliability
bins (``calibration_curve`` of "argmax correct" against the top-label confidence). The
top-label expected calibration error is written here: scikit-learn has no ECE, and its
calibration tools are binary (we apply them to correct-vs-confidence, which is what a
multi-class top-label ECE needs).

Uncertainty (bootstrap, DeLong, over-seed intervals) lives in :mod:`sgc.intervals`; priors,
temperature and thresholds in :mod:`sgc.decision`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from sklearn import calibration as skc
from sklearn import metrics as skm

# Names that moved to sgc.intervals and sgc.decision in 0.2. ``sgc.metrics`` still hands them out
# (module __getattr__ below, no warning, so notebooks print no warning cell) for one release;
# new code imports them from their new modules. Remove this shim in 0.3.
_MOVED = {
    **dict.fromkeys(["bootstrap_ci", "metrics_with_ci", "paired_bootstrap", "delong_test", "delong_ci",
                     "mean_ci_over_seeds"], "intervals"),
    **dict.fromkeys(["uniform_prior", "empirical_prior", "apply_prior", "fit_temperature", "apply_temperature",
                     "youden_threshold", "choose_threshold_on_val", "apply_threshold"], "decision"),
}

__all__ = ["summary_metrics", "accuracy", "balanced_accuracy", "auc", "brier_score",
           "expected_calibration_error", "reliability_curve", "sensitivity_specificity",
           "sensitivity_at_specificity", *_MOVED]

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

    For K == 2 this is twice the usual binary Brier score of the positive class
    (scikit-learn's ``brier_score_loss`` with ``scale_by_half=False``).
    """
    y, p = _check(y_true, proba)
    return float(skm.brier_score_loss(y, p, labels=list(range(p.shape[1])), scale_by_half=False))


def reliability_curve(y_true, proba, n_bins: int = 15) -> pd.DataFrame:
    """Top-label reliability table for a reliability diagram.

    Bins the confidence max_k p_k into ``n_bins`` equal-width bins (lo, hi] on [0, 1]
    (confidence 0 falls in the first bin). Returns one row per bin with columns
    ``bin, lower, upper, count, confidence`` (mean confidence in the bin), ``accuracy``
    (fraction of argmax predictions correct) and ``gap`` (accuracy - confidence); empty bins
    have count 0 and NaN means. The means per bin are scikit-learn's ``calibration_curve`` of
    "prediction correct" against the confidence (uniform strategy, the same bins).
    """
    y, p = _check(y_true, proba)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1; got {n_bins}")
    conf = p.max(1)
    correct = (p.argmax(1) == y).astype(int)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    count = np.bincount(np.searchsorted(edges[1:-1], conf, side="left"), minlength=n_bins)
    mean_acc = np.full(n_bins, np.nan)
    mean_conf = np.full(n_bins, np.nan)
    # calibration_curve returns the non-empty bins in order, binned exactly as above
    mean_acc[count > 0], mean_conf[count > 0] = skc.calibration_curve(correct, conf, pos_label=1, n_bins=n_bins,
                                                                      strategy="uniform")
    return pd.DataFrame({"bin": np.arange(n_bins), "lower": edges[:-1], "upper": edges[1:],
                         "count": count, "confidence": mean_conf, "accuracy": mean_acc,
                         "gap": mean_acc - mean_conf})


def expected_calibration_error(y_true, proba, n_bins: int = 15) -> float:
    """Top-label ECE in [0, 1]: sum over bins of (bin count / N) * |accuracy - confidence|.

    Written here: scikit-learn has no ECE (its calibration tools are binary); the bins come
    from :func:`reliability_curve`.
    """
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
    from .decision import apply_threshold, youden_threshold  # decision imports this module

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
            "brier_binary": float(skm.brier_score_loss(yb, s, pos_label=1)),
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


def __getattr__(name):  # the names that moved out in 0.2 (see _MOVED above)
    if name in _MOVED:
        import importlib
        return getattr(importlib.import_module(f".{_MOVED[name]}", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
