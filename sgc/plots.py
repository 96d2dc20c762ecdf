"""Figures with one house theme, saved deterministically (byte-identical re-runs).

``set_theme()`` applies the seaborn theme every notebook uses; ``save_figure(fig, path)``
writes PNG and PDF without timestamps or software versions (matplotlib metadata
``{"Software": None, "CreationDate": None}``, a fixed ``svg.hashsalt``), so regenerating a
figure from the same numbers gives the same bytes. The plotting functions take plain arrays
or the tables of ``sgc.metrics`` / ``sgc.classify`` and return the matplotlib Figure;
they compute nothing expensive.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

__all__ = ["set_theme", "save_figure", "class_balance", "image_grid", "intensity_histograms",
           "step_panels", "training_curves", "bpd_heatmap", "bpd_distributions", "roc_pr_curves",
           "confusion_matrix", "reliability_diagram", "score_fields", "metric_lines", "PALETTE"]

PALETTE = "colorblind"
_META = {"png": {"Software": None}, "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
         "svg": {"Creator": None, "Date": None}}


def set_theme(dpi: int = 72) -> None:
    """The house theme: seaborn "ticks", colour-blind palette, small inline figures (``dpi``)."""
    sns.set_theme(context="notebook", style="ticks", palette=PALETTE, font_scale=0.9)
    matplotlib.rcParams.update({
        "figure.dpi": dpi, "savefig.dpi": 150, "savefig.bbox": "tight",
        "svg.hashsalt": "sgc", "pdf.fonttype": 42, "image.cmap": "gray",
        "axes.spines.top": False, "axes.spines.right": False,
    })


def save_figure(fig, path, formats: Sequence[str] = ("png", "pdf"), dpi: int = 150) -> list[Path]:
    """Write ``fig`` as ``path`` with each suffix in ``formats``; returns the written paths.

    Deterministic: no creation date or software version in the files, fixed hash salt;
    each file is written to a temporary name and renamed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    with matplotlib.rc_context({"svg.hashsalt": "sgc"}):
        for fmt in formats:
            target = path.with_suffix("." + fmt)
            tmp = target.with_name(target.stem + ".tmp." + fmt)
            fig.savefig(tmp, format=fmt, dpi=dpi, metadata=_META.get(fmt), bbox_inches="tight")
            os.replace(tmp, target)
            out.append(target)
    return out


def _grid(n: int, ncols: int):
    ncols = max(1, min(n, ncols))
    return int(np.ceil(n / ncols)), ncols


def class_balance(counts: dict, class_names: Sequence[str]):
    """Bar chart of images per class, one bar group per split. counts: {split: (K,) ints}."""
    import pandas as pd
    rows = [{"split": s, "class": str(class_names[k]), "images": int(c[k])}
            for s, c in counts.items() for k in range(len(class_names))]
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(class_names) * len(counts)), 3))
    sns.barplot(data=pd.DataFrame(rows), x="class", y="images", hue="split", ax=ax)
    ax.set_title("images per class")
    return fig


def image_grid(images: np.ndarray, labels=None, class_names=None, *, per_class: int | None = None,
               ncols: int = 10, title: str | None = None, size: float = 1.0):
    """Images (N, C, H, W) in [0, 1] in a grid; with ``per_class`` one row per class."""
    images = np.asarray(images)
    if per_class is not None:
        k = len(class_names)
        fig, axes = plt.subplots(k, per_class, figsize=(size * per_class, size * k), squeeze=False)
        for c in range(k):
            idx = np.flatnonzero(np.asarray(labels) == c)[:per_class]
            for j in range(per_class):
                ax = axes[c, j]
                ax.axis("off")
                if j < len(idx):
                    ax.imshow(_hwc(images[idx[j]]), vmin=0, vmax=1, cmap="gray")
            axes[c, 0].text(-0.1, 0.5, str(class_names[c]), transform=axes[c, 0].transAxes,
                            ha="right", va="center")
    else:
        nrows, ncols = _grid(len(images), ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
        for i, ax in enumerate(axes.flat):
            ax.axis("off")
            if i < len(images):
                ax.imshow(_hwc(images[i]), vmin=0, vmax=1, cmap="gray")
                if labels is not None:
                    name = class_names[labels[i]] if class_names is not None else labels[i]
                    ax.set_title(str(name), fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def _hwc(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    return img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)


def intensity_histograms(images: np.ndarray, labels, class_names, bins: int = 32):
    """Per-class histograms of pixel values in [0, 1] (density, step lines)."""
    fig, ax = plt.subplots(figsize=(5, 3))
    colors = sns.color_palette(PALETTE, len(class_names))
    edges = np.linspace(0, 1, bins + 1)
    for c, name in enumerate(class_names):
        values = np.asarray(images)[np.asarray(labels) == c].ravel()
        hist, _ = np.histogram(values, bins=edges, density=True)
        ax.stairs(hist, edges, label=str(name), color=colors[c])
    ax.set(xlabel="pixel value", ylabel="density", yscale="log", title="intensity histograms")
    ax.legend(fontsize=7, ncols=2)
    return fig


def step_panels(panels: dict, size: float = 2.4):
    """One image per panel, titled by its key: e.g. raw -> window -> crop -> CLAHE -> resized."""
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels), size * 1.2), squeeze=False)
    for ax, (name, img) in zip(axes[0], panels.items()):
        img = np.asarray(img)
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{name}\n{img.shape[0]}x{img.shape[1]}", fontsize=8)
        ax.axis("off")
    return fig


