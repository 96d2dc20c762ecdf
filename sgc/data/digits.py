"""scikit-learn's handwritten digits (8x8, 17 grey levels, 10 classes): the offline default."""
from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from . import ImageSet

CLASS_NAMES = tuple(str(d) for d in range(10))
LEVELS = 17  # pixel values are the integers 0..16


def load_digits_splits(seed: int = 0, test_size: float = 0.2, val_size: float = 0.0,
                       size: int | None = None) -> dict[str, ImageSet]:
    """Stratified train/(val)/test split of the 1,797 digits, fixed by ``seed``.

    Images are (N, 1, 8, 8) in [0, 1] (value / 16). ``size`` pads symmetrically with
    zeros to a larger square side (for networks that down-sample).
    """
    bunch = load_digits()
    x = bunch.images.astype(np.float32)[:, None] / (LEVELS - 1)
    y = bunch.target.astype(np.int64)
    if size is not None and size != 8:
        if size < 8:
            raise ValueError(f"digits are 8x8; size must be >= 8, got {size}")
        lo = (size - 8) // 2
        x = np.pad(x, ((0, 0), (0, 0), (lo, size - 8 - lo), (lo, size - 8 - lo)))
    ids = np.array([f"digit{i:04d}" for i in range(len(y))])
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=test_size, stratify=y, random_state=seed)
    splits = {"train": tr, "test": te}
    if val_size > 0:
        tr, va = train_test_split(tr, test_size=val_size, stratify=y[tr], random_state=seed)
        splits = {"train": tr, "val": va, "test": te}
    return {k: ImageSet(x[v], y[v], CLASS_NAMES, LEVELS, [str(i) for i in ids[v]]) for k, v in splits.items()}
