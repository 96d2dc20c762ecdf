"""Denoising score matching for a class-conditional noise-prediction network.

Loss: E_{t, x_0, eps} ||eps_hat(alpha x_0 + sigma eps, t, y) - eps||^2 with t drawn by
``TimeSampler``: uniform (the paper's sigma^2 weighting) or importance-sampled so that the
objective is the likelihood-weighted (g^2) DSM loss, which bounds the NLL.

Training is resumable bit for bit on the same device: the checkpoint holds the weights, the
EMA weights, the optimiser state, the step and the random-number state of the data and
noise generator (``_train_state``). How checkpoints are written, verified and read is the
run folder's business (``sgc.runs``).

Multi-process (torchrun): DistributedDataParallel over ``sgc.distributed``; every rank draws
the global batch from the same generator and trains on its slice, so N processes reproduce
one. SIGTERM / SIGINT write a checkpoint at the end of the current step and stop.
"""
from __future__ import annotations

import copy
import json
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed
from .errors import RunFolderError
from .runs import (CHECKPOINT, PREVIOUS, _say, find_checkpoint, load_checkpoint, run_provenance, same_model,
                   save_checkpoint)
from .sde import SDE, TimeSampler

__all__ = ["TrainConfig", "train_score_model", "TrainingInterrupted"]


@dataclass
class TrainConfig:
    steps: int = 2000            # optimiser steps
    batch_size: int = 128        # images per step
    lr: float = 2e-4             # AdamW learning rate after warm-up
    weight_decay: float = 0.0    # AdamW decoupled weight decay
    warmup: int = 200            # linear learning-rate warm-up, steps
    lr_schedule: str = "constant"  # after warm-up: "constant" or "cosine" (decays to 0 at `steps`)
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

    def __post_init__(self):
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")

    @classmethod
    def from_dict(cls, d: dict | None) -> "TrainConfig":
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; known options: {sorted(known)}")
        return cls(**d)


def _lr_at(step: int, cfg: TrainConfig) -> float:
    warm = min(1.0, (step + 1) / max(1, cfg.warmup))
    if cfg.lr_schedule == "cosine" and step >= cfg.warmup:
        progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * warm


def _draw(images, labels, cfg: TrainConfig, sampler: TimeSampler, gen, part: slice):
    """One step's random draws for the GLOBAL batch from ``gen``, cut to this rank's ``part``.

    Every rank draws the same global batch (indices, dequantization, flips, t, noise, in that
    order), so N processes with the same global batch see exactly the batch of one process.
    Returns CPU tensors (x0 in model space [-1, 1], y, t, noise) for the rows of ``part``.
    """
    b = cfg.batch_size
    shape = (b, *images.shape[1:])
    idx = torch.randint(0, images.shape[0], (b,), generator=gen)
    u = torch.rand(shape, generator=gen) if cfg.dequantize else None
    hflip = torch.rand(b, generator=gen) < 0.5 if cfg.hflip else None
    vflip = torch.rand(b, generator=gen) < 0.5 if cfg.vflip else None
    t, _ = sampler.sample(b, generator=gen)
    noise = torch.randn(shape, generator=gen)
    idx = idx[part]
    x = images[idx]
    if u is not None:
        x = (torch.round(x * (cfg.levels - 1)) + u[part]) / cfg.levels
    if hflip is not None:
        x = torch.where(hflip[part][:, None, None, None], x.flip(-1), x)
    if vflip is not None:
        x = torch.where(vflip[part][:, None, None, None], x.flip(-2), x)
    return 2 * x - 1, labels[idx], t[part], noise[part]


def dsm_loss(model, sde: SDE, sampler: TimeSampler, x0, y, gen) -> torch.Tensor:
    """Mean squared noise-prediction error per dimension (the DSM loss up to a constant)."""
    t, _ = sampler.sample(x0.shape[0], generator=gen, device=x0.device)
    noise = torch.randn(x0.shape, generator=gen).to(x0.device)
    eps_hat = model(sde.perturb(x0, t, noise), t, y)
    return (eps_hat.float() - noise).pow(2).mean()


def _train_state(model, ema, opt, step, gen, history, running) -> dict:
    """What a checkpoint holds to resume bit for bit: weights, EMA, optimiser, step, RNG states."""
    return {"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
            "step": step, "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
            "history": json.dumps(history), "running": json.dumps(list(running or []))}


