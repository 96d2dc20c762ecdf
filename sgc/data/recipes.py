"""A run's preprocessing as data: the recipe that turns one image file into a model input.

A recipe is a JSON-able dict stored in the run folder's ``config.json`` (``data.preprocessing``,
recorded by :func:`sgc.pipeline.train_on_dataset`) and in an export. Run folders written before
recipes existed get one derived from their recorded dataset and loader options
(:func:`recipe_from_config`), the same way the loader would have set itself up. Two kinds:

- ``"array"`` (digits, MedMNIST): the source is a ``side`` x ``side`` image with
  ``source_levels`` grey levels. A file of that size is used as it is (only quantised to the
  source levels); another size is first resized to ``side`` x ``side`` (skimage, bilinear,
  anti-aliased: the file is then *not* what the loader saw, and ``resized`` says so). Then the
  loader's own fit to ``size`` (zero padding, or area resizing when smaller).
- ``"mammogram"``: :func:`sgc.data.preprocess.preprocess` with the loader's
  :class:`PreprocessSettings` (breast crop, flip, CLAHE, resize), then the cache's
  quantisation to ``2 ** bits - 1`` levels, repeated to ``channels`` (the loaders' ``channels=3``).

``prepare_image`` applies a recipe to a decoded image, ``prepare_file`` to a file; both return
float32 (C, size, size) in [0, 1] and the facts of what was done.
"""
from __future__ import annotations

import inspect
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .files import read_image_file
from .preprocess import PREPROCESS_VERSION, PreprocessSettings, preprocess

__all__ = ["RECIPE_VERSION", "recipe_for", "recipe_from_config", "prepare_image", "prepare_file"]

RECIPE_VERSION = 1
_MAMMOGRAPHY = {"mini_mias": "load_mini_mias", "cbis_ddsm": "load_cbis_ddsm", "inbreast": "load_inbreast",
                "vindr_mammo": "load_vindr_mammo"}


def recipe_for(dataset: str,        # a name of sgc.data.DATASETS
               options: dict,       # the loader keywords the run was trained with
               shape,               # (C, H, W) of the training images
               levels: int,         # grey levels of the training data
               ) -> dict:
    """The recipe of a dataset loaded with ``options`` (what the loader did to every image)."""
    options = dict(options or {})
    c, h, w = (int(v) for v in shape)
    base = {"version": RECIPE_VERSION, "dataset": dataset, "channels": c, "size": h, "levels": int(levels)}
    if dataset == "digits":
        return {**base, "kind": "array", "side": 8, "source_levels": 17}
    if dataset in ("breastmnist", "medmnist"):
        return {**base, "kind": "array", "side": int(options.get("resolution", 28)), "source_levels": 256,
                "flag": options.get("flag", "breastmnist") if dataset == "medmnist" else "breastmnist"}
    if dataset in _MAMMOGRAPHY:
        from . import loaders
        sig = inspect.signature(getattr(loaders, _MAMMOGRAPHY[dataset]))
        bound = sig.bind_partial(None, **options)
        bound.apply_defaults()
        args = bound.arguments
        settings = PreprocessSettings.from_dict({"size": args["size"],
                                                 "mode": "patch" if args.get("level") == "lesion" else "full",
                                                 **(args.get("preprocess") or {})})
        return {**base, "kind": "mammogram", "settings": asdict(settings), "preprocess_version": PREPROCESS_VERSION}
    raise ValueError(f"no preprocessing recipe is known for dataset {dataset!r}; record one in config.json "
                     f"under data.preprocessing (see sgc.data.recipes)")


def recipe_from_config(config: dict, source="config.json") -> dict:
    """The recorded recipe of a run's config, else one derived from its data section."""
    data = config.get("data")
    if not data:
        raise ValueError(f"{source} has no 'data' section: the run was not trained by sgc train / "
                         "train_on_dataset, so its preprocessing is unknown; retrain it with sgc train")
    if data.get("preprocessing"):
        return dict(data["preprocessing"])
    recipe = recipe_for(data["dataset"], data.get("options") or {}, data["shape"], data["levels"])
    if [recipe["channels"], recipe["size"], recipe["size"]] != list(data["shape"]):
        raise ValueError(f"{source}: the preprocessing derived from dataset {data['dataset']!r} and options "
                         f"{data.get('options')} gives images of side {recipe['size']}, but the run recorded "
                         f"shape {data['shape']}; record data.preprocessing in {source} by hand")
    recipe["derived"] = True  # reconstructed from the loader settings, not recorded at training time
    return recipe


