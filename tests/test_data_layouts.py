"""Synthetic fixtures for the sources we cannot ship: CBIS-DDSM layouts, VinDr-Mammo, INbreast."""
import json

import numpy as np
import pandas as pd
import pytest
from pydicom.uid import JPEG2000Lossless, generate_uid

from data_fixtures import breast_phantom, write_dicom
from sgc.data import load_dataset
from sgc.data.cache import build_cache, open_cache
from sgc.data.cbis_ddsm import cbis_ddsm_manifest
from sgc.data.inbreast import _clean, inbreast_manifest
from sgc.data.preprocess import PreprocessSettings
from sgc.data.vindr_mammo import vindr_manifest

MASS_HEADER = ("patient_id,breast_density,left or right breast,image view,abnormality id,abnormality type,"
               "mass shape,mass margins,assessment,pathology,subtlety,image file path,"
               "cropped image file path,ROI mask file path")


def _cbis(tmp_path, layout):
    """Two images (one with two abnormalities), written in the classic or the TCIA layout."""
    root = tmp_path / layout
    cases = [("P_00001", "LEFT", "Mass-Training", 1, "MALIGNANT"), ("P_00001", "LEFT", "Mass-Training", 2, "BENIGN"),
             ("P_00002", "RIGHT", "Mass-Training", 1, "BENIGN_WITHOUT_CALLBACK"),
             ("P_00003", "LEFT", "Mass-Test", 1, "MALIGNANT")]
    lines = {"Mass-Training": [MASS_HEADER], "Mass-Test": [MASS_HEADER]}
    written = set()
    for patient, side, prefix, abn, pathology in cases:
        pid, study, series = f"{prefix}_{patient}_{side}_CC", generate_uid(), generate_uid()
        if pid not in written:  # the full image, once per image
            image = breast_phantom(120, 80, side=side[0], seed=len(written))
            folder = root / pid / study / series if layout == "classic" else \
                root / "CBIS-DDSM" / pid / "07-20-2016-DDSM-123" / "1.000000-full mammogram images-55"
            write_dicom(folder / ("000000.dcm" if layout == "classic" else "1-1.dcm"), image, bits_stored=16,
                        patient_id=pid, series_uid=series, laterality=None, view=None)
            written.add(pid)
            full = (study, series)
        roi_pid, roi_study, roi_series = f"{pid}_{abn}", generate_uid(), generate_uid()
        mask = np.zeros((120, 80))
        mask[50:60, 10:24] = 1
        crop = breast_phantom(12, 16, seed=abn)
        folder = root / roi_pid / roi_study / roi_series if layout == "classic" else root / "CBIS-DDSM" / roi_pid / "x"
        # file names deliberately swapped: 000000 is the mask here, so only pixels can tell
        write_dicom(folder / "000000.dcm", mask, bits_stored=8, patient_id=roi_pid, series_uid=roi_series)
        write_dicom(folder / "000001.dcm", crop, bits_stored=16, patient_id=roi_pid, series_uid=roi_series)
        row_path = f"{pid}/{full[0]}/{full[1]}/000000.dcm"
        roi_path = f"{roi_pid}/{roi_study}/{roi_series}/000001.dcm"
        lines[prefix].append(f"{patient},3,{side},CC,{abn},mass,OVAL,CIRCUMSCRIBED,4,{pathology},3,{row_path},"
                             f"{roi_path},\"{roi_pid}/{roi_study}/{roi_series}/000000.dcm\n\"")
    (root / "csv").mkdir(parents=True, exist_ok=True)
    for prefix, name in (("Mass-Training", "mass_case_description_train_set.csv"),
                         ("Mass-Test", "mass_case_description_test_set.csv")):
        (root / "csv" / name).write_bytes("\r\n".join(lines[prefix]).encode() + b"\r\n")
    return root


