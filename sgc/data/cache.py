"""Decode a manifest's images once, in parallel, into a memory-mappable array on disk.

Layout of one cache, ``<cache_dir>/<settings hash>/``::

    settings.json    the PreprocessSettings and their hash
    items/           one <key>.npy + <key>.json per finished image while building (resumable)
    images.npy       uint8 or uint16 (N, 1, size, size), quantised to 2**bits levels per image
    manifest.csv     image_id, path, bits, index (row in images.npy) + facts (laterality, flip, ...)
    errors.csv       image_id, path, error: every image that could not be cached, and why
    complete.json    written last; without it the cache is not used

Pixels depend only on (the source file, lesion box / ROI, settings), so labels are never stored here:
:func:`sgc.data.manifest.image_sets_from_manifest` joins a caller's manifest to the cache by
``image_id``. Each source file is keyed by its size and modification time (``source_size``,
``source_mtime_ns`` in manifest.csv): re-running with the same settings skips finished images
whose file is unchanged and decodes again a file that was fixed or replaced. Other settings
hash to another folder, so a changed setting rebuilds. A cache is marked complete only after
every array and table was written (atomically, via a temporary name). Images left out (listed
in errors.csv) are reported with a warning every time the cache is built or reused.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import SgcError
from ..fileio import atomic_path, atomic_write_text
from ..progress import tqdm
from .preprocess import PreprocessSettings, preprocess, settings_hash

__all__ = ["CacheError", "CacheResult", "build_cache", "open_cache", "read_source_image"]

PIXEL_COLUMNS = ("image_id", "path", "lesion_box", "roi_paths", "laterality")  # columns that change the pixels
STAT_COLUMNS = ("source_size", "source_mtime_ns")  # the source file's identity: a fixed file is read again


class CacheError(SgcError, RuntimeError):
    """The cache could not be built (strict mode with unreadable files, or nothing readable)."""


@dataclass
class CacheResult:
    """Where the cache is and what building it did. ``seconds`` is wall time of this call."""

    path: Path
    n_images: int                  # images in the finished cache
    n_errors: int                  # images that could not be cached (listed in errors.csv)
    n_decoded: int                 # images decoded in this call
    n_reused: int                  # images taken from earlier work
    seconds: float
    errors: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)


def read_source_image(path, *, settings: PreprocessSettings) -> tuple[np.ndarray, dict]:
    """Read a DICOM, PGM or PNG file to float32 (H, W) in [0, 1] plus facts (bits, laterality...)."""
    suffix = Path(path).suffix.lower()
    if suffix in (".pgm", ".pnm"):
        from .mini_mias import read_pgm
        raw, maxval = read_pgm(path)
        return raw.astype(np.float32) / maxval, {"bits": int(np.ceil(np.log2(maxval + 1)))}
    if suffix in (".png", ".jpg", ".jpeg", ".tif", ".tiff"):
        from PIL import Image
        with Image.open(path) as im:
            raw = np.asarray(im)
        if raw.ndim == 3:
            raw = raw[..., :3].mean(axis=-1)
        bits = 16 if raw.dtype == np.uint16 else 8
        return raw.astype(np.float32) / (2 ** bits - 1), {"bits": bits}
    from .dicom import read_dicom
    image, info = read_dicom(path, use_window=settings.use_window, fallback=settings.fallback)
    return image, {"bits": info.bits_stored, "laterality": info.laterality, "view": info.view,
                   "photometric": info.photometric, "intensity": info.intensity}


def _key(image_id: str) -> str:
    return hashlib.sha1(str(image_id).encode()).hexdigest()[:20]


def _box(row: dict, image: np.ndarray):
    box = row.get("lesion_box")
    if isinstance(box, str) and box.strip():
        return json.loads(box)
    roi = row.get("roi_paths")
    if isinstance(roi, str) and roi.strip():
        from .cbis_ddsm import roi_mask_box
        return roi_mask_box(json.loads(roi), image.shape)
    return None


def _process(row: dict, settings_dict: dict, items: str) -> tuple[str, dict | None, str | None]:
    """Worker: decode + preprocess one row, write items/<key>.npy and .json. Returns (id, facts, error)."""
    settings = PreprocessSettings(**settings_dict)
    image_id = str(row["image_id"])
    try:
        image, facts = read_source_image(row["path"], settings=settings)
        laterality = row.get("laterality")
        if laterality not in ("L", "R"):  # NaN / blank in the table: use the DICOM header
            laterality = facts.get("laterality")
        out, info = preprocess(image, settings=settings, laterality=laterality,
                               box=_box(row, image) if settings.mode == "patch" else None)
        bits = settings.bits or min(int(facts.get("bits") or 16), 16)
        q = np.round(out * (2 ** bits - 1)).astype(np.uint16)
        facts = {**facts, **info, "bits": bits}
        key = os.path.join(items, _key(image_id))
        np.save(key + ".tmp.npy", q, allow_pickle=False)
        os.replace(key + ".tmp.npy", key + ".npy")
        with open(key + ".tmp.json", "w") as fh:
            json.dump({"image_id": image_id, "path": str(row["path"]), **facts,
                       **{c: int(row[c]) for c in STAT_COLUMNS}}, fh)
        os.replace(key + ".tmp.json", key + ".json")
        return image_id, facts, None
    except Exception as exc:  # every failure is reported with its reason, never dropped silently
        return image_id, None, f"{type(exc).__name__}: {exc}"


def _with_stats(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest with each source file's size and mtime (ns); -1 for a file that is not there."""
    sizes, mtimes = [], []
    for path in manifest["path"].astype(str):
        try:
            st = os.stat(path)
            sizes.append(st.st_size)
            mtimes.append(st.st_mtime_ns)
        except OSError:
            sizes.append(-1)
            mtimes.append(-1)
    return manifest.assign(source_size=sizes, source_mtime_ns=mtimes)


