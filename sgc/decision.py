"""What decides: class priors and the Bayes posterior, temperature calibration, decision thresholds.

A generative classifier gives log p(x | y); turning that into a decision takes a prior p(y)
(``apply_prior``), optionally a temperature fitted on the validation split (``fit_temperature``)
so that the posterior's confidence matches its accuracy, and, for binary problems, a threshold on
P(positive) chosen on the validation split (``choose_threshold_on_val``), never on test.

Shapes: ``log_lik``/``logits`` (N, K) float; ``prior`` (K,) summing to 1; ``y`` int (N,);
binary helpers take 0/1 truth (1 = positive) and a score (N,) where higher = more positive.
"""
from __future__ import annotations

import numpy as np
from scipy import optimize, special

from .metrics import _roc, sensitivity_at_specificity

__all__ = ["uniform_prior", "empirical_prior", "apply_prior", "fit_temperature", "apply_temperature",
           "youden_threshold", "choose_threshold_on_val", "apply_threshold"]


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


# --------------------------------------------------------------------------- thresholds
def youden_threshold(y_true_bin, score) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1.

    ``y_true_bin``: 0/1 (N,) with 1 = positive; ``score``: (N,) higher = more positive.
    Predict positive when ``score >= threshold``; ties in J go to the highest threshold.
    """
    fpr, tpr, thr = _roc(y_true_bin, score)
    return float(thr[np.argmax(tpr - fpr)])


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