def test_cbis_ddsm_classic_and_tcia_layouts_give_the_same_manifest(tmp_path):
    manifests = [cbis_ddsm_manifest(_cbis(tmp_path, layout)) for layout in ("classic", "tcia")]
    for manifest in manifests:
        by_id = manifest.set_index("image_id")
        assert by_id.loc["Mass-Training_P_00001_LEFT_CC", "label"] == 1  # any abnormality malignant
        assert by_id.loc["Mass-Training_P_00001_LEFT_CC", "n_abnormalities"] == 2
        assert by_id.loc["Mass-Training_P_00002_RIGHT_CC", "label"] == 0  # BENIGN_WITHOUT_CALLBACK
        assert list(manifest["split"]) == ["test", "train", "train"] and by_id["path"].map(len).min() > 0
    cols = ["image_id", "label", "split", "group", "laterality"]
    pd.testing.assert_frame_equal(manifests[0][cols], manifests[1][cols])


def test_cbis_ddsm_lesion_patches_find_the_mask_by_pixels(tmp_path):
    root = _cbis(tmp_path, "tcia")
    lesions = cbis_ddsm_manifest(root, level="lesion")
    assert len(lesions) == 4 and lesions["label"].tolist().count(1) == 2
    assert all(len(json.loads(p)) == 2 for p in lesions["roi_paths"])
    # the box comes from the mask's pixels ([50:60, 10:24] in every fixture), not from a file name
    from sgc.data.cbis_ddsm import roi_mask_box
    for paths in lesions["roi_paths"]:
        assert roi_mask_box(json.loads(paths), (120, 80)) == [50.0, 10.0, 60.0, 24.0]
    result = build_cache(lesions, tmp_path / "cache", workers=1, progress=False,
                         settings=PreprocessSettings(size=16, mode="patch", patch_min_side=8, patch_context=0))
    assert result.n_errors == 0
    images, table = open_cache(result.path)
    assert images.shape == (4, 1, 16, 16)


def _vindr(tmp_path):
    root = tmp_path / "vindr"
    breast, finding = [], []
    cols = "study_id,series_id,image_id,laterality,view_position,height,width,breast_birads,breast_density,split"
    for k, birads in enumerate([1, 2, 3, 4, 5, 1, 3, 4]):
        study, image, split = f"study{k // 2}", f"image{k}", "training" if k < 6 else "test"
        side = "LR"[k % 2]
        write_dicom(root / "images" / study / f"{image}.dicom", breast_phantom(96, 64, side=side, seed=k),
                    photometric="MONOCHROME2", compress=JPEG2000Lossless if k % 3 == 0 else None)
        row = f"{study},ser{k},{image},{side},CC,96,64,BI-RADS {birads},DENSITY C,{split}"
        breast.append(row)
        finding.append(row.rsplit(",", 1)[0] + ",['No Finding'],,,,,," + split if birads < 3 else
                       row.rsplit(",", 1)[0] + f",['Mass'],{'' if k == 3 else f'BI-RADS {birads}'},"
                       f"-3.5,40.2,20.0,60.0,{split}")
    (root / "breast-level_annotations.csv").write_text(cols + "\n" + "\n".join(breast) + "\n")
    fcols = cols.replace(",split", ",finding_categories,finding_birads,xmin,ymin,xmax,ymax,split")
    (root / "finding_annotations.csv").write_text(fcols + "\n" + "\n".join(finding) + "\n")
    return root


