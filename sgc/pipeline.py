"""The method end to end on a named dataset: train a run folder, then classify with it.

A run folder holds everything one model needs and produces:
``config.json`` + ``checkpoint.pt`` (the model), ``history.json`` (training curve),
``scores_<split>_<estimator>.csv`` (log p(x|y) per image x class) and
``metrics_<split>_<estimator>.json``; ``metrics.json`` is the latest evaluation.
The CLI, the demo and the notebooks all call these two functions.

Under torchrun both are distributed (``sgc.distributed``): training by DDP, evaluation by
chunks of ``batch_size`` images spread over the ranks, each chunk saved to
``parts/scores_<split>_<estimator>/chunk_<first index>.npz`` as soon as it is done (a rerun
skips finished chunks, whatever the number of processes). Only rank 0 writes the run files.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed
from .classify import ClassScores, log_prior, posterior, save_scores_csv, score_images
from .data import load_dataset
from .data.recipes import recipe_for
from .nets import build_model, count_parameters
from .sde import make_sde
from .runs import atomic_write_text, find_checkpoint, load_run, sha256_file
from .train import TrainConfig, train_score_model

__all__ = ["train_on_dataset", "evaluate_run", "DEMO_MODEL", "DEMO_TRAIN", "DEMO_ODE", "DEMO_ELBO"]

# The digits demo: a residual MLP (the conv UNet is too slow for a 2-core CPU at this budget)
# trained with the paper's sigma^2 weighting, about 5 minutes on 2 CPU cores. Measured here:
# the likelihood weighting (g^2, aimed at bits/dim) gave a worse ODE classifier (0.91-0.94 vs 0.98).
DEMO_MODEL = {"arch": "mlp", "hidden": 256, "blocks": 3, "expansion": 2, "emb_dim": 128}
DEMO_TRAIN = {"steps": 8000, "batch_size": 256, "lr": 1e-3, "warmup": 200, "lr_schedule": "constant",
              "weighting": "sigma2", "ema_decay": 0.999, "checkpoint_every": 1000}
DEMO_ODE = {"rtol": 1e-5, "atol": 1e-5, "method": "dopri5"}
DEMO_ELBO = {"n_draws": 64}


def _load(dataset, data_root, data_options):
    # rank 0 first, so that a cache it builds is complete before the other ranks read it
    if not distributed.is_main():
        distributed.barrier()
    splits = load_dataset(dataset, root=data_root, **(data_options or {}))
    if distributed.is_main():
        distributed.barrier()
    return splits


def train_on_dataset(dataset: str = "digits", run_dir="reports/runs/digits", *,
                     data_root=None,                 # folder with the dataset's files
                     data_options: dict | None = None,  # e.g. {"size": 32}
                     model: dict | None = None,      # network config: arch + keyword arguments
                     sde: dict | None = None,        # e.g. {"name": "vp", "beta_max": 20}
                     train: dict | None = None,      # TrainConfig fields
                     resume: bool = False, device=None, progress: bool = True):
    """Train the class-conditional score model of ``dataset`` into ``run_dir``.

    Returns (ema_model, history). ``model`` defaults to a UNet sized to the data. Under
    torchrun (WORLD_SIZE > 1) this trains with DDP; ``train["batch_size"]`` is the global batch.
    """
    distributed.init_from_env()
    splits = _load(dataset, data_root, data_options)
    tr = splits["train"]
    c, h, _ = tr.shape
    mcfg = {"arch": "unet", **(model or {})}
    mcfg.update(num_classes=len(tr.class_names), in_channels=c, image_size=h)
    tcfg = TrainConfig.from_dict({"levels": tr.levels, **(train or {})})
    torch.manual_seed(tcfg.seed)  # the initial weights follow the seed too
    net = build_model(mcfg)
    sde_obj = make_sde(**(sde or {"name": "vp"}))
    meta = {"data": {"dataset": dataset, "root": None if data_root is None else str(data_root),
                     "options": data_options or {}, "class_names": list(tr.class_names),
                     "levels": tr.levels, "shape": list(tr.shape), "n_train": len(tr),
                     "train_counts": np.bincount(tr.labels, minlength=len(tr.class_names)).tolist(),
                     "preprocessing": recipe_for(dataset, data_options or {}, tr.shape, tr.levels)},  # for sgc predict
            "parameters": count_parameters(net), "torch": torch.__version__, "python": platform.python_version()}
    start = time.perf_counter()
    _, ema, history = train_score_model(net, sde_obj, tr.images, tr.labels, tcfg, run_dir=run_dir,
                                        resume=resume, device=device, progress=progress, extra_meta=meta)
    run_dir = Path(run_dir)
    if distributed.is_main():
        atomic_write_text(run_dir / "history.json", json.dumps(history, indent=1))
        atomic_write_text(run_dir / "train_seconds.txt", f"{time.perf_counter() - start:.1f}\n")
    return ema, history


def _chunk_seed(seed: int, start: int) -> int:
    """The seed of the chunk starting at image ``start``: independent of rank and world size."""
    return int(np.random.SeedSequence([seed, start]).generate_state(1)[0])


def _save_npz(path: Path, **arrays) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def _score_sharded(model, sde, images, parts: Path, key: dict, *, estimator, batch_size, seed,
                   progress, **kwargs) -> ClassScores | None:
    """score_images over chunks of ``batch_size`` images, chunk i on rank i mod world size.

    Each finished chunk is saved to ``parts`` (atomic), and chunks already there are skipped,
    so a rank that died leaves its work resumable. ``key`` (model checksum, estimator, options,
    seeds, images) is stored in parts/key.json; parts of another key are discarded. Returns
    the scores of all images in input order on rank 0, None on the other ranks.
    """
    if distributed.is_main():
        key_file = parts / "key.json"
        if parts.exists() and (not key_file.exists() or json.loads(key_file.read_text()) != key):
            shutil.rmtree(parts)  # parts of another model, estimator or image set
        parts.mkdir(parents=True, exist_ok=True)
        atomic_write_text(key_file, json.dumps(key, indent=1))
    distributed.barrier()
    n = images.shape[0]
    mine = distributed.shard_chunks(n, batch_size)
    with tqdm(total=sum(len(r) for r in mine), disable=not (progress and distributed.is_main()),
              desc=f"classify ({estimator}, rank 0 of {distributed.world_size()})", unit="img") as bar:
        for r in mine:
            path = parts / f"chunk_{r.start:09d}.npz"
            if not path.exists():
                s = score_images(model, sde, images[r.start:r.stop], estimator=estimator, batch_size=len(r),
                                 seed=_chunk_seed(seed, r.start), progress=False, **kwargs)
                _save_npz(path, log_lik=s.log_lik, bpd=s.bpd, nfe=s.nfe, seconds=np.float64(s.seconds),
                          **{f"extra_{k}": np.asarray(v) for k, v in s.extra.items()})
            bar.update(len(r))
    distributed.barrier()
    if not distributed.is_main():
        return None
    chunks = []
    for start in range(0, n, batch_size):
        with np.load(parts / f"chunk_{start:09d}.npz") as z:
            chunks.append({k: z[k] for k in z.files})
    extra = {k[6:]: np.concatenate([c[k] for c in chunks]) for k in chunks[0] if k.startswith("extra_")}
    return ClassScores(*(np.concatenate([c[k] for c in chunks]) for k in ("log_lik", "bpd", "nfe")),
                       float(sum(c["seconds"] for c in chunks)), estimator, extra)


def evaluate_run(run_dir="reports/runs/digits", *, split: str = "test",
                 estimator: str = "ode",            # "ode" or "elbo"
                 estimator_options: dict | None = None,  # rtol, atol, method, n_probes / n_draws ...
                 prior: str = "uniform",            # "uniform" or "empirical" (training frequencies)
                 batch_size: int = 64, limit: int | None = None, seed: int = 0,
                 data_root=None, device=None, progress: bool = True) -> dict:
    """Classify one split with the run's EMA model; write scores CSV and metrics JSON.

    Returns the metrics dict (accuracy, balanced accuracy, macro one-vs-rest AUC, ...,
    mean bits/dim of the true class, mean NFE, seconds). Images are scored in chunks of
    ``batch_size``, each with its own seed derived from ``seed``, so the scores do not depend
    on the number of processes; under torchrun the chunks are shared among the ranks and
    every rank returns rank 0's metrics.
    """
    from .metrics import summary_metrics
    distributed.init_from_env()
    wall = time.perf_counter()
    run_dir = Path(run_dir)
    device = distributed.default_device(device)
    model, sde, config = load_run(run_dir, device)
    data = config["data"]
    splits = _load(data["dataset"], data_root if data_root is not None else data["root"], data["options"])
    if split not in splits:
        raise ValueError(f"dataset {data['dataset']!r} has splits {sorted(splits)}, not {split!r}")
    ds = splits[split]
    if limit is not None:
        ds = ds.subset(np.arange(min(limit, len(ds))))
    tag = f"{split}_{estimator}"
    dequantize = config["train"].get("dequantize", True)
    key = {"checkpoint_sha256": sha256_file(find_checkpoint(run_dir)), "split": split, "estimator": estimator,
           "options": json.loads(json.dumps(estimator_options or {}, default=str)), "batch_size": batch_size,
           "seed": seed, "levels": data["levels"], "dequantize": dequantize, "n": len(ds),
           "ids_sha256": hashlib.sha256("\n".join(map(str, ds.ids)).encode()).hexdigest()}
    scores = _score_sharded(model, sde, ds.images, run_dir / "parts" / f"scores_{tag}", key, estimator=estimator,
                            batch_size=batch_size, seed=seed, progress=progress, levels=data["levels"],
                            dequantize=dequantize, **(estimator_options or {}))
    if scores is None:  # not rank 0: rank 0 merges, writes and tells the metrics
        return distributed.broadcast_object(None)
    k = len(data["class_names"])
    counts = np.repeat(np.arange(k), data["train_counts"])
    post = posterior(scores.log_lik, log_prior(k, prior, counts))
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
        "seconds_wall": time.perf_counter() - wall, "world_size": distributed.world_size(),
        "device": str(device), "parameters": config.get("parameters"),
        "train_steps": config["train"]["steps"],
    })
    metrics["seconds"] = metrics["seconds_classify"] + (metrics["seconds_train"] or 0.0)
    text = json.dumps(metrics, indent=2)
    atomic_write_text(run_dir / f"metrics_{tag}.json", text)
    atomic_write_text(run_dir / "metrics.json", text)
    return distributed.broadcast_object(metrics)
