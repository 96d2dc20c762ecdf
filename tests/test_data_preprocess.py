"""Breast mask, crop, flip, CLAHE, resize and patches on phantoms and one real PGM."""
import numpy as np
import pytest

from data_fixtures import breast_phantom, shared
from sgc.data.mini_mias import read_pgm
from sgc.data.preprocess import (NoBreastError, PreprocessSettings, bounding_box, breast_mask, clahe,
                                 detect_laterality, lesion_patch, preprocess, resize_keep_aspect, settings_hash)


def test_mask_finds_the_phantom_breast_and_ignores_a_small_label():
    image = breast_phantom(200, 120)
    image[10:20, 100:115] = 1.0  # bright text label away from the breast
    mask = breast_mask(image)
    r0, c0, r1, c1 = bounding_box(mask)
    assert c0 == 0 and c1 < 90 and not mask[15, 105]
    assert detect_laterality(mask) == "L" and detect_laterality(mask[:, ::-1]) == "R"


def test_right_breast_is_flipped_to_the_left():
    left, _ = preprocess(breast_phantom(side="L"), settings=PreprocessSettings(size=32))
    right, info = preprocess(breast_phantom(side="R"), settings=PreprocessSettings(size=32))
    assert info["flipped"] and info["detected_side"] == "R"
    np.testing.assert_allclose(left, right, atol=1e-6)
    by_header, info = preprocess(breast_phantom(side="R"), settings=PreprocessSettings(size=32, flip="laterality"),
                                 laterality="R")
    assert info["flipped"]
    with pytest.raises(ValueError, match="needs laterality"):
        preprocess(breast_phantom(), settings=PreprocessSettings(size=32, flip="laterality"))


def test_resize_keeps_aspect_by_padding():
    out = resize_keep_aspect(np.ones((100, 50), np.float32), 32)
    assert out.shape == (32, 32)
    assert out[:, :16].min() == pytest.approx(1) and out[:, 17:].max() == 0  # 100x50 -> 32x16, padded right


def test_output_range_dtype_and_clahe():
    out, info = preprocess(breast_phantom(), settings=PreprocessSettings(size=48, clahe=True))
    assert out.shape == (48, 48) and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    assert out[:, -4:].max() == 0  # background outside the breast stays black
    eq = clahe(np.linspace(0.2, 0.4, 64 * 64, dtype=np.float32).reshape(64, 64))
    assert eq.min() >= 0 and eq.max() <= 1 and np.ptp(eq) > 0.2


def test_lesion_patch_is_centred_and_padded_at_borders():
    image = np.zeros((100, 100), np.float32)
    image[40:50, 60:70] = 1
    patch = lesion_patch(image, (40, 60, 50, 70), context=1.0, min_side=10)
    assert patch.shape == (20, 20) and patch[5:15, 5:15].min() == 1 and patch.sum() == 100
    corner = lesion_patch(image, (-5, -5, 5, 5), context=0, min_side=20)
    assert corner.shape == (20, 20)
    with pytest.raises(ValueError, match="outside"):
        lesion_patch(image, (200, 200, 210, 210))
    out, _ = preprocess(breast_phantom(), settings=PreprocessSettings(size=16, mode="patch", patch_min_side=8),
                        box=(40, 5, 56, 21))
    assert out.shape == (16, 16)
    with pytest.raises(ValueError, match="needs a lesion box"):
        preprocess(breast_phantom(), settings=PreprocessSettings(size=16, mode="patch"))


def test_no_breast_is_a_clear_error():
    with pytest.raises(NoBreastError, match="constant"):
        breast_mask(np.zeros((64, 64), np.float32))
    speck = np.zeros((200, 200), np.float32)
    speck[5:8, 5:8] = 1
    with pytest.raises(NoBreastError, match="min_breast_fraction"):
        breast_mask(speck)


def test_settings_hash_and_validation():
    base = PreprocessSettings()
    assert settings_hash(base) == settings_hash(PreprocessSettings())
    assert settings_hash(base) != settings_hash(PreprocessSettings(clahe=True))
    with pytest.raises(ValueError, match="unknown preprocessing settings"):
        PreprocessSettings.from_dict({"size": 64, "clahe_limit": 0.02})
    with pytest.raises(ValueError, match="mode"):
        PreprocessSettings(mode="tiles")


def test_real_mini_mias_film_is_cropped_and_oriented():
    raw, maxval = read_pgm(shared("mini-mias", "dataset", "benign", "mdb001_benign.pgm"))
    assert raw.shape == (1024, 1024) and raw.dtype == np.uint8 and maxval == 255
    out, info = preprocess(raw / 255.0, settings=PreprocessSettings(size=64))
    assert info["detected_side"] == "R" and info["flipped"]  # mdb001's breast lies on the right
    assert out[:, :8].mean() > out[:, -8:].mean()  # after the flip the chest wall is on the left
