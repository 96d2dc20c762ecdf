"""metrics / intervals / decision: the old names still work, the library-backed parts keep our definitions."""
import importlib

import numpy as np
import pytest

from sgc import decision, intervals, metrics

OLD_NAMES = ["summary_metrics", "accuracy", "balanced_accuracy", "auc", "brier_score",
             "expected_calibration_error", "reliability_curve", "bootstrap_ci", "metrics_with_ci",
             "paired_bootstrap", "delong_test", "delong_ci", "uniform_prior", "empirical_prior", "apply_prior",
             "fit_temperature", "apply_temperature", "mean_ci_over_seeds", "youden_threshold",
             "choose_threshold_on_val", "apply_threshold", "sensitivity_specificity", "sensitivity_at_specificity"]


def two_col(s):
    s = np.asarray(s, dtype=float)
    return np.c_[1 - s, s]


@pytest.mark.parametrize("name", OLD_NAMES)
def test_sgc_metrics_still_hands_out_every_old_name(name):
    obj = getattr(metrics, name)
    home = importlib.import_module(obj.__module__)
    assert home in (metrics, intervals, decision) and obj is vars(home)[name]
    assert name in metrics.__all__
    exec(f"from sgc.metrics import {name}", {})


def test_each_name_lives_in_one_module_and_unknown_names_fail():
    homes = {n: getattr(metrics, n).__module__ for n in OLD_NAMES}
    for module in (metrics, intervals, decision):  # each module exports what it defines
        own = {n for n, h in homes.items() if h == module.__name__}
        exported = set(module.__all__) - (set(metrics._MOVED) if module is metrics else set())
        assert own == exported & set(OLD_NAMES), module.__name__
    assert homes["delong_test"] == "sgc.intervals" and homes["fit_temperature"] == "sgc.decision"
    assert homes["reliability_curve"] == "sgc.metrics" and homes["youden_threshold"] == "sgc.decision"
    with pytest.raises(AttributeError, match="no attribute 'not_a_metric'"):
        metrics.not_a_metric  # noqa: B018


def test_importing_decision_or_intervals_first_works():
    # decision and intervals import metrics; metrics must not import them at module level
    import subprocess
    import sys
    for first in ("sgc.decision", "sgc.intervals"):
        code = f"import {first}; import sgc.metrics as M; M.summary_metrics([0, 1, 1, 0], [[.9, .1], [.2, .8], [.4, .6], [.6, .4]])"
        subprocess.run([sys.executable, "-c", code], check=True)
    importlib.reload(metrics)


def test_reliability_bins_are_right_closed_and_align_with_counts():
    # confidences: 0.6 sits on the edge 9/15 -> bin 8 (lo, hi]; bins 9..13 empty; 1.0 in the last bin
    y = [1, 0, 1, 1]
    p = two_col([0.6, 0.6, 0.9999, 1.0])
    table = metrics.reliability_curve(y, p, n_bins=15)
    used = table[table["count"] > 0]
    assert used["bin"].tolist() == [8, 14] and used["count"].tolist() == [2, 2]
    assert used["accuracy"].tolist() == pytest.approx([0.5, 1.0])
    assert used["confidence"].tolist() == pytest.approx([0.6, 0.99995])
    assert table.loc[table["count"] == 0, "accuracy"].isna().all()
    assert metrics.expected_calibration_error(y, p) == pytest.approx(0.5 * 0.1 + 0.5 * 0.00005)
    # three classes: top-label confidence and argmax correctness
    y3 = [0, 1, 2]
    p3 = [[0.5, 0.3, 0.2], [0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]
    t3 = metrics.reliability_curve(y3, p3, n_bins=5)
    assert t3["count"].tolist() == [0, 0, 2, 1, 0]   # 0.8 sits on an edge: (0.6, 0.8]
    assert t3["accuracy"].tolist()[2] == pytest.approx(0.5) and t3["accuracy"].tolist()[3] == 1.0


def test_brier_binary_and_multiclass_forms():
    y = [0, 1, 1]
    s = np.array([0.2, 0.7, 0.4])
    binary = ((0.2 - 0) ** 2 + (0.7 - 1) ** 2 + (0.4 - 1) ** 2) / 3
    out = metrics.summary_metrics(y, two_col(s))
    assert out["brier_binary"] == pytest.approx(binary) and out["brier"] == pytest.approx(2 * binary)
    # a class absent from y_true still counts in the multiclass sum
    assert metrics.brier_score([0, 0], [[0.7, 0.2, 0.1], [1.0, 0.0, 0.0]]) == pytest.approx((0.09 + 0.04 + 0.01) / 2)


def test_unstratified_bootstrap_is_scipy_and_fails_clearly_on_one_class_resamples():
    from scipy import stats
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 120)
    p = two_col(np.clip(y * 0.5 + rng.uniform(0, 0.5, 120), 0, 1))
    point, lo, hi = intervals.bootstrap_ci(y, p, metrics.accuracy, n_boot=300, stratified=False, seed=4)
    res = stats.bootstrap((np.arange(120),), lambda i: metrics.accuracy(y[i], p[i]), n_resamples=300,
                          vectorized=False, method="percentile", rng=np.random.default_rng(4))
    assert (lo, hi) == pytest.approx(tuple(res.confidence_interval))
    assert point == metrics.accuracy(y, p)
    y_rare = np.r_[np.zeros(58, int), 1, 1]
    with pytest.raises(ValueError, match="failed on .* resamples .*use stratified=True"):
        intervals.bootstrap_ci(y_rare, two_col(np.linspace(0, 1, 60)), metrics.auc, n_boot=200, stratified=False)
    # stratified keeps both classes in every resample: defined
    assert intervals.bootstrap_ci(y_rare, two_col(np.linspace(0, 1, 60)), metrics.auc, n_boot=50)[0] > 0.9