def _manifest_hash(manifest: pd.DataFrame) -> str:
    cols = [c for c in (*PIXEL_COLUMNS, *STAT_COLUMNS) if c in manifest.columns]
    text = manifest[cols].astype(str).sort_values("image_id").to_csv(index=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _same_source(facts: dict, row: dict) -> bool:
    """The cached item came from this row's file as it is now (same path, size and mtime)."""
    return str(facts.get("path")) == str(row["path"]) and all(
        str(facts.get(c)) == str(int(row[c])) for c in STAT_COLUMNS)


def _item_is_current(items: Path, row: dict) -> bool:
    key = items / _key(row["image_id"])
    if not (key.with_suffix(".npy").exists() and key.with_suffix(".json").exists()):
        return False
    try:
        return _same_source(json.loads(key.with_suffix(".json").read_text()), row)
    except (OSError, json.JSONDecodeError):
        return False


def _atomic_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def build_cache(manifest: pd.DataFrame, cache_dir, *, settings: PreprocessSettings = PreprocessSettings(),
                workers: int | None = None, strict: bool = False, progress: bool = True) -> CacheResult:
    """Decode and preprocess every manifest row into ``<cache_dir>/<settings hash>/``.

    manifest: needs ``image_id`` (unique) and ``path``; optional ``laterality``,
      ``lesion_box`` (JSON [row0, col0, row1, col1], source pixels) or ``roi_paths`` for patch mode.
    workers: processes (default: all cores); 1 decodes in this process.
    strict: raise :class:`CacheError` if any image fails (the cache is then not marked complete;
      finished images are kept and reused by the next run).
    """
    start = time.perf_counter()
    if manifest.empty:
        raise CacheError("the manifest is empty: no images to cache (check the loader's filters)")
    if manifest["image_id"].duplicated().any():
        dup = manifest.loc[manifest["image_id"].duplicated(), "image_id"].tolist()[:5]
        raise CacheError(f"image_id must be unique in the manifest; duplicated: {dup}")
    root = Path(cache_dir) / settings_hash(settings)
    items = root / "items"
    manifest = _with_stats(manifest)
    mhash = _manifest_hash(manifest)
    done = root / "complete.json"
    if done.exists():
        meta = json.loads(done.read_text())
        if meta.get("manifest_hash") == mhash:
            errors = pd.read_csv(root / "errors.csv", dtype=str) if meta["n_errors"] else pd.DataFrame()
            if len(errors):  # reported on every use, not only when the cache was built
                warnings.warn(_error_text(errors, root) + "; they are left out of the cache", stacklevel=2)
            return CacheResult(root, meta["n_images"], meta["n_errors"], 0, meta["n_images"],
                               time.perf_counter() - start, errors)
    items.mkdir(parents=True, exist_ok=True)
    (root / "settings.json").write_text(json.dumps({"hash": settings_hash(settings), **asdict(settings)}, indent=1))
    _reuse_previous(root, items, manifest)
    if done.exists():
        done.unlink()  # from here on the folder is in progress until complete.json is rewritten

    rows = manifest.to_dict("records")
    todo = [r for r in rows if not _item_is_current(items, r)]
    n_reused = len(rows) - len(todo)
    errors, workers = [], workers or os.cpu_count() or 1
    bar = tqdm(total=len(todo), desc=f"caching {root.name}", unit="img", disable=not progress)
    settings_dict = asdict(settings)
    if workers == 1 or len(todo) <= 1:
        results = (_process(r, settings_dict, str(items)) for r in todo)
        for image_id, facts, error in results:
            if error:
                errors.append({"image_id": image_id, "error": error})
            bar.update()
    else:
        context = multiprocessing.get_context("spawn")  # safe with threads (torch, BLAS) in the parent
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [pool.submit(_process, r, settings_dict, str(items)) for r in todo]
            for future in as_completed(futures):
                image_id, facts, error = future.result()
                if error:
                    errors.append({"image_id": image_id, "error": error})
                bar.update()
    bar.close()
    paths = dict(zip(manifest["image_id"].astype(str), manifest["path"].astype(str)))
    errors_df = pd.DataFrame(errors, columns=["image_id", "error"])
    errors_df.insert(1, "path", [paths[i] for i in errors_df["image_id"]])
    _atomic_csv(errors_df, root / "errors.csv")
    if strict and len(errors_df):
        raise CacheError(_error_text(errors_df, root) + " (strict=True makes this fatal; the cache "
                         "is not marked complete, finished images are kept for the next run)")
    if len(errors_df) == len(rows):
        raise CacheError(_error_text(errors_df, root) + "; no image could be cached")
    n_images = _assemble(root, items, manifest, set(errors_df["image_id"]))
    meta = {"settings_hash": settings_hash(settings), "manifest_hash": mhash, "n_images": n_images,
            "n_errors": len(errors_df), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_text(done, json.dumps(meta, indent=1))
    shutil.rmtree(items, ignore_errors=True)
    if len(errors_df):
        warnings.warn(_error_text(errors_df, root) + "; they are left out of the cache", stacklevel=2)
    return CacheResult(root, n_images, len(errors_df), len(todo) - len(errors_df), n_reused,
                       time.perf_counter() - start, errors_df)


def _error_text(errors: pd.DataFrame, root: Path) -> str:
    first = errors.iloc[0]
    return (f"{len(errors)} image(s) could not be cached, listed with reasons in {root / 'errors.csv'}; "
            f"first: {first['path']}: {first['error']}")


def _reuse_previous(root: Path, items: Path, manifest: pd.DataFrame) -> int:
    """Copy rows of an earlier complete cache (same settings) whose id, path and source file
    (size, mtime) are unchanged; a cache of an older layout without file stats is not reused."""
    if not (root / "complete.json").exists():
        return 0
    old = pd.read_csv(root / "manifest.csv", dtype={"image_id": str, "path": str})
    if not set(STAT_COLUMNS) <= set(old.columns):
        return 0
    images = np.load(root / "images.npy", mmap_mode="r", allow_pickle=False)
    wanted = {str(r["image_id"]): r for r in manifest.to_dict("records")}
    n = 0
    for rec in old.to_dict("records"):
        row = wanted.get(rec["image_id"])
        if row is None or not _same_source(rec, row):
            continue
        key = items / _key(rec["image_id"])
        np.save(str(key) + ".npy", np.asarray(images[int(rec["index"]), 0], dtype=np.uint16), allow_pickle=False)
        facts = {k: v for k, v in rec.items() if k != "index" and not (isinstance(v, float) and np.isnan(v))}
        Path(str(key) + ".json").write_text(json.dumps(facts, default=str))
        n += 1
    return n


def _assemble(root: Path, items: Path, manifest: pd.DataFrame, failed: set) -> int:
    ids = [i for i in manifest["image_id"].astype(str) if i not in failed]
    facts = [json.loads((items / f"{_key(i)}.json").read_text()) for i in ids]
    first = np.load(items / f"{_key(ids[0])}.npy", allow_pickle=False)
    dtype = np.uint8 if max(f["bits"] for f in facts) <= 8 else np.uint16
    with atomic_path(root / "images.npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(len(ids), 1, *first.shape))
        for k, image_id in enumerate(ids):
            out[k, 0] = np.load(items / f"{_key(image_id)}.npy", allow_pickle=False)
        out.flush()
        del out
    table = pd.DataFrame(facts)
    table["index"] = np.arange(len(ids))
    for col in table.columns:  # lists (crop boxes) as JSON text so the CSV round-trips
        if table[col].map(lambda v: isinstance(v, (list, dict))).any():
            table[col] = table[col].map(json.dumps)
    _atomic_csv(table, root / "manifest.csv")
    return len(ids)


def open_cache(path, *, mmap: bool = True) -> tuple[np.ndarray, pd.DataFrame]:
    """Open a complete cache folder: (images uint8/uint16 (N, 1, S, S), memory-mapped; manifest).

    Divide row k by ``2 ** manifest.bits[k] - 1`` to get [0, 1]. Raises :class:`CacheError`
    for a folder that is missing or was never marked complete.
    """
    path = Path(path)
    if not (path / "complete.json").exists():
        raise CacheError(f"{path} is not a complete cache (no complete.json): it was interrupted "
                         "or never built; run build_cache again to finish it")
    images = np.load(path / "images.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
    table = pd.read_csv(path / "manifest.csv", dtype={"image_id": str, "path": str})
    return images, table
