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
# # 02 · Training one class-conditional score model
#
# **Purpose.** Train a single network $\hat\epsilon_\theta(x_t, t, y)$ for all classes by
# denoising score matching, check its training curve, draw samples of every class with the
# reverse-time SDE and the probability-flow ODE, and compare the EMA weights with the raw ones.
# The checkpoint lands in the shared run folder, where notebooks 03 and 04 pick it up.
#
# Defaults: a small residual MLP trained for a few hundred steps on the digits (about ten
# seconds on a CPU). The batch parameter files train longer.

# %% tags=["parameters"]
dataset = "digits"            # a name known to sgc.data.load_dataset
data_root = None              # the dataset's folder; None: $SGC_DATA/<folder>, else a default (digits: embedded)
data_options = {}             # loader keywords, e.g. {"size": 32}
run_dir = None                # shared run folder (None: <tmp>/sgc-notebooks/<dataset>)
figures_dir = None            # where figures are saved (None: <run_dir>/figures)
model = {"arch": "mlp", "hidden": 128, "blocks": 2, "emb_dim": 64}   # network: arch + keywords
sde = {"name": "vp", "beta_min": 0.1, "beta_max": 20.0}              # forward SDE (the paper's VP)
train = {"steps": 300, "batch_size": 128, "lr": 0.002, "warmup": 50, "weighting": "likelihood",
         "ema_decay": 0.99, "checkpoint_every": 300, "log_every": 25}  # TrainConfig fields
device = None                 # "cpu", "cuda" or None (cuda when available)
cpu_threads = 1               # torch threads on a CPU (tiny models run fastest on one; None: torch default)
samples_per_class = 4         # samples drawn per class and sampler
sampler_steps = 100           # Euler-Maruyama / Euler steps of the samplers
ema_images = 100              # test images used to compare EMA and raw weights
ema_draws = 16                # Monte-Carlo draws of the bound per image x class for that comparison
min_ema_accuracy = 0.8        # floor on the EMA weights' bound accuracy (these defaults measured 0.89); None: no check
ema_bpd_band = [3.6, 4.4]     # band for their true-class bits/dim (these defaults measured 3.97); None: no check

# %%
# %matplotlib inline
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import matplotlib.pyplot as plt

from sgc import plots
from sgc.batch import ensure_run
from sgc.classify import score_images
from sgc.data import load_dataset
from sgc.notebook import setup
from sgc.sampling import sample_per_class
from sgc.runs import load_run

# checks the shared parameters (dataset, loader options, network, SDE, TrainConfig), makes the run
# folder, picks device and threads, prints them and the environment
nb = setup(dataset, run_dir=run_dir, figures_dir=figures_dir, device=device, cpu_threads=cpu_threads,
           data_root=data_root, data_options=data_options, model=model, sde=sde, train=train)
run_dir, figures_dir, device = nb.run_dir, nb.figures_dir, nb.device
assert samples_per_class >= 1 and sampler_steps >= 2 and ema_images >= 1 and ema_draws >= 2
assert min_ema_accuracy is None or 0 <= min_ema_accuracy <= 1
assert ema_bpd_band is None or (len(ema_bpd_band) == 2 and ema_bpd_band[0] < ema_bpd_band[1])

# %% [markdown]
# ## Denoising score matching
#
# The forward **VP SDE** $\mathrm{d}x = -\tfrac12\beta(t)\,x\,\mathrm{d}t + \sqrt{\beta(t)}\,\mathrm{d}w$,
# $\beta(t) = \beta_{\min} + t(\beta_{\max}-\beta_{\min})$, turns data into noise with a Gaussian
# kernel $x_t = \alpha(t)x_0 + \sigma(t)\epsilon$, $\alpha = e^{-\frac12\int_0^t\beta}$,
# $\sigma^2 = 1-\alpha^2$. The network predicts the noise; its score is
# $s_\theta(x,t,y) = -\hat\epsilon_\theta(x,t,y)/\sigma(t) \approx \nabla_x \log p_t(x\mid y)$.
# Training minimises
#
# $$\mathcal{L}(\theta) = \mathbb{E}_{t,\,(x_0,y),\,\epsilon}\;\lambda(t)\,\sigma(t)^{-2}
#   \big\lVert \hat\epsilon_\theta(\alpha x_0 + \sigma\epsilon,\, t,\, y) - \epsilon \big\rVert^2 ,$$
#
# with $\lambda = \sigma^2$ (the paper) or the **likelihood weighting** $\lambda = g^2$, which
# makes $\mathcal{L}$ an upper bound on $-\log p_\theta(x_0\mid y)$ (Song et al. 2021); we draw $t$
# by importance sampling so that every draw has the same weight. The label $y$ enters through
# an embedding added to the time embedding: one network, all classes.
#
# `ensure_run` reuses the run folder's checkpoint when it was trained with exactly this
# configuration, resumes it when it has fewer steps, and trains otherwise.

