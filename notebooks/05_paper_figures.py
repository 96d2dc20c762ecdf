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
# # 05 · The paper's figures and the results tables
#
# **Purpose.** Regenerate the figures of the write-up from code:
#
# * **Figure 1**, the idea of the method on a 2-D toy problem: two overlapping class
#   distributions, the score field $s_\theta(x, t, y) \approx \nabla_x \log p_t(x\mid y)$ a single
#   class-conditional network learned for each, and the Bayes classifier those scores imply;
# * the **results tables** across every dataset run so far, read from
#   `reports/runs/*/metrics_*.json` and `comparison_*.csv` (written by notebook 03). Partial
#   evaluations (a `limit`, a subset missing a class, a model whose training did not finish)
#   are named `partial_*` and are left out, with a note.
#
# Figures are saved as PNG and PDF without timestamps, so regenerating them gives identical
# files. `make reports` (`sgc batch --out reports/runs --reports-dir reports`) points them at
# the repository's `reports/`; a plain `sgc batch` uses the ignored `runs/` instead.

# %% tags=["parameters"]
runs_dir = None               # folder of run folders with metrics_*.json (None: the clone's reports/runs, else runs)
reports_dir = None            # where figures/ and tables/ go (None: <tmp>/sgc-notebooks/reports)
toy_points = 1000             # training points per class of the 2-D toy problem
toy_steps = 400               # training steps of the toy score model
toy_t = 0.05                  # diffusion time at which the score fields are drawn
seed = 0                      # seeds the toy data and the toy model
cpu_threads = 1               # torch threads on a CPU (None: torch default)
min_toy_agreement = 0.9       # floor: share of the grid where the model's decision matches the exact Bayes rule (measured 0.96)

# %%
# %matplotlib inline
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import matplotlib.pyplot as plt

from sgc import plots, toy
from sgc.notebook import default_runs_dir, setup

assert toy_points >= 50 and toy_steps >= 10 and 0 < toy_t < 1 and 0 <= min_toy_agreement <= 1
runs_dir = Path(runs_dir) if runs_dir else default_runs_dir()
print(f"{'runs':12s} {runs_dir}")
# makes the reports folder (None: <tmp>/sgc-notebooks/reports), sets threads and theme, prints the environment
nb = setup(run_dir=reports_dir, figures_dir=Path(reports_dir, "figures") if reports_dir else None, device="cpu",
           cpu_threads=cpu_threads, folder_name="reports")
reports_dir, figures_dir = nb.run_dir, nb.figures_dir
tables_dir = reports_dir / "tables"
tables_dir.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## Figure 1 · Two class densities and their learned score fields
#
# Each class is a mixture of Gaussians in the plane, so the diffused densities
# $p_t(x\mid y)$ and their scores are known exactly. One network $\hat\epsilon_\theta(x,t,y)$ is
# trained by denoising score matching on points of both classes, exactly as the image models
# are. At a small time $t$ the arrows $s_\theta(x,t,y) = -\hat\epsilon_\theta/\sigma(t)$ point to
# the high-density region **of class $y$**: the same point is pulled in different directions
# depending on the label. The classifier integrates the probability-flow ODE of each class's
# field to get $\log p_\theta(x\mid y)$ and compares them — the last panel shows the resulting
# posterior $p(y=1\mid x)$ and its decision boundary next to the exact Bayes boundary.

# %%
net, sde_obj, history = toy.fit_toy_model(n_per_class=toy_points, steps=toy_steps, seed=seed)
agreement = toy.score_agreement(net, sde_obj, t=toy_t)
print(f"toy model: {toy_steps} steps, final loss {history[-1]['loss']:.4f}, "
      f"cosine(learned score, exact score) at t={toy_t}: {agreement:.3f}")
assert np.isfinite(history[-1]["loss"]) and agreement > 0.75, "the toy score model did not learn the scores"

# %%
from sgc.classify import posterior, score_images

extent = (-1.0, 1.0, -1.0, 1.0)
g = np.linspace(-1, 1, 61)
gx, gy = np.meshgrid(g, g)
grid = np.stack([gx, gy], -1)
a = np.linspace(-0.9, 0.9, 15)
ax_, ay_ = np.meshgrid(a, a)
arrows = np.stack([ax_, ay_], -1)
points, labels = toy.sample_toy(300, seed + 1)
names = ("class 0", "class 1")
panels = []
for c in (0, 1):
    score = toy.learned_score(net, sde_obj, arrows, c, toy_t)
    assert score.shape == arrows.shape and np.isfinite(score).all()
    panels.append({"title": f"{names[c]}: density and score", "density": toy.toy_density(grid, c, sde_obj, toy_t),
                   "grid_xy": (ax_, ay_), "score": (score[..., 0], score[..., 1]),
                   "points": points[labels == c], "cmap": "Blues" if c == 0 else "Reds",
                   "color": "C0" if c == 0 else "C3"})

