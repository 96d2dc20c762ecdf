"""Grouped splits: every image of one group (patient, study, film pair) lands in one split.

All functions take and return a manifest (pandas DataFrame with ``label``, ``group`` and
``split`` columns) and never split a group across train / val / test.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

__all__ = ["carve_validation", "assign_splits", "check_group_leakage"]


def _pick_groups(frame: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask over ``frame`` rows whose groups form about ``fraction`` of the images."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    groups = frame["group"].astype(str).to_numpy()
    if len(np.unique(groups)) < 2:
        raise ValueError(f"need at least 2 groups to split, got {len(np.unique(groups))}")
    n_splits = max(2, int(round(1 / fraction)))
    labels = frame["label"].to_numpy()
    per_class_groups = frame.groupby("label")["group"].nunique()
    if len(per_class_groups) > 1 and per_class_groups.min() >= n_splits:
        folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        _, held = next(folds.split(np.zeros(len(frame)), labels, groups))
    else:  # too few groups per class to stratify: plain grouped shuffle
        folds = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        _, held = next(folds.split(np.zeros(len(frame)), labels, groups))
    mask = np.zeros(len(frame), dtype=bool)
    mask[held] = True
    return mask


def carve_validation(manifest: pd.DataFrame, *, fraction: float = 0.1, seed: int = 0,
                     source_split: str = "train") -> pd.DataFrame:
    """Move about ``fraction`` of ``source_split``'s groups to ``split == "val"``.

    Stratified by label where each class has enough groups. Returns a new manifest.
    """
    out = manifest.copy()
    pool = out.index[out["split"] == source_split]
    if len(pool) == 0:
        raise ValueError(f"no rows with split == {source_split!r} to carve a validation split from")
    chosen = _pick_groups(out.loc[pool], fraction, seed)
    out.loc[pool[chosen], "split"] = "val"
    return out


def assign_splits(manifest: pd.DataFrame, *, test_fraction: float = 0.2, val_fraction: float = 0.1,
                  seed: int = 0) -> pd.DataFrame:
    """Grouped train / val / test for sources with no official split (mini-MIAS, INbreast).

    Fractions are of all images; val is carved from what is left after test.
    """
    out = manifest.copy()
    out["split"] = "train"
    test = _pick_groups(out, test_fraction, seed)
    out.loc[test, "split"] = "test"
    if val_fraction > 0:
        out = carve_validation(out, fraction=val_fraction / (1 - test_fraction), seed=seed)
    return out


def check_group_leakage(manifest: pd.DataFrame, *, allow_official: bool = False) -> None:
    """Raise ValueError naming groups that appear in more than one split.

    allow_official: a train/test overlap that comes from the source's official split (CBIS-DDSM
    mass + calc share 31 patients across it) only warns; overlaps involving val still raise.
    """
    sets = {k: set(v) for k, v in manifest.groupby("split")["group"]}
    names = sorted(sets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = sorted(sets[a] & sets[b])
            if not shared:
                continue
            text = f"{len(shared)} group(s) appear in both {a!r} and {b!r} (leakage), e.g. {shared[:5]}"
            if allow_official and {a, b} == {"train", "test"}:
                warnings.warn(text + "; kept because this is the source's official split", stacklevel=2)
            else:
                raise ValueError(text)
