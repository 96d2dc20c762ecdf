"""Denoising score matching for a class-conditional noise-prediction network.

Loss: E_{t, x_0, eps} ||eps_hat(alpha x_0 + sigma eps, t, y) - eps||^2 with t drawn by
``TimeSampler``: uniform (the paper's sigma^2 weighting) or importance-sampled so that the
objective is the likelihood-weighted (g^2) DSM loss, which bounds the NLL.

Training is resumable bit for bit on the same device: the checkpoint holds the weights, the
EMA weights, the optimiser state, the step and the random-number state of the data and
noise generator. Checkpoints are ``state_dict``s loaded with ``weights_only=True`` and a
JSON config next to them; files are written to a temporary name and renamed.
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .sde import SDE, TimeSampler, make_sde
from .nets import build_model

__all__ = ["TrainConfig", "train_score_model", "save_checkpoint", "load_checkpoint",
           "load_run", "atomic_torch_save", "atomic_write_text"]


@dataclass
class TrainConfig:
    steps: int = 2000            # optimiser steps
    batch_size: int = 128        # images per step
    lr: float = 2e-4             # AdamW learning rate after warm-up
    weight_decay: float = 0.0    # AdamW decoupled weight decay
    warmup: int = 200            # linear learning-rate warm-up, steps
    grad_clip: float = 1.0       # max global gradient norm (0 = off)
    ema_decay: float = 0.999     # EMA of the weights used for evaluation
    weighting: str = "sigma2"    # "sigma2" (the paper) or "likelihood" (g^2, importance-sampled t)
    eps: float = 1e-5            # smallest diffusion time
    hflip: bool = False          # random horizontal flips
    vflip: bool = False          # random vertical flips
    dequantize: bool = True      # uniform dequantization within the data's levels
    levels: int = 256            # intensity levels of the source data
    seed: int = 0                # seeds weights, batches and noise
    amp: bool = True             # bf16 autocast when training on CUDA
    checkpoint_every: int = 500  # steps between checkpoints (with a run_dir)
    log_every: int = 50          # steps between history rows

    @classmethod
    def from_dict(cls, d: dict | None) -> "TrainConfig":
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; known options: {sorted(known)}")
        return cls(**d)


def atomic_write_text(path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_torch_save(obj, path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _lr_at(step: int, cfg: TrainConfig) -> float:
    return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))


def _batch(images, labels, cfg, gen, device):
    """Draw a training batch (indices, flips, dequantization) from ``gen``; model space [-1, 1]."""
    n = images.shape[0]
    idx = torch.randint(0, n, (cfg.batch_size,), generator=gen)
    x = images[idx]
    if cfg.dequantize:
        u = torch.rand(x.shape, generator=gen)
        x = (torch.round(x * (cfg.levels - 1)) + u) / cfg.levels
    if cfg.hflip:
        flip = torch.rand(len(x), generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if cfg.vflip:
        flip = torch.rand(len(x), generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-2), x)
    return (2 * x - 1).to(device), labels[idx].to(device)


def dsm_loss(model, sde: SDE, sampler: TimeSampler, x0, y, gen) -> torch.Tensor:
    """Mean squared noise-prediction error per dimension (the DSM loss up to a constant)."""
    t, _ = sampler.sample(x0.shape[0], generator=gen, device=x0.device)
    noise = torch.randn(x0.shape, generator=gen).to(x0.device)
    eps_hat = model(sde.perturb(x0, t, noise), t, y)
    return (eps_hat.float() - noise).pow(2).mean()


@torch.no_grad()
def _ema_update(ema, model, decay):
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach(), 1 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def save_checkpoint(run_dir, model, ema, opt, step, gen, history, meta) -> None:
    """Write config.json and checkpoint.pt (atomic) into run_dir."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json", json.dumps(meta, indent=2))
    atomic_torch_save({"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                       "step": step, "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                       "history": json.dumps(history)}, run_dir / "checkpoint.pt")


