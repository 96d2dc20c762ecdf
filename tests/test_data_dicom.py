"""DICOM decoding: pydicom's bundled files, synthetic fixtures, the two real CBIS-DDSM files, bad input."""
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import get_decoder
from pydicom.uid import JPEG2000Lossless, RLELossless

from data_fixtures import breast_phantom, shared, write_dicom
from sgc.data.dicom import DicomDecodeError, read_dicom, window


@pytest.mark.parametrize("name, syntax", [
    ("JPEG2000.dcm", "1.2.840.10008.1.2.4.91"),            # JPEG 2000 (lossy), signed 16-bit
    ("MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90"),
    ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5"),
    ("MR_small_bigendian.dcm", "1.2.840.10008.1.2.2"),
])
def test_pydicom_test_files_decode_to_unit_range(name, syntax):
    image, info = read_dicom(get_testdata_file(name))
    assert info.transfer_syntax == syntax
    assert image.dtype == np.float32 and image.ndim == 2
    assert 0.0 <= image.min() <= image.max() <= 1.0 and image.std() > 0


def test_compressed_and_big_endian_agree_with_uncompressed():
    ref, _ = read_dicom(get_testdata_file("MR_small.dcm"))
    for name in ("MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_jp2klossless.dcm"):
        np.testing.assert_allclose(read_dicom(get_testdata_file(name))[0], ref, atol=1e-6)


def test_jpeg_ls_decodes_or_names_the_missing_package():
    path = get_testdata_file("MR_small_jpeg_ls_lossless.dcm")
    if get_decoder("1.2.840.10008.1.2.4.80").is_available:
        image, info = read_dicom(path)
        np.testing.assert_allclose(image, read_dicom(get_testdata_file("MR_small.dcm"))[0], atol=1e-6)
    else:
        with pytest.raises(DicomDecodeError) as err:
            read_dicom(path)
        text = str(err.value)
        assert "MR_small_jpeg_ls_lossless.dcm" in text and "1.2.840.10008.1.2.4.80" in text
        assert "JPEG-LS" in text and ("pylibjpeg-libjpeg" in text or "pyjpegls" in text)


def test_monochrome1_is_inverted_after_window(tmp_path):
    image = breast_phantom()
    m2, _ = read_dicom(write_dicom(tmp_path / "m2.dcm", image))
    m1, info = read_dicom(write_dicom(tmp_path / "m1.dcm", 1 - image, photometric="MONOCHROME1"))
    assert info.inverted and info.photometric == "MONOCHROME1"
    np.testing.assert_allclose(m1, m2, atol=2 / 4095)
    # with a window that is not centred on the range, inverting before or after it differs:
    # MONOCHROME1 is inverted AFTER the window (PS3.4 N.2)
    values = np.array([[0, 1000, 1500, 2000, 4095]], dtype=np.uint16)
    windowed, info = read_dicom(write_dicom(tmp_path / "w1.dcm", values, raw=True, photometric="MONOCHROME1",
                                            window=(1500, 1000)))
    np.testing.assert_allclose(windowed, 1 - window(values.astype(float), 1500, 1000), atol=1e-6)
    assert info.intensity == "window:LINEAR" and info.inverted


def test_sigmoid_and_linear_windows_follow_the_standard(tmp_path):
    values = np.array([[0, 1000, 2048, 3000, 4095]], dtype=np.uint16)
    path = write_dicom(tmp_path / "s.dcm", values, raw=True, window=(2048, 1000), voi_function="SIGMOID")
    image, info = read_dicom(path)
    assert info.intensity == "window:SIGMOID"
    expected = 1 / (1 + np.exp(-4 * (values.astype(float) - 2048) / 1000))
    np.testing.assert_allclose(image, expected, atol=1e-6)
    assert image[0, 2] == pytest.approx(0.5)
    linear = window(np.array([0.0, 1547.5, 2047.5, 2548.5, 4095.0]), 2048, 1000)
    np.testing.assert_allclose(linear, [0, 0, 0.5, 1, 1], atol=1e-3)
    assert read_dicom(path, use_window=False)[1].intensity == "bits"


