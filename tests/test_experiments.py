"""sgc.experiments: subsets that keep groups whole and classes present; a tiny end-to-end run."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from sgc.data import ImageSet, load_dataset
from sgc.experiments import fraction_subset, imbalance_subset, run_experiment


def _grouped_set(n_groups=40, per_group=3, seed=0) -> ImageSet:
    rng = np.random.default_rng(seed)
    labels = np.repeat((np.arange(n_groups) % 4 == 0).astype(int), per_group)  # 1 in 4 groups positive
    groups = [f"p{i // per_group}" for i in range(n_groups * per_group)]
    images = rng.random((len(labels), 1, 8, 8)).astype(np.float32)
    return ImageSet(images, labels, ("benign", "malignant"), levels=17, groups=groups)


def _groups_whole(sub: ImageSet, full: ImageSet) -> bool:
    sizes = pd.Series(full.groups).value_counts()
    return all(pd.Series(sub.groups).value_counts()[g] == sizes[g] for g in set(sub.groups))


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.25, 0.5])
def test_fraction_subset_keeps_groups_and_classes(fraction):
    full = _grouped_set()
    sub = fraction_subset(full, fraction, seed=3)
    assert set(sub.labels.tolist()) == {0, 1}
    assert _groups_whole(sub, full)
    n_groups = {c: len({g for g, y in zip(sub.groups, sub.labels) if y == c}) for c in (0, 1)}
    assert n_groups == {0: max(1, int(np.ceil(fraction * 30))), 1: max(1, int(np.ceil(fraction * 10)))}
    again = fraction_subset(full, fraction, seed=3)
    assert again.ids == sub.ids and np.array_equal(again.images, sub.images)
    assert fraction_subset(full, fraction, seed=4).ids != sub.ids or fraction < 0.05
    assert sub.ids == sorted(sub.ids, key=full.ids.index)  # original order


def test_fraction_subset_edges():
    full = _grouped_set()
    assert fraction_subset(full, 1.0, seed=0).ids == full.ids
    with pytest.raises(ValueError, match="percent"):
        fraction_subset(full, 10, seed=0)
    by_image = fraction_subset(full, 0.1, seed=0, by_group=False)
    assert len(by_image) == int(np.ceil(0.1 * 90)) + int(np.ceil(0.1 * 30))


def test_imbalance_subset_subsamples_the_minority_only():
    full = _grouped_set()                      # 90 negatives, 30 positives in groups of 3
    sub = imbalance_subset(full, minority_class=1, ratio=0.1, seed=0)
    counts = np.bincount(sub.labels, minlength=2)
    assert counts[0] == 90 and counts[1] == 9  # 3 whole groups of 3 = 0.1 x 90
    assert _groups_whole(sub, full)
    assert imbalance_subset(full, 1, 0.1, seed=0).ids == sub.ids
    assert imbalance_subset(full, 1, 0.1, seed=1).ids != sub.ids
    tiny = imbalance_subset(full, 1, 0.001, seed=0)
    assert np.bincount(tiny.labels)[1] == 3    # at least one group stays
    with pytest.raises(ValueError, match="ratio"):
        imbalance_subset(full, 1, 0.5, seed=0)


def _two_digit_splits():
    s = load_dataset("digits", val_size=0.25)
    out = {}
    for name, ds in s.items():
        sub = ds.subset(np.flatnonzero(ds.labels < 2))
        out[name] = ImageSet(sub.images, sub.labels, ("zero", "one"), sub.levels, sub.ids, sub.groups)
    return out


def test_run_experiment_writes_and_appends(tmp_path):
    torch.set_num_threads(1)
    splits = _two_digit_splits()
    kw = dict(splits=splits, fractions=(50, 100), seeds=(0,), classifiers=("score_elbo", "logreg"),
              score_model={"arch": "mlp", "hidden": 32, "blocks": 1, "emb_dim": 16},
              score_train={"steps": 30, "batch_size": 32, "lr": 2e-3, "warmup": 5, "log_every": 10,
                           "checkpoint_every": 1000},
              score_eval={"elbo": {"n_draws": 8}}, n_boot=50, out_dir=tmp_path / "tables",
              figures_dir=tmp_path / "figures", work_dir=tmp_path / "work", tag="tiny")
    frame = run_experiment("digits", **kw)
    assert len(frame) == 4                     # 1 seed x 2 fractions x 2 classifiers
    csv = tmp_path / "tables" / "tiny.csv"
    table = pd.read_csv(csv)
    assert len(table) == 4
    for col in ("seed", "fraction_percent", "classifier", "n_train", "auc", "auc_lo", "auc_hi", "accuracy",
                "accuracy_lo", "accuracy_hi", "balanced_accuracy", "accuracy_at_val_threshold", "config",
                "config_id", "date", "git_revision", "device", "seconds_train"):
        assert col in table.columns, col
    assert set(table["classifier"]) == {"score_elbo", "logreg"}
    assert (table["auc_lo"] <= table["auc"] + 1e-12).all() and (table["auc"] <= table["auc_hi"] + 1e-12).all()
    cfg = json.loads(table.loc[table["classifier"] == "score_elbo", "config"].iloc[0])
    assert cfg["train"]["steps"] == 30 and cfg["estimator"] == "elbo" and cfg["seed"] == 0
    half = table[table["fraction_percent"] == 50]["n_train"].iloc[0]
    assert half < table[table["fraction_percent"] == 100]["n_train"].iloc[0]
    assert (table.loc[table["classifier"] == "logreg", "auc"] > 0.9).all()
    md = (tmp_path / "tables" / "tiny.md").read_text()
    assert "score_elbo" in md and "logreg" in md
    assert (tmp_path / "figures" / "low_data_tiny.png").exists()
    from sgc.experiments import aggregate
    assert aggregate(table).groupby("classifier")["curve_id"].nunique().eq(1).all()  # one curve per method
    run_experiment("digits", **{**kw, "classifiers": ("logreg",), "seeds": (1,)})
    table = pd.read_csv(csv)
    assert len(table) == 6
    assert table.groupby(["classifier", "fraction_percent"])["config_id"].nunique().eq(1).all()  # seeds pool
    assert (table["classifier"] == "logreg").sum() == 4
    from sgc.experiments import _config_id
    cfg0 = json.loads(table["config"].iloc[0])
    assert _config_id(cfg0) == _config_id({**cfg0, "seed": 7, "train": {**cfg0["train"], "seed": 7}})


def test_run_experiment_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="classifier"):
        run_experiment("digits", splits=_two_digit_splits(), classifiers=("svm",), out_dir=tmp_path)
    with pytest.raises(ValueError, match="percentages"):
        run_experiment("digits", splits=_two_digit_splits(), fractions=(0,), out_dir=tmp_path)


def _append_many(path, worker, n):
    from sgc.experiments import _append_csv, _locked
    for i in range(n):
        with _locked(path):
            _append_csv(path, pd.DataFrame({"worker": [worker] * 50, "i": [i] * 50}))


def test_concurrent_experiments_append_every_row(tmp_path):
    # seeds run as separate processes (or SLURM array tasks) share one results table;
    # without the lock this loses rows and fails renaming another writer's temporary file
    import multiprocessing as mp
    path = tmp_path / "table.csv"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(path, w, 40)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rows = pd.read_csv(path)
    assert len(rows) == 3 * 40 * 50
    assert (rows.groupby(["worker", "i"]).size() == 50).all() and rows.groupby(["worker", "i"]).ngroups == 120


def test_cli_experiment_appends_rows(tmp_path, capsys):
    # `sgc experiment` once parsed its options and exited 0 without running anything
    from sgc.cli import main
    out = tmp_path / "tables"
    argv = ["experiment", "--dataset", "digits", "--data", "val_size=0.2", "--fractions", "100",
            "--seeds", "0", "--classifiers", "logreg", "--n-boot", "20", "--tag", "cli",
            "--out-dir", str(out), "--work-dir", str(tmp_path / "runs"), "--threads", "1"]
    assert main(argv) == 0
    assert "1 rows appended" in capsys.readouterr().out
    rows = pd.read_csv(out / "cli.csv")
    assert rows["classifier"].tolist() == ["logreg"] and rows["accuracy"].iloc[0] > 0.8
    assert (out / "cli.md").exists()


def test_summarize_tables_pools_runs_by_config(tmp_path):
    from sgc.experiments import summarize_tables
    splits = _two_digit_splits()
    kw = dict(splits=splits, classifiers=("logreg",), n_boot=20, out_dir=tmp_path, figures_dir=tmp_path)
    run_experiment("digits", fractions=(25,), seeds=(0, 1), tag="low", **kw)
    run_experiment("digits", fractions=(100,), seeds=(0, 1), tag="full", **kw)
    summary = summarize_tables([tmp_path / "low.csv", tmp_path / "full.csv"], tmp_path / "curve",
                               figures_dir=tmp_path / "figs", title="curve")
    assert sorted(summary["fraction_percent"]) == [25, 100] and (summary["seeds"] == 2).all()
    assert (tmp_path / "curve.csv").exists() and (tmp_path / "curve.md").exists()
    assert (tmp_path / "figs" / "curve.png").exists()
    full_id = pd.read_csv(tmp_path / "full.csv")["config_id"].iloc[0]
    kept = summarize_tables([tmp_path / "low.csv", tmp_path / "full.csv"], tmp_path / "curve2",
                            exclude_config_ids=[full_id[:8]])
    assert sorted(kept["fraction_percent"]) == [25]


def test_weighted_score_model_keeps_predictions_and_pairs_with_the_others(tmp_path):
    # score_elbo and score_weighted read the same draws; every row keeps its per-image
    # probabilities (relative paths) and the table pairs the score models with logreg
    torch.set_num_threads(1)
    from sgc.comparisons import read_predictions
    from sgc.metrics import auc
    splits = _two_digit_splits()
    kw = dict(splits=splits, fractions=(100,), seeds=(0,),
              score_model={"arch": "mlp", "hidden": 32, "blocks": 1, "emb_dim": 16},
              score_train={"steps": 30, "batch_size": 32, "lr": 2e-3, "warmup": 5, "log_every": 10,
                           "checkpoint_every": 1000},
              score_eval={"elbo": {"n_draws": 16}, "weighted": {"n_bins": 4, "folds": 3, "repeats": 2}},
              n_boot=50, out_dir=tmp_path / "tables", score_run_dir=str(tmp_path / "runs" / "s{seed}"), tag="w")
    frame = run_experiment("digits", classifiers=("score_elbo", "score_weighted", "logreg"), **kw)
    assert set(frame["classifier"]) == {"score_elbo", "score_weighted", "logreg"}
    rec = json.loads(frame.loc[frame["classifier"] == "score_weighted", "weighting"].iloc[0])
    assert rec["label"] == frame["weighting_chosen"].dropna().iloc[0] and len(rec["cv"]) == 9
    for _, row in frame.iterrows():
        assert not row["predictions"].startswith("/")
        ids, y, p = read_predictions(tmp_path / "tables" / row["predictions"])
        assert ids == list(map(str, splits["test"].ids)) and abs(auc(y, p) - row["auc"]) < 1e-9
    assert (tmp_path / "runs" / "s0" / "checkpoint.pt").exists()
    assert len(list((tmp_path / "runs" / "s0").glob("evidence_*.npz"))) == 2   # val and test draws kept
    paired = pd.read_csv(tmp_path / "tables" / "w_paired.csv")
    pairs = set(zip(paired["classifier_a"], paired["classifier_b"]))
    assert {("score_elbo", "logreg"), ("score_weighted", "logreg")} <= pairs
    assert len(pairs & {("score_elbo", "score_weighted"), ("score_weighted", "score_elbo")}) == 1
    assert "Paired tests on the same test images" in (tmp_path / "tables" / "w.md").read_text()
    # the bound alone (its own draws, no evidence kept) from the reused run: the same config and AUC
    ckpt_time = (tmp_path / "runs" / "s0" / "checkpoint.pt").stat().st_mtime
    alone = run_experiment("digits", classifiers=("score_elbo",), **kw)
    assert (tmp_path / "runs" / "s0" / "checkpoint.pt").stat().st_mtime == ckpt_time   # reused, not retrained
    shared = frame[frame["classifier"] == "score_elbo"].iloc[0]
    assert alone["config_id"].iloc[0] == shared["config_id"] and abs(alone["auc"].iloc[0] - shared["auc"]) < 1e-6
    with pytest.raises(ValueError, match="trained differently"):
        run_experiment("digits", classifiers=("score_elbo",), **{**kw, "score_train": {**kw["score_train"], "lr": 1e-3}})


def test_notes_below_the_mark_survive_a_regenerated_table(tmp_path):
    from sgc.experiments import NOTES_MARK
    kw = dict(splits=_two_digit_splits(), classifiers=("logreg",), fractions=(100,), n_boot=20, out_dir=tmp_path,
              tag="t")
    run_experiment("digits", seeds=(0,), **kw)
    md = tmp_path / "t.md"
    md.write_text(md.read_text() + "\n" + NOTES_MARK + "\n## What was run\nby hand\n")
    run_experiment("digits", seeds=(1,), **kw)
    text = md.read_text()
    assert text.count(NOTES_MARK) == 1 and text.endswith("## What was run\nby hand\n")
    assert "| 2 |" in text.split(NOTES_MARK)[0]          # the regenerated table: two seeds now


def test_markdown_names_the_figure_curves_and_says_when_one_seed_has_no_interval(tmp_path, monkeypatch):
    import matplotlib.axes
    from sgc.experiments import summarize_tables
    kw = dict(splits=_two_digit_splits(), classifiers=("logreg",), n_boot=20, out_dir=tmp_path, figures_dir=tmp_path)
    monkeypatch.chdir(tmp_path)
    run_experiment("digits", fractions=(25, 100), seeds=(0,), tag="one", data_root=tmp_path / "data", **kw)
    labels = []
    real = matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar",
                        lambda self, *a, **k: labels.append(k.get("label")) or real(self, *a, **k))
    summary = summarize_tables([tmp_path / "one.csv"], tmp_path / "curve", figures_dir=tmp_path / "figs")
    text = (tmp_path / "curve.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| 25 ") or line.startswith("| 100 ")]
    assert len(rows) == 2 and all("(1 seed)" in r and "[" not in r for r in rows)  # no [x, x] "interval"
    (curve,) = set(summary["curve_id"])
    assert labels and all(curve in label for label in labels)                      # the legend's id ...
    assert all(f"| {curve} |" in r for r in rows)                                  # ... is in the table
    config = pd.read_csv(tmp_path / "one.csv")["config"].iloc[0]
    assert json.loads(config)["data_root"] == "data" and str(tmp_path) not in config   # recorded without machine path
