"""DICOM intensities with known answers: rescale slope/intercept combined with a window (the
default bit-depth mapping cancels a linear rescale, a window does not), MONOCHROME1 inverted
after the window, VOI LUT sequences, the fallbacks, header facts, and the CBIS-DDSM ROI box."""
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from data_fixtures import breast_phantom, write_dicom
from sgc.data.cbis_ddsm import roi_mask_box
from sgc.data.dicom import DicomDecodeError, decoder_hint, read_dicom, read_header, window

STORED = np.array([[0, 100, 300, 500], [520, 700, 900, 1023]], dtype=np.uint16)   # 10-bit stored values


def _linear(m, center, width):
    """PS3.3 C.11.2.1.2.1 by hand: LINEAR window of modality values m."""
    return np.clip((m - (center - 0.5)) / (width - 1) + 0.5, 0, 1)


def test_rescale_slope_and_intercept_are_applied_before_the_window(tmp_path):
    path = write_dicom(tmp_path / "w.dcm", STORED, raw=True, bits_stored=10, slope=2.0, intercept=-100,
                       window=(900, 1200))
    image, info = read_dicom(path)
    modality = 2.0 * STORED - 100                        # what the window is written in
    np.testing.assert_allclose(image, _linear(modality, 900, 1200), atol=1e-6)
    assert info.intensity == "window:LINEAR"
    # the window applied to the stored values would look quite different
    assert np.abs(image - _linear(STORED.astype(float), 900, 1200)).max() > 0.2
    # without the window the fallback maps the modality range of the 10 bits: the rescale cancels
    plain, info = read_dicom(path, use_window=False)
    np.testing.assert_allclose(plain, STORED / 1023, atol=1e-6)
    assert info.intensity == "bits"


def test_negative_slope_flips_the_bits_range(tmp_path):
    path = write_dicom(tmp_path / "n.dcm", STORED, raw=True, bits_stored=10, slope=-1.0, intercept=1023)
    image, _ = read_dicom(path)
    np.testing.assert_allclose(image, 1 - STORED / 1023, atol=1e-6)


def test_monochrome1_is_inverted_after_an_asymmetric_window(tmp_path):
    path = write_dicom(tmp_path / "m1.dcm", STORED, raw=True, bits_stored=10, photometric="MONOCHROME1",
                       window=(300, 400))
    image, info = read_dicom(path)
    assert info.inverted and info.photometric == "MONOCHROME1"
    np.testing.assert_allclose(image, 1 - _linear(STORED.astype(float), 300, 400), atol=1e-6)
    # inverting the stored values first (1023 - v) and windowing afterwards would give another picture
    assert np.abs(image - _linear(1023.0 - STORED, 300, 400)).max() > 0.5


def test_presentation_lut_inverse_inverts_once(tmp_path):
    for photometric, want_inverted in (("MONOCHROME2", True), ("MONOCHROME1", True)):
        path = write_dicom(tmp_path / f"{photometric}.dcm", STORED, raw=True, bits_stored=10, photometric=photometric)
        ds = pydicom.dcmread(path)
        ds.PresentationLUTShape = "INVERSE"
        ds.save_as(path)
        image, info = read_dicom(path)
        assert info.inverted is want_inverted
        np.testing.assert_allclose(image, 1 - STORED / 1023, atol=1e-6)   # inverted once, not twice


def test_linear_exact_and_first_of_several_windows(tmp_path):
    path = write_dicom(tmp_path / "e.dcm", STORED, raw=True, bits_stored=10, window=(500, 800),
                       voi_function="LINEAR_EXACT")
    ds = pydicom.dcmread(path)
    ds.WindowCenter, ds.WindowWidth = [500, 100], [800, 50]        # two windows: the first is used
    ds.save_as(path)
    image, info = read_dicom(path)
    np.testing.assert_allclose(image, np.clip((STORED.astype(float) - 500) / 800 + 0.5, 0, 1), atol=1e-6)
    assert info.intensity == "window:LINEAR_EXACT"


def test_window_function_edges():
    x = np.array([0.0, 99.0, 99.75, 100.5, 200.0])
    np.testing.assert_allclose(window(x, 100, 1), [0, 0, 1, 1, 1])          # width 1: a step at c - 0.5
    np.testing.assert_allclose(window(x, 100, 2, "linear_exact"), [0, 0, 0.375, 0.75, 1])
    np.testing.assert_allclose(window(x, 100, 3), [0, 0.25, 0.625, 1, 1])   # (x - 99.5) / 2 + 0.5
    assert window(np.array([100.0]), 100, 10, "SIGMOID")[0] == pytest.approx(0.5)
    assert window(np.array([110.0]), 100, 10, "SIGMOID")[0] == pytest.approx(1 / (1 + np.exp(-4)))
    assert window(x, 100, 3, None).dtype == np.float32
    for function, width, match in (("LINEAR", 0.5, ">= 1"), ("LINEAR_EXACT", 0, "> 0"), ("SIGMOID", 0, "> 0"),
                                   ("GAMMA", 10, "unknown VOI LUT function")):
        with pytest.raises(ValueError, match=match):
            window(x, 100, width, function)


