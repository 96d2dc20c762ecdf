"""Per-image probabilities of experiment rows and the paired tests built on them."""
import numpy as np
import pandas as pd
import pytest

from sgc.comparisons import auc_difference_over_seeds, paired_tests, read_predictions, write_predictions


def test_auc_difference_over_seeds_known_answers():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(30), np.zeros(50)].astype(bool)
    s = rng.random((3, 80))
    same = auc_difference_over_seeds(y, s, s, n_boot=200)
    assert same["diff"] == 0 and same["p_value"] == 1.0 and same["lo"] == same["hi"] == 0
    perfect = np.tile(y.astype(float), (3, 1)) + 0.01 * s     # AUC 1 on every seed
    d = auc_difference_over_seeds(y, perfect, s, n_boot=500)
    from sklearn.metrics import roc_auc_score
    want = np.mean([1 - roc_auc_score(y, row) for row in s])
    assert abs(d["diff"] - want) < 1e-12 and d["lo"] > 0 and d["p_value"] < 0.01


def _row(tmp_path, clf, cid, seed, ids, y, p):
    path = f"preds/{clf}_{cid}_s{seed}.csv"
    write_predictions(tmp_path / path, {"val": (ids, y, p), "test": (ids, y, p)})
    return {"dataset": "d", "fraction_percent": 100.0, "imbalance_ratio": np.nan, "classifier": clf,
            "config_id": cid, "seed": seed, "predictions": path}


def test_paired_tests_pair_score_models_with_the_rest_and_refuse_other_images(tmp_path):
    rng = np.random.default_rng(1)
    ids = [f"i{k}" for k in range(40)]
    y = np.r_[np.ones(15), np.zeros(25)].astype(int)
    p = lambda: np.c_[1 - (q := rng.random(40)), q]   # noqa: E731
    rows = [_row(tmp_path, "score_elbo", "aaa", s, ids, y, p()) for s in (0, 1)]
    rows += [_row(tmp_path, "densenet121", "bbb", s, ids, y, p()) for s in (0, 1, 2)]
    got = paired_tests(pd.DataFrame(rows), tmp_path, n_boot=100)
    assert len(got) == 1 and got.iloc[0]["classifier_a"] == "score_elbo" and got.iloc[0]["seeds"] == "0 1"
    assert len(got.iloc[0]["p_delong_per_seed"].split(" / ")) == 2
    back = read_predictions(tmp_path / rows[0]["predictions"])
    assert back[0] == ids and np.array_equal(back[1], y)
    rows.append(_row(tmp_path, "score_ode", "ccc", 0, ids[::-1], y[::-1], p()))
    with pytest.raises(ValueError, match="different test images"):
        paired_tests(pd.DataFrame(rows), tmp_path, n_boot=100)


def test_compare_by_seed_pairs_each_seed_with_its_own_file(tmp_path):
    from sgc.comparisons import compare_by_seed, prediction_files
    rng = np.random.default_rng(2)
    ids = [f"i{k}" for k in range(50)]
    y = np.r_[np.ones(20), np.zeros(30)].astype(int)
    a, b = {}, {}
    for s in (0, 1, 2):
        q = np.clip(0.3 * y + rng.random(50) * 0.7, 0, 1)   # informative, different per seed
        a[s] = write_predictions(tmp_path / "a" / f"mine_s{s}.csv", {"test": (ids, y, np.c_[1 - q, q])})
        flip = q if s != 1 else 1 - q                         # seed 1 of b: the mirror image of a's seed 1
        b[s] = write_predictions(tmp_path / "b" / f"other_s{s}.csv", {"test": (ids, y, np.c_[1 - flip, flip])})
    files = prediction_files([str(tmp_path / "b" / "other_s*.csv")])
    assert list(files) == ["other"] and sorted(files["other"]) == [0, 1, 2]
    c = compare_by_seed(a, files["other"], n_boot=200)
    per = {r["seed"]: r for r in c["per_seed"]}
    assert per[0]["auc_a"] == per[0]["auc_b"] and per[0]["p_delong"] == 1.0 and per[2]["p_delong"] == 1.0
    assert np.isclose(per[1]["auc_b"], 1 - per[1]["auc_a"])
    assert np.isclose(c["diff"], (per[1]["auc_a"] - per[1]["auc_b"]) / 3)
    assert compare_by_seed(a, {5: b[0]}) is None                              # no common seed
    with pytest.raises(FileNotFoundError, match="no predictions file matches"):
        prediction_files([str(tmp_path / "nothing_s*.csv")])