def _quantise(x: np.ndarray, levels: int) -> np.ndarray:
    """Round to k / (levels - 1), float32, as the loaders store their sources."""
    k = np.round(np.clip(x, 0, 1) * (levels - 1))
    return k.astype(np.float32) / np.float32(levels - 1)


def _array(recipe: dict, x: np.ndarray, facts: dict) -> np.ndarray:
    from skimage.transform import resize
    from .medmnist import _fit
    c, side = recipe["channels"], recipe["side"]
    if x.shape[0] != c:
        x = np.repeat(x, c, axis=0) if x.shape[0] == 1 else x.mean(axis=0, keepdims=True, dtype=np.float64)
        facts["channels_converted"] = True
    resized = x.shape[1:] != (side, side)
    if resized:
        x = resize(x.astype(np.float64), (c, side, side), order=1, anti_aliasing=True, preserve_range=True)
    facts["resized"] = bool(resized)
    x = _quantise(x, recipe["source_levels"])
    return _fit(x[None], recipe["size"])[0].astype(np.float32)  # the loader's pad / area resize


def _mammogram(recipe: dict, x: np.ndarray, facts: dict, box=None, laterality=None) -> np.ndarray:
    settings = PreprocessSettings(**recipe["settings"])
    image = x[0] if x.shape[0] == 1 else x.mean(axis=0, dtype=np.float64).astype(np.float32)
    if settings.mode == "patch" and box is None:
        raise ValueError("this run was trained on lesion patches: give the lesion box (row0, col0, row1, col1, "
                         "source pixels) of every file, or crop the files around their lesions")
    laterality = laterality or facts.get("laterality")
    out, info = preprocess(image, settings=settings, laterality=laterality, box=box)
    bits = settings.bits or min(int(facts.get("bits") or 16), 16)
    scale = np.float32(2 ** bits - 1)
    facts.update({k: v for k, v in info.items()}, quantised_bits=bits)
    grey = (np.round(out * scale).astype(np.uint16).astype(np.float32) / scale)[None]
    return np.repeat(grey, recipe["channels"], axis=0)  # channels=3: the grey image repeated, as the loaders do


def prepare_image(recipe: dict, x: np.ndarray, facts: dict | None = None, *, box=None,
                  laterality: str | None = None) -> tuple[np.ndarray, dict]:
    """A decoded image (C, H, W) or (H, W) in [0, 1] -> (float32 (C, size, size) in [0, 1], facts).

    ``box`` (row0, col0, row1, col1 in source pixels) is needed for lesion-patch runs;
    ``laterality`` ("L"/"R") overrides the DICOM header's for ``flip="laterality"``.
    """
    facts = dict(facts or {})
    x = np.asarray(x, dtype=np.float32)
    x = x[None] if x.ndim == 2 else x
    if recipe["kind"] == "array":
        out = _array(recipe, x, facts)
    elif recipe["kind"] == "mammogram":
        out = _mammogram(recipe, x, facts, box=box, laterality=laterality)
    else:
        raise ValueError(f"unknown recipe kind {recipe.get('kind')!r}; expected 'array' or 'mammogram'")
    want = (recipe["channels"], recipe["size"], recipe["size"])
    assert out.shape == want, f"recipe produced {out.shape}, expected {want}"
    return out, facts


def prepare_file(recipe: dict, path, *, box=None, laterality: str | None = None) -> tuple[np.ndarray, dict]:
    """Read ``path`` and apply the recipe: (float32 (C, size, size) in [0, 1], facts incl. ``path``)."""
    settings = recipe.get("settings") or {}
    x, facts = read_image_file(path, use_window=settings.get("use_window", True),
                               fallback=settings.get("fallback", "bits"))
    out, facts = prepare_image(recipe, x, facts, box=box, laterality=laterality)
    return out, {"path": str(Path(path)), **facts}