def training_curves(history: Sequence[dict], smooth: int = 5):
    """DSM loss (per dimension) and learning rate against optimiser step."""
    steps = np.array([h["step"] for h in history])
    loss = np.array([h["loss"] for h in history])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3))
    ax1.plot(steps, loss, alpha=0.4, label="logged")
    if len(loss) >= smooth > 1:
        kernel = np.ones(smooth) / smooth
        ax1.plot(steps[smooth - 1:], np.convolve(loss, kernel, mode="valid"), label=f"mean of {smooth}")
    ax1.set(xlabel="step", ylabel="DSM loss", yscale="log", title="training loss")
    ax1.legend()
    ax2.plot(steps, [h["lr"] for h in history])
    ax2.set(xlabel="step", ylabel="learning rate", title="schedule")
    fig.tight_layout()
    return fig


def bpd_heatmap(bpd: np.ndarray, labels, class_names):
    """Mean bits/dim of images of true class i (rows) under class model k (columns)."""
    bpd, labels = np.asarray(bpd), np.asarray(labels)
    k = len(class_names)
    table = np.array([bpd[labels == i].mean(0) if (labels == i).any() else np.full(k, np.nan)
                      for i in range(k)])
    fig, ax = plt.subplots(figsize=(0.45 * k + 2.5, 0.4 * k + 1.8))
    sns.heatmap(table, annot=k <= 10, fmt=".2f", cmap="mako_r", ax=ax, xticklabels=class_names,
                yticklabels=class_names, cbar_kws={"label": "bits/dim"}, annot_kws={"fontsize": 7})
    ax.set(xlabel="class model y", ylabel="true class", title="mean bits/dim  -log2 p(x|y) / D")
    return fig


def bpd_distributions(bpd: np.ndarray, labels, class_names):
    """Bits/dim under the true class's model vs the best wrong class's model, per true class."""
    import pandas as pd
    bpd, labels = np.asarray(bpd), np.asarray(labels)
    n = len(labels)
    other = bpd.copy()
    other[np.arange(n), labels] = np.inf
    rows = pd.DataFrame({"true class": [str(class_names[c]) for c in labels],
                         "true-class model": bpd[np.arange(n), labels], "best other model": other.min(1)})
    long = rows.melt(id_vars="true class", var_name="model", value_name="bits/dim")
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(class_names) + 2), 3))
    sns.boxplot(data=long, x="true class", y="bits/dim", hue="model", ax=ax, fliersize=1.5)
    ax.set_title("per-class bits/dim (lower = more likely)")
    return fig


def roc_pr_curves(y_true, proba, class_names, positive: int | None = None, extra: dict | None = None):
    """ROC and precision-recall curves: the positive class (K = 2) or one-vs-rest per class.

    extra: {name: proba} of other classifiers (e.g. a baseline), drawn dashed (K = 2) or as
    their macro one-vs-rest ROC.
    """
    from sklearn.metrics import auc, precision_recall_curve, roc_curve
    y, p = np.asarray(y_true), np.asarray(proba)
    k = p.shape[1]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.4))
    classes = [positive if positive is not None else k - 1] if k == 2 else range(k)
    colors = sns.color_palette(PALETTE, max(k, 3))
    for c in classes:
        yb = (y == c).astype(int)
        fpr, tpr, _ = roc_curve(yb, p[:, c])
        prec, rec, _ = precision_recall_curve(yb, p[:, c])
        ax1.plot(fpr, tpr, color=colors[c % len(colors)], lw=1.2,
                 label=f"{class_names[c]} (AUC {auc(fpr, tpr):.3f})")
        ax2.plot(rec, prec, color=colors[c % len(colors)], lw=1.2)
    for j, (name, q) in enumerate((extra or {}).items()):
        for c in classes[:1] if k == 2 else []:
            yb = (y == c).astype(int)
            fpr, tpr, _ = roc_curve(yb, np.asarray(q)[:, c])
            prec, rec, _ = precision_recall_curve(yb, np.asarray(q)[:, c])
            ax1.plot(fpr, tpr, "--", color="0.4", label=f"{name} (AUC {auc(fpr, tpr):.3f})")
            ax2.plot(rec, prec, "--", color="0.4")
    ax1.plot([0, 1], [0, 1], ":", color="0.6")
    ax1.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax1.legend(fontsize=7, ncols=2 if k > 4 else 1)
    ax2.set(xlabel="recall", ylabel="precision", title="precision-recall", ylim=(0, 1.02))
    fig.tight_layout()
    return fig


