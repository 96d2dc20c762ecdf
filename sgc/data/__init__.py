"""Datasets as in-memory image sets with a common shape.

Where the files are: :func:`sgc.data.roots.resolve_root` (``--data-root``, else
``$SGC_DATA/<folder>``, else a default per dataset). Every loader returns
``dict[str, ImageSet]`` keyed by split name (``"train"``, ``"val"``, ``"test"``). Images are float32 arrays of shape (N, C, H, W) with values in [0, 1];
``levels`` records how many discrete intensity values the source stored (17 for
scikit-learn's digits, 256 for 8-bit data, 4096 for 12-bit mammograms) so that
likelihoods can be reported in bits/dim of the original data.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .roots import resolve_root

__all__ = ["ImageSet", "load_dataset", "DATASETS", "resolve_root"]


@dataclass
class ImageSet:
    """One split of a dataset, ready for a model.

    images: float32 (N, C, H, W) in [0, 1]
    labels: int64 (N,) in [0, len(class_names))
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    levels: int = 256                     # discrete intensity levels of the source data
    ids: list[str] = field(default_factory=list)     # one id per image
    groups: list[str] = field(default_factory=list)  # patient / study / pair id per image

    def __post_init__(self):
        self.images = np.asarray(self.images, dtype=np.float32)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W); got shape {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        if not self.ids:
            self.ids = [str(i) for i in range(len(self.labels))]
        if not self.groups:
            self.groups = list(self.ids)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def bit_depth(self) -> float:
        return float(np.log2(self.levels))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def subset(self, index) -> "ImageSet":
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return ImageSet(self.images[index], self.labels[index], self.class_names, self.levels,
                        [self.ids[i] for i in index], [self.groups[i] for i in index])


def load_dataset(name: str, root=None, **options) -> dict[str, ImageSet]:
    """Load a dataset by name. ``root`` is the folder holding its files (unused for digits).

    ``root`` None follows the data-root rule of :mod:`sgc.data.roots`: ``$SGC_DATA/<folder>``
    when ``SGC_DATA`` is set, else a default per dataset (``~/.medmnist`` for MedMNIST).

    Returns {"train", "val", "test"} ImageSets (digits: val only with ``val_size``). Options are
    the loader's keywords, e.g. ``size=32``; see :mod:`sgc.data.loaders` and ``data/README.md``.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name](root=root, **options)


def _digits(root=None, **options):
    from .digits import load_digits_splits
    return load_digits_splits(**options)


def _lazy(name):
    def load(root=None, **options):
        from . import loaders
        return getattr(loaders, name)(root, **options)
    load.__name__ = name
    return load


DATASETS = {
    "digits": _digits,                              # embedded, 8x8, 10 classes
    "breastmnist": _lazy("load_breastmnist"),       # <root>/breastmnist.npz, 1 = malignant
    "medmnist": _lazy("load_medmnist_set"),         # flag="pneumoniamnist", ... (single-label 2-D sets)
    "mini_mias": _lazy("load_mini_mias"),           # Info.txt + mdbNNN.pgm
    "cbis_ddsm": _lazy("load_cbis_ddsm"),           # official CSVs + DICOMs (classic or TCIA layout)
    "inbreast": _lazy("load_inbreast"),             # INbreast.xls/.csv + AllDICOMs
    "vindr_mammo": _lazy("load_vindr_mammo"),       # annotation CSVs + images/<study>/<image>.dicom
}
