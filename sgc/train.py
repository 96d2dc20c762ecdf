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
from .progress import tqdm

from . import distributed
from .errors import RunFolderError
from .runs import (CHECKPOINT, PREVIOUS, _say, find_checkpoint, load_checkpoint, run_provenance, same_model,
                   save_checkpoint)
from .sde import SDE, TimeSampler
from .step import ENGINES, TrainStep, draw_batch, place_data, resolve_engine

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
    log_every: int = 50          # steps between history rows (and loss / NaN checks: the only host syncs)
    compile: str = "auto"        # step engine (sgc.step): "auto" (= "graph" on one CUDA device, else
                                 # "eager"), "eager", "graph" (one CUDA graph per step), or a torch.compile
                                 # mode for the network: "default", "reduce-overhead", "max-autotune"

    def __post_init__(self):
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.compile in (None, False, "none"):
            self.compile = "eager"
        if self.compile not in ENGINES:
            raise ValueError(f"compile must be one of {ENGINES}, got {self.compile!r}")
        if self.log_every < 1 or self.checkpoint_every < 1:
            raise ValueError(f"log_every and checkpoint_every must be >= 1, got {self.log_every} and "
                             f"{self.checkpoint_every}")

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


def _train_state(model, ema, trainer, step, gen, history, running) -> dict:
    """What a checkpoint holds to resume bit for bit: weights, EMA, optimiser, step, RNG states,
    and ``running`` = (sum of the global batch losses since the last history row, summed over
    ranks; number of steps in it)."""
    return {"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": trainer.optimizer_state(),
            "step": step, "generator": gen.get_state(), "generator_device": gen.device.type,
            "torch_rng": torch.get_rng_state(), "history": json.dumps(history),
            "loss_sum": float(running[0]), "loss_count": int(running[1])}


