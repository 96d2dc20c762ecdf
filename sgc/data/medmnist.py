"""MedMNIST 2-D sets (BreastMNIST first) from their official ``.npz`` files.

File layout: ``<root>/<flag>.npz`` (28x28) or ``<root>/<flag>_<res>.npz`` (MedMNIST+, 64, 128,
224); ``root`` None follows the data-root rule (:mod:`sgc.data.roots`: ``$SGC_DATA/medmnist``, else
``~/.medmnist``) with keys ``{train,val,test}_images`` uint8 (N, H, W) or (N, H, W, 3) and
``{train,val,test}_labels`` uint8 (N, 1). The official splits are used as they are.

**BreastMNIST's labels are inverted** relative to the usual convention: in the file
0 = malignant and 1 = normal + benign. :func:`load_medmnist` remaps them so that
``class_names == ("benign", "malignant")`` and 1 = malignant (the positive class); "benign"
here means normal or benign, as in the source. Other sets keep the file's labels.
Downloading needs the optional ``medmnist`` package and internet (``download=True``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from . import ImageSet
from .roots import not_found, resolve_root

__all__ = ["load_medmnist", "MEDMNIST_2D", "RESOLUTIONS"]

RESOLUTIONS = (28, 64, 128, 224)   # the official files: <flag>.npz (28) and MedMNIST+ <flag>_<side>.npz

# flag -> class names in file-label order (from medmnist's INFO); None = multi-label (unsupported)
MEDMNIST_2D = {
    "breastmnist": ("malignant", "normal, benign"),
    "pneumoniamnist": ("normal", "pneumonia"),
    "dermamnist": ("actinic keratoses", "basal cell carcinoma", "benign keratosis", "dermatofibroma",
                   "melanoma", "melanocytic nevi", "vascular lesions"),
    "octmnist": ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
    "retinamnist": ("0", "1", "2", "3", "4"),
    "bloodmnist": ("basophil", "eosinophil", "erythroblast", "immature granulocytes", "lymphocyte",
                   "monocyte", "neutrophil", "platelet"),
    "pathmnist": ("adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
                  "normal colon mucosa", "cancer-associated stroma", "colorectal adenocarcinoma epithelium"),
    "tissuemnist": tuple(str(k) for k in range(8)),
    "organamnist": tuple(str(k) for k in range(11)),
    "organcmnist": tuple(str(k) for k in range(11)),
    "organsmnist": tuple(str(k) for k in range(11)),
    "chestmnist": None,
}


def _npz_path(root, flag: str, resolution: int, download: bool) -> Path:
    name = f"{flag}.npz" if resolution == 28 else f"{flag}_{resolution}.npz"
    dataset = "breastmnist" if flag == "breastmnist" else "medmnist"   # the same folder either way
    path = resolve_root(dataset, root) / name
    if path.exists():
        return path
    if download:
        try:
            import medmnist
        except ImportError:
            raise FileNotFoundError(f"{path} not found and download=True needs the optional `medmnist` "
                                    "package: pip install medmnist") from None
        cls = getattr(medmnist, medmnist.INFO[flag]["python_class"])
        cls(split="train", download=True, root=str(path.parent), size=resolution)
        return path
    raise FileNotFoundError(f"{not_found(dataset, root, name)} Put the official MedMNIST file there, or pass "
                            "download=True (needs the `medmnist` package and internet).")


def _to_unit(x: np.ndarray, path, key: str) -> np.ndarray:
    """float32 in [0, 1]: integer data (the official uint8 files) / 255; float data kept as it
    is when it already lies in [0, 1] (a file someone normalised), else DataError naming the file."""
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DataError(f"{path}: {key} holds integers in [{x.min()}, {x.max()}], not 8-bit values 0..255. "
                            f"Use the official MedMNIST file, or scale the images to 0..255")
        return x.astype(np.float32) / 255.0
    if np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
        if x.size and not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
            finite = x[np.isfinite(x)]
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (np.nan, np.nan)
            raise DataError(f"{path}: {key} is floating point with values in [{lo:.4g}, {hi:.4g}] (or NaN/inf), "
                            f"not [0, 1]. Store uint8 0..255 (as the official files) or floats in [0, 1]")
        return x
    raise DataError(f"{path}: {key} has dtype {x.dtype}; expected uint8 (0..255) or floats in [0, 1]")


def _fit(x: np.ndarray, size: int | None) -> np.ndarray:
    """Zero-pad (N, C, h, w) symmetrically to size, or area-resize down when size < h."""
    if size is None or size == x.shape[-1]:
        return x
    side = x.shape[-1]
    if size > side:
        lo = (size - side) // 2
        return np.pad(x, ((0, 0), (0, 0), (lo, size - side - lo), (lo, size - side - lo)))
    from skimage.transform import resize
    return resize(x, x.shape[:2] + (size, size), order=1, anti_aliasing=True,
                  preserve_range=True).astype(np.float32)


def load_medmnist(flag: str = "breastmnist", root=None, *, size: int | None = None,
                  resolution: int = 28, channels: int | None = None, download: bool = False) -> dict[str, ImageSet]:
    """Official train / val / test of one MedMNIST 2-D set as ImageSets.

    Images float32 (N, C, size, size) in [0, 1] (uint8 value / 255, ``levels`` = 256; C = 1 or 3;
    a file that already stores floats in [0, 1] is taken as it is).
    ``size`` larger than the file's side pads with zeros (28 -> 32 keeps every pixel); smaller
    resizes. ``resolution`` picks the file: 28 is ``<flag>.npz``, 64 / 128 / 224 the MedMNIST+
    ``<flag>_<resolution>.npz`` (same keys, images of that side; checked). ``channels``: None keeps
    the file's, 3 repeats a grey image, 1 averages an RGB one.
    BreastMNIST: labels remapped to 0 = benign (normal or benign), 1 = malignant.
    """
    flag = flag.lower()
    if flag not in MEDMNIST_2D:
        raise ValueError(f"unknown MedMNIST 2-D flag {flag!r}; choose one of {sorted(MEDMNIST_2D)}")
    if MEDMNIST_2D[flag] is None:
        raise ValueError(f"{flag} is multi-label; this loader supports single-label sets only")
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS} (the sides of the official MedMNIST files), "
                         f"got {resolution!r}; use size= to pad or resize")
    path = _npz_path(root, flag, resolution, download)
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc}); "
                         "re-download it (MD5s are in medmnist's INFO)") from exc
    out = {}
    with data:
        for split in ("train", "val", "test"):
            for key in (f"{split}_images", f"{split}_labels"):
                if key not in data.files:
                    raise ValueError(f"{path}: key {key!r} missing (has {data.files}); is this a MedMNIST file?")
            images = data[f"{split}_images"]
            if images.ndim not in (3, 4) or images.shape[1:3] != (resolution, resolution):
                raise DataError(f"{path}: {split}_images has shape {images.shape}, not (N, {resolution}, "
                                f"{resolution}[, 3]) as resolution={resolution} names; pass the resolution of the file")
            x = images[:, None] if images.ndim == 3 else np.moveaxis(images, -1, 1)
            x = _fit(_to_unit(x, path, f"{split}_images"), size)
            y = data[f"{split}_labels"].reshape(len(images), -1)
            if y.shape[1] != 1:
                raise ValueError(f"{path}: labels have {y.shape[1]} columns; expected one (single-label)")
            y = y[:, 0].astype(np.int64)
            names = MEDMNIST_2D[flag]
            if flag == "breastmnist":
                y, names = 1 - y, ("benign", "malignant")
            ids = [f"{flag}_{split}_{k:05d}" for k in range(len(y))]
            out[split] = ImageSet(x, y, names, 256, ids, list(ids))
    from .loaders import with_channels
    return with_channels(out, channels, str(path))
