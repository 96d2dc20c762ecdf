"""INbreast: ``INbreast.xls`` (or ``INbreast.csv``) matched to DICOMs by file-name prefix.

Expected under ``root`` (searched recursively): ``INbreast.xls`` or ``INbreast.csv`` and the
DICOMs ``<8-digit File Name>_<hash>_MG_<L|R>_<CC|MLO>_ANON.dcm`` (``AllDICOMs/``).

Table quirks handled: a blank row and a totals row after the 410 images, ``Mass `` with a
trailing space, ``File Name`` as float (xls) or int (csv), ``Bi-Rads`` mixing numbers and
``4a/4b/4c``, one blank ``ACR``, one ``FB`` view. The CSV is ``;``-separated with the first 8
columns. Default label rule: BI-RADS 1-3 benign / normal (310) vs 4a-6 malignant (100).
There is no split and no patient id in the table: ``group`` is the DICOM PatientID header,
and a grouped train / val / test is drawn with ``seed``.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import pandas as pd

from .splits import assign_splits

__all__ = ["read_inbreast_table", "inbreast_manifest", "normalise_birads"]

CLASS_NAMES = ("benign", "malignant")
MALIGNANT = ("4a", "4b", "4c", "5", "6")
_COLUMNS = ("Laterality", "View", "File Name", "ACR", "Bi-Rads")


def normalise_birads(value) -> str:
    """1, 1.0, '1', ' 4A ' -> '1', '4a'; raises ValueError for anything else."""
    text = str(value).strip().lower()
    if re.fullmatch(r"\d+(\.0+)?", text):
        text = str(int(float(text)))
    if not re.fullmatch(r"[0-6]|4[abc]", text):
        raise ValueError(f"unknown INbreast Bi-Rads value {value!r}")
    return text


def _clean(frame: pd.DataFrame, path) -> pd.DataFrame:
    frame = frame.rename(columns=lambda c: str(c).strip())
    missing = [c for c in _COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: not the INbreast table; columns {missing} missing (has {list(frame.columns)})")
    number = pd.to_numeric(frame["File Name"], errors="coerce")
    frame = frame[number.notna()].copy()  # drops the blank row and the totals row
    frame["file_name"] = number[number.notna()].astype("int64").astype(str).str.zfill(8)
    frame["birads"] = [normalise_birads(v) for v in frame["Bi-Rads"]]
    frame["acr"] = pd.to_numeric(frame["ACR"], errors="coerce")
    frame["laterality"] = frame["Laterality"].astype(str).str.strip().str.upper()
    frame["view"] = frame["View"].astype(str).str.strip().str.upper()
    return frame.reset_index(drop=True)


def read_inbreast_table(path) -> pd.DataFrame:
    """The image table from ``INbreast.xls`` (Sheet1, via xlrd) or ``INbreast.csv`` (``;``)."""
    path = Path(path)
    if path.suffix.lower() == ".xls":
        frame = pd.read_excel(path, sheet_name=0, engine="xlrd")
    else:
        frame = pd.read_csv(path, sep=";", dtype=str, keep_default_na=False)
    return _clean(frame, path)


def _find_table(root: Path) -> Path:
    for name in ("INbreast.xls", "INbreast.csv"):
        hits = sorted(root.rglob(name))
        if hits:
            return hits[0]
    raise FileNotFoundError(f"no INbreast.xls or INbreast.csv under {root}; they come with the INbreast release")


def inbreast_manifest(root, *, malignant_birads=MALIGNANT, drop_birads=(), missing: str = "error",
                      test_fraction: float = 0.2, val_fraction: float = 0.1, seed: int = 0) -> pd.DataFrame:
    """Manifest of INbreast images; label 1 = malignant if Bi-Rads in ``malignant_birads``.

    drop_birads: categories removed first (e.g. ('3',)). missing: "error" or "drop" for table
    rows without a DICOM. ``group`` = DICOM PatientID (header), splits grouped by it.
    """
    from .dicom import read_header
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"INbreast root {root} is not a folder")
    malignant = {normalise_birads(b) for b in malignant_birads}
    dropped = {normalise_birads(b) for b in drop_birads}
    table = read_inbreast_table(_find_table(root))
    table = table[~table["birads"].isin(dropped)].copy()
    files = {p.name.split("_")[0]: p for p in sorted(root.rglob("*.dcm"))}
    table["path"] = [str(files.get(f, "")) for f in table["file_name"]]
    absent = table["path"] == ""
    if absent.any():
        text = (f"{absent.sum()} of {len(table)} INbreast rows have no <File Name>_*.dcm under {root} "
                f"(first: {table.loc[absent, 'file_name'].iloc[0]})")
        if missing == "error":
            raise FileNotFoundError(text + "; put AllDICOMs/ under root or pass missing='drop'")
        warnings.warn(text + "; dropped (missing='drop')", stacklevel=2)
        table = table[~absent].copy()
    table["group"] = [str(read_header(p).get("PatientID", "")).strip() or f"file{f}"
                      for p, f in zip(table["path"], table["file_name"])]
    table["label"] = table["birads"].isin(malignant).astype(int)
    table["label_name"] = [CLASS_NAMES[k] for k in table["label"]]
    table["image_id"] = table["file_name"]
    table["label_rule"] = (f"INbreast Bi-Rads: malignant if in {sorted(malignant)}, else benign/normal"
                           + (f"; {sorted(dropped)} dropped" if dropped else ""))
    table["split"] = "train"
    keep = ["image_id", "path", "label", "label_name", "group", "split", "label_rule", "birads", "acr",
            "laterality", "view", "file_name"]
    table = table[keep].reset_index(drop=True)
    return assign_splits(table, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed)
