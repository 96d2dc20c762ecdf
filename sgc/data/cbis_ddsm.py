"""CBIS-DDSM: the four official case-description CSVs joined to DICOMs through their headers.

Expected under ``root`` (searched recursively): ``mass_case_description_{train,test}_set.csv``,
``calc_case_description_{train,test}_set.csv`` and the DICOMs (``*.dcm``) in either layout:
the classic ``<Subject>/<StudyUID>/<SeriesUID>/00000N.dcm`` or today's descriptive TCIA
folders. Files are matched by (PatientID, SeriesInstanceUID) read from the DICOM headers;
the CSV path gives both (``<PatientID>/<StudyUID>/<SeriesUID>/...``).

CSV quirks handled: CRLF, a newline inside quoted path fields, ``breast density`` vs
``breast_density``, calc vs mass columns, ``BENIGN_WITHOUT_CALLBACK`` (= benign).
Rows are abnormalities; an image is malignant if any of its rows is (the image-level counts
are mass train 602 malignant / 629 benign, test 145 / 216; calc train 509 / 718, test 119 / 165).
Official split: train / test; ``group`` is the patient (``P_00001``) for carving validation.
Crop and ROI mask share file names ``000000.dcm``/``000001.dcm`` unreliably: the mask is the
file whose pixels are binary and full-size (:func:`roi_mask_box`).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom

__all__ = ["CSV_FILES", "read_case_csv", "abnormality_rows", "image_labels", "index_dicoms", "cbis_ddsm_manifest", "roi_mask_box"]

CSV_FILES = {("mass", "train"): "mass_case_description_train_set.csv",
             ("mass", "test"): "mass_case_description_test_set.csv",
             ("calc", "train"): "calc_case_description_train_set.csv",
             ("calc", "test"): "calc_case_description_test_set.csv"}
_RENAME = {"breast density": "breast_density", "left or right breast": "side", "image view": "view",
           "abnormality id": "abnormality_id", "abnormality type": "abnormality_type",
           "image file path": "image_path", "cropped image file path": "crop_path",
           "ROI mask file path": "roi_path", "mass shape": "mass_shape", "mass margins": "mass_margins",
           "calc type": "calc_type", "calc distribution": "calc_distribution"}
_NEEDED = ("patient_id", "breast_density", "side", "view", "abnormality_id", "pathology",
           "assessment", "subtlety", "image_path", "crop_path", "roi_path")
LABEL_RULE = ("CBIS-DDSM pathology: image malignant if any abnormality row is MALIGNANT; "
              "BENIGN and BENIGN_WITHOUT_CALLBACK are benign")
CLASS_NAMES = ("benign", "malignant")


def read_case_csv(path) -> pd.DataFrame:
    """One official CSV -> DataFrame with normalised column names and stripped text.

    Adds ``image_key`` (= DICOM PatientID of the full image, e.g. ``Mass-Test_P_00820_LEFT_CC``),
    ``series_uid`` (of the full image) and ``malignant`` (bool).
    """
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)  # the csv parser copes with CRLF and quoted newlines
    frame = frame.rename(columns=lambda c: _RENAME.get(c.strip(), c.strip().replace(" ", "_")))
    missing = [c for c in _NEEDED if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: not a CBIS-DDSM case-description CSV; columns {missing} missing "
                         f"(has {list(frame.columns)})")
    for col in frame.columns:
        frame[col] = frame[col].str.strip()
    parts = frame["image_path"].str.split("/")
    if (parts.str.len() < 3).any():
        bad = frame.loc[parts.str.len() < 3, "image_path"].iloc[0]
        raise ValueError(f"{path}: image file path {bad!r} is not <PatientID>/<StudyUID>/<SeriesUID>/file")
    frame["image_key"], frame["series_uid"] = parts.str[0], parts.str[2]
    unknown = sorted(set(frame["pathology"]) - {"MALIGNANT", "BENIGN", "BENIGN_WITHOUT_CALLBACK"})
    if unknown:
        raise ValueError(f"{path}: unknown pathology values {unknown}")
    frame["malignant"] = frame["pathology"] == "MALIGNANT"
    return frame


def _find_csvs(root: Path, abnormality: str) -> dict:
    if not root.is_dir():
        raise FileNotFoundError(f"CBIS-DDSM root {root} is not a folder; point root at the folder holding "
                                "the case-description CSVs and the DICOMs")
    kinds = ("mass", "calc") if abnormality == "both" else (abnormality,)
    found = {}
    for kind in kinds:
        for split in ("train", "test"):
            hits = sorted(root.rglob(CSV_FILES[(kind, split)]))
            if not hits:
                raise FileNotFoundError(f"{CSV_FILES[(kind, split)]} not found under {root}; download the "
                                        "case-description CSVs from the CBIS-DDSM page on TCIA")
            found[(kind, split)] = hits[0]
    return found


def abnormality_rows(root, *, abnormality: str = "mass") -> pd.DataFrame:
    """All rows of the selected CSVs (one per abnormality) with ``abnormality`` and ``split`` added."""
    if abnormality not in ("mass", "calc", "both"):
        raise ValueError(f"abnormality must be 'mass', 'calc' or 'both', got {abnormality!r}")
    frames = []
    for (kind, split), path in _find_csvs(Path(root), abnormality).items():
        frame = read_case_csv(path)
        frame["abnormality"], frame["split"] = kind, split
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def image_labels(root, *, abnormality: str = "mass") -> pd.DataFrame:
    """Abnormality rows aggregated to images (no DICOMs needed): one row per full image.

    Columns: image_key, series_uid, patient_id, abnormality, split, label (1 = malignant),
    laterality (L/R), view, breast_density, assessment (max), subtlety (max), n_abnormalities.
    """
    return _aggregate(abnormality_rows(root, abnormality=abnormality))


def _aggregate(rows: pd.DataFrame) -> pd.DataFrame:
    num = lambda s: pd.to_numeric(s, errors="coerce")  # noqa: E731
    rows["assessment_n"], rows["subtlety_n"], rows["density_n"] = (num(rows.assessment), num(rows.subtlety),
                                                                  num(rows.breast_density))
    images = rows.groupby("image_key", sort=True).agg(
        series_uid=("series_uid", "first"), patient_id=("patient_id", "first"),
        abnormality=("abnormality", "first"), split=("split", "first"), label=("malignant", "max"),
        laterality=("side", "first"), view=("view", "first"), breast_density=("density_n", "max"),
        assessment=("assessment_n", "max"), subtlety=("subtlety_n", "max"),
        n_abnormalities=("abnormality_id", "size"), image_path=("image_path", "first"))
    images["label"] = images["label"].astype(int)
    images["laterality"] = images["laterality"].str[0]
    return images.reset_index()


def index_dicoms(root, *, progress: bool = False) -> pd.DataFrame:
    """Header facts of every ``*.dcm`` under root: path, patient_id, series_uid, series_description.

    Unreadable files are listed with ``error`` set instead of being skipped silently.
    """
    from ..progress import tqdm
    tags = ["PatientID", "SeriesInstanceUID", "SeriesDescription", "Rows", "Columns"]
    records = []
    for path in tqdm(sorted(Path(root).rglob("*.dcm")), desc="reading DICOM headers", disable=not progress):
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=tags)
            records.append({"path": str(path), "patient_id": str(ds.get("PatientID", "")).strip(),
                            "series_uid": str(ds.get("SeriesInstanceUID", "")).strip(),
                            "series_description": str(ds.get("SeriesDescription", "")).strip(), "error": ""})
        except Exception as exc:
            records.append({"path": str(path), "patient_id": "", "series_uid": "", "series_description": "",
                            "error": f"{type(exc).__name__}: {exc}"})
    return pd.DataFrame(records, columns=["path", "patient_id", "series_uid", "series_description", "error"])


def roi_mask_box(paths, shape) -> list[float]:
    """[row0, col0, row1, col1] of the ROI mask among ``paths`` (crop and mask candidates).

    The mask is the candidate with the full image's ``shape`` and at most two pixel values;
    raises ValueError naming the files when none qualifies or the mask is empty.
    """
    from .dicom import read_dicom
    seen = []
    for path in paths:
        image, _ = read_dicom(path, use_window=False, fallback="minmax")
        values = np.unique(image[::4, ::4])
        seen.append(f"{Path(path).name} {image.shape} {len(values)} values")
        if tuple(image.shape) == tuple(shape) and len(values) <= 2:
            rows, cols = np.flatnonzero((image > 0.5).any(axis=1)), np.flatnonzero((image > 0.5).any(axis=0))
            if len(rows) == 0:
                raise ValueError(f"{path}: ROI mask is empty")
            return [float(rows[0]), float(cols[0]), float(rows[-1] + 1), float(cols[-1] + 1)]
    raise ValueError(f"no binary full-size ROI mask among {seen} (image shape {tuple(shape)})")


def cbis_ddsm_manifest(root, *, abnormality: str = "mass", level: str = "image", missing: str = "error",
                       dicom_root=None, progress: bool = False) -> pd.DataFrame:
    """Manifest of CBIS-DDSM full images (``level="image"``) or abnormalities (``"lesion"``).

    root: folder with the CSVs; DICOMs are searched under ``dicom_root`` (default root).
    missing: "error" raises when CSV images have no DICOM, "drop" keeps the found ones (warning).
    Splits are the official train / test; carve validation by ``group`` (patient).
    """
    if level not in ("image", "lesion"):
        raise ValueError(f"level must be 'image' or 'lesion', got {level!r}")
    if missing not in ("error", "drop"):
        raise ValueError(f"missing must be 'error' or 'drop', got {missing!r}")
    rows = abnormality_rows(root, abnormality=abnormality)
    images = _aggregate(rows)
    index = index_dicoms(dicom_root or root, progress=progress)
    ok = index[index["error"] == ""]
    lookup = {}
    for rec in ok.itertuples():
        lookup.setdefault((rec.patient_id, rec.series_uid), []).append(rec.path)
    images["path"] = [(lookup.get((k, s)) or [""])[0] for k, s in zip(images["image_key"], images["series_uid"])]
    absent = images["path"] == ""
    if absent.any():
        text = (f"{absent.sum()} of {len(images)} CBIS-DDSM images listed in the CSVs have no DICOM under "
                f"{dicom_root or root} (matched by PatientID + SeriesInstanceUID from {len(ok)} readable .dcm "
                f"headers; {len(index) - len(ok)} unreadable); first missing: {images.loc[absent, 'image_key'].iloc[0]}")
        if missing == "error":
            raise FileNotFoundError(text + ". Download them from TCIA, or pass missing='drop' to use the found ones")
        warnings.warn(text + "; dropped (missing='drop')", stacklevel=2)
        images = images[~absent]
    images = images.assign(image_id=images["image_key"], group=images["patient_id"], label_rule=LABEL_RULE,
                           label_name=[CLASS_NAMES[k] for k in images["label"]])
    if level == "image":
        return images.drop(columns=["image_path"]).reset_index(drop=True)
    lesions = rows[rows["image_key"].isin(images["image_key"])].copy()
    lesions = lesions.merge(images[["image_key", "path"]], on="image_key")
    candidates = []
    for rec in lesions.itertuples():
        found = []
        for rel in (rec.roi_path, rec.crop_path):
            parts = rel.split("/")
            found += lookup.get((parts[0], parts[2] if len(parts) > 2 else ""), [])
        candidates.append(json.dumps(sorted(set(found))))
    lesions = lesions.assign(roi_paths=candidates, image_id=lesions["image_key"] + "_" + lesions["abnormality_id"],
                             group=lesions["patient_id"], label=lesions["malignant"].astype(int),
                             label_rule="CBIS-DDSM pathology of the abnormality (BENIGN_WITHOUT_CALLBACK = benign)",
                             laterality=lesions["side"].str[0])
    no_roi = lesions["roi_paths"] == "[]"
    if no_roi.any():
        text = f"{no_roi.sum()} abnormalities have no ROI mask / crop DICOM found (first: {lesions.loc[no_roi, 'image_id'].iloc[0]})"
        if missing == "error":
            raise FileNotFoundError(text + "; download the ROI masks from TCIA or pass missing='drop'")
        warnings.warn(text + "; dropped (missing='drop')", stacklevel=2)
        lesions = lesions[~no_roi]
    lesions["label_name"] = [CLASS_NAMES[k] for k in lesions["label"]]
    keep = ["image_id", "path", "label", "label_name", "group", "split", "label_rule", "roi_paths", "image_key",
            "patient_id", "abnormality", "abnormality_type", "laterality", "view", "breast_density", "pathology",
            "assessment", "subtlety"]
    return lesions[keep].reset_index(drop=True)
