"""sgc.pipeline.evaluate_run: the full-metrics path (every class present, so the AUC is defined)
checked against scikit-learn on the saved scores; the reduced path when --limit drops a class;
the cache of scored chunks keyed by what produced them."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

import sgc
from sgc.classify import read_scores_csv
from sgc.data import load_dataset
from sgc.metrics import apply_prior, empirical_prior
from sgc.pipeline import evaluate_run, train_on_dataset

OPTIONS = {"n_draws": 4}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval") / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_on_dataset("digits", folder, model={"arch": "mlp", "hidden": 32, "blocks": 1, "emb_dim": 16},
                         train={"steps": 40, "batch_size": 64, "lr": 2e-3, "warmup": 5, "checkpoint_every": 40},
                         progress=False)
    finally:
        torch.set_num_threads(n)
    return folder


def _saved(run_dir, name="scores_test_elbo.csv"):
    ids, labels, log_lik = read_scores_csv(run_dir / name)
    frame = pd.read_csv(run_dir / name, dtype={"image_id": str})
    post = frame.pivot(index="image_id", columns="class", values="posterior").loc[ids].to_numpy()
    bpd = frame.pivot(index="image_id", columns="class", values="bpd").loc[ids].to_numpy()
    return ids, labels.astype(int), log_lik, post, bpd


def test_full_metrics_match_sklearn_on_the_saved_scores(run):
    m = evaluate_run(run, estimator="elbo", estimator_options=OPTIONS, batch_size=120, progress=False)
    assert m["scores_file"] == "scores_test_elbo.csv" and not m["partial"]   # the whole split: canonical files
    ids, labels, log_lik, post, bpd = _saved(run)
    test = load_dataset("digits")["test"]
    assert ids == list(test.ids) and np.array_equal(labels, test.labels)
    assert len(np.unique(labels)) == 10 and m["n"] == len(test) and "note" not in m
    assert np.allclose(post, apply_prior(log_lik, "uniform"), atol=1e-5)
    auc = roc_auc_score(labels, post, multi_class="ovr", average="macro")
    assert m["auc_macro_ovr"] == pytest.approx(auc, abs=1e-4)          # defined, and the right number
    assert m["accuracy"] == pytest.approx(np.mean(post.argmax(1) == labels))
    recalls = [np.mean(post.argmax(1)[labels == c] == c) for c in range(10)]
    assert m["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    assert m["mean_bpd_true_class"] == pytest.approx(bpd[np.arange(len(labels)), labels].mean(), rel=1e-5)
    assert 0 <= m["ece"] <= 1 and m["brier"] > 0 and m["mean_nfe"] == OPTIONS["n_draws"]
    assert m["train_steps"] == 40 and m["estimator"] == "elbo" and m["split"] == "test"
    on_disk = json.loads((run / "metrics_test_elbo.json").read_text())
    assert on_disk == json.loads((run / "metrics.json").read_text())
    assert on_disk["auc_macro_ovr"] == m["auc_macro_ovr"] and on_disk["accuracy"] == m["accuracy"]


def test_empirical_prior_enters_the_saved_posterior(run):
    m = evaluate_run(run, estimator="elbo", estimator_options=OPTIONS, batch_size=120, prior="empirical",
                     progress=False)
    _, labels, log_lik, post, _ = _saved(run, m["scores_file"])
    counts = json.loads((run / "config.json").read_text())["data"]["train_counts"]
    prior = empirical_prior(np.repeat(np.arange(10), counts), 10)
    assert np.allclose(post, apply_prior(log_lik, prior), atol=1e-5)
    assert not np.allclose(prior, 0.1)   # unequal class counts: the prior is not uniform


def test_a_limit_that_drops_classes_reports_what_is_defined(run):
    m = evaluate_run(run, estimator="elbo", estimator_options=OPTIONS, limit=6, batch_size=4, progress=False)
    assert m["partial"] and m["scores_file"].startswith("partial_scores_test_elbo_limit6")
    _, labels, _, post, _ = _saved(run, m["scores_file"])
    present = np.unique(labels)
    assert m["auc_macro_ovr"] is None and len(present) < 10
    assert m["note"] == f"classes {sorted(set(range(10)) - set(present.tolist()))} absent: no AUC"
    pred = post.argmax(1)
    assert m["accuracy"] == pytest.approx(np.mean(pred == labels))
    assert m["balanced_accuracy"] == pytest.approx(np.mean([np.mean(pred[labels == c] == c) for c in present]))


def test_scored_chunks_are_reused_only_for_the_same_key(run):
    kw = dict(estimator="elbo", estimator_options=OPTIONS, limit=8, batch_size=4, progress=False)
    evaluate_run(run, **kw)
    folders = [k.parent for k in (run / "parts").glob("*/key.json") if json.loads(k.read_text())["n"] == 8]
    assert len(folders) == 1
    parts = folders[0]
    key = json.loads((parts / "key.json").read_text())
    assert key["sgc"] == sgc.__version__ and key["n"] == 8
    stamps = {p: p.stat().st_mtime_ns for p in parts.glob("chunk_*.npz")}
    assert len(stamps) == 2
    evaluate_run(run, **kw)                                     # the same key: nothing recomputed
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    (parts / "key.json").write_text(json.dumps({**key, "sgc": "0.0.0"}))   # scored by other code
    evaluate_run(run, **kw)
    assert all(p.stat().st_mtime_ns != t for p, t in stamps.items())
    assert json.loads((parts / "key.json").read_text())["sgc"] == sgc.__version__


def test_from_run_takes_the_levels_of_the_run_and_256_for_old_runs(run, tmp_path):
    import hashlib

    from sgc import runs
    from sgc.classify import ScoreClassifier
    assert ScoreClassifier.from_run(run, progress=False).levels == 17          # digits: 17 grey levels
    old = tmp_path / "old"                  # a run folder of the first format, from before levels existed
    old.mkdir()
    config, ckpt = runs.load_checkpoint(run)
    del config["train"]["levels"]
    torch.save({k: v for k, v in ckpt.items() if k not in ("config_json", "format")}, old / "checkpoint.pt")
    (old / "config.json").write_text(json.dumps(config))
    digest = hashlib.sha256((old / "checkpoint.pt").read_bytes()).hexdigest()
    (old / "checkpoint.pt.sha256").write_text(f"{digest}  checkpoint.pt\n")
    clf = ScoreClassifier.from_run(old, progress=False)
    assert clf.levels == 256 and clf.batch_size == 64 and clf.estimator == "ode"
