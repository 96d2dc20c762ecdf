"""mini-MIAS: ``Info.txt`` parsing, PGM reading and a manifest of images or lesions.

Expected layout under ``root`` (searched recursively, so both the PEIPA ``all-mias/`` folder
and per-class copies such as ``dataset/benign/mdb001_benign.pgm`` work)::

    Info.txt (or info.txt / filenames.txt)   REFNUM BG CLASS [SEVERITY [X Y RADIUS]]
    mdbNNN*.pgm                               1024 x 1024, 8-bit P5

Facts the parser handles: an optional header line, trailing spaces, several rows (lesions)
per image, rows with no coordinates (``mdb059``; ``*NOTE 3*`` rows), and the bottom-left
origin (array row = 1023 - y, column = x). Labels: an image is malignant if any of its
rows has severity M (``mdb144`` has one B and one M row). Left/right films of one woman have
consecutive numbers (mdb001 + mdb002, ...): ``group`` is that pair, so splits keep them together.
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .splits import assign_splits

__all__ = ["read_pgm", "read_info", "find_info", "mini_mias_manifest", "LABEL_RULES"]

SIDE = 1024  # mini-MIAS images are 1024 x 1024
LABEL_RULES = {
    "benign_malignant": ("benign", "malignant"),   # abnormal images only; malignant if any row is M
    "normal_abnormal": ("normal", "abnormal"),     # all images; abnormal if any row is not NORM
}
_REF = re.compile(r"^mdb\d{3}$")


def read_pgm(path) -> tuple[np.ndarray, int]:
    """Read a binary (P5) or ASCII (P2) PGM: (uint8 or uint16 (H, W) array, maxval)."""
    data = Path(path).read_bytes()
    tokens, pos = [], 0
    while len(tokens) < 4:
        match = re.compile(rb"\s*(#[^\n]*\n\s*)*(\S+)").match(data, pos)
        if match is None:
            raise ValueError(f"{path}: truncated PGM header")
        tokens.append(match.group(2))
        pos = match.end()
    magic, width, height, maxval = tokens[0], *map(int, tokens[1:])
    if magic not in (b"P5", b"P2"):
        raise ValueError(f"{path}: not a greyscale PGM (magic {magic!r}; expected P5 or P2)")
    dtype = np.dtype(">u2") if maxval > 255 else np.dtype(np.uint8)
    if magic == b"P2":
        values = np.array(data[pos:].split(), dtype=np.int64)
    else:
        need = width * height * dtype.itemsize
        body = data[pos + 1:pos + 1 + need]
        if len(body) < need:
            raise ValueError(f"{path}: truncated PGM: {len(body)} of {need} pixel bytes present; re-copy the file")
        values = np.frombuffer(body, dtype=dtype)
    if values.size < width * height:
        raise ValueError(f"{path}: truncated PGM: {values.size} of {width * height} pixels present")
    return values[: width * height].reshape(height, width).astype(dtype.newbyteorder("=")), maxval


def find_info(root) -> Path:
    """The Info.txt table under ``root`` (also info.txt / filenames.txt), searched recursively."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"mini-MIAS root {root} is not a folder; point root at the folder holding Info.txt and the PGMs")
    for name in ("Info.txt", "info.txt", "INFO.txt", "filenames.txt"):
        hits = sorted(root.rglob(name))
        if hits:
            return hits[0]
    raise FileNotFoundError(f"no Info.txt (or filenames.txt) under {root}; it ships with the mini-MIAS download")


def read_info(path) -> pd.DataFrame:
    """One row per Info.txt line: refnum, background, abnormality, severity, x, y, radius, row, col.

    Coordinates are NaN where the table has none; ``row = 1023 - y`` and ``col = x`` are
    array coordinates (pixels). A header line, if present, is skipped.
    """
    records = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if not _REF.match(parts[0]):
            if number == 1:
                continue  # header line (REFNUM BG CLASS SEVERITY X Y RADIUS)
            raise ValueError(f"{path}:{number}: expected a row starting with mdbNNN, got {line!r}")
        if len(parts) < 3:
            raise ValueError(f"{path}:{number}: too few fields in {line!r} (need REFNUM BG CLASS)")
        rec = {"refnum": parts[0], "background": parts[1], "abnormality": parts[2],
               "severity": parts[3] if len(parts) > 3 else None}
        coords = parts[4:7]
        try:
            x, y, radius = (float(v) for v in coords) if len(coords) == 3 else (np.nan,) * 3
        except ValueError:  # '*NOTE 3*' stands where the coordinates would be
            x, y, radius = (np.nan,) * 3
        rec.update(x=x, y=y, radius=radius, row=SIDE - 1 - y, col=x)
        records.append(rec)
    if not records:
        raise ValueError(f"{path}: no mini-MIAS rows found")
    return pd.DataFrame(records)


