"""Source loaders on the real shared files: BreastMNIST, mini-MIAS, CBIS-DDSM (CSVs + 2 DICOMs)."""
import warnings

import numpy as np
import pytest

from data_fixtures import shared
from sgc.data import ImageSet, load_dataset
from sgc.data.cbis_ddsm import cbis_ddsm_manifest, image_labels, read_case_csv
from sgc.data.mini_mias import mini_mias_manifest, read_info, read_pgm
from sgc.data.splits import check_group_leakage


# --- BreastMNIST -------------------------------------------------------------------------
def test_breastmnist_official_split_with_malignant_as_one():
    root = shared("medmnist")
    sets = load_dataset("breastmnist", root=str(root), size=32)
    raw = np.load(root / "breastmnist.npz", allow_pickle=False)
    for split, n, malignant in (("train", 546, 147), ("val", 78, 21), ("test", 156, 42)):
        s = sets[split]
        assert isinstance(s, ImageSet) and s.images.shape == (n, 1, 32, 32) and s.levels == 256
        assert s.class_names == ("benign", "malignant") and int(s.labels.sum()) == malignant
        np.testing.assert_array_equal(s.labels, 1 - raw[f"{split}_labels"][:, 0])  # file: 0 = malignant
        np.testing.assert_allclose(s.images[:, 0, 2:30, 2:30] * 255, raw[f"{split}_images"], atol=1e-3)
        assert s.images[:, :, :2].max() == 0  # 28 -> 32 by zero padding
    native = load_dataset("breastmnist", root=str(root))["test"]
    assert native.images.shape == (156, 1, 28, 28)