def load_checkpoint(run_dir, map_location="cpu") -> tuple[dict, dict]:
    """(config, checkpoint) from run_dir; weights only, never unpickled code."""
    run_dir = Path(run_dir)
    cfg_path, ckpt_path = run_dir / "config.json", run_dir / "checkpoint.pt"
    for p in (cfg_path, ckpt_path):
        if not p.exists():
            raise FileNotFoundError(f"{p} not found: train a model into {run_dir} first (sgc train --run-dir ...)")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_path} is not valid JSON ({err}); the run folder is damaged") from None
    try:
        ckpt = torch.load(ckpt_path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated or foreign file
        raise ValueError(f"cannot read checkpoint {ckpt_path}: {err}. Delete it and retrain, "
                         f"or point --run-dir at a complete run") from None
    return config, ckpt


def load_run(run_dir, device="cpu", use_ema: bool = True):
    """(model, sde, config) of a trained run, the model in eval mode on ``device``."""
    config, ckpt = load_checkpoint(run_dir)
    model = build_model(config["model"])
    try:
        model.load_state_dict(ckpt["ema" if use_ema else "model"])
    except RuntimeError as err:
        raise ValueError(f"checkpoint in {run_dir} does not match its config.json model "
                         f"{config['model']}: {str(err).splitlines()[0]}") from None
    return model.to(device).eval(), make_sde(**config["sde"]), config


def train_score_model(model, sde: SDE, images, labels, config: TrainConfig | dict | None = None, *,
                      run_dir=None, resume: bool = False, device=None, progress: bool = True,
                      extra_meta: dict | None = None, stop_after: int | None = None):
    """Train ``model`` by DSM on images (N, C, H, W) in [0, 1] with int labels (N,).

    Returns (model, ema_model, history) where history is a list of dicts (step, loss, lr,
    seconds). With ``run_dir``, checkpoints go there every ``checkpoint_every`` steps and at
    the end; ``resume=True`` continues from run_dir/checkpoint.pt to the same result as an
    uninterrupted run. ``stop_after`` ends early after that many steps (for tests of resuming).
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    images = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    from .likelihood import validate_images
    validate_images(images, model, "training images")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
    if labels.min() < 0 or labels.max() >= model.num_classes:
        raise ValueError(f"labels must be in [0, {model.num_classes - 1}]; got [{int(labels.min())}, {int(labels.max())}]")
    missing = sorted(set(range(model.num_classes)) - set(labels.tolist()))
    if missing:
        raise ValueError(f"classes {missing} have no training images; a class-conditional model needs every class")

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = model.to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sampler = TimeSampler(sde, cfg.weighting, cfg.eps)
    meta = {"model": model.config, "sde": sde.config(), "train": asdict(cfg), **(extra_meta or {})}
    step, history = 0, []
    if resume and run_dir is not None and (Path(run_dir) / "checkpoint.pt").exists():
        saved, ckpt = load_checkpoint(run_dir)
        if saved.get("model") != meta["model"] or saved.get("sde") != meta["sde"]:
            raise ValueError(f"checkpoint in {run_dir} was trained with model={saved.get('model')}, "
                             f"sde={saved.get('sde')}, not the requested model={meta['model']}, sde={meta['sde']}; "
                             f"use another --run-dir or drop --resume")
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        step, history = int(ckpt["step"]), json.loads(ckpt["history"])
        gen.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])

    use_amp = cfg.amp and device.type == "cuda"
    last = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc="train", unit="step")
    model.train()
    t0, running = time.perf_counter(), []
    while step < last:
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        x0, y = _batch(images, labels, cfg, gen, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = dsm_loss(model, sde, sampler, x0, y, gen)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} at step {step}; lower lr "
                                     f"(now {cfg.lr}) or enable grad_clip")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        _ema_update(ema, model, min(cfg.ema_decay, (1 + step) / (10 + step)))
        running.append(loss.item())
        if step % cfg.log_every == 0 or step == cfg.steps:
            history.append({"step": step, "loss": float(np.mean(running)), "lr": _lr_at(step - 1, cfg),
                            "seconds": time.perf_counter() - t0})
            bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
            running = []
        bar.update(1)
        if run_dir is not None and (step % cfg.checkpoint_every == 0 or step == last):
            save_checkpoint(run_dir, model, ema, opt, step, gen, history, meta)
    bar.close()
    return model, ema, history