# %%
net, sde_obj, config, trained = ensure_run(run_dir, dataset, data_root=data_root, data_options=data_options,
                                           model=model, sde=sde, train=train, device=device)
print("trained now" if trained else "reused the checkpoint in the run folder",
      f"| {config['parameters']:,} parameters | {config['train']['steps']} steps")
history = json.loads((run_dir / "history.json").read_text())
losses = np.array([h["loss"] for h in history])
assert len(history) > 0 and np.isfinite(losses).all(), "training loss must be finite"
n = max(1, len(losses) // 5)
assert losses[-n:].mean() < losses[:n].mean(), "the loss did not go down"

# %%
fig = plots.training_curves(history)
plots.save_figure(fig, figures_dir / "02_training_curves")
plt.show()
print(f"loss: first {losses[0]:.4f}, last {losses[-1]:.4f}")

# %% [markdown]
# ## Samples from the class-conditional model
#
# Running the forward SDE backwards needs only the score (Anderson 1982):
#
# $$\mathrm{d}x = \big[f(x,t) - g(t)^2\, s_\theta(x,t,y)\big]\mathrm{d}t + g(t)\,\mathrm{d}\bar w,
#   \qquad x_T \sim \mathcal N(0, I),$$
#
# solved here by Euler–Maruyama. The **probability-flow ODE**
# $\mathrm{d}x/\mathrm{d}t = f(x,t) - \tfrac12 g(t)^2 s_\theta(x,t,y)$ has the same marginals and
# is deterministic; it is the ODE whose change of variables gives the exact likelihood used for
# classification in notebook 03. Each row is one class $y$. A briefly trained model gives rough
# samples; they still should differ by class.

# %%
generator_seed = int(train.get("seed", 0))
samples = {}
for sampler in ("sde", "ode"):
    res = sample_per_class(net, sde_obj, samples_per_class, sampler=sampler, seed=generator_seed,
                           steps=sampler_steps)
    assert res.images.shape == (net.num_classes * samples_per_class, net.in_channels, net.image_size, net.image_size)
    assert np.isfinite(res.images).all() and res.images.min() >= 0 and res.images.max() <= 1
    samples[sampler] = res
    print(f"{sampler}: {res.nfe} network evaluations per sample, {res.seconds:.1f} s")
class_names = config["data"]["class_names"]
for sampler, title in (("sde", "reverse SDE (Euler-Maruyama)"), ("ode", "probability-flow ODE (Euler)")):
    r = samples[sampler]
    fig = plots.image_grid(r.images, r.labels, class_names, per_class=samples_per_class,
                           size=0.9 if net.image_size <= 32 else 1.4, title=title)
    plots.save_figure(fig, figures_dir / f"02_samples_{sampler}")
    plt.show()

# %% [markdown]
# ## EMA versus raw weights
#
# The exponential moving average $\bar\theta \leftarrow \mu\bar\theta + (1-\mu)\theta$ smooths the
# noise of the last optimiser steps; evaluations use it. We compare both weight sets on test
# images with the fast Monte-Carlo likelihood bound (notebook 04 compares it with the ODE):
# bits/dim of the true class (lower is better) and the accuracy of the Bayes classifier.

# %%
test = load_dataset(dataset, root=data_root, **data_options)["test"]
subset = test.subset(np.arange(min(ema_images, len(test))))
levels = config["data"]["levels"]
rows = []
for weights in ("ema", "raw"):
    m, s, _ = load_run(run_dir, device, use_ema=weights == "ema")
    sc = score_images(m, s, subset.images, estimator="elbo", levels=levels, seed=0, progress=False,
                      n_draws=ema_draws, batch_size=50)
    assert np.isfinite(sc.bpd).all()
    rows.append({"weights": weights, "bits/dim (true class)": sc.bpd[np.arange(len(subset)), subset.labels].mean(),
                 "accuracy": float((sc.log_lik.argmax(1) == subset.labels).mean()), "seconds": sc.seconds})
ema_table = pd.DataFrame(rows).set_index("weights")
ema_table.to_csv(run_dir / "ema_vs_raw.csv")
assert ema_table["accuracy"].between(0, 1).all()
ema = ema_table.loc["ema"]
if min_ema_accuracy is not None:
    assert ema["accuracy"] >= min_ema_accuracy, f"EMA bound accuracy {ema['accuracy']:.3f} < {min_ema_accuracy}"
if ema_bpd_band is not None:
    lo, hi = ema_bpd_band
    assert lo <= ema["bits/dim (true class)"] <= hi, f"EMA bits/dim {ema['bits/dim (true class)']:.3f} outside {ema_bpd_band}"
ema_table.round(4)

# %% [markdown]
# The checkpoint (`checkpoint.pt`, a `state_dict`) and `config.json` are in the run folder;
# notebook 03 classifies with the EMA weights.
