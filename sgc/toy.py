"""A 2-D, two-class toy problem for the paper's Figure 1: densities and learned score fields.

Each class is a mixture of isotropic Gaussians in the plane (model space, inside [-1, 1]^2);
the two classes overlap. Because every component is Gaussian, the diffused density p_t(x | y)
of the VP/sub-VP/VE SDE is known exactly (component N(mu, s^2 I) -> N(alpha mu, (alpha^2 s^2
+ sigma^2) I)), and so is its score: the learned score field can be checked against it.

Points are stored as "images" of shape (N, 2, 1, 1) in [0, 1] (x = (z + 1) / 2), so the
ordinary ``ScoreMLP`` and ``train_score_model`` fit them without special cases.
"""
from __future__ import annotations

import numpy as np
import torch

from .nets import ScoreMLP
from .sde import SDE, make_sde
from .train import train_score_model

__all__ = ["TOY_CLASSES", "sample_toy", "toy_density", "toy_score", "fit_toy_model", "learned_score",
           "score_agreement"]

# class -> list of (weight, mean (2,), std); model space
TOY_CLASSES = (
    ((0.5, (-0.45, 0.30), 0.12), (0.5, (0.05, -0.05), 0.12)),    # class 0 ("benign")
    ((0.4, (0.45, 0.35), 0.10), (0.6, (0.25, -0.45), 0.14)),     # class 1 ("malignant")
)


def sample_toy(n_per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(points (2n, 2) in model space [-1, 1]^2, labels (2n,)), classes balanced."""
    rng = np.random.default_rng(seed)
    pts, labels = [], []
    for c, comps in enumerate(TOY_CLASSES):
        w = np.array([m[0] for m in comps])
        k = rng.choice(len(comps), size=n_per_class, p=w / w.sum())
        mu = np.array([comps[i][1] for i in k])
        sd = np.array([comps[i][2] for i in k])[:, None]
        pts.append(mu + sd * rng.standard_normal((n_per_class, 2)))
        labels.append(np.full(n_per_class, c))
    return np.clip(np.concatenate(pts), -1, 1).astype(np.float32), np.concatenate(labels)


def _components(c: int, sde: SDE | None, t: float):
    alpha, sigma = (1.0, 0.0) if sde is None else (float(v) for v in sde.marginal(torch.tensor(t)))
    for w, mu, s in TOY_CLASSES[c]:
        yield w, alpha * np.asarray(mu), np.sqrt(alpha ** 2 * s ** 2 + sigma ** 2)


def toy_density(xy: np.ndarray, c: int, sde: SDE | None = None, t: float = 0.0) -> np.ndarray:
    """p_t(x | y = c) at points xy (..., 2); t = 0 (or sde None) is the data density."""
    xy = np.asarray(xy, dtype=np.float64)
    out = np.zeros(xy.shape[:-1])
    for w, mu, s in _components(c, sde, t):
        out += w * np.exp(-((xy - mu) ** 2).sum(-1) / (2 * s * s)) / (2 * np.pi * s * s)
    return out


def toy_score(xy: np.ndarray, c: int, sde: SDE, t: float) -> np.ndarray:
    """Exact score grad_x log p_t(x | y = c) at points xy (..., 2) -> (..., 2)."""
    xy = np.asarray(xy, dtype=np.float64)
    num, den = np.zeros(xy.shape), np.zeros(xy.shape[:-1])
    for w, mu, s in _components(c, sde, t):
        p = w * np.exp(-((xy - mu) ** 2).sum(-1) / (2 * s * s)) / (2 * np.pi * s * s)
        num += p[..., None] * (mu - xy) / (s * s)
        den += p
    return num / np.maximum(den, 1e-300)[..., None]


def fit_toy_model(n_per_class: int = 2000,   # training points per class
                  steps: int = 1500,         # optimiser steps
                  hidden: int = 128,         # MLP width
                  blocks: int = 2,           # residual blocks
                  seed: int = 0,
                  sde: SDE | None = None,    # default VP, beta 0.1 -> 20
                  progress: bool = False):
    """Train a class-conditional score MLP on the toy points; returns (ema_model, sde, history)."""
    sde = sde or make_sde("vp")
    pts, labels = sample_toy(n_per_class, seed)
    images = ((pts + 1) / 2)[:, :, None, None]
    torch.manual_seed(seed)
    model = ScoreMLP(num_classes=2, in_channels=2, image_size=1, hidden=hidden, blocks=blocks, emb_dim=64)
    cfg = {"steps": steps, "batch_size": 256, "lr": 2e-3, "warmup": 100, "dequantize": False,
           "ema_decay": 0.995, "seed": seed, "log_every": 50}
    _, ema, history = train_score_model(model, sde, images, labels, cfg, device="cpu", progress=progress)
    return ema, sde, history


@torch.no_grad()
def learned_score(model, sde: SDE, xy: np.ndarray, c: int, t: float) -> np.ndarray:
    """The model's score s(x, t, y = c) = -eps_hat / sigma(t) at points xy (..., 2) -> (..., 2)."""
    xy = np.asarray(xy, dtype=np.float32)
    flat = torch.from_numpy(xy.reshape(-1, 2))[:, :, None, None]
    tt = torch.full((len(flat),), float(t))
    _, sigma = sde.marginal(tt)
    eps = model(flat, tt, torch.full((len(flat),), c, dtype=torch.long))
    return (-eps[:, :, 0, 0] / sigma[:, None]).numpy().reshape(xy.shape)


def score_agreement(model, sde: SDE, t: float = 0.1, n: int = 500, seed: int = 1) -> float:
    """Mean cosine similarity between learned and exact scores at points drawn from p_t."""
    pts, labels = sample_toy(n // 2, seed)
    alpha, sigma = (float(v) for v in sde.marginal(torch.tensor(t)))
    rng = np.random.default_rng(seed)
    xt = alpha * pts + sigma * rng.standard_normal(pts.shape)
    cos = []
    for c in (0, 1):
        a = learned_score(model, sde, xt[labels == c], c, t)
        b = toy_score(xt[labels == c], c, sde, t)
        cos.append((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12))
    return float(np.concatenate(cos).mean())
