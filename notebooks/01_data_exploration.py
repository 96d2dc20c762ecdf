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
# # 01 · Data exploration
#
# **Purpose.** Before training a score model, look at what it will model: how many images each
# class has (the class prior $p(y)$ of Bayes' rule depends on it), what typical images look like,
# how intensities are distributed, and — for mammograms — what each preprocessing step does to a
# real image (raw DICOM → VOI window → breast crop → resize → CLAHE).
#
# The defaults run in seconds on scikit-learn's embedded 8×8 digits. `sgc batch --dataset NAME`
# runs this notebook with `notebooks/params/NAME.yaml`.

# %% tags=["parameters"]
dataset = "digits"            # a name known to sgc.data.load_dataset
data_root = None              # the dataset's folder; None: $SGC_DATA/<folder>, else a default (digits: embedded)
data_options = {}             # loader keywords, e.g. {"size": 32}
run_dir = None                # shared run folder (None: <tmp>/sgc-notebooks/<dataset>)
figures_dir = None            # where figures are saved (None: <run_dir>/figures)
examples_per_class = 8        # images shown per class
preprocess_example = "auto"   # DICOM/PGM image to show the preprocessing on; "auto": found by the data-root rule, else pydicom's test CT; None: skip
preprocess_size = 256         # output side of the preprocessing demonstration, pixels

# %%
# %matplotlib inline
from pathlib import Path

import numpy as np
import pandas as pd
import matplotlib.pyplot as plt

from sgc import plots
from sgc.data import load_dataset
from sgc.notebook import example_image, setup

# checks dataset and loader options, makes the run folder, prints it, the data source and the environment
nb = setup(dataset, run_dir=run_dir, figures_dir=figures_dir, data_root=data_root, data_options=data_options)
run_dir, figures_dir = nb.run_dir, nb.figures_dir
assert isinstance(examples_per_class, int) and 1 <= examples_per_class <= 32
assert preprocess_example is None or isinstance(preprocess_example, str)
assert isinstance(preprocess_size, int) and preprocess_size >= 8

# %% [markdown]
# ## The splits
#
# Every loader returns `{"train", "val"?, "test"}` ImageSets: float32 images $(N, C, H, W)$ in
# $[0, 1]$, integer labels, class names and the number of intensity **levels** of the source
# (17 for digits, 256 for 8-bit data, up to 4096 for 12-bit mammograms). The levels matter for
# likelihoods: a density on $[0,1]^D$ becomes a code length of the discrete data in bits/dim,
#
# $$\mathrm{bpd}(x) = -\frac{\log p(x)}{D \ln 2} + \log_2(\text{levels}).$$

# %%
splits = load_dataset(dataset, root=data_root, **data_options)
train = splits["train"]
class_names = list(train.class_names)
k = len(class_names)
rows = []
for name, s in splits.items():
    assert s.images.ndim == 4 and s.images.shape[1:] == train.images.shape[1:], f"{name}: shape {s.images.shape}"
    assert np.isfinite(s.images).all() and s.images.min() >= 0 and s.images.max() <= 1, f"{name}: values outside [0, 1]"
    assert s.labels.min() >= 0 and s.labels.max() < k
    rows.append({"split": name, "images": len(s), "shape (C,H,W)": str(s.shape), "levels": s.levels,
                 **{f"class {c}": int((s.labels == i).sum()) for i, c in enumerate(class_names)}})
summary = pd.DataFrame(rows).set_index("split")
if dataset == "digits" and not data_options:  # the embedded digits: a fixed split with known counts
    assert summary["images"].to_dict() == {"train": 1437, "test": 360}, summary["images"].to_dict()
    assert summary.loc["test", [f"class {c}" for c in class_names]].tolist() == [36, 36, 35, 37, 36, 37, 36, 36, 35, 36]
    assert (summary["levels"] == 17).all() and (summary["shape (C,H,W)"] == "(1, 8, 8)").all()
summary

# %% [markdown]
# ## Class balance
#
# The Bayes classifier is $p(y \mid x) \propto p(x \mid y)\, p(y)$. With a uniform prior it
# compares likelihoods only; with the empirical prior (training frequencies) a rare class — a
# malignant finding in screening data, about 5 % in VinDr-Mammo — needs a much larger
# likelihood to win. Notebook 04 compares both.