def test_medmnist_missing_and_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="breastmnist.npz not found.*download=True"):
        load_dataset("breastmnist", root=str(tmp_path))
    (tmp_path / "pneumoniamnist.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_dataset("medmnist", root=str(tmp_path), flag="pneumoniamnist")
    with pytest.raises(ValueError, match="multi-label"):
        load_dataset("medmnist", root=str(tmp_path), flag="chestmnist")


# --- mini-MIAS ---------------------------------------------------------------------------
def test_mini_mias_info_table_counts():
    info = read_info(shared("mini-mias", "filenames.txt"))
    assert len(info) == 330 and info["refnum"].nunique() == 322
    per_image = info.groupby("refnum")["severity"].agg(lambda s: "".join(sorted(set(s.dropna()))))
    assert (per_image == "").sum() == 207 and (per_image == "B").sum() == 63
    assert (per_image == "M").sum() == 51 and (per_image == "BM").sum() == 1
    no_xy = set(info.loc[info["x"].isna() & (info["abnormality"] != "NORM"), "refnum"])
    assert no_xy == {"mdb059", "mdb216", "mdb233", "mdb245"}
    assert (info.groupby("refnum").size() > 1).sum() == 7 and (info["refnum"] == "mdb226").sum() == 3
    row = info[info["refnum"] == "mdb001"].iloc[0]
    assert (row["row"], row["col"]) == (1023 - 425, 535)  # bottom-left origin


def test_mini_mias_header_variant_and_trailing_spaces(tmp_path):
    text = shared("mini-mias", "filenames.txt").read_text()
    (tmp_path / "Info.txt").write_text("REFNUM BG CLASS SEVERITY X Y RADIUS \n"
                                       + "\n".join(line + "  " for line in text.splitlines()))
    assert read_info(tmp_path / "Info.txt").equals(read_info(shared("mini-mias", "filenames.txt")))


def test_mini_mias_lesion_coordinates_are_y_flipped():
    root = shared("mini-mias")
    info = read_info(root / "filenames.txt").dropna(subset=["x"])
    inside_flipped, inside_raw = [], []
    for rec in info[info["refnum"].isin(["mdb001", "mdb002", "mdb005", "mdb023", "mdb028", "mdb058"])].itertuples():
        image = read_pgm(next(root.rglob(f"{rec.refnum}_*.pgm")))[0].astype(float)
        r, c = np.mgrid[0:1024, 0:1024]
        inside_flipped.append(image[(r - rec.row) ** 2 + (c - rec.col) ** 2 < rec.radius ** 2].mean())
        inside_raw.append(image[(r - rec.y) ** 2 + (c - rec.x) ** 2 < rec.radius ** 2].mean())
    assert np.mean(inside_flipped) > np.mean(inside_raw) + 10


def test_mini_mias_manifest_and_load(tmp_path):
    root = shared("mini-mias")
    with pytest.raises(FileNotFoundError, match=r"96 of 115 mini-MIAS rows have no mdbNNN\*\.pgm.*missing='drop'"):
        mini_mias_manifest(root)
    with pytest.warns(UserWarning, match="dropped"):
        manifest = mini_mias_manifest(root, missing="drop")
    assert len(manifest) == 19 and manifest["label"].sum() == 10  # mdb144 (B and M) is malignant
    assert manifest.set_index("image_id").loc["mdb144", "label"] == 1
    assert manifest.set_index("image_id").loc["mdb001", "group"] == manifest.set_index("image_id").loc["mdb002", "group"]
    check_group_leakage(manifest)
    with pytest.warns(UserWarning):
        lesions = mini_mias_manifest(root, missing="drop", level="lesion")
    assert len(lesions) == 22 and "mdb216" not in set(lesions["image_id"].str[:6])  # no coordinates
    with pytest.warns(UserWarning):
        sets = load_dataset("mini_mias", root=str(root), missing="drop", size=32, workers=1, progress=False,
                            cache_dir=tmp_path)
    assert sum(len(s) for s in sets.values()) == 19 and sets["train"].levels == 256
    assert sets["train"].images.shape[1:] == (1, 32, 32)
    with pytest.warns(UserWarning):
        patches = load_dataset("mini_mias", root=str(root), missing="drop", level="lesion", size=16, workers=1,
                               progress=False, cache_dir=tmp_path)
    assert sum(len(s) for s in patches.values()) == 22 and patches["train"].images.shape[1:] == (1, 16, 16)


def test_truncated_pgm_is_named(tmp_path):
    data = shared("mini-mias", "dataset", "benign", "mdb001_benign.pgm").read_bytes()
    (tmp_path / "mdb001.pgm").write_bytes(data[:5000])
    with pytest.raises(ValueError, match="mdb001.pgm: truncated PGM"):
        read_pgm(tmp_path / "mdb001.pgm")


def test_missing_folders_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("SGC_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))       # the default folders (~/sgc-data/...) are absent
    for name in ("mini_mias", "cbis_ddsm", "inbreast", "vindr_mammo"):
        with pytest.raises(FileNotFoundError, match="absent not found .from --data-root.*SGC_DATA"):
            load_dataset(name, root=str(tmp_path / "absent"))
        with pytest.raises(FileNotFoundError, match="sgc-data.* not found .from the default.*--data-root"):
            load_dataset(name)


# --- CBIS-DDSM ---------------------------------------------------------------------------
def test_cbis_ddsm_image_level_counts_match_the_published_numbers():
    images = image_labels(shared("cbis-ddsm"), abnormality="both")
    counts = images.groupby(["abnormality", "split"])["label"].agg(["sum", "size"])
    expected = {("mass", "train"): (602, 629), ("mass", "test"): (145, 216),
                ("calc", "train"): (509, 718), ("calc", "test"): (119, 165)}
    for key, (malignant, benign) in expected.items():
        assert (counts.loc[key, "sum"], counts.loc[key, "size"] - counts.loc[key, "sum"]) == (malignant, benign)


def test_cbis_ddsm_csv_quirks():
    mass = read_case_csv(shared("cbis-ddsm", "csv", "mass_case_description_train_set.csv"))
    calc = read_case_csv(shared("cbis-ddsm", "csv", "calc_case_description_test_set.csv"))
    assert len(mass) == 1318 and len(calc) == 326
    assert "breast_density" in calc and "calc_type" in calc and "mass_shape" in mass
    assert not mass["roi_path"].str.contains("\n").any() and mass["roi_path"].str.endswith(".dcm").all()
    assert (calc["breast_density"] == "0").sum() == 2
    assert set(mass.loc[mass["pathology"] == "BENIGN_WITHOUT_CALLBACK", "malignant"]) == {False}


def test_cbis_ddsm_real_dicoms_join_by_header(tmp_path):
    root = shared("cbis-ddsm")
    with pytest.raises(FileNotFoundError, match=r"3101 of 3103 CBIS-DDSM images .* no DICOM.*missing='drop'"):
        cbis_ddsm_manifest(root, abnormality="both")
    with pytest.warns(UserWarning, match="dropped"):
        manifest = cbis_ddsm_manifest(root, abnormality="mass", missing="drop")
    by_id = manifest.set_index("image_id")
    assert by_id.loc["Mass-Test_P_00173_LEFT_CC", "label_name"] == "benign"
    assert by_id.loc["Mass-Test_P_00820_LEFT_CC", "label_name"] == "malignant"
    assert set(manifest["split"]) == {"test"} and set(manifest["group"]) == {"P_00173", "P_00820"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sets = load_dataset("cbis_ddsm", root=str(root), missing="drop", size=64, workers=1, progress=False,
                            cache_dir=tmp_path)
    test = sets["test"]
    assert test.images.shape == (2, 1, 64, 64) and test.levels == 65536 and list(test.labels) == [0, 1]
    assert len(sets["train"]) == 0 and 0.05 < test.images.mean() < 0.6


def _medmnist_file(path, images):
    """A MedMNIST-layout .npz whose three splits hold ``images`` (N, 28, 28) and labels 0/1."""
    labels = (np.arange(len(images)) % 2).astype(np.uint8)[:, None]
    np.savez(path, **{f"{s}_images": images for s in ("train", "val", "test")},
             **{f"{s}_labels": labels for s in ("train", "val", "test")})


def test_medmnist_float_files_in_unit_range_are_kept_not_divided_again(tmp_path):
    """uint8 files are divided by 255; a file already normalised to [0, 1] is kept (issue 13, 7)."""
    rng = np.random.default_rng(0)
    ints = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    _medmnist_file(tmp_path / "breastmnist.npz", ints)
    from_ints = load_dataset("breastmnist", root=str(tmp_path))["test"].images
    _medmnist_file(tmp_path / "breastmnist.npz", ints.astype(np.float32) / 255)
    from_floats = load_dataset("breastmnist", root=str(tmp_path))["test"].images
    np.testing.assert_allclose(from_floats, from_ints, atol=1e-6)
    assert from_floats.max() > 0.9  # not black
    _medmnist_file(tmp_path / "breastmnist.npz", ints.astype(np.float64))  # floats 0..255: ambiguous
    with pytest.raises(ValueError, match=r"breastmnist.npz: train_images is floating point with values in \[0, 255\]"):
        load_dataset("breastmnist", root=str(tmp_path))
