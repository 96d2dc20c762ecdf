"""Metrics against hand-computed values, the bootstrap against a known interval, DeLong by hand."""
import json

import numpy as np
import pytest
from scipy import stats

from sgc import metrics as M


def two_col(s):
    s = np.asarray(s, dtype=float)
    return np.c_[1 - s, s]


# Five images, positive = 1. Scores sorted: 0.1(-) 0.2(-) 0.5(+) 0.6(-) 0.9(+).
# Pairs (pos > neg): 0.5 beats 0.1, 0.2; 0.9 beats all three -> 5 of 6 -> AUC = 5/6.
Y5 = np.array([0, 0, 0, 1, 1])
S5 = np.array([0.1, 0.2, 0.6, 0.5, 0.9])


def test_binary_summary_by_hand():
    out = M.summary_metrics(Y5, two_col(S5), class_names=("benign", "malignant"))
    assert out["n"] == 5
    assert out["positive"] == "malignant"
    assert out["auc"] == pytest.approx(5 / 6)
    assert out["auc_macro_ovr"] == pytest.approx(5 / 6)
    # argmax at 0.5: 0.5 -> ties go to class 0 (argmax picks first), so predictions 0,0,1,0,1
    assert out["accuracy"] == pytest.approx(3 / 5)
    # recall benign 2/3, malignant 1/2
    assert out["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    # Youden: threshold 0.5 -> sens 1, spec 2/3 (J = 2/3, the maximum)
    assert out["threshold_youden"] == pytest.approx(0.5)
    assert out["sensitivity_youden"] == pytest.approx(1.0)
    assert out["specificity_youden"] == pytest.approx(2 / 3)
    # spec >= 0.9 allows no false positive: best is threshold 0.9, sensitivity 1/2
    assert out["sensitivity_at_spec_0.90"] == pytest.approx(0.5)
    assert out["threshold_at_spec_0.90"] == pytest.approx(0.9)
    assert out["sensitivity_at_spec_0.95"] == pytest.approx(0.5)
    # binary Brier: (0.01 + 0.04 + 0.36 + 0.25 + 0.01) / 5; multiclass form is twice it
    assert out["brier_binary"] == pytest.approx(0.67 / 5)
    assert out["brier"] == pytest.approx(2 * 0.67 / 5)
    # AP of positives: ranks 0.9 (+, P=1), 0.6 (-), 0.5 (+, P=2/3) -> (1 + 2/3) / 2
    assert out["average_precision"] == pytest.approx((1 + 2 / 3) / 2)
    json.dumps(out)  # plain JSON types only


def test_positive_class_by_name_and_index():
    # BreastMNIST convention: class 0 = malignant
    y = 1 - Y5
    p = two_col(1 - S5)  # column 0 = 1 - (1 - S5) = P(malignant) = S5
    a = M.summary_metrics(y, p, class_names=("malignant", "normal"), positive="malignant")
    b = M.summary_metrics(y, p, positive=0)
    assert a["auc"] == pytest.approx(5 / 6) and b["auc"] == pytest.approx(5 / 6)
    assert a["sensitivity_youden"] == pytest.approx(1.0)


def test_brier_multiclass_by_hand():
    y = [0, 1]
    p = [[0.8, 0.2], [0.4, 0.6]]
    # (0.04 + 0.04) and (0.16 + 0.16) -> mean 0.2
    assert M.brier_score(y, p) == pytest.approx(0.2)
    p3 = [[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]
    # (0.25 + 0.09 + 0.04) and (0.01 + 0.01 + 0.04) -> mean 0.22
    assert M.brier_score([0, 2], p3) == pytest.approx(0.22)


def test_ece_and_reliability_by_hand():
    # confidences 0.95 (right), 0.95 (wrong), 0.55 (right), 0.55 (right)
    y = [1, 0, 1, 0]
    p = two_col([0.95, 0.95, 0.55, 0.45])
    # bin (14/15, 1]: acc 0.5 vs conf 0.95; bin (8/15, 9/15]: acc 1 vs conf 0.55
    assert M.expected_calibration_error(y, p) == pytest.approx(0.5 * 0.45 + 0.5 * 0.45)
    table = M.reliability_curve(y, p, n_bins=15)
    assert len(table) == 15 and table["count"].sum() == 4
    used = table[table["count"] > 0]
    assert used["bin"].tolist() == [8, 14]
    assert used["accuracy"].tolist() == pytest.approx([1.0, 0.5])
    assert used["confidence"].tolist() == pytest.approx([0.55, 0.95])
    # perfectly calibrated: confidence 0.8, 80 % right
    y = np.array([1] * 8 + [0] * 2)
    assert M.expected_calibration_error(y, two_col(np.full(10, 0.8))) == pytest.approx(0.0)


def test_multiclass_summary():
    y = np.array([0, 1, 2, 2])
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [0.5, 0.1, 0.4]])
    out = M.summary_metrics(y, p, class_names=("a", "b", "c"))
    assert out["accuracy"] == pytest.approx(3 / 4)
    # class c vs rest: positives 0.6, 0.4; negatives 0.1, 0.3 -> 4/4 -> 1.0
    assert out["auc_per_class"]["c"] == pytest.approx(1.0)
    # class a: positive 0.7; negatives 0.1, 0.2, 0.5 -> 1.0 ; class b: 0.6 vs 0.2, 0.2, 0.1 -> 1.0
    assert out["auc_macro_ovr"] == pytest.approx(1.0)
    assert "sensitivity_youden" not in out
    json.dumps(out)


