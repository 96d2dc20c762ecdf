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
# # 04 · Ablations: what the classifier's accuracy and cost depend on
#
# **Purpose.** Vary one thing at a time on a fixed subset of test images and record accuracy,
# bits/dim, network evaluations (NFE) and seconds:
#
# 1. the ODE solver's tolerance (accuracy vs NFE),
# 2. the Hutchinson probes (distribution and number: the variance of the divergence estimate),
# 3. the exact ODE likelihood vs the Monte-Carlo denoising bound (`sgc.elbo`),
# 4. the class prior $p(y)$ (uniform vs training frequencies),
# 5. the training budget (steps), 6. the size of the training set and 7. the score model
#    against discriminative baselines on the same subsets, over seeds (`sgc.experiments`).
#
# Defaults are small enough for a CPU in about a minute; the batch parameter files use more
# images and longer grids. Every table is also written to `<run_dir>/ablations/`.

# %% tags=["parameters"]
dataset = "digits"            # a name known to sgc.data.load_dataset
data_root = None              # the dataset's folder; None: $SGC_DATA/<folder>, else a default (digits: embedded)
data_options = {}             # loader keywords, e.g. {"size": 32}
run_dir = None                # shared run folder (None: <tmp>/sgc-notebooks/<dataset>)
figures_dir = None            # where figures are saved (None: <run_dir>/figures)
model = {"arch": "mlp", "hidden": 128, "blocks": 2, "emb_dim": 64}   # network of the run (and of the ablation models)
sde = {"name": "vp", "beta_min": 0.1, "beta_max": 20.0}
train = {"steps": 300, "batch_size": 128, "lr": 0.002, "warmup": 50, "weighting": "likelihood",
         "ema_decay": 0.99, "checkpoint_every": 300, "log_every": 25}
device = None                 # "cpu", "cuda" or None (cuda when available)
cpu_threads = 1               # torch threads on a CPU (tiny models run fastest on one; None: torch default)
split = "test"                # split the ablations classify
ablation_images = 30          # first N images of the split used by every ablation
tolerances = [0.01, 0.001, 0.0001]  # ODE tolerances (rtol and atol) of dopri5
probe_settings = [["rademacher", 1], ["gaussian", 1], ["rademacher", 4]]  # [distribution, probes per evaluation]
probe_repeats = 2             # independent solves per probe setting (their spread: estimator noise)
probe_rtol = 0.01             # ODE tolerance of the probe ablation
elbo_draws = [8, 32, 128]     # Monte-Carlo draws per image x class of the bound
step_grid = [100, 200]        # training steps of the training-budget ablation (one model, resumed)
fractions = [0.25, 0.5, 1.0]  # fractions of the training split (stratified)
fraction_steps = 100          # training steps of each training-fraction model
ablation_draws = 32           # draws of the bound used to score the ablation models
experiment_fractions = [50, 100]   # sgc.experiments: training fractions in percent (by group)
experiment_seeds = [0, 1]          # one training run per seed and fraction
experiment_classifiers = ["score_elbo", "logreg"]  # any of sgc.experiments.CLASSIFIERS
experiment_steps = 60              # score-model training steps of each experiment run
experiment_draws = 16             # draws of the bound per image x class in the experiment
experiment_boot = 20              # bootstrap resamples of the test split per row (1000 in the real tables)
min_bound_accuracy = 0.85          # floor on the bound's accuracy with the most draws (these defaults measured 0.97); None: no check

# %%
# %matplotlib inline
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import matplotlib.pyplot as plt

from sgc import metrics as M
from sgc import plots
from sgc.batch import ensure_run
from sgc.classify import log_prior, posterior, score_images
from sgc.data import load_dataset
from sgc.notebook import setup

# checks the shared parameters (dataset, loader options, network, SDE, TrainConfig), makes the run
# folder, picks device and threads, prints them and the environment
nb = setup(dataset, run_dir=run_dir, figures_dir=figures_dir, device=device, cpu_threads=cpu_threads,
           data_root=data_root, data_options=data_options, model=model, sde=sde, train=train)
