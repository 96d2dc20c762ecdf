"""The decode cache: skip done work, rebuild on changed settings, error reports, no partial cache."""
import json

import numpy as np
import pandas as pd
import pytest

from data_fixtures import breast_phantom, write_dicom
from sgc.data import cache as cache_module
from sgc.data.cache import CacheError, build_cache, open_cache
from sgc.data.manifest import image_sets_from_manifest, validate_manifest
from sgc.data.preprocess import PreprocessSettings

SMALL = PreprocessSettings(size=32)


def phantom_manifest(folder, n=8):
    rows = []
    for k in range(n):
        side = "LR"[k % 2]
        image = breast_phantom(side=side, seed=k)
        if k == 3:  # MONOCHROME1 stores the inverted grey scale
            path = write_dicom(folder / f"img{k}.dcm", 1 - image, laterality=side, photometric="MONOCHROME1")
        else:
            path = write_dicom(folder / f"img{k}.dcm", image, laterality=side)
        rows.append({"image_id": f"img{k}", "path": str(path), "label": k % 2, "label_name": "ab"[k % 2],
                     "group": f"patient{k // 2}", "split": "test" if k >= 6 else "train", "label_rule": "test rule"})
    return pd.DataFrame(rows)


def test_build_then_skip_then_rebuild_on_changed_settings(tmp_path):
    manifest = phantom_manifest(tmp_path / "src")
    first = build_cache(manifest, tmp_path / "cache", settings=SMALL, workers=1, progress=False)
    assert (first.n_images, first.n_errors, first.n_decoded, first.n_reused) == (8, 0, 8, 0)
    images, table = open_cache(first.path)
    assert isinstance(images, np.memmap) and images.shape == (8, 1, 32, 32) and images.dtype == np.uint16
    assert list(table["image_id"]) == list(manifest["image_id"]) and set(table["bits"]) == {12}
    assert table.loc[3, "photometric"] == "MONOCHROME1"
    assert images[3, 0, :, :6].mean() > 10 * images[3, 0, :, -6:].mean()  # inverted back, flipped to the left
    again = build_cache(manifest, tmp_path / "cache", settings=SMALL, workers=1, progress=False)
    assert again.path == first.path and again.n_decoded == 0 and again.seconds < first.seconds
    other = build_cache(manifest, tmp_path / "cache", settings=PreprocessSettings(size=32, clahe=True),
                        workers=1, progress=False)
    assert other.path != first.path and other.n_decoded == 8
    assert json.loads((other.path / "settings.json").read_text())["clahe"] is True


def test_changed_manifest_reuses_finished_rows(tmp_path):
    manifest = phantom_manifest(tmp_path / "src")
    build_cache(manifest.iloc[:5], tmp_path / "cache", settings=SMALL, workers=1, progress=False)
    grown = build_cache(manifest, tmp_path / "cache", settings=SMALL, workers=1, progress=False)
    assert grown.n_images == 8 and grown.n_reused == 5 and grown.n_decoded == 3


def test_parallel_workers_match_serial(tmp_path):
    manifest = phantom_manifest(tmp_path / "src", n=4)
    serial = build_cache(manifest, tmp_path / "a", settings=SMALL, workers=1, progress=False)
    parallel = build_cache(manifest, tmp_path / "b", settings=SMALL, workers=2, progress=True)
    np.testing.assert_array_equal(open_cache(serial.path)[0], open_cache(parallel.path)[0])


def test_unreadable_files_are_reported_not_dropped(tmp_path):
    manifest = phantom_manifest(tmp_path / "src", n=4)
    (tmp_path / "src" / "img1.dcm").write_bytes(b"garbage")
    write_dicom(tmp_path / "src" / "img2.dcm", np.zeros((64, 64)))  # blank film: no breast
    extra = {**manifest.iloc[0].to_dict(), "image_id": "gone", "path": str(tmp_path / "nope.dcm")}
    manifest = pd.concat([manifest, pd.DataFrame([extra])], ignore_index=True)
    with pytest.warns(UserWarning, match=r"3 image\(s\) could not be cached"):
        result = build_cache(manifest, tmp_path / "cache", settings=SMALL, workers=1, progress=False)
    assert (result.n_images, result.n_errors) == (2, 3)
    errors = pd.read_csv(result.path / "errors.csv")
    reasons = dict(zip(errors["image_id"], errors["error"]))
    assert "not a readable DICOM" in reasons["img1"] and "img1.dcm" in reasons["img1"]
    assert "NoBreastError" in reasons["img2"] and "file not found" in reasons["gone"]


