"""Small random affine copies of a training set (a static augmentation for recipe sweeps).

``affine_copies`` appends ``copies`` randomly rotated, scaled and shifted versions of every
image (bilinear resampling, border padding) to the training arrays, so the score model trains
on them without any change to the training loop (whose on-the-fly augmentations are the
flips of ``TrainConfig``). Values stay in [0, 1]; labels (and groups) are repeated.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["random_affine", "affine_copies"]


def random_affine(x: torch.Tensor,
                  generator: torch.Generator,
                  max_rotate: float = 10.0,  # degrees, uniform in [-max, max]
                  max_scale: float = 0.05,   # relative zoom, uniform in [1 - max, 1 + max]
                  max_shift: float = 2.0,    # pixels, uniform in [-max, max] per axis
                  ) -> torch.Tensor:
    """x (N, C, H, W) in [0, 1] -> the same shape, each image under its own random affine map."""
    n, _, h, w = x.shape
    u = torch.rand(n, 4, generator=generator, dtype=torch.float64) * 2 - 1
    ang = u[:, 0] * math.radians(max_rotate)
    scale = 1 + u[:, 1] * max_scale
    tx, ty = u[:, 2] * max_shift * 2 / w, u[:, 3] * max_shift * 2 / h   # normalised coordinates
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1).float()
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False).clamp(0, 1)


def affine_copies(images: np.ndarray,
                  labels: np.ndarray,
                  copies: int = 1,            # augmented copies per image (0: unchanged)
                  seed: int = 0,
                  **affine) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) with ``copies`` random affine versions of each image appended after the originals."""
    if copies < 0:
        raise ValueError(f"copies must be >= 0, got {copies}")
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    extra = [random_affine(x, g, **affine) for _ in range(copies)]
    out = torch.cat([x, *extra]).numpy()
    return out, np.tile(np.asarray(labels), copies + 1)
