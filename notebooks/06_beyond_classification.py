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
# # 06 · Beyond classification: your own files, out-of-distribution flags, evidence, counterfactuals
#
# **Purpose.** A generative classifier models $p(x\mid y)$, not only $p(y\mid x)$. This notebook
# turns that into tools for a reader of images: classify image *files* with the run's recorded
# preprocessing (`sgc predict`), flag inputs the model has no business judging from its own
# density $p(x)=\sum_y p(x\mid y)\,p(y)$ (with the input-complexity correction), show which pixels
# carry the evidence for one class over another, and ask the model what the image would look like
# as the other class (counterfactuals). Last, the model is exported (safetensors + model card) and
# loaded back.
#
# Defaults: the digits run folder of notebook 02 (a tiny model is trained if it is missing), the
# Monte-Carlo bound with few draws, so that the notebook runs in well under a minute on a CPU.
# `params/breastmnist.yaml` runs it on BreastMNIST with the mammography OOD sets.

# %% tags=["parameters"]
dataset = "digits"            # a name known to sgc.data.load_dataset
data_root = None              # folder with the dataset's files (None: digits are embedded)
data_options = {}             # loader keywords, e.g. {"size": 32}
run_dir = None                # shared run folder (None: <tmp>/sgc-notebooks/<dataset>)
figures_dir = None            # where figures are saved (None: <run_dir>/figures)
model = {"arch": "mlp", "hidden": 128, "blocks": 2, "emb_dim": 64}   # used only if no checkpoint matches
sde = {"name": "vp", "beta_min": 0.1, "beta_max": 20.0}
train = {"steps": 300, "batch_size": 128, "lr": 0.002, "warmup": 50, "weighting": "likelihood",
         "ema_decay": 0.99, "checkpoint_every": 300, "log_every": 25}
device = None                 # "cpu", "cuda" or None (cuda when available)
cpu_threads = 1               # torch threads on a CPU (tiny models run fastest on one; None: torch default)
score_estimator = "elbo"      # likelihood estimator of predictions and OOD scores: "elbo" or "ode"
score_options = {"n_draws": 16}   # its options, e.g. {"n_draws": 64} or {"rtol": 1e-3, "atol": 1e-3}
batch_size = 64               # images per chunk (one seed each, as sgc classify)
false_alarm = 0.05            # fraction of in-distribution images the OOD flag may raise
calibration_split = "val"     # OOD calibration split; without it: the first half of the test split
mini_mias_root = None         # folder with mini-MIAS .pgm films for an OOD set (None: the data-root rule; skipped if absent)
cbis_ddsm_root = None         # folder with CBIS-DDSM .dcm files for OOD sets (None: the data-root rule; skipped if absent)
ood_images = 32               # images per synthetic OOD set (constant, noise, blurred noise)
file_images = 6               # test images written to files and predicted with sgc predict
explain_images = 8            # images whose evidence maps are drawn
evidence_draws = 32           # paired draws per evidence map
deletion_images = 24          # images of the deletion / insertion curves
deletion_steps = 8            # points of those curves
t_stars = [0.2, 0.4, 0.6]     # noise levels of the counterfactuals
counterfactual_images = 24    # test images turned into counterfactuals
counterfactual_steps = 200    # reverse-SDE steps over the whole [eps, T]
check_results = True          # assert what a trained model must show (noise flagged, maps beat random); False for smoke runs

# %%
# %matplotlib inline
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import matplotlib.pyplot as plt

from sgc import ood, plots
from sgc.batch import ensure_run
from sgc.classify import ScoreClassifier, posterior
from sgc.counterfactual import counterfactual_figure, counterfactual_study
from sgc.data import DATASETS, load_dataset
from sgc.data.recipes import recipe_from_config
from sgc.data.roots import resolve_root
from sgc.explain import deletion_insertion, evidence_map, randomized_model, rank_similarity
from sgc.export import export_run
from sgc.ood_study import ood_figure, ood_sets, score_sets
from sgc.notebook import setup
from sgc.predict import calibrate_run, load_calibration, score_chunked