def test_clear_errors():
    with pytest.raises(ValueError, match="only one class"):
        M.summary_metrics([1, 1, 1], two_col([0.2, 0.6, 0.9]))
    with pytest.raises(ValueError, match="summing to 1"):
        M.summary_metrics([0, 1], [[2.0, -1.0], [0.3, 3.0]])
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        M.accuracy([0, 1], [0.2, 0.8])
    with pytest.raises(ValueError, match="rows"):
        M.accuracy([0, 1, 1], two_col([0.2, 0.8]))
    with pytest.raises(ValueError, match="lie in"):
        M.accuracy([0, 2], two_col([0.2, 0.8]))


def test_bootstrap_accuracy_matches_normal_interval():
    # n Bernoulli(0.8) outcomes: accuracy 0.8, normal interval 0.8 +- 1.96 sqrt(0.16 / n)
    n = 400
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, n)
    correct = np.zeros(n, bool)
    correct[rng.permutation(n)[:320]] = True
    pred = np.where(correct, y, 1 - y)
    p = np.eye(2)[pred] * 0.8 + 0.1
    half = 1.96 * np.sqrt(0.8 * 0.2 / n)
    point, lo, hi = M.bootstrap_ci(y, p, M.accuracy, n_boot=2000, stratified=False, seed=0)
    assert point == pytest.approx(0.8)
    assert lo == pytest.approx(0.8 - half, abs=0.006)
    assert hi == pytest.approx(0.8 + half, abs=0.006)
    # stratified by class: nearly the same here (correctness independent of class)
    _, lo_s, hi_s = M.bootstrap_ci(y, p, M.accuracy, n_boot=2000, seed=0)
    assert hi_s - lo_s == pytest.approx(2 * half, rel=0.1)


def test_delong_by_hand():
    # positives 0.9, 0.4; negatives 0.5, 0.1 -> AUC 3/4
    # V10 (per positive) = 1, 1/2 ; V01 (per negative) = 1/2, 1 ; variances 1/8 each
    # var(AUC) = (1/8) / 2 + (1/8) / 2 = 1/8
    y = np.array([1, 1, 0, 0])
    a = np.array([0.9, 0.4, 0.5, 0.1])
    # b: positives 0.9, 0.6 ; negatives 0.5, 0.1 -> AUC 1, V10 = 1, 1 ; V01 = 1, 1 -> var 0
    b = np.array([0.9, 0.6, 0.5, 0.1])
    out = M.delong_test(y, a, b)
    assert out["auc_a"] == pytest.approx(0.75) and out["auc_b"] == pytest.approx(1.0)
    assert out["var_a"] == pytest.approx(1 / 8) and out["var_b"] == pytest.approx(0.0)
    assert out["cov"] == pytest.approx(0.0)
    z = -0.25 / np.sqrt(1 / 8)
    assert out["z"] == pytest.approx(z)
    assert out["p_value"] == pytest.approx(2 * stats.norm.sf(abs(z)))