@torch.no_grad()
def _ema_update(ema, model, decay):
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach(), 1 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGINT stopped training; a checkpoint was written (rerun with resume)."""

    def __init__(self, step: int, signum: int, run_dir):
        self.step, self.signum, self.run_dir = step, signum, run_dir
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint written to "
                         f"{run_dir}; continue with --resume")


class _StopOnSignal:
    """Turns SIGTERM/SIGINT into a flag checked once per step (a second SIGINT interrupts at once)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum, self._old = None, {}

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        if self.enabled:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train_score_model(model, sde: SDE, images, labels, config: TrainConfig | dict | None = None, *,
                      run_dir=None, resume: bool = False, device=None, progress: bool = True,
                      extra_meta: dict | None = None, stop_after: int | None = None):
    """Train ``model`` by DSM on images (N, C, H, W) in [0, 1] with int labels (N,).

    Returns (model, ema_model, history) where history is a list of dicts (step, loss, lr,
    seconds). With ``run_dir``, checkpoints go there every ``checkpoint_every`` steps and at
    the end; ``resume=True`` continues from the newest complete checkpoint to the same result
    as an uninterrupted run. ``stop_after`` ends early after that many steps (for tests).

    Under torch.distributed (``sgc.distributed.init_from_env``, e.g. started by torchrun) the
    model is wrapped in DistributedDataParallel and each of the N ranks trains on its
    batch_size / N rows of the same global batch, so the result equals one process with the
    same batch_size up to floating-point summation order. Rank 0 writes the checkpoints.
    With a run_dir, SIGTERM or SIGINT finish the current step, write a checkpoint and raise
    ``TrainingInterrupted``.
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    device = distributed.default_device(device)
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
    rank, world = distributed.rank(), distributed.world_size()
    part = distributed.batch_slice(cfg.batch_size, rank, world)
    main = rank == 0

    torch.manual_seed(cfg.seed + rank)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = model.to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sampler = TimeSampler(sde, cfg.weighting, cfg.eps)
    meta = {"model": model.config, "sde": sde.config(), "train": asdict(cfg), **(extra_meta or {}),
            "provenance": run_provenance(cfg.seed)}
    step, history, running = 0, [], []
    if resume and run_dir is not None and find_checkpoint(run_dir) is not None:
        saved, ckpt = load_checkpoint(run_dir)
        if not same_model(saved.get("model"), meta["model"]) or saved.get("sde") != meta["sde"]:
            raise RunFolderError(f"checkpoint in {run_dir} was trained with model={saved.get('model')}, "
                                 f"sde={saved.get('sde')}, not the requested model={meta['model']}, "
                                 f"sde={meta['sde']}. Use another --run-dir, or --overwrite instead of --resume")
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        step, history = int(ckpt["step"]), json.loads(ckpt["history"])
        running = json.loads(ckpt.get("running", "[]"))
        gen.set_state(ckpt["generator"])
        if rank == 0:
            torch.set_rng_state(ckpt["torch_rng"])
        if main:
            _say(f"resuming {run_dir} from step {step}")
    elif resume and run_dir is not None and any((Path(run_dir) / f).exists() for f in (CHECKPOINT, PREVIOUS)):
        raise RunFolderError(f"--resume: no complete checkpoint in {run_dir} (every checkpoint fails its sha256 "
                             f"check). Delete them to start over, or pass --overwrite instead of --resume")

    # DDP broadcasts rank 0's weights at construction and averages gradients in backward.
    net = model
    if distributed.is_active():
        from torch.nn.parallel import DistributedDataParallel
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    use_amp = cfg.amp and device.type == "cuda"
    last = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    bar = tqdm(total=cfg.steps, initial=step, disable=not (progress and main), desc="train", unit="step")
    model.train()
    t0 = time.perf_counter()

    def checkpoint():
        if run_dir is not None and main:
            save_checkpoint(run_dir, _train_state(model, ema, opt, step, gen, history, running), meta)
        distributed.barrier()

    with _StopOnSignal(run_dir is not None) as stop:
        while step < last:
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, cfg)
            x0, y, t, noise = (v.to(device) for v in _draw(images, labels, cfg, sampler, gen, part))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                eps_hat = net(sde.perturb(x0, t, noise), t, y)
            loss = (eps_hat.float() - noise).pow(2).mean()
            # one small all-reduce: the global loss (logs, NaN check) and whether any rank was signalled
            stats = distributed.all_reduce_sum(torch.stack([loss.detach().float(), torch.tensor(
                float(stop.signum is not None), device=device)]))
            global_loss, stop_now = float(stats[0]) / world, bool(stats[1] > 0)
            if not math.isfinite(global_loss):
                raise FloatingPointError(f"training loss became {global_loss} at step {step}; lower lr "
                                         f"(now {cfg.lr}) or enable grad_clip")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            _ema_update(ema, model, min(cfg.ema_decay, (1 + step) / (10 + step)))
            running.append(global_loss)
            if step % cfg.log_every == 0 or step == cfg.steps:
                history.append({"step": step, "loss": float(np.mean(running)), "lr": _lr_at(step - 1, cfg),
                                "seconds": time.perf_counter() - t0})
                bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
                running = []
            bar.update(1)
            if run_dir is not None and (step % cfg.checkpoint_every == 0 or step == last):
                checkpoint()
            elif stop_now and run_dir is not None:
                checkpoint()
            if stop_now and step < last:
                bar.close()
                raise TrainingInterrupted(step, stop.signum or signal.SIGTERM, run_dir)
    bar.close()
    distributed.barrier()
    return model, ema, history