assert dataset in DATASETS, f"dataset must be one of {sorted(DATASETS)}, got {dataset!r}"
assert score_estimator in ("elbo", "ode") and isinstance(score_options, dict)
assert 0 < false_alarm < 0.5 and batch_size >= 1
assert min(file_images, explain_images, deletion_images, counterfactual_images) >= 2 and ood_images >= 4
assert evidence_draws >= 2 and deletion_steps >= 2 and counterfactual_steps >= 10
assert all(0 < t <= 1 for t in t_stars), "t_stars must lie in (0, 1]"
# checks the shared parameters, makes the run folder, picks device and threads, prints them and the environment
nb = setup(dataset, run_dir=run_dir, figures_dir=figures_dir, device=device, cpu_threads=cpu_threads,
           data_root=data_root, data_options=data_options, model=model, sde=sde, train=train)
run_dir, figures_dir, device = nb.run_dir, nb.figures_dir, nb.device

# %%
net, sde_obj, config, trained = ensure_run(run_dir, dataset, data_root=data_root, data_options=data_options,
                                           model=model, sde=sde, train=train, device=device)
print("trained a model now (no matching checkpoint)" if trained else "using the run folder's checkpoint",
      f"({config['train']['steps']} steps)")
splits = load_dataset(dataset, root=data_root, **data_options)
test = splits["test"]
class_names = config["data"]["class_names"]
levels = config["data"]["levels"]
recipe = recipe_from_config(config)
print("preprocessing recipe:", json.dumps(recipe))

# %% [markdown]
# ## Your own files: `sgc predict`
#
# The run folder records how its images were made (`data.preprocessing` in `config.json`, or a
# recipe derived from the loader options for older runs): `sgc predict --run-dir RUN FILE…` reads
# DICOM, PNG/JPEG/TIFF, PGM or NPY files, applies that recipe and scores every class exactly as
# `sgc classify` scores a split — the same chunks of `batch_size` images with the same seeds —
# so a file gives the posterior its image gets in `sgc classify`. Here a few test images are
# written as 8-bit PNGs at the source's side (a padded image without its padding) and predicted
# through the Python entry point `ScoreClassifier.predict_files`. Where the PNGs reproduce the model
# inputs exactly (8-bit sources such as MedMNIST and digits), the posteriors must be the same;
# a PNG of a preprocessed mammogram is not its DICOM, so there only the round trip is shown.

# %%
from sgc.data.recipes import prepare_file

files_dir = Path(tempfile.mkdtemp(prefix="sgc-06-files-"))
from PIL import Image
side = test.images.shape[-1]
lo = (side - recipe["side"]) // 2 if recipe["kind"] == "array" and recipe["side"] < side else 0   # zero padding
for i in range(file_images):
    k = np.round(test.images[i, 0, lo:side - lo, lo:side - lo] * (levels - 1))   # the source's grey levels
    Image.fromarray(np.round(k * 255 / (levels - 1)).astype(np.uint8)).save(files_dir / f"test_{i:03d}.png")
exact = all(np.array_equal(prepare_file(recipe, files_dir / f"test_{i:03d}.png")[0], test.images[i])
            for i in range(file_images))
print(f"the PNGs {'reproduce' if exact else 'do not reproduce'} the model inputs of their test images exactly")
clf = ScoreClassifier.from_run(run_dir, device=device, batch_size=batch_size, progress=False)
pred_files = clf.predict_files(files_dir, estimator=score_estimator, estimator_options=score_options)
cols = ["image_id", "predicted", *[f"p_{c}" for c in class_names[:3]], "ood_bpd", "nfe", "draws", "seconds"]
assert (pred_files["error"] == "").all() and len(pred_files) == file_images
direct, _ = score_chunked(net, sde_obj, test.images[:file_images], estimator=score_estimator,
                          estimator_options=score_options, batch_size=batch_size, levels=levels,
                          dequantize=config["train"].get("dequantize", True), progress=False)
