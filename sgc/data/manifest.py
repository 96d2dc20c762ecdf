"""The manifest contract shared by every source, and manifest -> cached ImageSets.

A manifest is a pandas DataFrame with one row per image (or per lesion in lesion mode) and
at least the columns in :data:`REQUIRED_COLUMNS`:

- ``image_id`` unique text id; ``path`` the source file; ``label`` int in [0, n_classes);
  ``label_name``; ``group`` (patient / study / film pair; splits never cut a group);
  ``split`` in {"train", "val", "test"}; ``label_rule`` the rule that produced the label.

Sources add metadata columns (laterality, view, density, BI-RADS, ...). Patch mode reads
``lesion_box`` (JSON [row0, col0, row1, col1] in source pixels) or ``roi_paths``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from . import ImageSet
from .cache import build_cache, open_cache
from .preprocess import PreprocessSettings
from .splits import carve_validation, check_group_leakage

__all__ = ["REQUIRED_COLUMNS", "validate_manifest", "default_cache_dir", "image_sets_from_manifest"]

REQUIRED_COLUMNS = ("image_id", "path", "label", "label_name", "group", "split", "label_rule")
SPLITS = ("train", "val", "test")


def validate_manifest(manifest: pd.DataFrame, *, class_names, source: str) -> pd.DataFrame:
    """Check columns, unique ids, label range, split names and that no class is empty.

    Raises ValueError naming the source and the problem. Returns the manifest unchanged.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(f"{source}: manifest lacks columns {missing}")
    if manifest.empty:
        raise ValueError(f"{source}: no images left after filtering; check the root folder and options")
    if manifest["image_id"].duplicated().any():
        raise ValueError(f"{source}: duplicated image_id {manifest.loc[manifest.image_id.duplicated(), 'image_id'].tolist()[:5]}")
    bad_split = sorted(set(manifest["split"]) - set(SPLITS))
    if bad_split:
        raise ValueError(f"{source}: unknown split names {bad_split}; expected {SPLITS}")
    counts = manifest["label"].value_counts()
    empty = [name for k, name in enumerate(class_names) if counts.get(k, 0) == 0]
    if empty:
        raise ValueError(f"{source}: class(es) {empty} have no images after filtering "
                         f"(counts {dict(manifest['label_name'].value_counts())}); a classifier needs "
                         "every class: relax the filters or add the missing images")
    return manifest


def default_cache_dir(source: str) -> Path:
    """``$SGC_CACHE/<source>`` or ``~/.cache/sgc/<source>``."""
    base = os.environ.get("SGC_CACHE") or Path.home() / ".cache" / "sgc"
    return Path(base) / source


def image_sets_from_manifest(manifest: pd.DataFrame, *, class_names, source: str, cache_dir=None,
                             settings: PreprocessSettings = PreprocessSettings(), workers: int | None = None,
                             strict: bool = False, progress: bool = True, val_fraction: float = 0.1,
                             seed: int = 0) -> dict[str, ImageSet]:
    """Cache the manifest's images and return {"train", "val", "test"} ImageSets.

    A validation split is carved from train by group when the manifest has none. Images are
    float32 (N, 1, size, size) in [0, 1]; ``levels`` = 2 ** (largest cached bit depth).
    Images that failed to decode are reported by :func:`build_cache` and left out.
    """
    validate_manifest(manifest, class_names=class_names, source=source)
    if not (manifest["split"] == "val").any() and (manifest["split"] == "train").any():
        train_groups = set(manifest.loc[manifest["split"] == "train", "group"])
        test_groups = set(manifest.loc[manifest["split"] == "test", "group"])
        candidates = manifest[(manifest["split"] == "train") & ~manifest["group"].isin(test_groups)]
        if train_groups and candidates.empty:
            raise ValueError(f"{source}: every train group also appears in test; cannot carve validation")
        carved = carve_validation(candidates, fraction=val_fraction, seed=seed)  # val never shares a test group
        manifest = manifest.copy()
        manifest.loc[carved.index[carved["split"] == "val"], "split"] = "val"
    check_group_leakage(manifest, allow_official=True)
    result = build_cache(manifest, cache_dir or default_cache_dir(source), settings=settings,
                         workers=workers, strict=strict, progress=progress)
    images, table = open_cache(result.path)
    where = dict(zip(table["image_id"], table["index"]))
    scale = dict(zip(table["image_id"], 2.0 ** table["bits"].astype(float) - 1))
    levels = int(2 ** int(table["bits"].max()))
    out = {}
    for split in SPLITS:
        rows = manifest[(manifest["split"] == split) & manifest["image_id"].isin(where)]
        index = rows["image_id"].map(where).to_numpy(dtype=np.int64)
        x = np.asarray(images[np.sort(index)] if len(index) else images[:0], dtype=np.float32)
        order = np.argsort(np.argsort(index))  # undo the sort done for fast memory-mapped reads
        x = x[order] / rows["image_id"].map(scale).to_numpy(dtype=np.float32)[:, None, None, None]
        out[split] = ImageSet(x, rows["label"].to_numpy(), tuple(class_names), levels,
                              rows["image_id"].astype(str).tolist(), rows["group"].astype(str).tolist())
    return out
