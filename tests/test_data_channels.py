"""The loaders' size and channel options that the GPU profiles use: MedMNIST+ files (64 / 128 /
224 px) and 3-channel mammograms (the paper's VinDr-Mammo setting: 384 px, 3 channels)."""
import json

import numpy as np
import pytest

from sgc.data import load_dataset
from sgc.data.recipes import prepare_file, recipe_for, recipe_from_config
from sgc.errors import DataError
from test_data_layouts import _vindr


def _medmnist_plus(folder, side: int, n=(6, 4, 4), seed=0) -> dict:
    """A file in the official MedMNIST+ format: ``breastmnist_<side>.npz``, uint8 (N, side, side) images,
    uint8 (N, 1) labels with BreastMNIST's 0 = malignant, one array per split."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        arrays[f"{split}_images"] = rng.integers(0, 256, (count, side, side), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % 2).astype(np.uint8)[:, None]
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / ("breastmnist.npz" if side == 28 else f"breastmnist_{side}.npz"), **arrays)
    return arrays


def test_medmnist_plus_files_load_by_resolution(tmp_path):
    arrays = _medmnist_plus(tmp_path, 64)
    _medmnist_plus(tmp_path, 28, seed=1)
    sets = load_dataset("breastmnist", root=tmp_path, resolution=64)
    assert sets["train"].images.shape == (6, 1, 64, 64) and sets["test"].levels == 256
    np.testing.assert_array_equal(sets["val"].images[:, 0] * 255, arrays["val_images"].astype(np.float32))
    np.testing.assert_array_equal(sets["test"].labels, 1 - arrays["test_labels"][:, 0])  # 1 = malignant
    padded = load_dataset("breastmnist", root=tmp_path, resolution=64, size=72)["train"].images
    np.testing.assert_array_equal(padded[:, :, 4:68, 4:68], sets["train"].images)    # zero padding, centred
    assert load_dataset("breastmnist", root=tmp_path)["train"].images.shape == (6, 1, 28, 28)  # the 28 px file
    three = load_dataset("breastmnist", root=tmp_path, resolution=64, channels=3)["train"].images
    assert three.shape == (6, 3, 64, 64) and all((three[:, k] == sets["train"].images[:, 0]).all() for k in range(3))


def test_medmnist_resolution_errors_name_the_file_and_the_fix(tmp_path):
    _medmnist_plus(tmp_path, 64)
    with pytest.raises(FileNotFoundError, match="breastmnist_128.npz"):
        load_dataset("breastmnist", root=tmp_path, resolution=128)
    with pytest.raises(ValueError, match=r"resolution must be one of \(28, 64, 128, 224\)"):
        load_dataset("breastmnist", root=tmp_path, resolution=50)
    (tmp_path / "breastmnist_64.npz").rename(tmp_path / "breastmnist_224.npz")   # a file of the wrong side
    with pytest.raises(DataError, match=r"breastmnist_224.npz: train_images has shape \(6, 64, 64\).*resolution=224"):
        load_dataset("breastmnist", root=tmp_path, resolution=224)
    _medmnist_plus(tmp_path, 28)
    with pytest.raises(ValueError, match="channels must be 1 .grey. or 3"):
        load_dataset("breastmnist", root=tmp_path, channels=2)


def test_mammograms_with_three_channels_repeat_the_cached_grey_image(tmp_path):
    root = _vindr(tmp_path)
    options = dict(size=32, workers=1, progress=False, cache_dir=tmp_path / "cache", val_fraction=0.34)
    grey = load_dataset("vindr_mammo", root=str(root), **options)
    rgb = load_dataset("vindr_mammo", root=str(root), channels=3, **options)
    for split in grey:
        assert rgb[split].images.shape == (len(grey[split]), 3, 32, 32)
        for k in range(3):
            np.testing.assert_array_equal(rgb[split].images[:, k], grey[split].images[:, 0])
        assert rgb[split].ids == grey[split].ids and (rgb[split].labels == grey[split].labels).all()
    assert len(list((tmp_path / "cache").glob("*/complete.json"))) == 1      # one grey cache serves both
    with pytest.raises(ValueError, match="channels must be 1 .grey. or 3"):
        load_dataset("vindr_mammo", root=str(root), channels=2, **options)

    # sgc predict prepares a file the way the loader did, channels included
    recipe = recipe_for("vindr_mammo", {"size": 32, "channels": 3}, (3, 32, 32), rgb["test"].levels)
    image = rgb["test"]
    path = next(root.glob(f"images/*/{image.ids[0]}.dicom"))
    np.testing.assert_array_equal(prepare_file(recipe, path)[0], image.images[0])
    derived = recipe_from_config({"data": {"dataset": "vindr_mammo", "options": {"size": 32, "channels": 3},
                                           "shape": [3, 32, 32], "levels": image.levels}})
    assert derived["channels"] == 3 and json.dumps(derived)