assert not exact or np.allclose(posterior(direct.log_lik), pred_files[[f"p_{c}" for c in class_names]].to_numpy())
assert exact or recipe["kind"] != "array", "an 8-bit source must survive the PNG round trip"
pred_files[cols].round(4)

# %% [markdown]
# ## Out-of-distribution flags from the model's density
#
# $p(x)=\sum_y p(x\mid y)\,p(y)$ in bits/dim (the training frequencies as $p(y)$) is large for
# images like the training data. Raw likelihoods are known to mislead (Nalisnick et al. 2019):
# simple images — constant, smooth — can be *more* likely than the data. Serrà et al. (2020)
# subtract the image's complexity, the bits/dim of a lossless compressor (PNG here):
# $S(x)=\text{bpd}_\text{model}(x)-\text{bpd}_\text{PNG}(x)$. Both scores are calibrated on
# held-out in-distribution images: the threshold is their $1-$`false_alarm` quantile
# (`sgc calibrate` writes it to `ood_calibration.json`; `sgc predict` then flags).

# %%
limit = None
if calibration_split not in splits or len(splits[calibration_split]) < 10:
    calibration_split, limit = "test", len(test) // 2      # no validation split: calibrate on the first half
cal = calibrate_run(run_dir, split=calibration_split, limit=limit, estimator=score_estimator,
                    estimator_options=score_options, false_alarm=false_alarm, batch_size=batch_size,
                    data_root=data_root, device=device, progress=False)
assert load_calibration(run_dir)["checkpoint_sha256"] == cal["checkpoint_sha256"]
in_dist = test.images[limit or 0:]
print(f"calibrated on {calibration_split}" + (f"[:{limit}]" if limit else "") +
      f" ({cal['scores']['bpd']['n']} images); in-distribution evaluation on {len(in_dist)} other test images")
print({k: round(v["threshold"], 3) for k, v in cal["scores"].items()})

# %%
def found(name, given, pattern):
    """The folder of another source for an OOD set: as given, else by the data-root rule; None when it holds no files."""
    folder = Path(given) if given else resolve_root(name)
    return folder if folder is not None and folder.is_dir() and next(folder.rglob(pattern), None) else None


mini_mias_root, cbis_ddsm_root = found("mini_mias", mini_mias_root, "*.pgm"), found("cbis_ddsm", cbis_ddsm_root, "*.dcm")
print(f"mini-MIAS films: {mini_mias_root or 'not found, set skipped'}; CBIS-DDSM DICOMs: {cbis_ddsm_root or 'not found, set skipped'}")
sets = ood_sets(recipe, in_dist, mini_mias_root=mini_mias_root, cbis_ddsm_root=cbis_ddsm_root, n=ood_images,
                hflip_trained=bool(config["train"].get("hflip")))
scored = score_sets(net, sde_obj, {"test (in distribution)": in_dist, **sets}, cal, levels=levels,
                    dequantize=config["train"].get("dequantize", True), progress=False)
rows = []
for name, s in scored.items():
    row = {"set": name, "n": len(s["bpd"]), "mean bits/dim": s["bpd"].mean()}
    for score in ood.SCORES:
        m = ood.detection_metrics(scored["test (in distribution)"][score], s[score], cal["scores"][score]["threshold"])
        row[f"AUROC {score}"] = m["auroc"] if name != "test (in distribution)" else np.nan
        row[f"flagged {score}"] = m["detection_rate"]
    rows.append(row)
ood_table = pd.DataFrame(rows).set_index("set")
if check_results:
    assert ood_table.loc["uniform noise", "AUROC bpd"] > 0.9, "noise should be far less likely than the test images"
    assert ood_table.loc["test (in distribution)", "flagged bpd"] < 4 * false_alarm + 0.05
ood_table.round(3)

# %% [markdown]
# Histograms of both scores per set; the dashed line is the calibrated threshold. Look for sets
# left of the line under the raw bits/dim (judged *more* likely than the data) that the complexity
# correction moves to the right.

