"""VinDr-Mammo: breast-level or finding annotations, BI-RADS binarised by a recorded rule.

Expected under ``root``::

    breast-level_annotations.csv   study_id, series_id, image_id, laterality, view_position,
                                   height, width, breast_birads, breast_density, split
    finding_annotations.csv        the same plus finding_categories, finding_birads, xmin..ymax
    images/<study_id>/<image_id>.dicom   (JPEG 2000 for many; some MONOCHROME1)

There is no pathology: "malignant" is a BI-RADS rule, recorded in ``label_rule``. The
default follows the paper, BI-RADS 1-3 benign vs 4-5 malignant; ``drop_birads=(3,)`` gives the
other common rule. ``split`` (training / test) is official; ``group`` is the study (one woman).
Lesion level uses the finding boxes (clipped to the image; ``No Finding`` rows have none); a
blank ``finding_birads`` falls back to the breast's BI-RADS.
"""
from __future__ import annotations

import ast
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["vindr_manifest", "parse_birads"]

BREAST_CSV, FINDING_CSV = "breast-level_annotations.csv", "finding_annotations.csv"
CLASS_NAMES = ("benign", "malignant")
_BREAST_COLS = ("study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
                "breast_birads", "breast_density", "split")


def parse_birads(value) -> float:
    """'BI-RADS 4' -> 4.0; blank or NaN -> NaN. Raises ValueError for other text."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
        return np.nan
    text = str(value).strip().upper().replace("BI-RADS", "").strip()
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"cannot read BI-RADS from {value!r} (expected 'BI-RADS 1' ... 'BI-RADS 5')") from None


def _read(root: Path, name: str, needed) -> pd.DataFrame:
    path = root / name
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; VinDr-Mammo's root must hold {BREAST_CSV}, {FINDING_CSV} "
                                "and images/<study_id>/<image_id>.dicom (PhysioNet download)")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.columns = [c.strip() for c in frame.columns]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: columns {missing} missing (has {list(frame.columns)})")
    return frame


def _image_path(root: Path, study: str, image: str) -> str:
    for suffix in (".dicom", ".dcm"):
        path = root / "images" / study / f"{image}{suffix}"
        if path.exists():
            return str(path)
    return ""


def vindr_manifest(root, *, level: str = "image", malignant_birads=(4, 5), drop_birads=(),
                   missing: str = "error") -> pd.DataFrame:
    """Manifest of VinDr-Mammo images (breast-level CSV) or findings with boxes (finding CSV).

    malignant_birads: BI-RADS categories labelled malignant (1); the others are benign (0).
    drop_birads: categories removed before labelling (e.g. (3,)). Boxes: ``lesion_box`` =
    [ymin, xmin, ymax, xmax] clipped to [0, height] x [0, width] (pixels).
    """
    if level not in ("image", "lesion"):
        raise ValueError(f"level must be 'image' or 'lesion', got {level!r}")
    if missing not in ("error", "drop"):
        raise ValueError(f"missing must be 'error' or 'drop', got {missing!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"VinDr-Mammo root {root} is not a folder")
    malignant, dropped = {int(b) for b in malignant_birads}, {int(b) for b in drop_birads}
    rule = (f"VinDr-Mammo BI-RADS: malignant if BI-RADS in {sorted(malignant)}, else benign"
            + (f"; BI-RADS {sorted(dropped)} dropped" if dropped else ""))
    if level == "image":
        frame = _read(root, BREAST_CSV, _BREAST_COLS)
        frame["birads"] = frame["breast_birads"].map(parse_birads)
        frame["source_image_id"] = frame["image_id"]
    else:
        frame = _read(root, FINDING_CSV, _BREAST_COLS + ("finding_categories", "finding_birads",
                                                         "xmin", "ymin", "xmax", "ymax"))
        frame = frame[frame["xmin"].str.strip() != ""].copy()  # 'No Finding' rows have no box
        finding = frame["finding_birads"].map(parse_birads)
        frame["birads"] = finding.fillna(frame["breast_birads"].map(parse_birads))
        h, w = frame["height"].astype(float), frame["width"].astype(float)
        boxes = np.stack([frame["ymin"].astype(float).clip(0, h), frame["xmin"].astype(float).clip(0, w),
                          frame["ymax"].astype(float).clip(0, h), frame["xmax"].astype(float).clip(0, w)], axis=1)
        frame["lesion_box"] = [json.dumps([round(float(v), 2) for v in b]) for b in boxes]
        frame["finding_categories"] = frame["finding_categories"].map(
            lambda s: ";".join(ast.literal_eval(s)) if s.strip().startswith("[") else s)
        frame["source_image_id"] = frame["image_id"]
        frame["image_id"] = frame["image_id"] + "_f" + frame.groupby("image_id").cumcount().astype(str)
    if frame["birads"].isna().any():
        raise ValueError(f"{root}: {frame['birads'].isna().sum()} rows have no BI-RADS")
    frame = frame[~frame["birads"].astype(int).isin(dropped)].copy()
    frame["label"] = frame["birads"].astype(int).isin(malignant).astype(int)
    frame["label_name"] = [CLASS_NAMES[k] for k in frame["label"]]
    frame["path"] = [_image_path(root, s, i) for s, i in zip(frame["study_id"], frame["source_image_id"])]
    split = frame["split"].str.strip().str.lower().map({"training": "train", "train": "train", "test": "test"})
    if split.isna().any():
        raise ValueError(f"{root}: unknown split values {sorted(set(frame.loc[split.isna(), 'split']))}; "
                         "expected training / test")
    frame = frame.assign(split=split, group=frame["study_id"], label_rule=rule,
                         laterality=frame["laterality"].str.strip().str.upper().str[0],
                         view=frame["view_position"].str.strip().str.upper())
    absent = frame["path"] == ""
    if absent.any():
        text = (f"{absent.sum()} of {len(frame)} VinDr-Mammo rows have no DICOM at "
                f"images/<study_id>/<image_id>.dicom under {root} (first: {frame.loc[absent, 'image_id'].iloc[0]})")
        if missing == "error":
            raise FileNotFoundError(text + "; finish the download or pass missing='drop'")
        warnings.warn(text + "; dropped (missing='drop')", stacklevel=2)
        frame = frame[~absent]
    return frame.reset_index(drop=True)