run_dir, figures_dir, device = nb.run_dir, nb.figures_dir, nb.device
assert ablation_images >= 2 and probe_repeats >= 2
assert all(t > 0 for t in tolerances) and all(d >= 2 for d in elbo_draws)
assert all(len(p) == 2 and p[0] in ("rademacher", "gaussian") and p[1] >= 1 for p in probe_settings)
assert all(s > 0 for s in step_grid) and all(0 < f <= 1 for f in fractions)
assert all(0 < f <= 100 for f in experiment_fractions) and experiment_seeds and experiment_steps > 0
assert experiment_draws >= 2 and experiment_boot >= 10
assert min_bound_accuracy is None or 0 <= min_bound_accuracy <= 1
ablation_dir = run_dir / "ablations"
ablation_dir.mkdir(parents=True, exist_ok=True)

# %%
net, sde_obj, config, trained = ensure_run(run_dir, dataset, data_root=data_root, data_options=data_options,
                                           model=model, sde=sde, train=train, device=device)
splits = load_dataset(dataset, root=data_root, **data_options)
test = splits[split]
subset = test.subset(np.arange(min(ablation_images, len(test))))
y = subset.labels
levels = config["data"]["levels"]
class_names = config["data"]["class_names"]
k = len(class_names)
print(f"model: {config['train']['steps']} steps ({'trained now' if trained else 'from the run folder'}); "
      f"{len(subset)} {split} images, classes present: {np.bincount(y, minlength=k).tolist()}")


def evaluate(scores, **extra):
    """One table row: accuracy, true-class bits/dim, NFE and seconds of a ClassScores."""
    assert scores.log_lik.shape == (len(y), k) and np.isfinite(scores.log_lik).all()
    row = {**extra, "accuracy": float((scores.log_lik.argmax(1) == y).mean()),
           "bits/dim": float(scores.bpd[np.arange(len(y)), y].mean()),
           "NFE": float(scores.nfe.mean()), "seconds": scores.seconds}
    assert 0 <= row["accuracy"] <= 1 and np.isfinite(row["bits/dim"])
    return row


# %% [markdown]
# ## 1 · Solver tolerance vs NFE vs accuracy
#
# dopri5 adapts its step to keep the local error below $\mathrm{atol} + \mathrm{rtol}\,|z|$.
# Loose tolerances cost fewer network evaluations but bias the log-likelihoods; what matters
# for classification is whether the *differences* between classes survive.

# %%
rows = [evaluate(score_images(net, sde_obj, subset.images, estimator="ode", levels=levels, seed=0, progress=False,
                              rtol=tol, atol=tol, method="dopri5"), rtol=tol) for tol in tolerances]
tol_table = pd.DataFrame(rows)
tol_table.to_csv(ablation_dir / "tolerance.csv", index=False)
nfe = tol_table.sort_values("rtol", ascending=False)["NFE"].to_numpy()
assert (np.diff(nfe) > 0).all(), f"a tighter tolerance must cost more evaluations: {nfe}"
fig = plots.metric_lines(tol_table, "rtol", ["accuracy", "NFE", "bits/dim"], logx=True)
plots.save_figure(fig, figures_dir / "04_tolerance")
plt.show()
tol_table.round(4)

# %% [markdown]
# ## 2 · Hutchinson probes
#
# $\nabla\!\cdot\tilde f = \mathbb E_v[v^\top J v]$ holds for any probe with $\mathbb E[vv^\top]=I$.
# Rademacher probes ($\pm1$) have a smaller variance than Gaussian ones; averaging $P$ probes
# divides it by $P$ at $P$ vector–Jacobian products per evaluation. We solve each setting
# several times with different probes and report the spread (standard deviation across
# repeats) of the bits/dim, averaged over images and classes.

# %%
rows = []
for kind, n_probes in probe_settings:
    reps = [score_images(net, sde_obj, subset.images, estimator="ode", levels=levels, seed=seed, progress=False,
                         rtol=probe_rtol, atol=probe_rtol, probe=kind, n_probes=int(n_probes))
            for seed in range(probe_repeats)]
    bpd = np.stack([r.bpd for r in reps])
    accs = [float((r.log_lik.argmax(1) == y).mean()) for r in reps]
    rows.append({"probe": f"{kind} x{n_probes}", "bits/dim spread": float(bpd.std(0, ddof=1).mean()),
                 "accuracy": float(np.mean(accs)), "accuracy range": float(np.ptp(accs)),
                 "NFE": float(np.mean([r.nfe.mean() for r in reps])),
                 "seconds": float(np.mean([r.seconds for r in reps]))})