# %%
fig = ood_figure(scored, cal)
plots.save_figure(fig, figures_dir / "06_ood_histograms")
plt.show()

# %% [markdown]
# ## Class-evidence maps
#
# $E_{ab}(x)=\nabla_x\,[\log p(x\mid a)-\log p(x\mid b)]$, differentiated through the denoising
# bound with *paired* draws (both classes see the same times and noise, so everything but the two
# denoising errors cancels) and averaged over the draws; every draw sees a noised copy of $x$, which
# smooths the map as SmoothGrad does. Red: raising the pixel favours the predicted class $a$ over
# the runner-up $b$. Adebayo et al. (2018) ask of any saliency map that it depend on the model:
# the bottom row uses the same network with re-initialised weights.

# %%
x_exp = test.images[:explain_images]
post_exp = posterior(score_chunked(net, sde_obj, x_exp, estimator=score_estimator,
                                                     estimator_options=score_options, levels=levels,
                                                     dequantize=False, progress=False)[0].log_lik)
a, b = post_exp.argmax(1), np.argsort(post_exp, 1)[:, -2]
ev = evidence_map(net, sde_obj, x_exp, a, b, n_draws=evidence_draws, seed=0)
ev_again = evidence_map(net, sde_obj, x_exp, a, b, n_draws=evidence_draws, seed=1)
ev_random = evidence_map(randomized_model(net, seed=0), sde_obj, x_exp, a, b, n_draws=evidence_draws, seed=0)
similar_same = rank_similarity(ev.maps, ev_again.maps).mean()
similar_random = rank_similarity(ev.maps, ev_random.maps).mean()
print(f"rank correlation of |maps|: trained vs trained (other draws) {similar_same:.2f}, "
      f"trained vs randomised weights {similar_random:.2f}")
assert not check_results or similar_same > similar_random, "the maps must depend on the trained weights (Adebayo et al. 2018)"
fig, axes = plt.subplots(3, explain_images, figsize=(1.4 * explain_images, 4.4), squeeze=False)
for i in range(explain_images):
    lim = np.abs(ev.maps[i]).max()
    axes[0, i].imshow(x_exp[i, 0], cmap="gray", vmin=0, vmax=1)
    axes[0, i].set_title(f"{class_names[a[i]]} vs {class_names[b[i]]}", fontsize=7)
    axes[1, i].imshow(ev.maps[i, 0], cmap="RdBu_r", vmin=-lim, vmax=lim)
    axes[2, i].imshow(ev_random.maps[i, 0], cmap="RdBu_r", vmin=-np.abs(ev_random.maps[i]).max(),
                      vmax=np.abs(ev_random.maps[i]).max())
for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
axes[1, 0].set_ylabel("evidence", fontsize=8)
axes[2, 0].set_ylabel("random weights", fontsize=8)
plots.save_figure(fig, figures_dir / "06_evidence_maps")
plt.show()

# %% [markdown]
# **Deletion and insertion** (Petsiuk et al. 2018): remove the pixels the map ranks first (set them
# to the background, 0) and watch $p(a\mid x)$ fall; or insert them into a blank image and watch it
# rise. A faithful map beats a random pixel order on both curves.

# %%
x_del = test.images[:deletion_images]
p_del = posterior(score_chunked(net, sde_obj, x_del, estimator=score_estimator, estimator_options=score_options,
                                levels=levels, dequantize=False, progress=False)[0].log_lik)
a_del, b_del = p_del.argmax(1), np.argsort(p_del, 1)[:, -2]
maps_del = evidence_map(net, sde_obj, x_del, a_del, b_del, n_draws=evidence_draws).maps.reshape(len(x_del), -1)


def prob_of_a(images):
    s, _ = score_chunked(net, sde_obj, images, estimator=score_estimator, estimator_options=score_options,
                         levels=levels, dequantize=False, progress=False)
    return posterior(s.log_lik)[np.arange(len(images)), a_del]


