"""Choosing the weighting of the per-noise-level evidence on the validation split only.

Candidates (``sgc.evidence`` explains the evidence):

* ``likelihood``  the bound (weight g^2 / sigma^2 on the denoising error);
* ``uniform``     weight 1 per unit t (Diffusion Classifier; the sigma^2 training weighting);
* ``truncated``   the likelihood weighting on the bins lo..hi-1 of the likelihood CDF (equal
                  log-SNR width for VP), the range that ranks the fitting images best;
* ``logistic``    class logits a_k + sum_b beta_b x_kb on the per-bin mean evidence x (minus
                  the per-bin mean bound values, centred over classes and scaled so that
                  beta = 1 is the bound at unit temperature), fitted by penalised maximum
                  likelihood with the ridge lam * sum_b (beta_b - s)^2 towards a common weight
                  s: lam -> infinity is the temperature-scaled bound, lam -> 0 one free weight per
                  noise level (a calibrated generative classifier).

``select_weighting`` scores every candidate (each lam a candidate) by repeated stratified
K-fold cross-validation on the validation images: fitted on K-1 folds, AUC on the held-out
fold, mean over folds and repeats. The best mean wins; ties go to the simpler candidate (the
order above). ``apply_weighting`` refits the winner on all validation images and scores
new images; the test split is never seen by any choice.
"""
from __future__ import annotations

import inspect

import numpy as np
from scipy import optimize, special, stats
from sklearn.model_selection import RepeatedStratifiedKFold

from .evidence import Evidence, bin_means, weighted_scores

__all__ = ["select_weighting", "apply_weighting", "weighted_posteriors", "fit_logistic", "logistic_logits",
           "truncated_scores", "candidate_scores", "rank_auc", "LAMBDAS", "SELECT_OPTIONS"]

LAMBDAS = (1000.0, 100.0, 10.0, 1.0, 0.1, 0.01)   # ridge strengths tried, strongest (closest to the bound) first