probe_table = pd.DataFrame(rows)
probe_table.to_csv(ablation_dir / "probes.csv", index=False)
assert np.isfinite(probe_table["bits/dim spread"]).all() and (probe_table["bits/dim spread"] >= 0).all()
probe_table.round(4)

# %% [markdown]
# ## 3 · Exact ODE likelihood vs the Monte-Carlo bound
#
# `sgc.elbo` estimates the likelihood bound of Song et al. (2021) from denoising errors,
#
# $$-\log p(x\mid y) \le \mathbb E_{t,\epsilon}\Big[\tfrac{g(t)^2}{2\sigma(t)^2}\big(\lVert\hat\epsilon_\theta(x_t,t,y)-\epsilon\rVert^2 - c(t)\lVert\epsilon\rVert^2\big)\Big] + \text{prior term},$$
#
# with importance-sampled, stratified $t$ and the **same** $(t,\epsilon)$ for every class, so the
# class differences have a small variance. No ODE, no Jacobian: one forward pass per draw.

# %%
ode_ref = tol_table.loc[tol_table["rtol"].sub(min(tolerances, key=lambda t: abs(np.log10(t) + 3))).abs().idxmin()]
rows = [{"estimator": f"ODE rtol={ode_ref['rtol']:g}", "draws / NFE": ode_ref["NFE"],
         "accuracy": ode_ref["accuracy"], "bits/dim": ode_ref["bits/dim"], "seconds": ode_ref["seconds"]}]
elbo_scores = {}
for draws in elbo_draws:
    sc = score_images(net, sde_obj, subset.images, estimator="elbo", levels=levels, seed=0, progress=False,
                      n_draws=int(draws))
    elbo_scores[draws] = sc
    r = evaluate(sc)
    rows.append({"estimator": f"ELBO {draws} draws", "draws / NFE": draws, "accuracy": r["accuracy"],
                 "bits/dim": r["bits/dim"], "seconds": r["seconds"]})
est_table = pd.DataFrame(rows)
est_table.to_csv(ablation_dir / "estimators.csv", index=False)
best_bound = est_table.iloc[-1]
if min_bound_accuracy is not None:
    assert best_bound["accuracy"] >= min_bound_accuracy, \
        f"{best_bound['estimator']}: accuracy {best_bound['accuracy']:.3f} below the floor {min_bound_accuracy}"