def test_delong_ties_and_identity():
    y = np.array([1, 1, 0, 0, 1, 0])
    s = np.array([0.5, 0.5, 0.5, 0.2, 0.8, 0.2])
    from sklearn.metrics import roc_auc_score
    out = M.delong_test(y, s, s)
    assert out["auc_a"] == pytest.approx(roc_auc_score(y, s))
    assert out["z"] == 0.0 and out["p_value"] == 1.0


def test_delong_agrees_with_bootstrap_and_paired():
    rng = np.random.default_rng(0)
    n = 300
    y = rng.integers(0, 2, n)
    a = y * 1.0 + rng.normal(size=n)
    b = y * 0.6 + rng.normal(size=n)
    out = M.delong_test(y, a, b)
    # bootstrap standard error of AUC(a) ~ DeLong's
    aucs = []
    r = np.random.default_rng(1)
    from sklearn.metrics import roc_auc_score
    for _ in range(500):
        i = r.integers(0, n, n)
        aucs.append(roc_auc_score(y[i], a[i]))
    assert np.sqrt(out["var_a"]) == pytest.approx(np.std(aucs), rel=0.15)
    auc_a, lo, hi = M.delong_ci(y, a)
    assert auc_a == pytest.approx(out["auc_a"]) and lo < auc_a < hi
    # paired bootstrap on the same pair: same sign, comparable p-value
    pa, pb = two_col(1 / (1 + np.exp(-a))), two_col(1 / (1 + np.exp(-b)))
    pb_out = M.paired_bootstrap(y, pa, pb, M.auc, n_boot=300, seed=0)
    assert pb_out["diff"] == pytest.approx(out["auc_a"] - out["auc_b"])
    assert pb_out["lo"] < pb_out["diff"] < pb_out["hi"]
    assert (pb_out["p_value"] < 0.05) == (out["p_value"] < 0.05)


def test_paired_bootstrap_same_classifier_no_difference():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 100)
    p = two_col(rng.uniform(size=100))
    out = M.paired_bootstrap(y, p, p, M.accuracy, n_boot=200)
    assert out["diff"] == 0.0 and out["lo"] == 0.0 and out["hi"] == 0.0
    assert out["p_value"] == 1.0


def test_priors_and_posterior():
    ll = np.log(np.array([[0.2, 0.6], [0.5, 0.5]])) - 100.0  # constant cancels
    post = M.apply_prior(ll, "uniform")
    np.testing.assert_allclose(post, [[0.25, 0.75], [0.5, 0.5]])
    prior = M.empirical_prior([0, 0, 0, 1], 2)
    np.testing.assert_allclose(prior, [0.75, 0.25])
    post = M.apply_prior(ll, prior)
    # 0.2 * 0.75 = 0.15 vs 0.6 * 0.25 = 0.15 -> 1/2 ; 0.375 vs 0.125 -> 3/4
    np.testing.assert_allclose(post, [[0.5, 0.5], [0.75, 0.25]])
    post_t = M.apply_prior(ll, "uniform", temperature=2.0)
    np.testing.assert_allclose(post_t[0], [np.sqrt(0.2), np.sqrt(0.6)] / (np.sqrt(0.2) + np.sqrt(0.6)))
    with pytest.raises(ValueError, match="smoothing"):
        M.empirical_prior([0, 0], 2)
    with pytest.raises(ValueError, match="shape"):
        M.apply_prior(ll, [1.0])