def test_voi_lut_sequence_is_used_before_a_window(tmp_path):
    path = write_dicom(tmp_path / "lut.dcm", STORED, raw=True, bits_stored=10, window=(100, 10))
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.LUTDescriptor = [4, 200, 8]                    # 4 entries for values 200..203, 8-bit output
    item.add_new(0x00283006, "US", [0, 85, 170, 255])   # LUT Data
    ds.VOILUTSequence = Sequence([item])
    ds.save_as(path)
    image, info = read_dicom(path)
    assert info.intensity == "voi_lut"
    # below the first mapped value: the first entry; above the last: the last entry
    np.testing.assert_allclose(image, np.where(STORED < 200, 0.0, 1.0), atol=1e-6)
    assert read_dicom(path, use_window=False)[1].intensity == "bits"


def test_percentile_and_minmax_fallbacks(tmp_path):
    path = write_dicom(tmp_path / "p.dcm", STORED, raw=True, bits_stored=12)
    mm, info = read_dicom(path, fallback="minmax")
    np.testing.assert_allclose(mm, STORED / 1023, atol=1e-6)
    assert info.intensity == "minmax"
    pc, info = read_dicom(path, fallback="percentile", percentiles=(10, 90))
    lo, hi = np.percentile(STORED.astype(float), (10, 90))
    np.testing.assert_allclose(pc, np.clip((STORED - lo) / (hi - lo), 0, 1), atol=1e-6)
    bits, _ = read_dicom(path)
    np.testing.assert_allclose(bits, STORED / 4095, atol=1e-6)                 # 12 bits stored
    with pytest.raises(ValueError, match="fallback"):
        read_dicom(path, fallback="median")


def test_signed_pixels_map_their_full_range(tmp_path):
    path = write_dicom(tmp_path / "s.dcm", np.zeros((2, 2)), bits_stored=12)
    ds = pydicom.dcmread(path)
    values = np.array([[-2048, -1], [0, 2047]], dtype=np.int16)
    ds.PixelRepresentation, ds.PixelData = 1, values.tobytes()
    ds.save_as(path)
    image, _ = read_dicom(path)
    np.testing.assert_allclose(image, (values + 2048) / 4095, atol=1e-6)


def test_header_facts(tmp_path):
    path = write_dicom(tmp_path / "h.dcm", breast_phantom(32, 24), laterality=None, view=None,
                       series_description="full mammogram images")
    ds = pydicom.dcmread(path)
    ds.Laterality = "RIGHT"
    code = Dataset()
    code.CodeMeaning = "medio-lateral oblique"
    ds.ViewCodeSequence = Sequence([code])
    ds.save_as(path)
    _, info = read_dicom(path)
    assert (info.laterality, info.view, info.series_description) == ("R", "MLO", "full mammogram images")
    assert (info.rows, info.columns, info.bits_stored) == (32, 24, 12)
    assert read_header(path).Rows == 32 and "PixelData" not in read_header(path)
    with pytest.raises(DicomDecodeError, match="file not found"):
        read_header(tmp_path / "absent.dcm")
    assert "JPEG 2000 Lossless" in decoder_hint("1.2.840.10008.1.2.4.90")
    assert "unknown" in decoder_hint("1.2.3")


def _mask_files(tmp_path, shape=(40, 30)):
    mask = np.zeros(shape)
    mask[12:20, 5:17] = 1
    crop = breast_phantom(8, 12, seed=1)
    return (write_dicom(tmp_path / "000000.dcm", crop, bits_stored=16),
            write_dicom(tmp_path / "000001.dcm", mask, bits_stored=8))


def test_roi_mask_box_is_found_from_the_mask_pixels(tmp_path):
    crop, mask = _mask_files(tmp_path)
    # [row0, col0, row1, col1), whichever order the candidates come in
    assert roi_mask_box([crop, mask], (40, 30)) == [12.0, 5.0, 20.0, 17.0]
    assert roi_mask_box([mask, crop], (40, 30)) == [12.0, 5.0, 20.0, 17.0]
    # a full-size image that is not binary is not taken for the mask
    full = write_dicom(tmp_path / "full.dcm", breast_phantom(40, 30))
    assert roi_mask_box([full, mask], (40, 30)) == [12.0, 5.0, 20.0, 17.0]
    with pytest.raises(ValueError, match=r"no binary full-size ROI mask.*000000.dcm"):
        roi_mask_box([crop, full], (40, 30))
    with pytest.raises(ValueError, match="no binary full-size ROI mask"):
        roi_mask_box([mask], (41, 30))                  # the mask of another image size
    empty = write_dicom(tmp_path / "empty.dcm", np.zeros((40, 30)), bits_stored=8)
    with pytest.raises(ValueError, match="empty.dcm: ROI mask is empty"):
        roi_mask_box([empty], (40, 30))