fig, ax = plt.subplots(figsize=(4.2, 3))
ax.scatter(est_table["seconds"], est_table["accuracy"])
for _, r in est_table.iterrows():
    ax.annotate(r["estimator"], (r["seconds"], r["accuracy"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
ax.set(xscale="log", xlabel=f"seconds for {len(y)} images", ylabel="accuracy", title="ODE vs ELBO")
plots.save_figure(fig, figures_dir / "04_ode_vs_elbo")
plt.show()
est_table.round(4)

# %% [markdown]
# ## 4 · The class prior
#
# $p(y\mid x) \propto p(x\mid y)\,p(y)$: the uniform prior maximises balanced accuracy when the
# likelihoods are right; the empirical prior (training frequencies) maximises accuracy on test
# data drawn like the training data. With balanced classes (digits) both agree; with a rare
# positive class they trade sensitivity for specificity. Scores: the bound with the most draws.

# %%
log_lik = elbo_scores[max(elbo_draws)].log_lik
train_counts = np.asarray(config["data"]["train_counts"])
rows = []
for name in ("uniform", "empirical"):
    p = posterior(log_lik, log_prior(k, name, np.repeat(np.arange(k), train_counts)))
    row = {"prior": name, "accuracy": M.accuracy(y, p), "balanced accuracy": M.balanced_accuracy(y, p)}
    if k == 2 and len(np.unique(y)) == 2:
        yb = (y == k - 1).astype(int)
        sens, spec = M.sensitivity_specificity(yb, (p.argmax(1) == k - 1).astype(int))
        row.update({"sensitivity": sens, "specificity": spec})
    rows.append(row)
prior_table = pd.DataFrame(rows).set_index("prior")
prior_table.to_csv(ablation_dir / "prior.csv")
assert prior_table.apply(lambda c: c.between(0, 1)).all().all()
prior_table.round(4)

# %% [markdown]
# ## 5 · Training budget
#
# One model of the run's architecture, trained in `ablations/steps/` and resumed from one grid
# point to the next (training resumes bit for bit), scored with the bound after each.

# %%
rows = []
for steps in sorted(step_grid):
    m, s, cfg, _ = ensure_run(ablation_dir / "steps", dataset, data_root=data_root, data_options=data_options,
                              model=model, sde=sde, train={**train, "steps": int(steps), "checkpoint_every": int(steps)},
                              device=device)
    sc = score_images(m, s, subset.images, estimator="elbo", levels=levels, seed=0, progress=False,
                      n_draws=ablation_draws)
    rows.append(evaluate(sc, steps=steps))
steps_table = pd.DataFrame(rows)
steps_table.to_csv(ablation_dir / "train_steps.csv", index=False)
fig = plots.metric_lines(steps_table, "steps", ["accuracy", "bits/dim"])
plots.save_figure(fig, figures_dir / "04_train_steps")
plt.show()
steps_table.round(4)

# %% [markdown]
# ## 6 · Training-set fraction
#
# Scarce data is where a generative classifier is claimed to help. Each model here sees a
# stratified fraction of the training split for `fraction_steps` steps (in memory, not saved).

# %%
from sklearn.model_selection import train_test_split
from sgc.nets import build_model
from sgc.sde import make_sde
from sgc.train import train_score_model

tr = splits["train"]
rows = []
for frac in sorted(fractions):
    idx = np.arange(len(tr))
    if frac < 1:
        idx, _ = train_test_split(idx, train_size=frac, stratify=tr.labels, random_state=0)
    part = tr.subset(np.sort(idx))
    c, h, _ = tr.shape
    m0 = build_model({**model, "num_classes": k, "in_channels": c, "image_size": h})
    cfg = {**train, "levels": tr.levels, "steps": int(fraction_steps), "checkpoint_every": int(fraction_steps)}
    _, m, _ = train_score_model(m0, make_sde(**sde), part.images, part.labels, cfg, device=device, progress=False)
    sc = score_images(m.eval(), make_sde(**sde), subset.images, estimator="elbo", levels=levels, seed=0,
                      progress=False, n_draws=ablation_draws)
    rows.append(evaluate(sc, fraction=frac, **{"training images": len(part)}))
frac_table = pd.DataFrame(rows)
frac_table.to_csv(ablation_dir / "train_fraction.csv", index=False)
fig = plots.metric_lines(frac_table, "training images", ["accuracy", "bits/dim"])
plots.save_figure(fig, figures_dir / "04_train_fraction")
plt.show()
frac_table.round(4)

# %% [markdown]
# ## 7 · Generative vs discriminative on the same subsets, over seeds
#
# `sgc.experiments.run_experiment` trains the score model and the baselines on exactly the same
# group-stratified training fraction for each seed, selects on validation only (temperature of
# the posterior, early stopping, the logistic regression's C) and predicts the test split once.
# Rows (metrics with bootstrap intervals, the config JSON, date, git revision) are appended to
# `<run_dir>/ablations/experiment.csv`; `experiment.md` holds means with t-intervals over seeds.
# The full BreastMNIST tables come from `sgc experiment` (see `reports/tables/breastmnist_*`).

# %%
from sgc.experiments import aggregate, run_experiment

exp_splits = splits if "val" in splits else load_dataset(dataset, root=data_root, **{**data_options, "val_size": 0.2})
exp_rows = run_experiment(dataset, splits=exp_splits, fractions=experiment_fractions, seeds=experiment_seeds,
                          classifiers=experiment_classifiers, score_model=model, score_sde=sde,
                          score_train={**train, "steps": int(experiment_steps), "checkpoint_every": int(experiment_steps)},
                          score_eval={"elbo": {"n_draws": experiment_draws}}, n_boot=experiment_boot, out_dir=ablation_dir,
                          figures_dir=figures_dir, work_dir=run_dir / "experiment_runs", tag="experiment",
                          device=device)
assert len(exp_rows) == len(experiment_seeds) * len(experiment_fractions) * len(experiment_classifiers)
assert exp_rows["auc"].between(0, 1).all()
summary = aggregate(exp_rows)
summary[["fraction_percent", "classifier", "seeds", "n_train", "auc", "auc_lo", "auc_hi", "accuracy",
         "accuracy_lo", "accuracy_hi"]].round(3)
