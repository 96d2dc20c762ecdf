"""Bayes classification over class log-likelihoods, the estimator interface and the CLI."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from gaussian import GaussianEps
from sgc.classify import (ClassScores, ScoreClassifier, log_prior, posterior, read_scores_csv,
                          save_scores_csv, score_images)
from sgc.cli import main
from sgc.data import load_dataset
from sgc.sde import VPSDE


def test_posterior_rows_sum_to_one_and_follow_bayes():
    rng = np.random.default_rng(0)
    ll = rng.normal(scale=50, size=(20, 4)) - 1000  # large magnitudes: must not overflow
    prior = log_prior(4, [0.1, 0.2, 0.3, 0.4])
    p = posterior(ll, prior)
    assert np.allclose(p.sum(1), 1)
    # ratios of posteriors = likelihood ratio x prior ratio
    assert np.allclose(np.log(p[:, 1] / p[:, 0]), ll[:, 1] - ll[:, 0] + np.log(2))
    with pytest.raises(ValueError, match="NaN"):
        posterior(np.array([[0.0, np.nan]]))


def test_priors():
    assert np.allclose(np.exp(log_prior(3)), 1 / 3)
    assert np.allclose(np.exp(log_prior(2, "empirical", [0, 0, 0, 1])), [0.75, 0.25])
    with pytest.raises(ValueError, match="summing to 1"):
        log_prior(2, [0.5, 0.6])


def test_gaussian_classes_are_classified_by_likelihood(tmp_path):
    # two classes with different spreads: the likelihood separates them by the radius of z
    sde = VPSDE()
    model = GaussianEps(sde, means=[0.0, 0.0], stds=[0.1, 0.6], image_size=2)
    g = torch.Generator().manual_seed(0)
    z = torch.cat([0.1 * torch.randn(10, 1, 2, 2, generator=g), 0.6 * torch.randn(10, 1, 2, 2, generator=g)])
    x = ((z + 1) / 2).clamp(0, 1)
    y = np.repeat([0, 1], 10)
    scores = score_images(model, sde, x, batch_size=8, dequantize=False, progress=False, rtol=1e-4, atol=1e-4)
    assert scores.log_lik.shape == (20, 2) and (scores.nfe > 0).all()
    want = np.where(z.flatten(1).pow(2).sum(1).numpy() < 4 * np.log(6) / (1 / 0.01 - 1 / 0.36) * 2, 0, 1)
    assert (posterior(scores.log_lik).argmax(1) == want).mean() >= 0.95
    path = save_scores_csv(tmp_path / "s.csv", scores, [f"i{i}" for i in range(20)], y, ["a", "b"])
    ids, labels, ll = read_scores_csv(path)
    assert ids[0] == "i0" and np.array_equal(labels, y)
    assert np.allclose(ll, scores.log_lik, atol=1e-5)


def _two_blobs(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = 0.5 + torch.where(y[:, None, None, None] == 0, -0.25, 0.25) + 0.08 * torch.randn(n, 1, 2, 2, generator=g)
    return x.clamp(0, 1).numpy(), y.numpy()


def test_sklearn_estimator_end_to_end():
    x, y = _two_blobs(400, 0)
    x_test, y_test = _two_blobs(40, 1)
    clf = ScoreClassifier(arch="mlp", model_options={"hidden": 64, "blocks": 1, "emb_dim": 32},
                          train_options={"steps": 300, "batch_size": 64, "lr": 2e-3, "warmup": 20,
                                         "dequantize": False},
                          estimator_options={"rtol": 1e-3, "atol": 1e-3}, progress=False)
    clf.fit(x, y)
    p = clf.predict_proba(x_test)
    assert p.shape == (40, 2) and np.allclose(p.sum(1), 1)
    assert clf.score(x_test, y_test) >= 0.95
    assert clf.scores_.log_lik.shape == (40, 2) and (clf.scores_.nfe > 0).all()
    with pytest.raises(ValueError, match="shape"):
        clf.predict(np.zeros((2, 1, 3, 3), np.float32))


def test_cli_train_classify_and_errors(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--run-dir", str(run), "--arch", "mlp",
                 "--model", "hidden=32", "blocks=1", "--train", "steps=5", "batch_size=8"]) == 0
    assert main(["classify", "--run-dir", str(run), "--limit", "20", "--options", "rtol=1e-2", "atol=1e-2"]) == 0
    # a --limit evaluation is partial: it is written beside, never as metrics.json
    assert not (run / "metrics.json").exists()
    metrics = json.loads(next(run.glob("partial_metrics_test_ode_limit20*.json")).read_text())
    for key in ("accuracy", "balanced_accuracy", "mean_bpd_true_class", "mean_nfe", "seconds"):
        assert np.isfinite(metrics[key]), key
    # the first 20 digits test images lack class 0: no AUC, and the note says why
    # (the full-metrics path, every class present, is checked in test_evaluate_run.py)
    assert metrics["n"] == 20 and metrics["auc_macro_ovr"] is None and metrics["note"] == "classes [0] absent: no AUC"
    assert "accuracy" in capsys.readouterr().out
    clf = ScoreClassifier.from_run(run, prior="empirical", progress=False, estimator="elbo",
                                   estimator_options={"n_draws": 4})
    counts = np.array(json.loads((run / "config.json").read_text())["data"]["train_counts"])
    assert np.allclose(np.exp(clf.log_prior_), counts / counts.sum())
    assert clf.predict(load_dataset("digits")["test"].images[:3]).shape == (3,)
    assert main(["classify", "--run-dir", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["train", "--run-dir", str(run), "--train", "stepz=3"]) == 2
    assert "stepz" in capsys.readouterr().err


def test_estimator_fit_predict_and_priors_quickly():
    # a few training steps only: the wiring (classes, priors, estimator options, errors), not accuracy
    x, y = _two_blobs(60, 2)
    y[:45] = 0                                  # 45 vs 15: an empirical prior of 0.75 / 0.25
    y[45:] = 1
    clf = ScoreClassifier(arch="mlp", model_options={"hidden": 16, "blocks": 1, "emb_dim": 8},
                          train_options={"steps": 3, "batch_size": 16, "warmup": 1}, estimator="elbo",
                          estimator_options={"n_draws": 4}, prior="empirical", batch_size=7, progress=False)
    with pytest.raises(RuntimeError, match="not fitted"):
        clf.predict(x[:2])
    clf.fit(x, y)
    assert clf.classes_.tolist() == [0, 1] and np.allclose(np.exp(clf.log_prior_), [0.75, 0.25])
    p = clf.predict_proba(x[:10])
    assert p.shape == (10, 2) and np.allclose(p, posterior(clf.scores_.log_lik, clf.log_prior_))
    assert clf.scores_.estimator == "elbo" and clf.scores_.extra["stderr"].shape == (10, 2)
    assert clf.scores_.extra["evals"].shape == (10,) and (clf.scores_.nfe == 4).all()
    assert np.array_equal(clf.predict(x[:10]), p.argmax(1))
    with pytest.raises(ValueError, match="labels must be 0..K-1"):
        ScoreClassifier(progress=False).fit(x, y + 1)
    with pytest.raises(ValueError, match="unknown estimator"):
        score_images(clf.model_, clf.sde_, x[:2], estimator="mcmc", progress=False)


def test_scores_do_not_depend_on_the_chunking():
    # a fixed-step solve with the exact divergence is deterministic: chunks of 3 = one chunk of 10
    sde = VPSDE()
    model = GaussianEps(sde, means=[0.2, -0.2], stds=[0.3, 0.5], image_size=2)
    x = torch.rand(10, 1, 2, 2, generator=torch.Generator().manual_seed(3))
    kw = dict(dequantize=False, progress=False, method="rk4", steps=8, divergence_mode="exact")
    a, b = score_images(model, sde, x, batch_size=3, **kw), score_images(model, sde, x, batch_size=10, **kw)
    assert np.allclose(a.log_lik, b.log_lik, atol=1e-5) and a.nfe.shape == (10,) and a.bpd.shape == (10, 2)
    assert np.allclose(a.bpd, -a.log_lik / (4 * np.log(2)) + 8, atol=1e-5)   # 256 levels by default: + log2 256
    assert 0 < a.seconds < 600 and a.estimator == "ode"
    want = torch.stack([model.logp01(x, torch.full((10,), k)) for k in range(2)], 1).numpy()
    assert np.allclose(a.log_lik, want, atol=0.2)


def test_scores_csv_round_trip_with_a_given_posterior(tmp_path):
    scores = ClassScores(np.array([[-1.0, -2.0], [-3.0, -0.5]]), np.ones((2, 2)), np.array([5, 5]), 0.1)
    post = np.array([[0.9, 0.1], [0.2, 0.8]])
    path = save_scores_csv(tmp_path / "s.csv", scores, ["a", "b"], None, ["x", "y"], post=post)
    frame = pd.read_csv(path)
    assert frame["posterior"].tolist() == [0.9, 0.1, 0.2, 0.8] and frame["label"].isna().all()
    assert frame["class_name"].tolist() == ["x", "y", "x", "y"] and (frame["estimator"] == "ode").all()
    ids, _, ll = read_scores_csv(path)
    assert ids == ["a", "b"] and np.allclose(ll, scores.log_lik)