def _auc_columns(positive: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC of each column of s (N, R) for the boolean labels ``positive`` (N,)."""
    m, n = int(positive.sum()), int((~positive).sum())
    if m == 0 or n == 0:
        raise ValueError("AUC needs both classes among the images")
    r = stats.rankdata(s, axis=0)                     # mid-ranks for ties
    return (r[positive].sum(0) - m * (m + 1) / 2) / (m * n)


def rank_auc(y, scores) -> float:
    """AUC of (N, K) class scores: for K = 2 of s_1 - s_0 (no temperature needed), else the
    macro one-vs-rest AUC of softmax(scores)."""
    y = np.asarray(y)
    if scores.shape[1] == 2:
        return float(_auc_columns(y == 1, (scores[:, 1] - scores[:, 0])[:, None])[0])
    p = special.softmax(scores - scores.max(1, keepdims=True), axis=1)
    return float(np.mean([_auc_columns(y == k, p[:, k:k + 1])[0] for k in range(scores.shape[1])]))


def _features(F: np.ndarray) -> np.ndarray:
    """Per-bin evidence x (N, K, B) from bin means F: minus F, centred over classes (the
    per-image constants of the bound cancel between classes anyway)."""
    if np.isnan(F).any():
        raise ValueError("some noise-level bins hold no draws; use n_draws a multiple of n_bins "
                         "with t_sampling='sobol' or 'stratified'")
    x = -F
    return x - x.mean(1, keepdims=True)


def truncated_scores(F: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """(N, K) scores of the likelihood weighting on bins lo..hi-1 of F (N, K, B)."""
    return _features(F[:, :, lo:hi]).mean(2)


def _fit_truncated(F, y, min_bins: int) -> dict:
    """The range (lo, hi), hi - lo >= min_bins, with the best AUC on (F, y); ties: the widest."""
    x = _features(F)
    c = np.concatenate([np.zeros_like(x[:, :, :1]), np.cumsum(x, 2)], 2)
    b = x.shape[2]
    ranges = [(lo, lo + w) for w in range(b, min_bins - 1, -1) for lo in range(0, b - w + 1)]
    lo, hi = np.array(ranges).T
    s = (c[:, :, hi] - c[:, :, lo]) / (hi - lo)       # (N, K, R) scores of every range
    if x.shape[1] == 2:
        aucs = _auc_columns(np.asarray(y) == 1, s[:, 1] - s[:, 0])
    else:
        aucs = np.array([rank_auc(y, s[:, :, r]) for r in range(len(ranges))])
    best = int(np.argmax(aucs > aucs.max() - 1e-12))  # first of the best: the widest
    return {"lo": int(lo[best]), "hi": int(hi[best])}


def fit_logistic(F: np.ndarray, y, lam: float, scale: float | None = None) -> dict:
    """Penalised multinomial logistic regression on per-bin evidence; returns its parameters.

    F (N, K, B) bin means, y (N,) int. Logits a_k + sum_b beta_b x_kb / (B scale) with
    beta = s + delta, penalty lam * ||delta||^2 (+ 1e-6 on everything for a unique optimum).
    ``scale`` (default: the std over images of the bound's class difference) makes beta = 1
    the bound at unit temperature.
    """
    x = _features(F)
    n, k, b = x.shape
    if scale is None:
        scale = float(np.std(x.mean(2)[:, -1] - x.mean(2)[:, 0])) or 1.0
    xs = x / (b * scale)
    yy = np.eye(k)[np.asarray(y)]

    def loss(theta):
        a, s, d = theta[:k], theta[k], theta[k + 1:]
        beta = s + d
        logits = a + xs @ beta
        lse = special.logsumexp(logits, axis=1)
        nll = float(np.sum(lse - (logits * yy).sum(1)))
        g = special.softmax(logits, axis=1) - yy                     # (N, K)
        g_beta = np.einsum("nk,nkb->b", g, xs)
        val = nll + lam * float(d @ d) + 1e-6 * float(theta @ theta)
        grad = np.concatenate([g.sum(0), [g_beta.sum()], g_beta + 2 * lam * d]) + 2e-6 * theta
        return val, grad

    theta0 = np.zeros(k + 1 + b)
    theta0[k] = 1.0
    res = optimize.minimize(loss, theta0, jac=True, method="L-BFGS-B", options={"maxiter": 2000})
    a, s, d = res.x[:k], res.x[k], res.x[k + 1:]
    return {"intercepts": a.tolist(), "common": float(s), "beta": (s + d).tolist(), "scale": scale,
            "lam": lam, "converged": bool(res.success)}


def logistic_logits(F: np.ndarray, params: dict) -> np.ndarray:
    """(N, K) logits of a fitted ``fit_logistic`` on bin means F (N, K, B)."""
    x = _features(F)
    return np.asarray(params["intercepts"]) + x @ np.asarray(params["beta"]) / (x.shape[2] * params["scale"])


def _fit(name: str, params: dict, F, y, min_bins) -> dict:
    if name == "truncated":
        return _fit_truncated(F, y, min_bins)
    if name == "logistic":
        return fit_logistic(F, y, params["lam"])
    return {}


def candidate_scores(name: str, fitted: dict, ev: Evidence, F: np.ndarray, sde) -> np.ndarray:
    """(N, K) scores (higher = more likely) of a candidate with fitted parameters."""
    if name in ("likelihood", "uniform"):
        return weighted_scores(ev, sde, name)
    if name == "truncated":
        return truncated_scores(F, fitted["lo"], fitted["hi"])
    if name == "logistic":
        return logistic_logits(F, fitted)
    raise ValueError(f"unknown weighting {name!r}")


def _candidates(lambdas) -> list[tuple[str, dict]]:
    return ([("likelihood", {}), ("uniform", {}), ("truncated", {})]
            + [("logistic", {"lam": float(lam)}) for lam in lambdas])


def select_weighting(ev_val: Evidence, sde, *,
                     n_bins: int = 16,              # equal-mass bins of the likelihood CDF
                     folds: int = 5,                # cross-validation folds on the validation images
                     repeats: int = 10,             # repeated with different fold assignments
                     lambdas=LAMBDAS,               # ridge strengths of the logistic candidates
                     min_bins: int = 2,             # narrowest truncated range, bins
                     candidates=None,               # subset of names to consider (default all)
                     seed: int = 0) -> dict:
    """Choose the weighting by cross-validated AUC on validation evidence (labels in ev_val.labels).

    Returns a JSON-ready record: ``chosen`` (name), ``params`` (fitted on all validation
    images), ``cv`` (per candidate: mean and std of the held-out fold AUCs, and its
    parameters fitted on all validation images) and the settings.
    """
    y = np.asarray(ev_val.labels)
    if (y < 0).any():
        raise ValueError("validation evidence needs labels (ev_val.labels >= 0)")
    F = bin_means(ev_val, n_bins)
    _features(F)  # refuses bins without draws before any fitting
    cands = [c for c in _candidates(lambdas) if candidates is None or c[0] in candidates]
    if not cands:
        raise ValueError(f"no candidates left from {candidates}; names: likelihood, uniform, truncated, logistic")
    splitter = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    fold_aucs = {i: [] for i in range(len(cands))}
    fixed = {name: weighted_scores(ev_val, sde, name) for name in ("likelihood", "uniform")}
    for fit_idx, held in splitter.split(np.zeros(len(y)), y):
        for i, (name, params) in enumerate(cands):
            if name in fixed:
                s = fixed[name][held]
            else:
                fitted = _fit(name, params, F[fit_idx], y[fit_idx], min_bins)
                s = candidate_scores(name, fitted, ev_val.subset(held), F[held], sde)
            fold_aucs[i].append(rank_auc(y[held], s))
    table = []
    for i, (name, params) in enumerate(cands):
        fitted = _fit(name, params, F, y, min_bins)
        table.append({"name": name, "label": _label(name, params), "cv_auc": float(np.mean(fold_aucs[i])),
                      "cv_auc_sd": float(np.std(fold_aucs[i])),
                      "val_auc_fitted_on_val": rank_auc(y, candidate_scores(name, fitted, ev_val, F, sde)),
                      "params": {**params, **fitted}})
    best = max(range(len(table)), key=lambda i: (table[i]["cv_auc"], -i))
    return {"chosen": table[best]["name"], "label": table[best]["label"], "params": table[best]["params"],
            "cv": table, "n_bins": n_bins, "folds": folds, "repeats": repeats, "min_bins": min_bins, "seed": seed,
            "n_val": int(len(y)), "n_draws": int(ev_val.values.shape[2])}


def _label(name: str, params: dict) -> str:
    return f"logistic lam={params['lam']:g}" if name == "logistic" else name


# select_weighting's options and their defaults: the keys of `sgc experiment --set estimator_options.weighted.*`
SELECT_OPTIONS = {name: p.default for name, p in inspect.signature(select_weighting).parameters.items()
                  if p.kind is inspect.Parameter.KEYWORD_ONLY}


def apply_weighting(record: dict, ev: Evidence, sde, name: str | None = None) -> np.ndarray:
    """(N, K) scores of the chosen weighting (or of candidate ``name``, e.g. "uniform" or
    "logistic lam=10") with its parameters fitted on validation; logistic scores are logits."""
    label = record["label"] if name is None else name
    row = next((r for r in record["cv"] if r["label"] == label), None)
    if row is None:
        raise ValueError(f"no candidate {label!r} in the record; have {[r['label'] for r in record['cv']]}")
    return candidate_scores(row["name"], row["params"], ev, bin_means(ev, record["n_bins"]), sde)


def weighted_posteriors(ev_val: Evidence, ev_test: Evidence, sde, prior, **select_options):
    """(p_val (N, K), p_test (M, K), record): the weighting chosen on validation applied to both splits.

    The chosen scores become a posterior as the bound's do (prior + temperature fitted on
    validation), except the logistic weighting, whose logits are already fitted on validation.
    """
    from .metrics import apply_prior, fit_temperature
    rec = select_weighting(ev_val, sde, **select_options)
    s_val, s_test = apply_weighting(rec, ev_val, sde), apply_weighting(rec, ev_test, sde)
    if rec["chosen"] == "logistic":
        rec["temperature"] = None
        return special.softmax(s_val, axis=1), special.softmax(s_test, axis=1), rec
    rec["temperature"] = fit_temperature(s_val, ev_val.labels, prior=prior)
    return apply_prior(s_val, prior, rec["temperature"]), apply_prior(s_test, prior, rec["temperature"]), rec