# %%
counts = {name: np.bincount(s.labels, minlength=k) for name, s in splits.items()}
fig = plots.class_balance(counts, class_names)
plots.save_figure(fig, figures_dir / "01_class_balance")
plt.show()
prior = counts["train"] / counts["train"].sum()
print("empirical prior p(y):", dict(zip(class_names, prior.round(3))))
assert abs(prior.sum() - 1) < 1e-9 and (prior > 0).all(), "every class needs training images"

# %% [markdown]
# ## Examples per class

# %%
fig = plots.image_grid(train.images, train.labels, class_names, per_class=examples_per_class,
                       size=0.9 if train.shape[1] <= 32 else 1.4)
plots.save_figure(fig, figures_dir / "01_examples")
plt.show()

# %% [markdown]
# ## Intensity histograms and mean images
#
# Differences between the classes' intensity distributions are the simplest thing a
# class-conditional density can pick up. Mean images show where each class puts its mass.

# %%
fig = plots.intensity_histograms(train.images, train.labels, class_names)
plots.save_figure(fig, figures_dir / "01_intensity_histograms")
plt.show()
means = np.stack([train.images[train.labels == c].mean(0) for c in range(k)])
assert means.shape == (k, *train.shape) and np.isfinite(means).all()
fig = plots.image_grid(means, np.arange(k), class_names, ncols=min(k, 10), title="mean image per class")
plots.save_figure(fig, figures_dir / "01_mean_images")
plt.show()

# %% [markdown]
# ## Preprocessing a real mammogram, step by step
#
# Mammography loaders turn each source image into the cached model input with
# `sgc.data.preprocess.preprocess`: decode the DICOM (modality LUT, then the VOI window the
# scanner recorded, MONOCHROME1 inverted so that dense tissue is bright), find the breast
# (threshold + largest component), crop to its bounding box, put the chest wall on the left,
# resize keeping the aspect ratio, and equalise contrast locally with CLAHE (the paper's
# choice). Here the steps run one by one on a real image, whatever dataset is selected above: a
# CBIS-DDSM DICOM or a mini-MIAS PGM when the data-root rule finds one (`$SGC_DATA/cbis-ddsm`, ...),
# else the small CT slice that ships with pydicom — not a mammogram, but a real 16-bit DICOM, so the
# decoding, windowing and cropping steps show what they do on every installation.

# %%
from sgc.data import preprocess as pp

example, source = example_image(preprocess_example)
print("example image:", source)

# %%
if example is None:
    print("no image to preprocess (set preprocess_example to a DICOM or PGM path); skipping this section")
else:
    if example.suffix.lower() == ".pgm":
        from sgc.data.mini_mias import read_pgm
        values, maxval = read_pgm(example)
        raw = values.astype(np.float32) / maxval
        windowed, how = raw, "8-bit PGM (no VOI window)"
    else:
        from sgc.data.dicom import read_dicom
        raw, _ = read_dicom(example, use_window=False, fallback="bits")
        windowed, info = read_dicom(example, use_window=True, fallback="percentile")
        how = f"{info.photometric}, {info.bits_stored} bits, intensity from {info.intensity}"
    stride = max(1, max(raw.shape) // 1024)  # display only
    mask = pp.breast_mask(windowed)
    r0, c0, r1, c1 = pp.bounding_box(mask)
    crop = windowed[r0:r1, c0:c1]
    side = pp.detect_laterality(mask)
    if side == "R":
        crop = crop[:, ::-1]
    resized = pp.resize_keep_aspect(crop, preprocess_size)
    equalised = pp.clahe(resized)
    final, facts = pp.preprocess(windowed, settings=pp.PreprocessSettings(size=preprocess_size, clahe=True))
    print(how, "| breast side:", side, "| preprocess():", facts)
    for name, img in {"crop": crop, "resized": resized, "clahe": equalised, "final": final}.items():
        assert np.isfinite(img).all() and img.min() >= 0 and img.max() <= 1, name
    assert final.shape == (preprocess_size, preprocess_size)
    fig = plots.step_panels({"raw (stored bits)": raw[::stride, ::stride], "VOI window": windowed[::stride, ::stride],
                             "breast crop": crop[::stride, ::stride], "resized": resized, "CLAHE": equalised,
                             "preprocess() output": final})
    plots.save_figure(fig, figures_dir / "01_preprocessing_steps")
    plt.show()

# %% [markdown]
# ## What next
#
# Notebook 02 trains one class-conditional score model on the training split into the same
# run folder; notebook 03 classifies the test split with it.
