"""Mammogram preprocessing: breast mask, crop, laterality flip, CLAHE, resize, lesion patches.

All functions take and return float32 images (H, W) with values in [0, 1] (bright = dense),
as produced by :func:`sgc.data.dicom.read_dicom` or an 8-bit PGM divided by 255.
Coordinates are (row, column) in pixels of the array they refer to.

:class:`PreprocessSettings` holds every choice that changes the output; its
:func:`settings_hash` names a cache, so changing any setting rebuilds the cache.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields

import numpy as np
from scipy import ndimage
from skimage.exposure import equalize_adapthist
from skimage.filters import threshold_li
from skimage.transform import resize

__all__ = ["PreprocessSettings", "NoBreastError", "settings_hash", "breast_mask", "bounding_box",
           "detect_laterality", "resize_keep_aspect", "clahe", "lesion_patch", "preprocess"]

PREPROCESS_VERSION = 1  # bump when the code below changes its output for the same settings


class NoBreastError(ValueError):
    """No breast region was found (blank, constant or nearly empty image)."""


@dataclass(frozen=True)
class PreprocessSettings:
    """Every setting that changes a cached image. Unknown keys are rejected by ``from_dict``."""

    size: int = 256                 # output side in pixels (square)
    mode: str = "full"              # "full" (whole breast) or "patch" (square around a lesion box)
    crop: bool = True               # crop to the breast's bounding box before resizing
    flip: str = "auto"              # "auto" (chest wall to the left, from pixels), "laterality" (flip R), "none"
    clahe: bool = False             # contrast-limited adaptive histogram equalisation (the paper's)
    clahe_clip: float = 0.01        # CLAHE clip limit (skimage units, fraction of the histogram)
    clahe_tiles: int = 8            # CLAHE tiles per side
    patch_context: float = 0.5      # patch side = lesion side * (1 + context)
    patch_min_side: int = 128       # smallest patch side in source pixels
    use_window: bool = True         # apply the DICOM VOI LUT / window when present
    fallback: str = "bits"          # DICOM without VOI: "bits", "percentile" or "minmax" (see read_dicom)
    bits: int | None = None         # cache quantisation bits; None = the source's stored depth (max 16)
    min_breast_fraction: float = 0.02  # a mask smaller than this fraction of the image is "no breast"

    def __post_init__(self):
        if self.size < 8:
            raise ValueError(f"size must be >= 8 pixels, got {self.size}")
        if self.mode not in ("full", "patch"):
            raise ValueError(f"mode must be 'full' or 'patch', got {self.mode!r}")
        if self.flip not in ("auto", "laterality", "none"):
            raise ValueError(f"flip must be 'auto', 'laterality' or 'none', got {self.flip!r}")
        if self.fallback not in ("bits", "percentile", "minmax"):
            raise ValueError(f"fallback must be 'bits', 'percentile' or 'minmax', got {self.fallback!r}")
        if self.bits is not None and not 1 <= self.bits <= 16:
            raise ValueError(f"bits must be in 1..16 or None, got {self.bits}")

    @classmethod
    def from_dict(cls, values: dict) -> "PreprocessSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown preprocessing settings {unknown}; known: {sorted(known)}")
        return cls(**values)


def settings_hash(settings: PreprocessSettings) -> str:
    """Hex SHA-256 (16 characters) of the settings and the preprocessing code version."""
    payload = json.dumps({"version": PREPROCESS_VERSION, **asdict(settings)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _stride(shape, target: int) -> int:
    return max(1, int(max(shape) // target))


def breast_mask(image: np.ndarray, *, work_side: int = 512, min_fraction: float = 0.02) -> np.ndarray:
    """Boolean (H, W) mask of the breast: Li threshold, largest component, holes filled.

    (Li's minimum-cross-entropy threshold keeps the faint skin line that Otsu cuts off.)
    The threshold and components are computed on a strided copy with long side about
    ``work_side`` pixels, then expanded to full size. Raises :class:`NoBreastError` when the
    image is constant or the largest component covers less than ``min_fraction`` of it.
    """
    image = np.asarray(image, dtype=np.float32)
    s = _stride(image.shape, work_side)
    small = image[::s, ::s]
    if not np.isfinite(small).all() or float(small.max() - small.min()) < 1e-6:
        raise NoBreastError("image is constant (blank): no breast to find")
    # Smooth slightly so film grain and text labels do not split the breast.
    small = ndimage.uniform_filter(small, size=3)
    mask = small > threshold_li(small)
    labels, n = ndimage.label(mask)
    if n == 0:
        raise NoBreastError("no pixel above the threshold")
    sizes = np.bincount(labels.ravel())[1:]
    mask = ndimage.binary_fill_holes(labels == (1 + int(np.argmax(sizes))))
    if mask.mean() < min_fraction:
        raise NoBreastError(f"largest bright region covers {mask.mean():.2%} of the image, below "
                            f"min_breast_fraction={min_fraction:.2%}")
    full = np.repeat(np.repeat(mask, s, axis=0), s, axis=1)
    full = np.pad(full, ((0, max(0, image.shape[0] - full.shape[0])),
                         (0, max(0, image.shape[1] - full.shape[1]))), mode="edge")
    return full[: image.shape[0], : image.shape[1]]


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(row0, col0, row1, col1) of the True pixels, end-exclusive."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        raise NoBreastError("empty mask")
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def detect_laterality(mask: np.ndarray) -> str:
    """"L" if the breast's mass sits in the left half of the array (chest wall left), else "R"."""
    cols = mask.sum(axis=0).astype(np.float64)
    half = len(cols) // 2
    return "L" if cols[:half].sum() >= cols[half:].sum() else "R"


def _area_downscale(image: np.ndarray, factor: int) -> np.ndarray:
    if factor <= 1:
        return image
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    return image[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def resize_keep_aspect(image: np.ndarray, size: int, *, align: str = "left") -> np.ndarray:
    """Resize so the long side is ``size``, then zero-pad to (size, size).

    align: "left" keeps the image against the left edge (chest wall stays at the border)
    and centres it vertically; "center" centres both ways. Output float32 in the input's range.
    """
    h, w = image.shape
    scale = size / max(h, w)
    out_h, out_w = max(1, round(h * scale)), max(1, round(w * scale))
    factor = int(min(h / out_h, w / out_w) // 2)  # cheap block mean first, then anti-aliased resize
    small = _area_downscale(image.astype(np.float32, copy=False), factor)
    small = resize(small, (out_h, out_w), order=1, anti_aliasing=True, preserve_range=True)
    out = np.zeros((size, size), dtype=np.float32)
    r0 = (size - out_h) // 2
    c0 = 0 if align == "left" else (size - out_w) // 2
    out[r0:r0 + out_h, c0:c0 + out_w] = small
    return out


def clahe(image: np.ndarray, *, clip_limit: float = 0.01, tiles: int = 8) -> np.ndarray:
    """CLAHE (skimage ``equalize_adapthist``) on an image in [0, 1]; float32 in [0, 1]."""
    kernel = (max(2, image.shape[0] // tiles), max(2, image.shape[1] // tiles))
    return equalize_adapthist(np.clip(image, 0, 1), kernel_size=kernel,
                              clip_limit=clip_limit).astype(np.float32)


def lesion_patch(image: np.ndarray, box, *, context: float = 0.5, min_side: int = 128) -> np.ndarray:
    """Square patch centred on ``box`` = (row0, col0, row1, col1), zero-padded at borders.

    Side = max(box height, box width) * (1 + context), at least ``min_side`` pixels.
    Boxes partly outside the image are clipped first; a box fully outside raises ValueError.
    """
    h, w = image.shape
    r0, c0, r1, c1 = (float(v) for v in box)
    r0, r1, c0, c1 = max(r0, 0), min(r1, h), max(c0, 0), min(c1, w)
    if r1 <= r0 or c1 <= c0:
        raise ValueError(f"lesion box {tuple(box)} lies outside the {h}x{w} image")
    side = int(round(max(r1 - r0, c1 - c0, 1) * (1 + context)))
    side = max(side, min_side)
    cr, cc = (r0 + r1) / 2, (c0 + c1) / 2
    top, left = int(round(cr - side / 2)), int(round(cc - side / 2))
    out = np.zeros((side, side), dtype=np.float32)
    sr0, sc0 = max(top, 0), max(left, 0)
    sr1, sc1 = min(top + side, h), min(left + side, w)
    out[sr0 - top:sr1 - top, sc0 - left:sc1 - left] = image[sr0:sr1, sc0:sc1]
    return out


def preprocess(image: np.ndarray, *, settings: PreprocessSettings, laterality: str | None = None,
               box=None) -> tuple[np.ndarray, dict]:
    """One source image (H, W) in [0, 1] -> float32 (size, size) in [0, 1], plus facts.

    Full mode: breast mask -> crop -> flip (chest wall left) -> resize keeping aspect ->
    CLAHE on the breast -> zero background -> pad. Patch mode: square patch around ``box``
    (source pixel coordinates), flip, resize, CLAHE. ``laterality`` ("L"/"R") is used when
    ``settings.flip == "laterality"``. The returned dict records crop box, flip and side.
    """
    image = np.asarray(image, dtype=np.float32)
    info: dict = {"source_rows": int(image.shape[0]), "source_cols": int(image.shape[1])}
    if settings.mode == "patch":
        if box is None:
            raise ValueError("patch mode needs a lesion box for every image (row has none)")
        region = lesion_patch(image, box, context=settings.patch_context, min_side=settings.patch_min_side)
        region_mask = None
        side = detect_laterality(breast_mask(image, min_fraction=settings.min_breast_fraction))
    else:
        mask = breast_mask(image, min_fraction=settings.min_breast_fraction)
        side = detect_laterality(mask)
        if settings.crop:
            r0, c0, r1, c1 = bounding_box(mask)
            info["crop_box"] = [r0, c0, r1, c1]
            region, region_mask = image[r0:r1, c0:c1], mask[r0:r1, c0:c1]
        else:
            region, region_mask = image, mask
    if settings.flip == "auto":
        flip = side == "R"
    elif settings.flip == "laterality":
        if laterality not in ("L", "R"):
            raise ValueError(f"flip='laterality' needs laterality 'L' or 'R', got {laterality!r}")
        flip = laterality == "R"
    else:
        flip = False
    if flip:
        region = region[:, ::-1]
        region_mask = None if region_mask is None else region_mask[:, ::-1]
    info.update(detected_side=side, flipped=bool(flip))
    out = resize_keep_aspect(region, settings.size, align="left" if settings.mode == "full" else "center")
    if settings.clahe:
        out = clahe(out, clip_limit=settings.clahe_clip, tiles=settings.clahe_tiles)
    if region_mask is not None:
        small_mask = resize_keep_aspect(region_mask.astype(np.float32), settings.size) > 0.5
        out = np.where(small_mask, out, 0.0).astype(np.float32)
    return np.clip(out, 0.0, 1.0), info