def _find_images(root: Path) -> dict[str, Path]:
    found = {}
    for path in sorted(root.rglob("mdb*.pgm")):
        found.setdefault(path.name[:6], path)  # mdb144 may sit in both benign/ and malignant/
    return found


def mini_mias_manifest(root, *, label_rule: str = "benign_malignant", level: str = "image",
                       missing: str = "error", test_fraction: float = 0.2, val_fraction: float = 0.1,
                       seed: int = 0) -> pd.DataFrame:
    """Manifest of mini-MIAS images (``level="image"``) or lesions with coordinates (``"lesion"``).

    label_rule: a key of :data:`LABEL_RULES`. missing: "error" raises when Info.txt lists images
    that are not under root, "drop" keeps the present ones (with a warning giving the count).
    No official split exists: grouped (film-pair) train / val / test by ``test_fraction`` and
    ``val_fraction`` with ``seed``. Lesion boxes are [row0, col0, row1, col1] in pixels.
    """
    if label_rule not in LABEL_RULES:
        raise ValueError(f"label_rule must be one of {sorted(LABEL_RULES)}, got {label_rule!r}")
    if level not in ("image", "lesion"):
        raise ValueError(f"level must be 'image' or 'lesion', got {level!r}")
    root = Path(root)
    info = read_info(find_info(root))
    images = _find_images(root)
    names = LABEL_RULES[label_rule]
    rows = []
    for ref, group in info.groupby("refnum", sort=True):
        lesions = group[group["abnormality"] != "NORM"]
        if label_rule == "benign_malignant":
            if lesions.empty:
                continue
            label = int((lesions["severity"] == "M").any())
        else:
            label = int(not lesions.empty)
        with_xy = lesions.dropna(subset=["x"])
        boxes = [[r.row - r.radius, r.col - r.radius, r.row + r.radius, r.col + r.radius]
                 for r in with_xy.itertuples()]
        base = {"image_id": ref, "path": str(images.get(ref, "")), "group": f"pair{(int(ref[3:]) + 1) // 2:03d}",
                "split": "train", "label_rule": f"mini-MIAS {label_rule}: " + (
                    "malignant if any row has severity M; NORM images dropped" if label_rule == "benign_malignant"
                    else "abnormal if any row is not NORM"),
                "background": group["background"].iloc[0],
                "abnormality": ";".join(sorted(set(lesions["abnormality"]))) or "NORM",
                "n_lesions": len(lesions), "lesions": json.dumps(boxes)}
        if level == "image":
            rows.append({**base, "label": label, "label_name": names[label],
                         "lesion_box": json.dumps(boxes[0]) if boxes else ""})
        else:
            for k, (rec, box) in enumerate(zip(with_xy.itertuples(), boxes)):
                lesion_label = int(rec.severity == "M") if label_rule == "benign_malignant" else 1
                rows.append({**base, "image_id": f"{ref}_lesion{k}", "label": lesion_label,
                             "label_name": names[lesion_label], "lesion_box": json.dumps(box)})
    manifest = pd.DataFrame(rows)
    absent = manifest["path"] == ""
    if absent.any():
        text = (f"{absent.sum()} of {len(manifest)} mini-MIAS rows have no mdbNNN*.pgm under {root} "
                f"(first: {manifest.loc[absent, 'image_id'].tolist()[:5]})")
        if missing == "error":
            raise FileNotFoundError(text + "; put the PGMs under root, or pass missing='drop' to use only the present ones")
        if missing != "drop":
            raise ValueError(f"missing must be 'error' or 'drop', got {missing!r}")
        warnings.warn(text + "; dropped (missing='drop')", stacklevel=2)
        manifest = manifest[~absent].reset_index(drop=True)
    if manifest.empty:
        raise FileNotFoundError(f"no mini-MIAS images under {root} match {label_rule!r}")
    return assign_splits(manifest, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed)
