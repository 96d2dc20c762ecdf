"""Counterfactual images: noise an image part-way with the forward SDE, denoise it as another class.

SDEdit (Meng et al. 2022) with a class-conditional score: z_{t*} = alpha(t*) (2x - 1) + sigma(t*) e,
then the reverse process from t* to eps conditioned on the target class, either the reverse
SDE (Euler-Maruyama) or the probability-flow ODE (Heun), and one Tweedie denoising step. Small
t* keeps the image and changes little; large t* forgets it. The difference map
``counterfactual - x`` shows what the model would change to make the image look like the target
class. ``counterfactual_study`` measures, per t*, how often the classifier's decision flips to
the target and how far the image moved (L2), against the same procedure towards the image's
own predicted class (the change that noising and denoising alone cause).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .likelihood import ode_drift
from .sde import SDE, _bcast

__all__ = ["Counterfactual", "counterfactual", "counterfactual_study"]


@dataclass
class Counterfactual:
    images: np.ndarray     # (N, C, H, W) in [0, 1]
    diff: np.ndarray       # (N, C, H, W) images - x, in intensity units
    target: np.ndarray     # (N,) class the reverse process was conditioned on
    t_star: float          # diffusion time the image was noised to
    nfe: int               # network evaluations per image
    seconds: float


@torch.no_grad()
def counterfactual(model, sde: SDE, x, target, *,
                   t_star: float = 0.4,      # noise level in (0, T]: how much of x is forgotten
                   sampler: str = "sde",     # "sde" (Euler-Maruyama) or "ode" (probability flow, Heun)
                   steps: int = 500,         # steps for the whole [eps, T]; t* uses its share
                   eps: float = 1e-3,        # last time before the Tweedie denoising step
                   seed: int = 0,            # seeds the forward noise (and the SDE's noise)
                   ) -> Counterfactual:
    """Counterfactuals of images x (N, C, H, W) in [0, 1] towards ``target`` (int or (N,))."""
    if not eps < t_star <= sde.T:
        raise ValueError(f"t_star must be in ({eps}, {sde.T}], got {t_star}")
    if sampler not in ("sde", "ode"):
        raise ValueError(f"sampler must be 'sde' or 'ode', got {sampler!r}")
    start = time.perf_counter()
    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    n = len(x)
    y = torch.as_tensor(np.broadcast_to(np.asarray(target), (n,)).copy(), dtype=torch.long, device=device)
    gen = torch.Generator().manual_seed(seed)
    z0 = (2 * x - 1).to(device)
    alpha, sigma = sde.marginal(torch.tensor(t_star))
    z = alpha * z0 + sigma * torch.randn(x.shape, generator=gen).to(device)
    k = max(1, math.ceil(steps * (t_star - eps) / (sde.T - eps)))
    ts = torch.linspace(t_star, eps, k + 1)
    was_training = model.training
    model.eval()
    nfe = 0
    try:
        for i in range(k):
            t, dt = ts[i].to(device), float(ts[i + 1] - ts[i])  # dt < 0
            if sampler == "sde":
                t_vec = t.expand(n)
                _, s = sde.marginal(t_vec)
                g = sde.diffusion(t_vec)
                score = -model(z, t_vec, y) / _bcast(s, z)
                drift = sde.drift(z, t_vec) - _bcast(g ** 2, z) * score
                z = z + drift * dt + _bcast(g, z) * abs(dt) ** 0.5 * torch.randn(z.shape, generator=gen).to(device)
                nfe += 1
            else:  # Heun on the probability-flow ODE
                d1 = ode_drift(model, sde, z, t, y)
                z1 = z + d1 * dt
                d2 = ode_drift(model, sde, z1, ts[i + 1].to(device), y)
                z = z + 0.5 * (d1 + d2) * dt
                nfe += 2
        t_end = ts[-1].to(device).expand(n)
        a_end, s_end = sde.marginal(t_end)
        z = (z - _bcast(s_end, z) * model(z, t_end, y)) / _bcast(a_end, z)  # Tweedie: E[z_0 | z_eps]
        nfe += 1
    finally:
        model.train(was_training)
    images = ((z.float().cpu() + 1) / 2).clamp(0, 1).numpy()
    return Counterfactual(images, images - x.numpy(), y.cpu().numpy(), float(t_star), nfe,
                          time.perf_counter() - start)


def counterfactual_study(model, sde: SDE, x, classify_fn, *,
                         t_stars=(0.2, 0.4, 0.6),   # noise levels to compare
                         sampler: str = "sde", steps: int = 500, seed: int = 0,
                         ) -> tuple[pd.DataFrame, dict]:
    """Flip rate and distance of counterfactuals per t*, towards the runner-up class and (control)
    towards the predicted class. ``classify_fn``: images (N, C, H, W) -> posterior (N, K).

    Returns (table, {(t*, "target" | "control"): Counterfactual}). Table columns: t_star, towards,
    n, flip_rate (decision afterwards != the original decision), target_rate (== the target class),
    l2_mean / l2_median (||x' - x||_2 over all pixels, intensity units), rmse_mean, nfe, seconds.
    """
    x = np.asarray(x, dtype=np.float32)
    post = classify_fn(x)
    pred = post.argmax(1)
    runner_up = np.argsort(post, axis=1)[:, -2]
    rows, results = [], {}
    d = int(np.prod(x.shape[1:]))
    for t_star in t_stars:
        for towards, target in (("runner-up class", runner_up), ("predicted class (control)", pred)):
            cf = counterfactual(model, sde, x, target, t_star=t_star, sampler=sampler, steps=steps, seed=seed)
            after = classify_fn(cf.images).argmax(1)
            l2 = np.sqrt((cf.diff.reshape(len(x), -1) ** 2).sum(1))
            rows.append({"t_star": t_star, "towards": towards, "n": len(x), "flip_rate": float(np.mean(after != pred)),
                         "target_rate": float(np.mean(after == target)), "l2_mean": float(l2.mean()),
                         "l2_median": float(np.median(l2)), "rmse_mean": float((l2 / np.sqrt(d)).mean()),
                         "nfe": cf.nfe, "seconds": cf.seconds, "sampler": sampler})
            results[(t_star, "target" if towards.startswith("runner") else "control")] = cf
    return pd.DataFrame(rows), results