def confusion_matrix(y_true, y_pred, class_names, normalize: bool = True):
    """Confusion matrix (rows: true class; normalised per row when ``normalize``)."""
    from sklearn.metrics import confusion_matrix as cm
    k = len(class_names)
    m = cm(y_true, y_pred, labels=list(range(k))).astype(float)
    if normalize:
        m = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(0.45 * k + 2.5, 0.4 * k + 1.8))
    sns.heatmap(m, annot=True, fmt=".2f" if normalize else ".0f", cmap="Blues", vmin=0,
                vmax=1 if normalize else None, xticklabels=class_names, yticklabels=class_names,
                ax=ax, annot_kws={"fontsize": 7})
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix" + (" (row-normalised)" if normalize else ""))
    return fig


def reliability_diagram(table, ece: float | None = None):
    """Reliability diagram from ``sgc.metrics.reliability_curve``'s table."""
    t = table[table["count"] > 0]
    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    width = float((table["upper"] - table["lower"]).iloc[0])
    ax.bar(t["lower"], t["accuracy"], width=width, align="edge", edgecolor="k", lw=0.5, alpha=0.7,
           label="accuracy")
    ax.plot([0, 1], [0, 1], ":", color="0.5", label="perfect calibration")
    ax.set(xlabel="confidence (max posterior)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
           title="reliability" + (f" (ECE {ece:.3f})" if ece is not None else ""))
    ax.legend(fontsize=7, loc="upper left")
    return fig


def score_fields(panels: Sequence[dict], extent: tuple[float, float, float, float],
                 posterior: dict | None = None):
    """Figure 1: per class a density (filled contours) and its learned score field (arrows).

    panels: dicts with keys ``title``, ``density`` (G, G) on the grid spanning ``extent``
    (x0, x1, y0, y1), ``grid_xy`` (2, A, A) arrow positions, ``score`` (2, A, A) arrow vectors,
    optional ``points`` (M, 2) samples and ``color``. posterior (optional, a last panel):
    ``learned`` (G, G) p(y=1 | x) of the generative classifier, ``true`` (G, G) the exact one,
    ``points`` (M, 2) and ``labels`` (M,).
    """
    n = len(panels) + (posterior is not None)
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n, 3.3), squeeze=False)
    if posterior is not None:
        ax = axes[0, -1]
        im = ax.imshow(posterior["learned"], extent=extent, origin="lower", cmap="RdBu_r", vmin=0, vmax=1)
        ax.contour(posterior["learned"], levels=[0.5], extent=extent, origin="lower", colors="k")
        if posterior.get("true") is not None:
            ax.contour(posterior["true"], levels=[0.5], extent=extent, origin="lower", colors="k",
                       linestyles="--")
        if posterior.get("points") is not None:
            pts, lab = np.asarray(posterior["points"]), np.asarray(posterior["labels"])
            for c, color in ((0, "C0"), (1, "C3")):
                ax.scatter(pts[lab == c, 0], pts[lab == c, 1], s=2, color=color, alpha=0.4, lw=0)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="p(y=1 | x)")
        ax.set(xlim=extent[:2], ylim=extent[2:], aspect="equal", xticks=[], yticks=[],
               title=posterior.get("title", "p(y=1|x): model vs exact (dashed)"))
    for ax, panel in zip(axes[0], panels):
        dens = np.asarray(panel["density"])
        ax.contourf(dens, levels=12, extent=extent, origin="lower", cmap=panel.get("cmap", "Blues"))
        if panel.get("points") is not None:
            pts = np.asarray(panel["points"])
            ax.scatter(pts[:, 0], pts[:, 1], s=2, color="k", alpha=0.25, lw=0)
        gx, gy = panel["grid_xy"]
        u, v = panel["score"]
        norm = np.hypot(u, v)
        scale = np.maximum(norm, 1e-12) ** 0.5 / np.maximum(norm, 1e-12)  # compress long arrows
        ax.quiver(gx, gy, u * scale, v * scale, color=panel.get("color", "C3"), angles="xy", width=0.006)
        ax.set(xlim=extent[:2], ylim=extent[2:], aspect="equal", title=panel["title"], xticks=[], yticks=[])
    fig.tight_layout()
    return fig


def metric_lines(frame, x: str, y: Sequence[str], hue: str | None = None, logx: bool = False,
                 title: str | None = None):
    """One panel per column in ``y`` against ``x`` (ablation curves), optionally by ``hue``."""
    fig, axes = plt.subplots(1, len(y), figsize=(3.3 * len(y), 2.9), squeeze=False)
    for ax, col in zip(axes[0], y):
        sns.lineplot(data=frame, x=x, y=col, hue=hue, marker="o", ax=ax, errorbar=None,
                     legend=ax is axes[0, -1] and hue is not None)
        if logx:
            ax.set_xscale("log")
        ax.set_title(col)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
