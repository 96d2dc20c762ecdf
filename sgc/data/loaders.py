"""``load_dataset`` entry points: one function per source, manifest -> cache -> ImageSets.

Every mammography loader takes the same keywords:

- ``root``: the source's folder (see ``data/README.md``); None follows the data-root rule of
  :mod:`sgc.data.roots` (``$SGC_DATA/<folder>``, else a default); ``size``: output side in pixels;
- ``level``: "image" (whole breast) or "lesion" (patches around lesions, where the source has them);
- ``cache_dir`` (default ``$SGC_CACHE`` or ``~/.cache/sgc``), ``workers``, ``strict``, ``progress``;
- ``val_fraction``, ``seed``: validation carved from train by group when the source has none;
- ``preprocess``: dict of further :class:`PreprocessSettings` fields (``clahe``, ``flip``, ...);
- ``channels``: 1 (grey, the default) or 3 (the grey image repeated, as networks made for RGB
  input and the paper's 3-channel 384 px VinDr-Mammo setting expect); the cache stays grey.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np

from . import ImageSet
from .manifest import image_sets_from_manifest
from .preprocess import PreprocessSettings
from .roots import not_found, resolve_root, with_rule

__all__ = ["load_breastmnist", "load_medmnist_set", "load_mini_mias", "load_cbis_ddsm", "load_inbreast",
           "load_vindr_mammo", "with_channels"]


def _root(root, dataset: str) -> Path:
    """The dataset's folder by the data-root rule; FileNotFoundError stating the rule when absent."""
    path = resolve_root(dataset, root)
    if not path.is_dir():
        raise FileNotFoundError(not_found(dataset, root))
    return path


def with_channels(sets: dict[str, ImageSet], channels: int | None, source: str) -> dict[str, ImageSet]:
    """The image sets with ``channels`` channels: grey repeated to 3, or 3 averaged to grey (None: as is)."""
    if channels is None:
        return sets
    if channels not in (1, 3):
        raise ValueError(f"{source}: channels must be 1 (grey) or 3 (grey repeated), got {channels!r}")
    out = {}
    for name, s in sets.items():
        c = s.images.shape[1]
        x = s.images if c == channels else (np.repeat(s.images, channels, axis=1) if c == 1
                                            else s.images.mean(axis=1, keepdims=True, dtype=np.float32))
        out[name] = ImageSet(x, s.labels, s.class_names, s.levels, s.ids, s.groups)
    return out


@contextmanager
def _rule_on_missing(root, dataset: str):
    """Add the folder looked in and the data-root rule to a source's own "not found" error."""
    try:
        yield
    except FileNotFoundError as err:
        raise FileNotFoundError(with_rule(dataset, root, err)) from None


def _cached(manifest, *, source, class_names, size, level, cache_dir, workers, strict, progress,
            val_fraction, seed, preprocess, channels) -> dict[str, ImageSet]:
    if channels not in (1, 3):
        raise ValueError(f"{source}: channels must be 1 (grey) or 3 (grey repeated), got {channels!r}")
    settings = PreprocessSettings.from_dict({"size": size, "mode": "patch" if level == "lesion" else "full",
                                             **(preprocess or {})})
    sets = image_sets_from_manifest(manifest, class_names=class_names, source=source, cache_dir=cache_dir,
                                    settings=settings, workers=workers, strict=strict, progress=progress,
                                    val_fraction=val_fraction, seed=seed)
    return with_channels(sets, channels, source)


def load_breastmnist(root=None, *, size: int | None = None, resolution: int = 28, channels: int | None = None,
                     download: bool = False) -> dict[str, ImageSet]:
    """BreastMNIST, official split, 0 = benign (normal or benign), 1 = malignant (remapped)."""
    from .medmnist import load_medmnist
    return load_medmnist("breastmnist", root, size=size, resolution=resolution, channels=channels,
                         download=download)


def load_medmnist_set(root=None, *, flag: str = "breastmnist", size: int | None = None, resolution: int = 28,
                      channels: int | None = None, download: bool = False) -> dict[str, ImageSet]:
    """Any single-label MedMNIST 2-D set by ``flag`` (see sgc.data.medmnist.MEDMNIST_2D)."""
    from .medmnist import load_medmnist
    return load_medmnist(flag, root, size=size, resolution=resolution, channels=channels, download=download)