rng = np.random.default_rng(0)
curves = {"evidence map": deletion_insertion(prob_of_a, x_del, np.argsort(-maps_del, 1), steps=deletion_steps),
          "random order": deletion_insertion(prob_of_a, x_del, np.stack([rng.permutation(maps_del.shape[1])
                                                                         for _ in x_del]), steps=deletion_steps)}
fig, axes = plt.subplots(1, 2, figsize=(8, 3))
areas = {}
for name, c in curves.items():
    for ax, kind in zip(axes, ("deletion", "insertion")):
        mean = c[kind].mean(0)
        ax.plot(c["fractions"], mean, marker="o", label=name)
        areas[(name, kind)] = float(np.sum((mean[1:] + mean[:-1]) / 2 * np.diff(c["fractions"])))  # trapezoids
        ax.set_xlabel(f"fraction of pixels {'removed' if kind == 'deletion' else 'inserted'}")
        ax.set_ylabel("p(a | x)")
        ax.set_title(kind)
axes[0].legend(frameon=False)
plots.save_figure(fig, figures_dir / "06_deletion_insertion")
plt.show()
print({f"{k[0]}, {k[1]} AUC": round(v, 3) for k, v in areas.items()})
assert not check_results or areas[("evidence map", "deletion")] < areas[("random order", "deletion")]

# %% [markdown]
# ## Counterfactuals
#
# SDEdit with the class-conditional score: noise the image to $t^*$ with the forward SDE,
# $z_{t^*}=\alpha(t^*)(2x-1)+\sigma(t^*)\,\epsilon$, then run the reverse SDE from $t^*$ conditioned on the
# runner-up class and denoise. Small $t^*$ keeps the image; large $t^*$ forgets it. The table
# reports how often the classifier's decision flips and how far the image moved (L2 in intensity
# units), against the same procedure towards the image's own predicted class (the control: what
# noising and denoising alone change).

# %%
x_cf = test.images[:counterfactual_images]


def classify(images):
    s, _ = score_chunked(net, sde_obj, images, estimator=score_estimator, estimator_options=score_options,
                         levels=levels, dequantize=config["train"].get("dequantize", True), progress=False)
    return posterior(s.log_lik)


cf_table, cf_results = counterfactual_study(net, sde_obj, x_cf, classify, t_stars=tuple(t_stars),
                                            steps=counterfactual_steps)
assert cf_table["flip_rate"].between(0, 1).all() and (cf_table["l2_mean"] > 0).all()
cf_table.drop(columns=["sampler"]).round(3)

# %%
fig = counterfactual_figure(x_cf, [cf_results[(t, "target")] for t in t_stars], k=6)
plots.save_figure(fig, figures_dir / "06_counterfactuals")
plt.show()

# %% [markdown]
# ## Export and load
#
# `sgc export --run-dir RUN --out DIR` writes the EMA weights as safetensors (tensors only: loading
# never unpickles), the config, the preprocessing recipe, the OOD calibration, the metrics and a
# model card; `ScoreClassifier.load(DIR)` and `sgc predict --export DIR` use it. The loaded model
# predicts exactly what the run folder predicts.

# %%
export_dir = Path(tempfile.mkdtemp(prefix="sgc-06-export-")) / "model"
export_run(run_dir, export_dir, n_boot=100)
loaded = ScoreClassifier.load(export_dir, device=device, batch_size=batch_size, progress=False)
from_export = loaded.predict_files(files_dir, estimator=score_estimator, estimator_options=score_options)
from_run = clf.predict_files(files_dir, estimator=score_estimator, estimator_options=score_options)  # now calibrated
pd.testing.assert_frame_equal(from_export.drop(columns=["seconds"]), from_run.drop(columns=["seconds"]))
from_export[["image_id", "predicted", "ood_bpd", "ood_complexity", "ood_flag"]]

# %%
print(sorted(p.name for p in export_dir.iterdir()))
print((export_dir / "MODEL_CARD.md").read_text()[:1500])