def _resume_generator(gen: torch.Generator, ckpt: dict, seed: int, step: int) -> None:
    """Continue the checkpoint's batch stream; a stream saved on another kind of device cannot
    continue here, so it restarts from (seed, step), reproducibly but not bit-exact."""
    saved_on = ckpt.get("generator_device", "cpu")
    if saved_on == gen.device.type:
        gen.set_state(ckpt["generator"])
        return
    gen.manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))
    _say(f"the checkpoint's batch generator ran on {saved_on}, this run is on {gen.device.type}: batches "
         f"continue from a stream seeded by (seed, step), not the one an uninterrupted run would draw")


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

    Each step runs on the engine ``config.compile`` picks (``sgc.step``: one CUDA graph per step
    on a GPU by default); the loss is read back, and checked for NaN, every ``log_every`` steps.

    Under torch.distributed (``sgc.distributed.init_from_env``, e.g. started by torchrun) the
    model is wrapped in DistributedDataParallel and each of the N ranks trains on its
    batch_size / N rows of the same global batch, so the result equals one process with the
    same batch_size up to floating-point summation order. Rank 0 writes the checkpoints.
    With a run_dir, SIGTERM or SIGINT finish the current step, write a checkpoint and raise
    ``TrainingInterrupted`` (under DDP the ranks agree on it at the next log or checkpoint step).
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    device = distributed.default_device(device)
    images = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    from .likelihood import validate_images
    from .nets import check_labels
    validate_images(images, model, "training images")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
    check_labels(labels, model.num_classes, "labels")  # once, on the data: forward passes do not check
    missing = sorted(set(range(model.num_classes)) - set(labels.tolist()))
    if missing:
        raise ValueError(f"classes {missing} have no training images; a class-conditional model needs every class")
    rank, world = distributed.rank(), distributed.world_size()
    part = distributed.batch_slice(cfg.batch_size, rank, world)
    main = rank == 0
    engine = resolve_engine(cfg.compile, device, world)

    torch.manual_seed(cfg.seed + rank)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    images, labels = place_data(images, labels, device)
    model = model.to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    net = model
    if distributed.is_active():  # DDP broadcasts rank 0's weights at construction, averages gradients in backward
        from torch.nn.parallel import DistributedDataParallel
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    trainer = TrainStep(model, ema, sde, cfg, device, engine, net=net)
    sampler = TimeSampler(sde, cfg.weighting, cfg.eps)
    meta = {"model": model.config, "sde": sde.config(), "train": asdict(cfg), **(extra_meta or {}),
            "provenance": run_provenance(cfg.seed)}
    step, history, count = 0, [], 0
    if resume and run_dir is not None and find_checkpoint(run_dir) is not None:
        saved, ckpt = load_checkpoint(run_dir)
        if not same_model(saved.get("model"), meta["model"]) or saved.get("sde") != meta["sde"]:
            raise RunFolderError(f"checkpoint in {run_dir} was trained with model={saved.get('model')}, "
                                 f"sde={saved.get('sde')}, not the requested model={meta['model']}, "
                                 f"sde={meta['sde']}. Use another --run-dir, or --overwrite instead of --resume")
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        trainer.load_optimizer_state(ckpt["optimizer"])
        step, history = int(ckpt["step"]), json.loads(ckpt["history"])
        if "loss_sum" in ckpt:
            loss_sum, count = float(ckpt["loss_sum"]), int(ckpt["loss_count"])
        else:  # checkpoints before the device-side loss sum: per-step global losses
            running = json.loads(ckpt.get("running", "[]"))
            loss_sum, count = float(sum(running)) * world, len(running)
        if rank == 0:  # the partial sum is already over all ranks
            trainer.loss_sum.fill_(loss_sum)
        _resume_generator(gen, ckpt, cfg.seed, step)
        if rank == 0:
            torch.set_rng_state(ckpt["torch_rng"])
        if main:
            _say(f"resuming {run_dir} from step {step}")
    elif resume and run_dir is not None and any((Path(run_dir) / f).exists() for f in (CHECKPOINT, PREVIOUS)):
        raise RunFolderError(f"--resume: no complete checkpoint in {run_dir} (every checkpoint fails its sha256 "
                             f"check). Delete them to start over, or pass --overwrite instead of --resume")

    last = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    bar = tqdm(total=cfg.steps, initial=step, disable=not (progress and main), desc=f"train ({engine})",
               unit="step")
    model.train()
    t0 = time.perf_counter()

    def sync(stop_flag: bool) -> tuple[float, bool]:
        """The loss sum over ranks since the last history row (one small all-reduce and the only
        device-to-host read), checked for NaN; and whether any rank was signalled."""
        stats = torch.stack([trainer.loss_sum, torch.tensor(float(stop_flag), dtype=torch.float64, device=device)])
        total, flag = distributed.all_reduce_sum(stats).tolist()
        if not math.isfinite(total):
            raise FloatingPointError(f"training loss became {total / world / max(count, 1)} between steps "
                                     f"{step - count + 1} and {step}; lower lr (now {cfg.lr}) or enable grad_clip")
        return total, flag > 0

    def checkpoint(total: float):
        if run_dir is not None and main:
            save_checkpoint(run_dir, _train_state(model, ema, trainer, step, gen, history, (total, count)), meta)
        distributed.barrier()

    with _StopOnSignal(run_dir is not None) as stop:
        while step < last:
            trainer.set_schedule(_lr_at(step, cfg), min(cfg.ema_decay, (2 + step) / (11 + step)))
            trainer(*draw_batch(images, labels, cfg, sampler, gen, part))
            step += 1
            count += 1
            bar.update(1)
            log = step % cfg.log_every == 0 or step == cfg.steps
            save = run_dir is not None and (step % cfg.checkpoint_every == 0 or step == last)
            signalled = stop.signum is not None
            # one process acts on a signal at once; DDP ranks agree on it at the next sync point
            if not (log or save or step == last or (signalled and world == 1)):
                continue
            total, stop_now = sync(signalled)
            if log:
                ran = engine if engine != "graph" or trainer.graphed else "graph (uncaptured)"
                history.append({"step": step, "loss": total / world / count, "lr": _lr_at(step - 1, cfg),
                                "seconds": time.perf_counter() - t0, "engine": ran})
                bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
                trainer.loss_sum.zero_()
                total, count = 0.0, 0
            if save or (stop_now and run_dir is not None):
                checkpoint(total)
            if stop_now and step < last:
                bar.close()
                raise TrainingInterrupted(step, stop.signum or signal.SIGTERM, run_dir)
    bar.close()
    distributed.barrier()
    return model, ema, history
