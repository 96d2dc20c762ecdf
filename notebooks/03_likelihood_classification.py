# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Classification by exact likelihood
#
# **Purpose.** Turn the class-conditional score model of notebook 02 into a classifier:
# compute $\log p(x\mid y)$ of every test image under every class with the probability-flow
# ODE, apply Bayes' rule, and judge the result — per-class bits/dim, ROC and precision–recall
# curves, the confusion matrix, calibration — against a discriminative baseline trained on
# the same arrays.
#
# Defaults: the digits run folder of notebook 02 (a tiny model is trained if it is missing)
# and the first 60 test images at a loose ODE tolerance, so the notebook runs in seconds.

# %% tags=["parameters"]
dataset = "digits"            # a name known to sgc.data.load_dataset
data_root = None              # the dataset's folder; None: $SGC_DATA/<folder>, else a default (digits: embedded)
data_options = {}             # loader keywords, e.g. {"size": 32}
run_dir = None                # shared run folder (None: <tmp>/sgc-notebooks/<dataset>)
figures_dir = None            # where figures are saved (None: <run_dir>/figures)
model = {"arch": "mlp", "hidden": 128, "blocks": 2, "emb_dim": 64}   # used only if no checkpoint matches
sde = {"name": "vp", "beta_min": 0.1, "beta_max": 20.0}
train = {"steps": 300, "batch_size": 128, "lr": 0.002, "warmup": 50, "weighting": "likelihood",
         "ema_decay": 0.99, "checkpoint_every": 300, "log_every": 25}
device = None                 # "cpu", "cuda" or None (cuda when available)
cpu_threads = 1               # torch threads on a CPU (tiny models run fastest on one; None: torch default)
split = "test"                # split to classify
limit = 60                    # classify only the first N images of the split (None: all)
estimator = "ode"             # "ode" (exact likelihood) or "elbo" (Monte-Carlo bound)
estimator_options = {"rtol": 0.001, "atol": 0.001, "method": "dopri5", "n_probes": 1}
batch_size = 64               # images per batched solve
prior = "uniform"             # "uniform" or "empirical" (training frequencies)
baseline = "logreg"           # discriminative baseline from sgc.baselines ("logreg", "resnet18", ...) or None
baseline_options = {}         # keyword arguments of sgc.baselines.train_baseline
n_boot = 200                  # bootstrap resamples for the confidence intervals
min_accuracy = 0.45           # floor: the run fails below this accuracy (these defaults measured 0.57 on 60 images)
min_auc = 0.8                 # floor on the macro one-vs-rest AUC (these defaults measured 0.87); None: no check
bpd_band = [4.6, 5.5]         # band for the true-class bits/dim (these defaults measured 5.04); None: no check

# %%
# %matplotlib inline
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import matplotlib.pyplot as plt

from sgc import metrics as M
from sgc import plots
from sgc.batch import ensure_run
from sgc.classify import ESTIMATORS, log_prior, posterior, read_scores_csv
from sgc.data import load_dataset
from sgc.intervals import metrics_with_ci
from sgc.notebook import setup
from sgc.pipeline import evaluate_run

# checks the shared parameters (dataset, loader options, network, SDE, TrainConfig), makes the run
# folder, picks device and threads, prints them and the environment
nb = setup(dataset, run_dir=run_dir, figures_dir=figures_dir, device=device, cpu_threads=cpu_threads,
           data_root=data_root, data_options=data_options, model=model, sde=sde, train=train)
run_dir, figures_dir, device = nb.run_dir, nb.figures_dir, nb.device
assert estimator in ESTIMATORS, f"estimator must be one of {ESTIMATORS}"
assert prior in ("uniform", "empirical")
assert limit is None or (isinstance(limit, int) and limit >= 2)
assert isinstance(estimator_options, dict) and isinstance(baseline_options, dict)
assert 0 <= min_accuracy <= 1 and n_boot >= 10
assert min_auc is None or 0 <= min_auc <= 1
assert bpd_band is None or (len(bpd_band) == 2 and bpd_band[0] < bpd_band[1])

# %% [markdown]
# ## Likelihoods from the probability-flow ODE
#
# The ODE $\frac{\mathrm{d}z}{\mathrm{d}t} = \tilde f(z,t,y) = f(z,t) - \tfrac12 g(t)^2 s_\theta(z,t,y)$
# carries an image $z_\varepsilon = x$ to $z_T$ deterministically. The instantaneous change of
# variables gives its exact log-density under the model of class $y$:
#
# $$\log p_\theta(x\mid y) = \log \mathcal N(z_T; 0, I) + \int_\varepsilon^T \nabla_z\!\cdot\tilde f(z_t,t,y)\,\mathrm{d}t .$$
#
# The divergence is estimated with the Hutchinson–Skilling trick,
# $\nabla\!\cdot\tilde f = \mathbb E_v[v^\top (\partial\tilde f/\partial z) v]$, one vector–Jacobian
# product per function evaluation; state and integral are solved together (dopri5, torchdiffeq),
# all classes of a batch at once. Images are uniformly dequantised within their levels, with the
# same noise for every class, and reported in bits/dim.
#
# **Bayes' rule** then gives the posterior $p(y\mid x) = \mathrm{softmax}_y\big(\log p_\theta(x\mid y) + \log p(y)\big)$:
# its argmax is the prediction, its probabilities feed ROC, AUC and calibration.

