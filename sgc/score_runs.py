"""The score model of an experiment row: a finished run folder reused (after checking that it was
trained as asked) or a model trained there, and its per-draw evidence cached in the run folder.

``sgc.experiments`` and ``benchmarks/weighting_report.py`` read the same cached evidence, keyed by
the checkpoint's sha256, the estimator options, the seed and the image ids, so a report never
recomputes the draws an experiment already made.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

__all__ = ["trained_score_model", "cached_evidence"]

# TrainConfig fields that do not change the weights (compile: the step engine, eager or CUDA graph, gives the
# same weights up to floating-point order; run folders trained before it existed do not record it)
_NOT_TRAINING = ("checkpoint_every", "log_every", "compile")


def trained_score_model(sub, mcfg, tcfg, sde, run_dir, *, reuse, device, progress):
    """(EMA model, training seconds): a finished run folder when ``reuse`` (checked against the
    requested model, SDE, training options and training images), else trained (resumed) there."""
    from .nets import build_model
    from .runs import find_checkpoint, load_checkpoint, load_run, same_model
    from .train import train_score_model
    torch.manual_seed(tcfg.seed)  # the initial weights follow the seed
    net = build_model(mcfg)
    if reuse and run_dir is not None and find_checkpoint(run_dir) is not None:
        saved, ckpt = load_checkpoint(run_dir)
        want = {k: v for k, v in asdict(tcfg).items() if k not in _NOT_TRAINING}
        have = {k: v for k, v in saved.get("train", {}).items() if k not in _NOT_TRAINING}
        data = saved.get("data", {})
        counts = np.bincount(sub.labels, minlength=len(sub.class_names)).tolist()
        problems = [what for what, ok in (
            ("model", same_model(saved.get("model"), net.config)), ("sde", saved.get("sde") == sde.config()),
            ("train", have == want), ("n_train", data.get("n_train") == len(sub)),
            ("train_counts", data.get("train_counts", counts) == counts)) if not ok]
        if problems:
            raise ValueError(f"{run_dir} holds a model trained differently ({', '.join(problems)}: "
                             f"{ {k: saved.get(k) for k in ('model', 'sde', 'train')} }); use another score run "
                             f"folder or the same options")
        if int(ckpt["step"]) >= tcfg.steps:
            model, _, _ = load_run(run_dir, device or "cpu")
            seconds = Path(run_dir) / "train_seconds.txt"
            return model, float(seconds.read_text()) if seconds.exists() else float("nan")
    start = time.perf_counter()
    _, ema, _ = train_score_model(net, sde, sub.images, sub.labels, tcfg, run_dir=run_dir, device=device,
                                  progress=progress, resume=reuse, extra_meta={"data": {
                                      "n_train": len(sub), "train_counts": np.bincount(
                                          sub.labels, minlength=len(sub.class_names)).tolist()}})
    return ema, time.perf_counter() - start


def cached_evidence(model, sde, ds, run_dir, opts, *, seed, levels, dequantize, progress):
    """Per-draw evidence of split ``ds``, cached in the run folder (keyed by checkpoint, options, images)."""
    from .evidence import compute_evidence, evidence_key, load_evidence, save_evidence
    from .runs import find_checkpoint, sha256_file
    opts = dict(opts)
    bs = int(opts.pop("batch_size", 64))
    path, key = None, None
    ckpt = find_checkpoint(run_dir) if run_dir is not None else None
    if ckpt is not None:
        key = evidence_key(checkpoint=sha256_file(ckpt), options=opts, batch_size=bs, seed=seed, levels=levels,
                           dequantize=dequantize, ids=list(map(str, ds.ids)))
        path = Path(run_dir) / f"evidence_{key}.npz"
        if path.exists():
            ev = load_evidence(path, key)
            if ev is not None:
                return ev
    ev = compute_evidence(model, sde, ds.images, ids=ds.ids, labels=ds.labels, batch_size=bs, levels=levels,
                          dequantize=dequantize, seed=seed, progress=progress, **opts)
    if path is not None:
        save_evidence(path, ev, key)
    return ev