def test_vindr_birads_rule_is_a_recorded_parameter(tmp_path):
    root = _vindr(tmp_path)
    manifest = vindr_manifest(root)
    assert manifest["label"].tolist() == [0, 0, 0, 1, 1, 0, 0, 1] and manifest["group"].nunique() == 4
    assert "4, 5" in manifest["label_rule"].iloc[0] and set(manifest["split"]) == {"train", "test"}
    dropped = vindr_manifest(root, drop_birads=(3,))
    assert len(dropped) == 6 and "BI-RADS [3] dropped" in dropped["label_rule"].iloc[0]
    findings = vindr_manifest(root, level="lesion")
    assert len(findings) == 5 and json.loads(findings["lesion_box"].iloc[0])[1] == 0.0  # negative x clipped
    assert findings.set_index("source_image_id").loc["image3", "birads"] == 4  # blank finding_birads -> breast's
    sets = load_dataset("vindr_mammo", root=str(root), size=32, workers=1, progress=False,
                        cache_dir=tmp_path / "cache", val_fraction=0.34)
    assert sum(len(s) for s in sets.values()) == 8 and sets["test"].levels == 4096
    assert not set(sets["train"].groups) & set(sets["val"].groups)


def test_vindr_missing_images_and_empty_class(tmp_path):
    root = _vindr(tmp_path)
    (root / "images" / "study0" / "image0.dicom").unlink()
    with pytest.raises(FileNotFoundError, match="1 of 8 VinDr-Mammo rows have no DICOM.*missing='drop'"):
        vindr_manifest(root)
    with pytest.warns(UserWarning, match="dropped"), \
            pytest.raises(ValueError, match=r"class\(es\) \['malignant'\] have no images"):
        load_dataset("vindr_mammo", root=str(root), missing="drop", malignant_birads=(6,), cache_dir=tmp_path)


def _inbreast(tmp_path):
    root = tmp_path / "inbreast"
    rows = ["Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads"]
    for k, birads in enumerate(["1", "2", "3", "4a", "4b", "4c", "5", "6", "2", "1"]):
        name, side = str(22678600 + k), "LR"[k % 2]
        write_dicom(root / "AllDICOMs" / f"{name}_abc{k}_MG_{side}_CC_ANON.dcm",
                    breast_phantom(96, 64, side=side, seed=k), bits_stored=14, patient_id=f"woman{k // 2}")
        rows.append(f"removed;removed;{side};CC;201001;{name};{(k % 4) + 1};{birads}")
    (root / "INbreast.csv").write_bytes("\r\n".join(rows).encode() + b"\r\n")
    return root


def test_inbreast_csv_grouped_by_dicom_patient(tmp_path):
    root = _inbreast(tmp_path)
    manifest = inbreast_manifest(root, test_fraction=0.2, val_fraction=0.2)
    assert manifest["label"].sum() == 5 and manifest["group"].nunique() == 5
    assert manifest.groupby("group")["split"].nunique().max() == 1
    assert "INbreast Bi-Rads" in manifest["label_rule"].iloc[0]
    sets = load_dataset("inbreast", root=str(root), size=32, workers=1, progress=False, cache_dir=tmp_path / "c",
                        val_fraction=0.2)
    assert sum(len(s) for s in sets.values()) == 10 and sets["train"].levels == 2 ** 14


def test_inbreast_xls_quirks():
    sheet = pd.DataFrame({"Patient ID": ["removed"] * 4 + [np.nan, np.nan], "Laterality": ["R", "L", "R", "L", np.nan, np.nan],
                          "View": ["CC", "MLO", "FB", "CC", np.nan, np.nan],
                          "File Name": [22678622.0, 20586908.0, 20586934.0, 22614074.0, np.nan, np.nan],
                          "ACR": [4, np.nan, 2, 1, np.nan, np.nan], "Bi-Rads": [1, "4a", "4C", 5.0, np.nan, "total"],
                          "Mass ": ["X", None, None, "X", None, 2]})
    table = _clean(sheet, "INbreast.xls")
    assert list(table["file_name"]) == ["22678622", "20586908", "20586934", "22614074"]  # totals/blank dropped
    assert list(table["birads"]) == ["1", "4a", "4c", "5"] and "Mass" in table and table["acr"].isna().sum() == 1
    with pytest.raises(ValueError, match="unknown INbreast Bi-Rads value 7"):
        _clean(sheet.assign(**{"Bi-Rads": [7, 1, 1, 1, np.nan, np.nan]}), "x.xls")