# %%
net, sde_obj, config, trained = ensure_run(run_dir, dataset, data_root=data_root, data_options=data_options,
                                           model=model, sde=sde, train=train, device=device)
print("trained a model now (no matching checkpoint)" if trained else "using the run folder's checkpoint",
      f"({config['train']['steps']} steps)")
metrics = evaluate_run(run_dir, split=split, estimator=estimator, estimator_options=estimator_options,
                       prior=prior, batch_size=batch_size, limit=limit, data_root=data_root, device=device,
                       progress=False)
auc_text = "n/a (a class is missing)" if metrics["auc_macro_ovr"] is None else f"{metrics['auc_macro_ovr']:.3f}"
print(f"accuracy {metrics['accuracy']:.3f} | balanced accuracy {metrics['balanced_accuracy']:.3f} | "
      f"AUC {auc_text} | {metrics['mean_bpd_true_class']:.3f} bits/dim | "
      f"NFE {metrics['mean_nfe']:.0f} | {metrics['seconds_per_image']:.3f} s/image")
print(f"results: {metrics['metrics_file']}" + (f" (partial: {', '.join(metrics['partial_reasons'])}; the full "
      f"results, if any, are untouched)" if metrics["partial"] else ""))
for key in ("accuracy", "balanced_accuracy", "auc_macro_ovr", "ece", "average_precision"):
    if metrics.get(key) is not None:
        assert 0.0 <= metrics[key] <= 1.0, f"{key} = {metrics[key]} outside [0, 1]"
assert metrics["accuracy"] >= min_accuracy, f"accuracy {metrics['accuracy']:.3f} below the floor {min_accuracy}"
assert 0 < metrics["mean_bpd_true_class"] < 2 * np.log2(config["data"]["levels"]) + 8, "implausible bits/dim"
if min_auc is not None and metrics["auc_macro_ovr"] is not None:  # None: a subset without every class
    assert metrics["auc_macro_ovr"] >= min_auc, f"AUC {metrics['auc_macro_ovr']:.3f} below the floor {min_auc}"
if bpd_band is not None:
    assert bpd_band[0] <= metrics["mean_bpd_true_class"] <= bpd_band[1], \
        f"bits/dim {metrics['mean_bpd_true_class']:.3f} outside the band {bpd_band}"

# %% [markdown]
# The scores are on disk (`scores_<split>_<estimator>.csv`, or `partial_scores_…` for a `limit`
# or a subset missing a class: one row per image × class with $\log p(x\mid y)$ in nats,
# bits/dim and the posterior), so everything below reads them back instead of recomputing.

# %%
scores_path = run_dir / metrics["scores_file"]
frame = pd.read_csv(scores_path, dtype={"image_id": str})
ids, labels, log_lik = read_scores_csv(scores_path)
bpd = frame.pivot(index="image_id", columns="class", values="bpd").loc[ids].to_numpy()
class_names = config["data"]["class_names"]
k = len(class_names)
counts = np.repeat(np.arange(k), config["data"]["train_counts"])
proba = posterior(log_lik, log_prior(k, prior, counts))
assert log_lik.shape == (len(ids), k) and bpd.shape == log_lik.shape
assert np.isfinite(log_lik).all() and np.isfinite(bpd).all()
assert np.allclose(proba.sum(1), 1)
labels = labels.astype(int)
pred = proba.argmax(1)
every_class = len(np.unique(labels)) == k  # AUC, ROC and PR curves need every class
print(f"{len(ids)} images x {k} classes from {scores_path.name}"
      + ("" if every_class else f"; classes {sorted(set(range(k)) - set(labels.tolist()))} absent: no AUC/ROC"))

# %% [markdown]
# ## Per-class bits/dim
#
# Left: mean bits/dim of the images of each true class (rows) under each class model
# (columns) — a good classifier has its smallest values on the diagonal. Right: per true
# class, the bits/dim under its own class model against the best of the other class models;
# the gap between the boxes is the classification margin.

# %%
fig = plots.bpd_heatmap(bpd, labels, class_names)
plots.save_figure(fig, figures_dir / f"03_bpd_heatmap_{estimator}")
plt.show()
fig = plots.bpd_distributions(bpd, labels, class_names)
plots.save_figure(fig, figures_dir / f"03_bpd_distributions_{estimator}")
plt.show()

