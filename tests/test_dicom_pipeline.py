"""The DICOM grey-scale pipeline in the standard's order: rescale -> window -> presentation LUT."""
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from data_fixtures import breast_phantom, write_dicom
from sgc.data.dicom import read_dicom, window

STORED = np.array([[0, 100, 400, 500, 505, 510], [600, 700, 800, 900, 1000, 1023]], dtype=np.uint16)


def linear_window(m, center, width):
    """PS3.3 C.11.2.1.2.1 by hand: LINEAR on modality values, as a fraction of the output range."""
    return np.clip((m - (center - 0.5)) / (width - 1) + 0.5, 0, 1)


@pytest.mark.parametrize("slope, intercept", [(2.0, -10.0), (0.5, 100.0), (-1.0, 1023.0)])
def test_window_applies_to_rescaled_values(tmp_path, slope, intercept):
    center, width = 1000.0, 801.0
    path = write_dicom(tmp_path / "rw.dcm", STORED, raw=True, bits_stored=10, slope=slope, intercept=intercept,
                       window=(center, width))
    image, info = read_dicom(path)
    assert info.intensity == "window:LINEAR"
    modality = STORED * slope + intercept
    expected = linear_window(modality, center, width)
    np.testing.assert_allclose(image, expected, atol=1e-6)
    # the window on the stored values (rescale forgotten) would give something else
    assert not np.allclose(image, linear_window(STORED.astype(float), center, width), atol=1e-3)


def test_window_function_matches_the_standard_formulas():
    x = np.array([-100.0, 0.0, 499.5, 500.0, 1000.0, 5000.0])
    np.testing.assert_allclose(window(x, 500, 1000, "LINEAR"), linear_window(x, 500, 1000), atol=1e-6)
    np.testing.assert_allclose(window(x, 500, 1000, "LINEAR_EXACT"), np.clip((x - 500) / 1000 + 0.5, 0, 1),
                               atol=1e-6)
    np.testing.assert_allclose(window(x, 500, 1000, "sigmoid"), 1 / (1 + np.exp(-4 * (x - 500) / 1000)), atol=1e-6)
    with pytest.raises(ValueError, match="LINEAR window width must be >= 1"):
        window(x, 500, 0.5)
    with pytest.raises(ValueError, match="unknown VOI LUT function 'GAMMA'"):
        window(x, 500, 10, "gamma")


def _edit(path, **elements):
    ds = pydicom.dcmread(path)
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.save_as(path)
    return path


def test_presentation_lut_shape_inverse_inverts_once(tmp_path):
    image = breast_phantom()
    plain, _ = read_dicom(write_dicom(tmp_path / "m2.dcm", image))
    inv, info = read_dicom(_edit(write_dicom(tmp_path / "inv.dcm", image), PresentationLUTShape="INVERSE"))
    assert info.inverted
    np.testing.assert_allclose(inv, 1 - plain, atol=1e-6)     # 1 - y, not max(y) - y
    # MONOCHROME1 declares its inversion with INVERSE: inverted once, not twice
    m1 = _edit(write_dicom(tmp_path / "m1.dcm", 1 - image, photometric="MONOCHROME1"),
               PresentationLUTShape="INVERSE")
    once, info = read_dicom(m1)
    assert info.inverted
    np.testing.assert_allclose(once, plain, atol=2 / 4095)
    identity, info = read_dicom(_edit(write_dicom(tmp_path / "id.dcm", image), PresentationLUTShape="IDENTITY"))
    assert not info.inverted
    np.testing.assert_allclose(identity, plain, atol=1e-6)


def test_presentation_lut_sequence_maps_the_unit_range(tmp_path):
    # an 8-bit presentation LUT of 256 entries: P = 255 * (i / 255) ** 2. The image spans
    # [0, 800 / 1023] only: the LUT must see that range as it is, not stretched to [0, 1]
    lut = np.round(255 * (np.arange(256) / 255) ** 2).astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.add_new(0x00283006, "US", lut.tolist())   # LUT Data
    values = np.minimum(STORED, 800)
    path = write_dicom(tmp_path / "p.dcm", values, raw=True, bits_stored=10)
    plain, _ = read_dicom(path)
    shaped, info = read_dicom(_edit(path, PresentationLUTSequence=Sequence([item])))
    expected = lut[np.rint(plain * 255).astype(int)] / 255
    np.testing.assert_allclose(shaped, expected, atol=2.5 / 255)   # pydicom truncates to a LUT entry
    assert shaped.max() < 0.65 and not info.inverted


@pytest.mark.parametrize("out_bits", [8, 12])
def test_voi_lut_sequence_is_preferred_to_the_window(tmp_path, out_bits):
    # 1024 entries for a 10-bit input: with 8-bit entries pydicom alone would wrap inputs past 255
    lut = (np.arange(1024) * (2 ** out_bits - 1) // 1023).astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor = [1024, 0, out_bits]
    item.add_new(0x00283006, "US", lut.tolist())   # LUT Data
    path = write_dicom(tmp_path / "v.dcm", STORED, raw=True, bits_stored=10, window=(500, 10))
    image, info = read_dicom(_edit(path, VOILUTSequence=Sequence([item])))
    assert info.intensity == "voi_lut"
    np.testing.assert_allclose(image, lut[STORED] / (2 ** out_bits - 1), atol=1e-6)
