"""Read the user's own image files: DICOM, PNG / JPEG / TIFF, PGM and NPY; folders and globs.

``expand_inputs`` turns command-line items (files, folders, glob patterns) into a list of
files in a stable order; ``read_image_file`` decodes one file to float32 (C, H, W) in [0, 1]
(C = 1 or 3, bright = high values) with the facts of how it was read. DICOM goes through
:func:`sgc.data.dicom.read_dicom` (modality LUT, VOI window, MONOCHROME1 inversion); 8-bit
files are divided by 255, 16-bit ones by 65535; NPY files hold floats already in [0, 1]
or uint8 / uint16 integers. Nothing is unpickled (``np.load(allow_pickle=False)``).
"""
from __future__ import annotations

import glob
from pathlib import Path

import numpy as np

__all__ = ["SUFFIXES", "expand_inputs", "read_image_file", "is_dicom"]

SUFFIXES = {".dcm": "dicom", ".dicom": "dicom", ".dic": "dicom", ".png": "pillow", ".jpg": "pillow",
            ".jpeg": "pillow", ".tif": "pillow", ".tiff": "pillow", ".bmp": "pillow", ".pgm": "pgm",
            ".pnm": "pgm", ".npy": "npy"}


def is_dicom(path) -> bool:
    """True when the file carries the DICOM preamble magic ``DICM`` at byte 128."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _kind(path: Path) -> str | None:
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None and is_dicom(path):
        return "dicom"  # DICOM files often have no suffix (e.g. 1.2.840...)
    return kind


def expand_inputs(items) -> list[Path]:
    """Files named, the readable files in named folders (recursively, sorted) and glob matches.

    Order: as given, folders and globs sorted by path; duplicates removed. Raises
    FileNotFoundError naming an item that matches nothing, ValueError for a named file of an
    unknown type.
    """
    out: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _kind(p))
            if not found:
                raise FileNotFoundError(f"{path}: folder holds no readable image "
                                        f"({', '.join(sorted(SUFFIXES))} or DICOM without suffix)")
        elif path.is_file():
            if _kind(path) is None:
                raise ValueError(f"{path}: unknown image type {path.suffix!r}; convert it to one of "
                                 f"{', '.join(sorted(SUFFIXES))}")
            found = [path]
        elif glob.has_magic(str(item)):
            found = sorted(Path(p) for p in glob.glob(str(item), recursive=True) if Path(p).is_file() and _kind(Path(p)))
            if not found:
                raise FileNotFoundError(f"{item}: the pattern matches no readable image file")
        else:
            raise FileNotFoundError(f"{item}: no such file or folder; check the path")
        out += found
    return list(dict.fromkeys(out))


def _from_integers(raw: np.ndarray, path) -> tuple[np.ndarray, int]:
    if raw.dtype == np.bool_:
        return raw.astype(np.float32), 1
    if raw.dtype == np.uint8:
        return raw.astype(np.float32) / 255.0, 8
    if raw.dtype == np.uint16:
        return raw.astype(np.float32) / 65535.0, 16
    if np.issubdtype(raw.dtype, np.integer):
        lo, hi = int(raw.min()), int(raw.max())
        if lo >= 0 and hi <= 65535:  # Pillow opens 16-bit PNGs as int32 mode "I"
            bits = 8 if hi <= 255 and raw.dtype.itemsize == 1 else 16
            return raw.astype(np.float32) / np.float32(2 ** bits - 1), bits
        raise ValueError(f"{path}: integer pixels in [{lo}, {hi}] do not fit 8 or 16 bits; "
                         "save the image as uint8 / uint16, or as floats in [0, 1]")
    if np.issubdtype(raw.dtype, np.floating):
        raw = raw.astype(np.float32)
        if not np.isfinite(raw).all():
            raise ValueError(f"{path}: the image holds NaN or inf values")
        lo, hi = float(raw.min()), float(raw.max())
        if lo < 0 or hi > 1:
            raise ValueError(f"{path}: float pixels in [{lo:.4g}, {hi:.4g}], outside [0, 1]; "
                             "scale them to [0, 1] (or save uint8 / uint16 integers)")
        return raw, 32
    raise ValueError(f"{path}: unsupported pixel type {raw.dtype}")


def _channels_first(raw: np.ndarray, path) -> np.ndarray:
    """(H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4 -> (C, H, W), C in 1, 3 (alpha dropped)."""
    if raw.ndim == 2:
        return raw[None]
    if raw.ndim == 3:
        if raw.shape[-1] in (1, 3, 4) and raw.shape[0] not in (1, 3):
            raw = np.moveaxis(raw, -1, 0)
        if raw.shape[0] in (1, 3, 4):
            return raw[:3] if raw.shape[0] == 4 else raw
    raise ValueError(f"{path}: expected one 2-D image (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4; "
                     f"got shape {raw.shape}")


def read_image_file(path, *, use_window: bool = True, fallback: str = "bits") -> tuple[np.ndarray, dict]:
    """One file -> (float32 (C, H, W) in [0, 1], facts).

    facts: ``format`` (dicom, pillow, pgm, npy), ``bits`` (source bit depth; 32 for floats),
    ``source_shape`` and, for DICOM, ``laterality``, ``view``, ``photometric``, ``intensity``.
    ``use_window`` / ``fallback`` are those of :func:`sgc.data.dicom.read_dicom`.
    Raises ValueError (or :class:`sgc.data.dicom.DicomDecodeError`) naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    kind = _kind(path)
    if kind is None:
        raise ValueError(f"{path}: unknown image type {path.suffix!r}; use {', '.join(sorted(SUFFIXES))}")
    facts: dict = {"format": kind}
    if kind == "dicom":
        from .dicom import read_dicom
        image, info = read_dicom(path, use_window=use_window, fallback=fallback)
        x = image[None]
        facts.update(bits=info.bits_stored, laterality=info.laterality, view=info.view,
                     photometric=info.photometric, intensity=info.intensity)
    elif kind == "pgm":
        from .mini_mias import read_pgm
        raw, maxval = read_pgm(path)
        x = (raw.astype(np.float32) / maxval)[None]
        facts["bits"] = int(np.ceil(np.log2(maxval + 1)))
    elif kind == "npy":
        try:
            raw = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise ValueError(f"{path}: not a plain numeric .npy array ({err}); save with np.save of a "
                             "numeric array") from None
        x, facts["bits"] = _from_integers(_channels_first(np.asarray(raw), path), path)
    else:
        from PIL import Image, UnidentifiedImageError
        try:
            with Image.open(path) as im:
                if im.mode in ("P", "PA", "LA", "RGBA", "CMYK", "YCbCr", "1"):
                    im = im.convert("RGB" if im.mode in ("P", "PA", "RGBA", "CMYK", "YCbCr") else "L")
                raw = np.asarray(im)
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"{path}: not a readable image ({err}); is the file complete?") from None
        x, facts["bits"] = _from_integers(_channels_first(raw, path), path)
    facts["source_shape"] = list(x.shape)
    return np.ascontiguousarray(x, dtype=np.float32), facts