# %% [markdown]
# ## A discriminative baseline on the same arrays
#
# `sgc.baselines.train_baseline` trains on the training split and selects on the validation
# split (carved from training, stratified, when the dataset has none); it never sees the test
# images. It is evaluated on exactly the images classified above.

# %%
splits = load_dataset(dataset, root=data_root, **data_options)
test_set = splits[split]
index = {image_id: i for i, image_id in enumerate(test_set.ids)}
subset = test_set.subset([index[i] for i in ids])
assert (subset.labels == labels).all()
baseline_proba = None
if baseline:
    from sklearn.model_selection import train_test_split
    from sgc.baselines import predict_proba, train_baseline
    tr = splits["train"]
    va = splits.get("val")
    if va is None:
        a, b = train_test_split(np.arange(len(tr)), test_size=0.2, stratify=tr.labels, random_state=0)
        tr, va = tr.subset(a), tr.subset(b)
    base_model, base_history = train_baseline(baseline, tr, va, device=device, progress=False, **baseline_options)
    baseline_proba = predict_proba(base_model, subset.images)
    assert baseline_proba.shape == proba.shape and np.isfinite(baseline_proba).all()

rows = {f"score-based ({estimator})": proba}
if baseline_proba is not None:
    rows[f"{baseline} baseline"] = baseline_proba
table = []
for name, p in rows.items():
    if every_class:
        s = M.summary_metrics(labels, p, class_names=class_names)
        ci = metrics_with_ci(labels, p, class_names=class_names, n_boot=n_boot)
        auc, auc_ci, ece, brier = s["auc_macro_ovr"], f"[{ci['auc']['lo']:.3f}, {ci['auc']['hi']:.3f}]", s["ece"], s["brier"]
        acc_ci = f"[{ci['accuracy']['lo']:.3f}, {ci['accuracy']['hi']:.3f}]"
    else:  # a subset without some class: only what is defined on it
        s = {"n": len(labels), "accuracy": M.accuracy(labels, p), "balanced_accuracy": M.balanced_accuracy(labels, p)}
        auc, auc_ci, ece, brier, acc_ci = np.nan, "n/a", M.expected_calibration_error(labels, p), np.nan, "n/a"
    table.append({"classifier": name, "n": s["n"], "accuracy": s["accuracy"], "accuracy 95% CI": acc_ci,
                  "balanced accuracy": s["balanced_accuracy"], "AUC": auc, "AUC 95% CI": auc_ci,
                  "ECE": ece, "Brier": brier})
comparison = pd.DataFrame(table).set_index("classifier")
# named like the metrics file: comparison_<split>_<estimator>.csv, or partial_comparison_... for a subset
comparison.to_csv(run_dir / metrics["metrics_file"].replace("metrics", "comparison", 1).replace(".json", ".csv"))
assert comparison[["accuracy", "balanced accuracy", "AUC", "ECE"]].apply(lambda c: c.dropna().between(0, 1)).all().all()
comparison.round(3)

# %% [markdown]
# ## ROC and precision–recall
#
# For two classes: the curves of the positive class (the last class, e.g. *malignant*), the
# baseline dashed. For more classes: one-vs-rest curves per class.

# %%
extra = {f"{baseline}": baseline_proba} if baseline_proba is not None else None
if every_class:
    fig = plots.roc_pr_curves(labels, proba, class_names, extra=extra)
    plots.save_figure(fig, figures_dir / f"03_roc_pr_{estimator}")
    plt.show()
else:
    print("ROC/PR curves need every class; this subset lacks some (raise `limit`)")

# %% [markdown]
# ## Confusion matrix and calibration
#
# A reliability diagram bins the test images by their confidence $\max_y p(y\mid x)$ and shows
# the accuracy of each bin; a calibrated classifier lies on the diagonal. Exact likelihoods of
# high-dimensional images differ by many nats between classes, so the posterior of a generative
# classifier tends to be over-confident; `sgc.decision.fit_temperature` fixes that on a
# validation split.

# %%
fig = plots.confusion_matrix(labels, pred, class_names)
plots.save_figure(fig, figures_dir / f"03_confusion_{estimator}")
plt.show()
rel = M.reliability_curve(labels, proba, n_bins=10)
assert rel["count"].sum() == len(labels)
fig = plots.reliability_diagram(rel, ece=M.expected_calibration_error(labels, proba, n_bins=10))
plots.save_figure(fig, figures_dir / f"03_reliability_{estimator}")
plt.show()

# %% [markdown]
# `metrics_<split>_<estimator>.json` (and `metrics.json`) in the run folder now hold this
# evaluation when it covered the whole split with a finished model; a `limit` writes
# `partial_metrics_…` instead and leaves them alone. Notebook 05 collects the full ones into
# the results table. Notebook 04 varies the solver, the estimator, the prior and the training budget.