def test_fit_temperature_recovers_scale():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5000, 3)) * 2.0
    pz = M.apply_temperature(z, 1.0)
    y = np.array([rng.choice(3, p=row) for row in pz])
    t = M.fit_temperature(z * 4.0, y)   # over-confident by a factor 4
    assert t == pytest.approx(4.0, rel=0.1)
    # large nats-scale log-likelihood differences need large T
    t_big = M.fit_temperature(z * 300.0, y)
    assert t_big == pytest.approx(300.0, rel=0.1)


def test_thresholds_on_validation():
    assert M.youden_threshold(Y5, S5) == pytest.approx(0.5)
    assert M.choose_threshold_on_val(Y5, S5) == pytest.approx(0.5)
    assert M.choose_threshold_on_val(Y5, S5, rule="specificity", target=0.9) == pytest.approx(0.9)
    # sensitivity >= 1 reached first (highest threshold) at 0.5, where specificity is 2/3
    assert M.choose_threshold_on_val(Y5, S5, rule="sensitivity", target=1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(M.apply_threshold(S5, 0.5), [0, 0, 1, 1, 1])
    assert M.sensitivity_specificity(Y5, M.apply_threshold(S5, 0.5)) == pytest.approx((1.0, 2 / 3))
    with pytest.raises(ValueError, match="target"):
        M.choose_threshold_on_val(Y5, S5, rule="specificity")


def test_fit_temperature_with_prior_matches_apply_prior():
    rng = np.random.default_rng(1)
    prior = np.array([0.8, 0.2])
    ll = rng.normal(size=(4000, 2)) * 1.5
    post = M.apply_prior(ll, prior)
    y = (rng.uniform(size=4000) < post[:, 1]).astype(int)
    t = M.fit_temperature(ll * 50.0, y, prior=prior)
    assert t == pytest.approx(50.0, rel=0.1)
    np.testing.assert_allclose(M.apply_prior(ll * 50.0, prior, temperature=t), post, atol=0.05)


def test_threshold_from_validation_in_summary():
    out = M.summary_metrics(Y5, two_col(S5), threshold=0.55)
    # positive when score >= 0.55: predictions 0, 0, 1, 0, 1 -> sens 1/2, spec 2/3
    assert out["sensitivity_at_threshold"] == pytest.approx(0.5)
    assert out["specificity_at_threshold"] == pytest.approx(2 / 3)
    assert out["accuracy_at_threshold"] == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="binary"):
        M.summary_metrics([0, 1, 2], np.eye(3), threshold=0.5)


def test_sensitivity_at_specificity_unreachable():
    # the top score is shared by a positive and a negative: no threshold reaches spec 0.95
    se, th = M.sensitivity_at_specificity([1, 0, 0], [0.9, 0.9, 0.1], 0.95)
    assert se == 0.0 and np.isfinite(th) and th > 0.9


def test_mean_ci_over_seeds():
    m, lo, hi = M.mean_ci_over_seeds([0.8, 0.9, 1.0])
    half = stats.t.ppf(0.975, 2) * 0.1 / np.sqrt(3)
    assert m == pytest.approx(0.9) and lo == pytest.approx(0.9 - half) and hi == pytest.approx(0.9 + half)
    assert M.mean_ci_over_seeds([0.7]) == (0.7, 0.7, 0.7)
    # 0.9 + 0.248 passes 1: clipped to the metric's range, the lower end untouched
    assert M.mean_ci_over_seeds([0.8, 0.9, 1.0], bounds=(0, 1)) == pytest.approx((0.9, 0.9 - half, 1.0))


def test_metrics_with_ci_agrees_with_bootstrap_ci():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 200)
    p = two_col(1 / (1 + np.exp(-(y + rng.normal(size=200)))))
    out = M.metrics_with_ci(y, p, n_boot=300, seed=5)
    point, lo, hi = M.bootstrap_ci(y, p, M.auc, n_boot=300, seed=5)
    assert out["auc"] == {"value": pytest.approx(point), "lo": pytest.approx(lo),
                          "hi": pytest.approx(hi)}
    assert out["accuracy"]["lo"] < out["accuracy"]["value"] < out["accuracy"]["hi"]
    json.dumps(out)
