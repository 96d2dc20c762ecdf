"""The method end to end on a named dataset: train a run folder, then classify with it.

A run folder holds everything one model needs and produces:
``config.json`` + ``checkpoint.pt`` (the model), ``history.json`` (training curve),
``scores_<split>_<estimator>.csv`` (log p(x|y) per image x class) and
``metrics_<split>_<estimator>.json``; ``metrics.json`` is the latest evaluation.
The CLI, the demo and the notebooks all call these two functions.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from .classify import log_prior, posterior, save_scores_csv, score_images
from .data import load_dataset
from .nets import build_model, count_parameters
from .sde import make_sde
from .train import TrainConfig, atomic_write_text, load_run, train_score_model

__all__ = ["train_on_dataset", "evaluate_run", "DEMO_MODEL", "DEMO_TRAIN"]

# The digits demo: a residual MLP (the conv UNet is too slow for a 2-core CPU at this budget).
DEMO_MODEL = {"arch": "mlp", "hidden": 512, "blocks": 3, "emb_dim": 128}
DEMO_TRAIN = {"steps": 6000, "batch_size": 256, "lr": 1e-3, "warmup": 200, "weighting": "likelihood",
              "ema_decay": 0.999, "checkpoint_every": 1000}


def _load(dataset, data_root, data_options):
    return load_dataset(dataset, root=data_root, **(data_options or {}))


def train_on_dataset(dataset: str = "digits", run_dir="reports/runs/digits", *,
                     data_root=None,                 # folder with the dataset's files
                     data_options: dict | None = None,  # e.g. {"size": 32}
                     model: dict | None = None,      # network config: arch + keyword arguments
                     sde: dict | None = None,        # e.g. {"name": "vp", "beta_max": 20}
                     train: dict | None = None,      # TrainConfig fields
                     resume: bool = False, device=None, progress: bool = True):
    """Train the class-conditional score model of ``dataset`` into ``run_dir``.

    Returns (ema_model, history). ``model`` defaults to a UNet sized to the data.
    """
    splits = _load(dataset, data_root, data_options)
    tr = splits["train"]
    c, h, _ = tr.shape
    mcfg = {"arch": "unet", **(model or {})}
    mcfg.update(num_classes=len(tr.class_names), in_channels=c, image_size=h)
    net = build_model(mcfg)
    sde_obj = make_sde(**(sde or {"name": "vp"}))
    tcfg = TrainConfig.from_dict({"levels": tr.levels, **(train or {})})
    meta = {"data": {"dataset": dataset, "root": None if data_root is None else str(data_root),
                     "options": data_options or {}, "class_names": list(tr.class_names),
                     "levels": tr.levels, "shape": list(tr.shape), "n_train": len(tr),
                     "train_counts": np.bincount(tr.labels, minlength=len(tr.class_names)).tolist()},
            "parameters": count_parameters(net), "torch": torch.__version__, "python": platform.python_version()}
    start = time.perf_counter()
    _, ema, history = train_score_model(net, sde_obj, tr.images, tr.labels, tcfg, run_dir=run_dir,
                                        resume=resume, device=device, progress=progress, extra_meta=meta)
    run_dir = Path(run_dir)
    atomic_write_text(run_dir / "history.json", json.dumps(history, indent=1))
    atomic_write_text(run_dir / "train_seconds.txt", f"{time.perf_counter() - start:.1f}\n")
    return ema, history


def evaluate_run(run_dir="reports/runs/digits", *, split: str = "test",
                 estimator: str = "ode",            # "ode" or "elbo"
                 estimator_options: dict | None = None,  # rtol, atol, method, n_probes / n_draws ...
                 prior: str = "uniform",            # "uniform" or "empirical" (training frequencies)
                 batch_size: int = 64, limit: int | None = None, seed: int = 0,
                 data_root=None, device=None, progress: bool = True) -> dict:
    """Classify one split with the run's EMA model; write scores CSV and metrics JSON.

    Returns the metrics dict (accuracy, balanced accuracy, macro one-vs-rest AUC, ...,
    mean bits/dim of the true class, mean NFE, seconds).
    """
    from .metrics import summary_metrics
    run_dir = Path(run_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, sde, config = load_run(run_dir, device)
    data = config["data"]
    splits = _load(data["dataset"], data_root if data_root is not None else data["root"], data["options"])
    if split not in splits:
        raise ValueError(f"dataset {data['dataset']!r} has splits {sorted(splits)}, not {split!r}")
    ds = splits[split]
    if limit is not None:
        ds = ds.subset(np.arange(min(limit, len(ds))))
    scores = score_images(model, sde, ds.images, estimator=estimator, batch_size=batch_size,
                          levels=data["levels"], dequantize=config["train"].get("dequantize", True),
                          seed=seed, progress=progress, **(estimator_options or {}))
    k = len(data["class_names"])
    counts = np.repeat(np.arange(k), data["train_counts"])
    post = posterior(scores.log_lik, log_prior(k, prior, counts))
    tag = f"{split}_{estimator}"
    save_scores_csv(run_dir / f"scores_{tag}.csv", scores, ds.ids, ds.labels, data["class_names"], post)
    present = np.unique(ds.labels)
    if len(present) == k:
        metrics = summary_metrics(ds.labels, post, class_names=data["class_names"])
    else:  # e.g. --limit: AUCs need every class; report what is defined
        pred = post.argmax(1)
        recalls = [float(np.mean(pred[ds.labels == c] == c)) for c in present]
        metrics = {"n": len(ds), "accuracy": float(np.mean(pred == ds.labels)),
                   "balanced_accuracy": float(np.mean(recalls)), "auc_macro_ovr": None,
                   "note": f"classes {sorted(set(range(k)) - set(present.tolist()))} absent: no AUC"}
    train_seconds = run_dir / "train_seconds.txt"
    metrics.update({
        "dataset": data["dataset"], "split": split, "estimator": estimator,
        "estimator_options": estimator_options or {}, "prior": prior,
        "mean_bpd_true_class": float(scores.bpd[np.arange(len(ds)), ds.labels].mean()),
        "mean_nfe": float(scores.nfe.mean()),
        "seconds_classify": scores.seconds,
        "seconds_per_image": scores.seconds / len(ds),
        "seconds_train": float(train_seconds.read_text()) if train_seconds.exists() else None,
        "device": str(device), "parameters": config.get("parameters"),
        "train_steps": config["train"]["steps"],
    })
    metrics["seconds"] = metrics["seconds_classify"] + (metrics["seconds_train"] or 0.0)
    text = json.dumps(metrics, indent=2)
    atomic_write_text(run_dir / f"metrics_{tag}.json", text)
    atomic_write_text(run_dir / "metrics.json", text)
    return metrics