def test_strict_mode_is_fatal_and_leaves_no_complete_cache(tmp_path):
    manifest = phantom_manifest(tmp_path / "src", n=4)
    (tmp_path / "src" / "img1.dcm").write_bytes(b"garbage")
    with pytest.raises(CacheError, match="img1.dcm.*strict=True"):
        build_cache(manifest, tmp_path / "cache", settings=SMALL, workers=1, strict=True, progress=False)
    folder = next((tmp_path / "cache").iterdir())
    assert not (folder / "complete.json").exists() and not (folder / "images.npy").exists()
    with pytest.raises(CacheError, match="not a complete cache"):
        open_cache(folder)
    write_dicom(tmp_path / "src" / "img1.dcm", breast_phantom(side="R"))  # fix the file, run again
    fixed = build_cache(manifest, tmp_path / "cache", settings=SMALL, workers=1, strict=True, progress=False)
    assert fixed.n_images == 4 and fixed.n_reused == 3 and fixed.n_decoded == 1


def test_interrupted_build_is_not_marked_complete_and_resumes(tmp_path, monkeypatch):
    manifest = phantom_manifest(tmp_path / "src", n=4)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("simulated interruption while assembling")

    monkeypatch.setattr(cache_module, "_assemble", crash)
    with pytest.raises(KeyboardInterrupt):
        build_cache(manifest, tmp_path / "cache", settings=SMALL, workers=1, progress=False)
    folder = next((tmp_path / "cache").iterdir())
    assert not (folder / "complete.json").exists()
    monkeypatch.undo()
    resumed = build_cache(manifest, tmp_path / "cache", settings=SMALL, workers=1, progress=False)
    assert resumed.n_decoded == 0 and resumed.n_reused == 4 and (folder / "complete.json").exists()


def test_image_sets_from_manifest_carves_val_by_group(tmp_path):
    manifest = phantom_manifest(tmp_path / "src")
    sets = image_sets_from_manifest(manifest, class_names=("a", "b"), source="phantom", cache_dir=tmp_path / "c",
                                    settings=SMALL, workers=1, progress=False, val_fraction=0.34)
    assert set(sets) == {"train", "val", "test"} and len(sets["val"]) > 0
    assert sum(len(s) for s in sets.values()) == 8 and sets["train"].levels == 4096
    groups = {k: set(s.groups) for k, s in sets.items()}
    assert not groups["train"] & groups["val"] and not groups["val"] & groups["test"]
    images, table = open_cache(next((tmp_path / "c").iterdir()))
    for split in sets.values():
        assert split.images.dtype == np.float32 and split.images.max() <= 1
        for image, image_id, label in zip(split.images, split.ids, split.labels):
            k = int(table.index[table["image_id"] == image_id][0])
            np.testing.assert_allclose(image, images[k] / 4095, atol=1e-6)
            assert label == int(manifest.set_index("image_id").loc[image_id, "label"])


def test_manifest_problems_are_named(tmp_path):
    manifest = phantom_manifest(tmp_path / "src", n=2)
    with pytest.raises(ValueError, match=r"class\(es\) \['c'\] have no images"):
        validate_manifest(manifest, class_names=("a", "b", "c"), source="phantom")
    with pytest.raises(ValueError, match="lacks columns"):
        validate_manifest(manifest.drop(columns=["group"]), class_names=("a", "b"), source="phantom")
    with pytest.raises(CacheError, match="unique"):
        build_cache(pd.concat([manifest, manifest]), tmp_path / "c", settings=SMALL, progress=False)
    with pytest.raises(CacheError, match="empty"):
        build_cache(manifest.iloc[:0], tmp_path / "c", settings=SMALL, progress=False)


def test_a_fixed_or_replaced_source_file_is_read_again(tmp_path):
    """The cache keys each source file by size and mtime (issue 13, 3)."""
    import os
    manifest = phantom_manifest(tmp_path / "src", n=4)
    first = build_cache(manifest, tmp_path / "cache", settings=SMALL, workers=1, progress=False)
    before = np.array(open_cache(first.path)[0][2])
    # the file is replaced by another image (same path, same id): its pixels must change
    write_dicom(tmp_path / "src" / "img2.dcm", breast_phantom(side="L", seed=99) * 0.5)
    os.utime(tmp_path / "src" / "img2.dcm", ns=(0, 10**18))  # a distinct mtime even on coarse clocks
    again = build_cache(manifest, tmp_path / "cache", settings=SMALL, workers=1, progress=False)
    assert (again.n_decoded, again.n_reused) == (1, 3)
    after = np.array(open_cache(again.path)[0][2])
    assert not np.array_equal(before, after)
    table = open_cache(again.path)[1]
    assert {"source_size", "source_mtime_ns"} <= set(table.columns)


def test_images_left_out_are_reported_also_when_the_complete_cache_is_reused(tmp_path):
    """Reusing a complete cache still warns about the images it excludes (issue 13, 3)."""
    manifest = phantom_manifest(tmp_path / "src", n=4)
    (tmp_path / "src" / "img1.dcm").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match=r"1 image\(s\) could not be cached"):
        build_cache(manifest, tmp_path / "cache", settings=SMALL, workers=1, progress=False)
    with pytest.warns(UserWarning, match=r"1 image\(s\) could not be cached.*img1.dcm"):
        reused = build_cache(manifest, tmp_path / "cache", settings=SMALL, workers=1, progress=False)
    assert reused.n_decoded == 0 and reused.n_errors == 1