def load_mini_mias(root=None, *, size: int = 256, label_rule: str = "benign_malignant", level: str = "image",
                   missing: str = "error", cache_dir=None, workers: int | None = None, strict: bool = False,
                   progress: bool = True, test_fraction: float = 0.2, val_fraction: float = 0.1, seed: int = 0,
                   preprocess: dict | None = None, channels: int = 1) -> dict[str, ImageSet]:
    """mini-MIAS images or lesion patches; film-pair grouped splits (8-bit, levels 256)."""
    from .mini_mias import LABEL_RULES, mini_mias_manifest
    folder = _root(root, "mini_mias")
    with _rule_on_missing(root, "mini_mias"):
        manifest = mini_mias_manifest(folder, label_rule=label_rule, level=level, missing=missing,
                                      test_fraction=test_fraction, val_fraction=val_fraction, seed=seed)
    return _cached(manifest, source="mini_mias", class_names=LABEL_RULES[label_rule], size=size, level=level,
                   cache_dir=cache_dir, workers=workers, strict=strict, progress=progress,
                   val_fraction=val_fraction, seed=seed, preprocess=preprocess, channels=channels)


def load_cbis_ddsm(root=None, *, size: int = 256, abnormality: str = "mass", level: str = "image",
                   missing: str = "error", dicom_root=None, cache_dir=None, workers: int | None = None,
                   strict: bool = False, progress: bool = True, val_fraction: float = 0.1, seed: int = 0,
                   preprocess: dict | None = None, channels: int = 1) -> dict[str, ImageSet]:
    """CBIS-DDSM full images or ROI patches; official train/test, val carved by patient."""
    from .cbis_ddsm import CLASS_NAMES, cbis_ddsm_manifest
    folder = _root(root, "cbis_ddsm")
    with _rule_on_missing(root, "cbis_ddsm"):
        manifest = cbis_ddsm_manifest(folder, abnormality=abnormality, level=level,
                                      missing=missing, dicom_root=dicom_root, progress=progress)
    return _cached(manifest, source=f"cbis_ddsm_{abnormality}", class_names=CLASS_NAMES, size=size, level=level,
                   cache_dir=cache_dir, workers=workers, strict=strict, progress=progress,
                   val_fraction=val_fraction, seed=seed, preprocess=preprocess, channels=channels)


def load_inbreast(root=None, *, size: int = 256, malignant_birads=("4a", "4b", "4c", "5", "6"), drop_birads=(),
                  missing: str = "error", cache_dir=None, workers: int | None = None, strict: bool = False,
                  progress: bool = True, test_fraction: float = 0.2, val_fraction: float = 0.1, seed: int = 0,
                  preprocess: dict | None = None, channels: int = 1) -> dict[str, ImageSet]:
    """INbreast full images; Bi-Rads rule recorded; splits grouped by DICOM PatientID."""
    from .inbreast import CLASS_NAMES, inbreast_manifest
    folder = _root(root, "inbreast")
    with _rule_on_missing(root, "inbreast"):
        manifest = inbreast_manifest(folder, malignant_birads=malignant_birads,
                                     drop_birads=drop_birads, missing=missing, test_fraction=test_fraction,
                                     val_fraction=val_fraction, seed=seed)
    return _cached(manifest, source="inbreast", class_names=CLASS_NAMES, size=size, level="image",
                   cache_dir=cache_dir, workers=workers, strict=strict, progress=progress,
                   val_fraction=val_fraction, seed=seed, preprocess=preprocess, channels=channels)


def load_vindr_mammo(root=None, *, size: int = 256, level: str = "image", malignant_birads=(4, 5),
                     drop_birads=(), missing: str = "error", cache_dir=None, workers: int | None = None,
                     strict: bool = False, progress: bool = True, val_fraction: float = 0.1, seed: int = 0,
                     preprocess: dict | None = None, channels: int = 1) -> dict[str, ImageSet]:
    """VinDr-Mammo images (breast-level CSV) or finding patches; official split, val by study."""
    from .vindr_mammo import CLASS_NAMES, vindr_manifest
    folder = _root(root, "vindr_mammo")
    with _rule_on_missing(root, "vindr_mammo"):
        manifest = vindr_manifest(folder, level=level, malignant_birads=malignant_birads,
                                  drop_birads=drop_birads, missing=missing)
    return _cached(manifest, source="vindr_mammo", class_names=CLASS_NAMES, size=size, level=level,
                   cache_dir=cache_dir, workers=workers, strict=strict, progress=progress,
                   val_fraction=val_fraction, seed=seed, preprocess=preprocess, channels=channels)