coarse = np.linspace(-1, 1, 41)
cx, cy = np.meshgrid(coarse, coarse)
cells = np.stack([cx, cy], -1).reshape(-1, 2)
images = ((cells + 1) / 2).astype(np.float32)[:, :, None, None]
sc = score_images(net, sde_obj, images, estimator="ode", dequantize=False, batch_size=len(images), progress=False,
                  rtol=1e-3, atol=1e-3, divergence_mode="exact")
learned_post = posterior(sc.log_lik)[:, 1].reshape(cx.shape)
true_post = (toy.toy_density(np.stack([cx, cy], -1), 1) /
             (toy.toy_density(np.stack([cx, cy], -1), 0) + toy.toy_density(np.stack([cx, cy], -1), 1) + 1e-300))
assert np.isfinite(learned_post).all() and learned_post.min() >= 0 and learned_post.max() <= 1
agree = float(((learned_post > 0.5) == (true_post > 0.5)).mean())
print(f"ODE likelihoods on a {cx.shape[0]}x{cx.shape[1]} grid: {sc.nfe.mean():.0f} evaluations, "
      f"{sc.seconds:.1f} s; the model's decision agrees with the exact Bayes rule on {agree:.1%} of the grid")

assert agree >= min_toy_agreement, f"the learned decision agrees with Bayes on {agree:.1%} of the grid only"
fig = plots.score_fields(panels, extent, posterior={"learned": learned_post, "true": true_post,
                                                    "points": points, "labels": labels})
plots.save_figure(fig, figures_dir / "figure1_score_fields")
plt.show()

# %% [markdown]
# ## Results across datasets
#
# Every full evaluation of notebook 03 (`sgc batch --dataset NAME`, or `sgc classify`) leaves a
# `metrics_<split>_<estimator>.json` in its run folder. The table collects them, each row naming
# its run folder, the config id of its model (a hash of the run's `config.json`:
# `sgc.runs.config_id`) and the device it was classified on; the second table puts the
# generative classifier next to the discriminative baseline on the same images, with 95 %
# bootstrap intervals. Partial ones are refused: their numbers are not comparable.

# %%
from sgc.runs import collect_metrics

rows = []
found, left_out = collect_metrics(runs_dir)  # partial_* evaluations are left out, by name
for m in found:
    rows.append({"dataset": m.get("dataset", m["run"]), "run": m["run"], "config id": m.get("config_id"),
                 "split": m.get("split"),
                 "estimator": m.get("estimator"), "n": m.get("n"), "accuracy": m.get("accuracy"),
                 "balanced accuracy": m.get("balanced_accuracy"), "AUC": m.get("auc_macro_ovr"),
                 "ECE": m.get("ece"), "bits/dim": m.get("mean_bpd_true_class"), "NFE": m.get("mean_nfe"),
                 "s/image": m.get("seconds_per_image"), "train steps": m.get("train_steps"),
                 "parameters": m.get("parameters"), "device": m.get("device")})
results = pd.DataFrame(rows, columns=["dataset", "run", "config id", "split", "estimator", "n", "accuracy", "balanced accuracy",
                                      "AUC", "ECE", "bits/dim", "NFE", "s/image", "train steps", "parameters", "device"])
for col in ("accuracy", "balanced accuracy", "AUC", "ECE"):
    assert results[col].dropna().between(0, 1).all(), f"{col} outside [0, 1]"

comparisons = []
for path in sorted(runs_dir.glob("*/comparison_*.csv")):
    frame = pd.read_csv(path)
    frame.insert(0, "run", path.parent.name)
    frame.insert(1, "split", path.stem.split("_")[1])
    comparisons.append(frame)
comparison = pd.concat(comparisons, ignore_index=True) if comparisons else pd.DataFrame()
print(f"{len(results)} evaluations in {results['run'].nunique()} run folders; {len(comparison)} comparison rows")
if left_out:
    print(f"left out {len(left_out)} partial evaluation(s): {', '.join(map(str, left_out))}")


def to_markdown(frame: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub table (no extra dependency); floats rounded to ``digits``."""
    def fmt(v):
        if isinstance(v, float):
            return "" if np.isnan(v) else f"{v:.{digits}f}"
        return str(v)
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


for name, frame in (("results", results), ("comparison", comparison)):
    frame.to_csv(tables_dir / f"{name}.csv", index=False, float_format="%.6g")
    (tables_dir / f"{name}.md").write_text(to_markdown(frame))
results.round(3)

# %%
comparison.round(3) if len(comparison) else "no comparison tables yet: run notebook 03"

# %%
if len(results):
    long = results.melt(id_vars=["run", "estimator"], value_vars=["accuracy", "balanced accuracy", "AUC"],
                        var_name="metric", value_name="value")
    long["run / estimator"] = long["run"] + " / " + long["estimator"].astype(str)
    fig, ax = plt.subplots(figsize=(max(4, 1.3 * long["run / estimator"].nunique() + 2), 3))
    import seaborn as sns
    sns.barplot(data=long, x="run / estimator", y="value", hue="metric", ax=ax)
    ax.set(ylim=(0, 1), xlabel="", ylabel="", title="score-based classifier, test metrics")
    ax.legend(fontsize=7, loc="lower right")
    plots.save_figure(fig, figures_dir / "results")
    plt.show()