def test_rescale_and_bits_stored_are_respected(tmp_path):
    values = np.array([[0, 100, 200], [300, 400, 1023]], dtype=np.uint16)
    image, info = read_dicom(write_dicom(tmp_path / "r.dcm", values, raw=True, bits_stored=10,
                                         slope=2.0, intercept=-10))
    assert info.bits_stored == 10
    np.testing.assert_allclose(image, values / 1023, atol=1e-6)  # linear rescale keeps the fraction
    # ... which a window does not: it is in modality units, 2 v - 10 (the stored values would differ)
    image, info = read_dicom(write_dicom(tmp_path / "rw.dcm", values, raw=True, bits_stored=10, slope=2.0,
                                         intercept=-10, window=(800, 1000)))
    np.testing.assert_allclose(image, window(2.0 * values - 10, 800, 1000), atol=1e-6)
    assert np.abs(image - window(values.astype(float), 800, 1000)).max() > 0.1


def test_laterality_view_and_ids_come_from_the_header(tmp_path):
    _, info = read_dicom(write_dicom(tmp_path / "h.dcm", breast_phantom(), laterality="R", view="MLO",
                                     patient_id="P9", compress=JPEG2000Lossless))
    assert (info.laterality, info.view, info.patient_id) == ("R", "MLO", "P9")
    assert info.transfer_syntax == JPEG2000Lossless


def test_real_cbis_ddsm_dicoms():
    for name, patient, shape in (("sfm-benign-0/1-130.dcm", "Mass-Test_P_00173_LEFT_CC", (4432, 2864)),
                                 ("sfm-malign-0/1-280.dcm", "Mass-Test_P_00820_LEFT_CC", (4736, 2624))):
        image, info = read_dicom(shared("cbis-ddsm", "dicom", name))
        assert image.shape == shape and info.bits_stored == 16 and info.photometric == "MONOCHROME2"
        assert info.patient_id == patient and info.laterality == "L" and info.transfer_syntax == RLELossless
        assert info.series_description == "full mammogram images" and info.intensity == "bits"
        assert 0 <= image.min() and image.max() <= 1 and image.mean() > 0.05


@pytest.mark.filterwarnings("ignore:End of file reached")
def test_bad_files_give_clear_messages(tmp_path):
    with pytest.raises(DicomDecodeError, match="file not found"):
        read_dicom(tmp_path / "absent.dcm")
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"this is not DICOM at all" * 10)
    with pytest.raises(DicomDecodeError, match="junk.dcm.*not a readable DICOM"):
        read_dicom(junk)
    good = write_dicom(tmp_path / "good.dcm", breast_phantom(), compress=RLELossless)
    cut = tmp_path / "truncated.dcm"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DicomDecodeError, match="truncated.dcm"):
        read_dicom(cut)
    odd = pydicom.dcmread(write_dicom(tmp_path / "odd.dcm", breast_phantom()))
    odd.file_meta.TransferSyntaxUID = "1.2.3.4.5.6"
    odd.save_as(tmp_path / "odd.dcm")
    with pytest.raises(DicomDecodeError, match=r"odd.dcm: unknown or unsupported transfer syntax 1\.2\.3\.4\.5\.6"):
        read_dicom(tmp_path / "odd.dcm")


@pytest.mark.filterwarnings("ignore:End of file reached")
@pytest.mark.parametrize("keep", ["header_only", "half_of_the_pixels"])
def test_truncated_file_is_named_truncated_with_expected_and_actual_bytes(tmp_path, keep):
    """A download cut short is 'truncated', not 'no pixel data (structured report?)' (issue 13, 8)."""
    good = write_dicom(tmp_path / "good.dcm", breast_phantom(rows=96, cols=64))
    data = good.read_bytes()
    pixel_bytes = 96 * 64 * 2
    header_end = len(data) - pixel_bytes - 8  # before the PixelData element's tag and length
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:header_end] if keep == "header_only" else data[:len(data) - pixel_bytes // 2])
    with pytest.raises(DicomDecodeError) as info:
        read_dicom(cut)
    msg = str(info.value)
    assert "cut.dcm" in msg and "truncated" in msg and "structured report" not in msg
    assert f"{pixel_bytes} bytes" in msg or f"of {pixel_bytes} expected" in msg
    if keep == "half_of_the_pixels":
        assert f"{pixel_bytes // 2} of {pixel_bytes} expected bytes" in msg
